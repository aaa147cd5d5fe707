"""Exploratory: retrieve by image embeddings of the bank spots instead of their expression embeddings.

CMRCNet retrieves the bank spots whose *expression* embeddings are closest to the query's image
embedding. This script measures two alternatives on her2st C2–C5 (leave one section out, the
feature recipe ``features:handmade_30ep+smooth0.5`` of ``her2st_ablation.py``):

- ``image``: the bank's keys are the *image* embeddings of its spots (a k-NN in the learned
  image space);
- ``both``: the sum of the two unit-normalised embeddings.

The keys are swapped after ``fit`` (``model.set_bank(..., embeddings=...)``), so everything else
(genes, folds, smoothing, evaluation) is that of ``stp.tl.cross_validate``. One JSON line per
(keys, seed) is appended to ``results/her2st_image_keys.jsonl``.

Example
-------
::

    python benchmarks/her2st_image_keys.py --keys expression image both --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from her2st_ablation import FEATURES_KEY, VARIANTS, add_handmade_features  # noqa: E402
from her2st_cv import load_her2st  # noqa: E402

RECIPE = "features:handmade_30ep+smooth0.5"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def swap_keys(model, train, keys: str):
    """Replace the bank's expression-embedding keys by image embeddings (or their sum)."""
    if keys == "expression":
        return model
    bank = model.bank
    names = np.asarray(bank["obs_names"]).astype(str)
    features = np.asarray(train.obsm[FEATURES_KEY])[train.obs_names.get_indexer(names)]
    new = unit_rows(model.embed_features(features, progress=False))
    if keys == "both":
        new = new + unit_rows(np.asarray(bank["embeddings"]))
    model.set_bank(np.asarray(bank["expression"]), new, library_id=bank["library_id"], obs_names=names)
    return model


def main(argv: list[str] | None = None) -> None:
    """Cross-validate the recipe once per (keys, seed) with the bank's keys swapped."""
    import stpredict as stp
    import stpredict.tl._fit as fit_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "her2st")
    parser.add_argument("--keys", nargs="+", default=["expression", "image", "both"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    default_out = REPO / "benchmarks" / "results" / "her2st_image_keys.jsonl"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)

    adata = load_her2st(args.data_dir, ["C2", "C3", "C4", "C5"])
    add_handmade_features(adata)
    method, overrides = VARIANTS[RECIPE][0], dict(VARIANTS[RECIPE][1])
    smooth = overrides.pop("smooth")
    real_fit = fit_module.fit
    for keys in args.keys:
        fit_module.fit = lambda train, keys=keys, **kw: swap_keys(real_fit(train, **kw), train, keys)
        for seed in args.seeds:
            start = time.perf_counter()
            res = stp.tl.cross_validate(
                adata, method={keys: (method, overrides)}, k=50, baselines=(), n_genes=50, seed=seed,
                preset="cpu", smooth=smooth, progress=False,
            )  # fmt: skip
            record = {"recipe": RECIPE, "keys": keys, "seed": seed, "wall_s": time.perf_counter() - start}
            record["summary"] = res.summary.loc[keys].to_dict()
            with args.out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    fit_module.fit = real_fit


if __name__ == "__main__":
    main()
