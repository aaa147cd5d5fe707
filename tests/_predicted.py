"""Hand-made AnnData that looks like the output of ``stp.tl.predict`` (docs/design.md, "Writing results").

Used by the metrics/evaluate/plotting tests so that they do not need a fitted model.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

SPACING_PX = 20.0  # spot centre distance in full-resolution pixels
DIAMETER_PX = 10.0  # spot_diameter_fullres
HIRES_SCALEF = 0.5
LOWRES_SCALEF = 0.25


def make_predicted(
    *,
    n_libraries: int = 2,
    n_side: int = 4,
    n_genes: int = 6,
    with_truth: bool = True,
    copy: bool = False,
    key: str = "stpredict",
    seed: int = 0,
) -> ad.AnnData:
    """Visium-convention AnnData with predictions under ``key``.

    ``n_libraries`` slides ``"lib0"``, ``"lib1"``, ... of ``n_side**2`` spots on a square grid;
    genes ``"G0"``, ``"G1"``, ...; the prediction is a noisy, shrunken copy of the truth, so r is
    high but not 1. With ``copy=True`` the layout of ``stp.tl.predict(..., copy=True)``.
    """
    rng = np.random.default_rng(seed)
    n_per = n_side * n_side
    n = n_libraries * n_per
    libs = [f"lib{i}" for i in range(n_libraries)]
    genes = [f"G{g}" for g in range(n_genes)]
    obs_names = [f"{lib}_s{i}" for lib in libs for i in range(n_per)]

    rows, cols = np.divmod(np.tile(np.arange(n_per), n_libraries), n_side)
    xy = np.column_stack([(cols + 1) * SPACING_PX, (rows + 1) * SPACING_PX]).astype(np.float64)
    full = int((n_side + 1) * SPACING_PX)

    rate = rng.gamma(2.0, 3.0, size=(n, n_genes)) * np.linspace(0.5, 3.0, n_genes)
    counts = rng.poisson(rate).astype(np.float32)
    lib_size = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    truth = np.log1p(counts / lib_size * np.median(lib_size)).astype(np.float64)
    pred = 0.6 * truth + 0.4 * truth.mean(axis=0) + rng.normal(0, 0.3, truth.shape)

    obs = pd.DataFrame(
        {
            "library_id": pd.Categorical(np.repeat(libs, n_per), categories=libs),
            "array_row": rows,
            "array_col": cols,
        },
        index=obs_names,
    )
    spatial = {}
    for i, lib in enumerate(libs):
        hi = int(full * HIRES_SCALEF)
        lo = int(full * LOWRES_SCALEF)
        spatial[lib] = {
            "images": {
                "hires": np.full((hi, hi, 3), 200 - 20 * i, dtype=np.uint8),
                "lowres": np.full((lo, lo, 3), 200 - 20 * i, dtype=np.uint8),
            },
            "scalefactors": {
                "tissue_hires_scalef": HIRES_SCALEF,
                "tissue_lowres_scalef": LOWRES_SCALEF,
                "spot_diameter_fullres": DIAMETER_PX,
            },
            "metadata": {},
        }
    params = {"method": "cmrcnet", "k": 50, "copy": copy, "genes": genes}
    pred_df = pd.DataFrame(pred, index=obs_names, columns=genes)
    truth_df = pd.DataFrame(truth, index=obs_names, columns=genes)

    if copy:
        out = ad.AnnData(X=pred.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
        if with_truth:
            out.layers["truth"] = truth.astype(np.float32)
    else:
        out = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
        out.obsm[key] = pred_df
        if with_truth:
            out.obsm[f"{key}_truth"] = truth_df
    out.obsm["spatial"] = xy
    out.uns["spatial"] = spatial
    out.uns[key] = {"written_by": "stpredict", "params": params}
    return out
