"""Exploratory: does smoothing predictions over the spot graph help? (her2st C2–C5, image-feature k-NN).

Leave one section out. Each held-out spot's k-NN prediction (``stp.baselines.ImageFeatureKNN``,
k = 50, the baseline's hand-made features) is mixed with the mean prediction of its neighbours
within ``radius`` spot pitches (pitch: the section's median nearest-spot distance):
``(1 - alpha) * own + alpha * neighbours``, by the function ``stp.tl.predict(..., smooth=)``
uses. No expression of the held-out section is used to predict; the grid of (radius, alpha) is
reported in full, so a chosen setting is a choice made on these four training sections. Genes:
the union of each section's top-1000 highly variable genes among those detected in every
section; HEG r: mean Pearson r of the held-out section's top-50 genes by mean expression.

Example::

    python benchmarks/her2st_smoothing.py   # ~40 s on 2 cores
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from her2st_ablation import add_handmade_features  # noqa: E402
from her2st_cv import load_her2st  # noqa: E402

RADII = (1.5, 2.1, 2.9)  # in spot pitches: 8, 12 and 24 neighbours on a square grid
ALPHAS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)


def _expression(adata, libraries: np.ndarray) -> np.ndarray:
    """log1p(counts per 10^4) of the union of each section's top-1000 HVGs detected everywhere."""
    import scanpy as sc

    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    chosen: set[str] = set()
    for lib in np.unique(libraries):
        section = adata[libraries == lib].copy()
        sc.pp.normalize_total(section, target_sum=1e4)
        sc.pp.log1p(section)
        sc.pp.highly_variable_genes(section, n_top_genes=1000)
        chosen |= set(section.var_names[section.var["highly_variable"]])
    everywhere = np.all([(counts[libraries == lib] > 0).any(0) for lib in np.unique(libraries)], axis=0)
    columns = adata.var_names.get_indexer(sorted(chosen & set(adata.var_names[everywhere])))
    totals = np.maximum(counts.sum(1, keepdims=True), 1)
    return np.log1p(counts[:, columns] / totals * 1e4).astype(np.float32)


def _heg_r(truth: np.ndarray, pred: np.ndarray, n: int = 50) -> float:
    top = np.argsort(-truth.mean(0))[:n]
    return float(np.nanmean([np.corrcoef(truth[:, j], pred[:, j])[0, 1] for j in top]))


def main() -> None:
    """Print and write the HEG r of every (radius, alpha) per held-out section."""
    import stpredict as stp
    from stpredict.tl._smooth import spatial_smooth

    data = Path(os.environ.get("STPREDICT_SHARED_DATA", REPO.parent / "shared" / "data")) / "her2st"
    adata = load_her2st(data, ["C2", "C3", "C4", "C5"])
    add_handmade_features(adata)
    libraries = adata.obs["library_id"].astype(str).to_numpy()
    expression, features, xy = _expression(adata, libraries), adata.obsm["X_handmade"], adata.obsm["spatial"]
    rows = []
    for lib in np.unique(libraries):
        train, test = libraries != lib, libraries == lib
        knn = stp.baselines.ImageFeatureKNN(k=50).fit(features[train], expression[train])
        pred = knn.predict(features[test])
        for radius in RADII:
            for alpha in ALPHAS:
                smoothed = spatial_smooth(pred, xy[test], libraries[test], alpha=alpha, radius=radius)
                r = _heg_r(expression[test], smoothed)
                rows.append({"held_out": lib, "radius": radius, "alpha": alpha, "heg_r": r})
    out = REPO / "benchmarks" / "results" / "her2st_smoothing.json"
    out.write_text(json.dumps(rows, indent=1))
    print("| radius (pitches) | alpha | " + " | ".join(np.unique(libraries)) + " | mean |")
    print("| --- | --- |" + " --- |" * (len(np.unique(libraries)) + 1))
    for radius in RADII:
        for alpha in ALPHAS:
            rs = [row["heg_r"] for row in rows if row["radius"] == radius and row["alpha"] == alpha]
            print(f"| {radius} | {alpha} | " + " | ".join(f"{r:.3f}" for r in rs) + f" | {np.mean(rs):.3f} |")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
