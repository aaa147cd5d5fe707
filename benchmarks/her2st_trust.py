"""Trust on her2st C2–C5: is the predicted spread calibrated, does a stain shift hurt, is it flagged?

Leave one section out with ``stp.tl.fit`` (``preset="cpu"``). For each held-out section:

- Spearman(predicted spread, absolute error) per gene over the section's spots, for its top-50
  HEG (``stp.tl.evaluate``'s ``spread_error_spearman``): the share of genes where it is positive;
- the same section after a stain/scanner shift (HED-space rescaling and shift, then a gamma;
  ``stpredict.data._stain.hed_shift``): HEG r relative to the original, and the median
  out-of-distribution score of both;
- the same section after another scanner's colour profile (a gamma per RGB channel and a lower
  gain, :data:`SCANNER`: not a map that HED stain matching inverts): HEG r relative to the original;
- HEG r as scanned with the predictions smoothed over neighbouring spots (``smooth=`` :data:`SMOOTH`).

``--fit-kwargs`` passes keywords to every ``stp.tl.fit`` (JSON), e.g. stain matching or the
hand-made feature input; ``--seeds`` repeats the run, one JSON line per (seed, section).

Examples
--------
::

    python benchmarks/her2st_trust.py --seeds 0
    python benchmarks/her2st_trust.py --seeds 0 1 2 --fit-kwargs '{"stain_normalize": true}' \
        --out benchmarks/results/her2st_trust_stain.jsonl
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
# another scanner's colour profile: a gamma per RGB channel and a lower gain (not a HED map)
SCANNER = {"gamma_rgb": (0.8, 1.0, 1.25), "gain": 0.92}
# the smoothing of `predict(smooth=)` measured on the section as scanned (docs/her2st.md)
SMOOTH = 0.5


def section(adata, lib: str):
    """A copy of section ``lib`` (each ``predict`` writes into its own copy)."""
    return adata[adata.obs["library_id"] == lib].copy()


def shifted(adata, lib: str, kind: str = "stain"):
    """A copy of section ``lib`` whose H&E image went through :data:`SHIFT` (or :data:`SCANNER`)."""
    from stpredict.data._stain import hed_shift

    out = section(adata, lib)
    images = out.uns["spatial"][lib]["images"]
    for key, img in images.items():
        rgb = np.asarray(img)[..., :3]
        if kind == "stain":
            images[key] = hed_shift(rgb, SHIFT["scale"], SHIFT["shift"], SHIFT["gamma"])
        else:
            unit = (rgb.astype(np.float32) / 255.0) ** np.asarray(SCANNER["gamma_rgb"], np.float32)
            images[key] = np.round(np.clip(unit * SCANNER["gain"], 0, 1) * 255).astype(np.uint8)
    return out


def heg_r(test, model, smooth: float = 0.0) -> tuple[float, float, float]:
    """Mean HEG r, share of HEG genes with positive spread–error Spearman, median OOD score."""
    import stpredict as stp

    stp.tl.predict(test, model, k=50, smooth=smooth, progress=False)
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fit-kwargs", type=json.loads, default={}, help="JSON keywords of stp.tl.fit")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "her2st_trust.jsonl")
    args = parser.parse_args(argv)
    adata = load_her2st(args.data_dir, args.sections)
    genes = stp.pp.select_genes(adata, n_top_genes=1000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for lib in args.sections:
            rows.append(_fold(adata, lib, genes, seed, args.fit_kwargs))
            print(json.dumps(rows[-1]), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], float)}
    print("mean over folds and seeds:", json.dumps(mean, indent=1))


def _fold(adata, lib: str, genes, seed: int, fit_kwargs: dict) -> dict:
    """Fit without section ``lib``; its HEG r as scanned and after the stain shift; calibration; OOD."""
    import stpredict as stp

    start = time.perf_counter()
    train = adata[adata.obs["library_id"] != lib].copy()
    model = stp.tl.fit(train, preset="cpu", genes=genes, seed=seed, progress=False, **fit_kwargs)
    test = section(adata, lib)
    r, calibrated, ood = heg_r(test, model)
    r_shift, _, ood_shift = heg_r(shifted(adata, lib), model)
    r_scanner, _, _ = heg_r(shifted(adata, lib, "scanner"), model)
    r_smoothed, _, _ = heg_r(section(adata, lib), model, smooth=SMOOTH)
    return {
        "held_out": lib,
        "heg_r": r,
        "heg_r_smoothed": r_smoothed,
        "heg_r_stain_shift": r_shift,
        "kept_under_shift": r_shift / r if r else float("nan"),
        "heg_r_scanner_shift": r_scanner,
        "kept_under_scanner_shift": r_scanner / r if r else float("nan"),
        "heg_genes_spread_error_spearman_positive": calibrated,
        "median_ood": ood,
        "median_ood_stain_shift": ood_shift,
        "seconds": time.perf_counter() - start,
        "seed": seed,
        "fit_kwargs": fit_kwargs,
        "shift": SHIFT,
        "scanner": SCANNER,
        "smooth": SMOOTH,
    }


if __name__ == "__main__":
    main()
