"""Trust on her2st C2–C5: is the predicted spread calibrated, does a stain shift hurt, is it flagged?

Leave one section out with ``stp.tl.fit`` (``preset="cpu"``). For each held-out section:

- Spearman(predicted spread, absolute error) per gene over the section's spots, for its top-50
  HEG (``stp.tl.evaluate``'s ``spread_error_spearman``): the share of genes where it is positive;
- the same section after a stain/scanner shift (HED-space rescaling and shift, then a gamma;
  ``stpredict.data._stain.hed_shift``): HEG r relative to the original, and the median
  out-of-distribution score of both.

Examples
--------
::

    python benchmarks/her2st_trust.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from her2st_cv import REPO, load_her2st

# a strong, fixed stain change: more haematoxylin, less eosin, darker scan
SHIFT = {"scale": (1.3, 0.7, 1.0), "shift": (0.05, -0.05, 0.0), "gamma": 1.3}


def shifted(adata, lib: str):
    """A copy of section ``lib`` whose H&E image went through :data:`SHIFT`."""
    from stpredict.data._stain import hed_shift

    out = adata[adata.obs["library_id"] == lib].copy()
    images = out.uns["spatial"][lib]["images"]
    for key, img in images.items():
        images[key] = hed_shift(np.asarray(img)[..., :3], SHIFT["scale"], SHIFT["shift"], SHIFT["gamma"])
    return out


def heg_r(test, model) -> tuple[float, float, float]:
    """Mean HEG r, share of HEG genes with positive spread–error Spearman, median OOD score."""
    import stpredict as stp

    stp.tl.predict(test, model, k=50, progress=False)
    res = stp.tl.evaluate(test, genes="heg")
    rho = res["spread_error_spearman"].to_numpy()
    return (
        float(res["pearson_r"].mean()),
        float(np.mean(rho > 0)),
        float(np.median(test.obs["stpredict_ood"])),
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    import stpredict as stp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("STPREDICT_SHARED_DATA", REPO.parent / "shared" / "data")) / "her2st"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "her2st_trust.json")
    args = parser.parse_args(argv)
    adata = load_her2st(args.data_dir, args.sections)
    genes = stp.pp.select_genes(adata, n_top_genes=1000)
    rows = []
    for lib in args.sections:
        start = time.perf_counter()
        train = adata[adata.obs["library_id"] != lib].copy()
        model = stp.tl.fit(train, preset="cpu", genes=genes, seed=args.seed, progress=False)
        test = adata[adata.obs["library_id"] == lib].copy()
        r, calibrated, ood = heg_r(test, model)
        r_shift, _, ood_shift = heg_r(shifted(adata, lib), model)
        rows.append(
            {
                "held_out": lib,
                "heg_r": r,
                "heg_r_stain_shift": r_shift,
                "kept_under_shift": r_shift / r if r else float("nan"),
                "heg_genes_spread_error_spearman_positive": calibrated,
                "median_ood": ood,
                "median_ood_stain_shift": ood_shift,
                "seconds": time.perf_counter() - start,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "held_out"}
    print("mean over folds:", json.dumps(mean, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"seed": args.seed, "shift": SHIFT, "folds": rows, "mean": mean}, indent=1)
    )


if __name__ == "__main__":
    main()
