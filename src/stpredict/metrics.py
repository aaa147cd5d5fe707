"""Evaluation metrics for predicted expression: per-gene and per-spot Pearson r, errors, gene sets.

All functions take ``truth`` and ``pred`` as ``(n_spots, n_genes)`` arrays (numpy, scipy sparse or
:class:`pandas.DataFrame`); DataFrames are matched by gene name.

Gene sets
---------
The papers report the mean per-gene Pearson r over a gene set chosen *per test slide* from the
true expression (see :data:`GENE_SETS`):

- ``"heg"``: highly expressed genes, the top ``n`` by total true expression (:func:`heg_genes`).
  CMRCNet ranks by the sum over spots, mclSTExp by the mean; within one slide the ranking is the same.
- ``"hvg"``: highly variable genes, the top ``n`` by variance of the true expression
  (:func:`hvg_genes`), as in CMRCNet's code.
- ``"all"``: every gene. mclSTExp's "HVG" column is this (the mean r over all genes), not a
  variance-ranked set, so compare its "HVG" numbers with ``"all"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stpredict._validation import check_frame

__all__ = [
    "GENE_SETS",
    "pearson_per_gene",
    "pearson_per_spot",
    "mse_per_gene",
    "mae_per_gene",
    "heg_genes",
    "hvg_genes",
]

GENE_SETS: dict[str, str] = {
    "heg": (
        "Highly expressed genes: the top n genes by total true (normalised) expression over the spots "
        "of one slide, ties broken by gene name (CMRCNet: sum, mclSTExp: mean; same ranking)."
    ),
    "hvg": (
        "Highly variable genes: the top n genes by variance (ddof=0) of the true (normalised) "
        "expression over the spots of one slide, ties broken by gene name (CMRCNet's definition)."
    ),
    "all": (
        "Every evaluated gene. mclSTExp's reported 'HVG' value is the mean r over all genes, i.e. "
        "this set, not a variance-ranked one."
    ),
    "markers": "A user-given list of genes (e.g. marker genes), evaluated as given.",
}


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "toarray"):
        x = x.toarray()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-d (spots x genes) array, got {arr.ndim} dimensions.")
    return arr


def _pair(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 arrays of equal shape; DataFrames are aligned by gene (column) name."""
    if isinstance(truth, pd.DataFrame) and isinstance(pred, pd.DataFrame):
        if set(truth.columns) != set(pred.columns):
            only_t = list(truth.columns.difference(pred.columns)[:5])
            only_p = list(pred.columns.difference(truth.columns)[:5])
            raise ValueError(
                f"`truth` and `pred` have different genes (only in truth: {only_t}, only in pred: {only_p})."
            )
        pred = pred.loc[:, truth.columns]
    t, p = _as_array(truth, "truth"), _as_array(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"`truth` and `pred` must have the same shape, got {t.shape} and {p.shape}.")
    return t, p


def _pearson_columns(t: np.ndarray, p: np.ndarray, nan_to: float | None) -> np.ndarray:
    if t.shape[0] < 2:  # undefined for fewer than two observations
        return np.full(t.shape[1], np.nan if nan_to is None else nan_to)
    tc = t - t.mean(axis=0)
    pc = p - p.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (tc * pc).sum(axis=0) / np.sqrt((tc * tc).sum(axis=0) * (pc * pc).sum(axis=0))
    # exactly constant columns: undefined (rounding in the mean could otherwise give spurious values)
    r[(np.ptp(t, axis=0) == 0) | (np.ptp(p, axis=0) == 0)] = np.nan
    r = np.clip(r, -1.0, 1.0)
    if nan_to is not None:
        r = np.where(np.isnan(r), nan_to, r)
    return r


def pearson_per_gene(truth: Any, pred: Any, *, nan_to: float | None = 0.0) -> np.ndarray:
    """Pearson correlation of each gene across spots.

    Parameters
    ----------
    truth
        True expression, ``(n_spots, n_genes)``.
    pred
        Predicted expression, same shape (DataFrames are matched by gene name).
    nan_to
        Value for genes whose r is undefined (constant truth or prediction). The authors' code
        sets them to ``0``; ``None`` keeps NaN.

    Returns
    -------
    ``(n_genes,)`` float64 array of r, in the gene order of ``truth``.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.metrics import pearson_per_gene
    >>> truth = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    >>> pearson_per_gene(truth, truth[::-1]).tolist()
    [-1.0, 0.0]
    """
    t, p = _pair(truth, pred)
    return _pearson_columns(t, p, nan_to)


def spearman_per_gene(a: Any, b: Any) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (NaN if constant).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.metrics import spearman_per_gene
    >>> spearman_per_gene(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [5.0], [9.0]]))
    array([1.])
    """
    from scipy.stats import rankdata

    x, y = _pair(a, b)
    return _pearson_columns(rankdata(x, axis=0), rankdata(y, axis=0), nan_to=None)


def pearson_per_spot(truth: Any, pred: Any, *, nan_to: float | None = 0.0) -> np.ndarray:
    """Pearson correlation of each spot across genes.

    Parameters
    ----------
    truth, pred
        As in :func:`pearson_per_gene`.
    nan_to
        Value for spots whose r is undefined (constant across genes); ``None`` keeps NaN.

    Returns
    -------
    ``(n_spots,)`` float64 array of r.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.metrics import pearson_per_spot
    >>> truth = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    >>> pearson_per_spot(truth, truth * 2).tolist()
    [1.0, 1.0]
    """
    t, p = _pair(truth, pred)
    return _pearson_columns(t.T, p.T, nan_to)


def mse_per_gene(truth: Any, pred: Any) -> np.ndarray:
    """Mean squared error of each gene over spots.

    Parameters
    ----------
    truth, pred
        True and predicted expression, ``(n_spots, n_genes)`` each.

    Returns
    -------
    ``(n_genes,)`` float64 array.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.metrics import mse_per_gene
    >>> mse_per_gene(np.array([[0.0], [2.0]]), np.array([[1.0], [0.0]])).tolist()
    [2.5]
    """
    t, p = _pair(truth, pred)
    return ((t - p) ** 2).mean(axis=0)


def mae_per_gene(truth: Any, pred: Any) -> np.ndarray:
    """Mean absolute error of each gene over spots, ``(n_genes,)`` float64 (as :func:`mse_per_gene`)."""
    t, p = _pair(truth, pred)
    return np.abs(t - p).mean(axis=0)


def _top_genes(truth_df: pd.DataFrame, score: np.ndarray, n: int, what: str) -> list[str]:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what}: `n` must be a positive integer, got {n!r}.")
    order = pd.DataFrame({"gene": truth_df.columns.astype(str), "score": np.nan_to_num(score, nan=-np.inf)})
    order = order.sort_values(["score", "gene"], ascending=[False, True], kind="mergesort")
    return order["gene"].iloc[: int(n)].tolist()


def heg_genes(truth_df: pd.DataFrame, n: int = 50) -> list[str]:
    """Highly expressed genes: the top ``n`` by total expression over the spots given.

    Pass the spots of one slide to get that slide's set, as the papers do.

    Parameters
    ----------
    truth_df
        True (normalised) expression, spots x genes, gene names as columns.
    n
        Number of genes; all genes when there are fewer.

    Returns
    -------
    Gene names, highest total first; ties broken by name.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.metrics import heg_genes
    >>> adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=4, n_genes=20)
    >>> df = adata.to_df()
    >>> heg_genes(df, n=3) == df.sum().sort_values(ascending=False).index[:3].tolist()
    True
    """
    truth_df = check_frame(truth_df, what="heg_genes")
    return _top_genes(truth_df, truth_df.to_numpy(dtype=np.float64).sum(axis=0), n, "heg_genes")


def hvg_genes(truth_df: pd.DataFrame, n: int = 50) -> list[str]:
    """Highly variable genes: the top ``n`` by variance (``ddof=0``) over the spots given.

    Parameters and ties as in :func:`heg_genes`; the genes come highest variance first.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.metrics import hvg_genes
    >>> adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=4, n_genes=20)
    >>> len(hvg_genes(adata.to_df(), n=5))
    5
    """
    truth_df = check_frame(truth_df, what="hvg_genes")
    return _top_genes(truth_df, truth_df.to_numpy(dtype=np.float64).var(axis=0), n, "hvg_genes")
