"""Expression preprocessing: count checks, normalisation, gene selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from stpredict._logging import logger
from stpredict._validation import check_key

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

# Non-integer data whose maximum is below this look log-transformed (log1p of 1e13 counts).
_LOG_MAX = 30.0


def _values(X: Any) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densification of sparse input)."""
    if sparse.issparse(X):
        return np.asarray(X.data if X.format in ("csr", "csc", "coo") else X.tocsr().data)
    if isinstance(X, pd.DataFrame):
        return X.to_numpy()
    return np.asarray(X)


def check_counts(X: Any, *, name: str = "adata.X") -> None:
    """Check that a matrix holds raw counts.

    Raises on negative, NaN or infinite values and on data that look already log-transformed
    (non-integer values whose maximum is below 30, e.g. the output of ``normalize_total`` +
    ``log1p``). Non-integer values with a larger maximum (e.g. ambient-corrected counts) pass.

    Parameters
    ----------
    X
        Dense or sparse ``(n_spots, n_genes)`` matrix.
    name
        How to call the matrix in error messages.

    Raises
    ------
    ValueError
        If the matrix is not a non-negative finite count matrix.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic()
    >>> stp.pp.check_counts(adata.X)
    """
    vals = _values(X)
    if vals.dtype == object or not (np.issubdtype(vals.dtype, np.number) or vals.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {vals.dtype}.")
    if vals.size == 0:
        return
    vals = vals.astype(np.float64, copy=False)
    finite = np.isfinite(vals)
    if not finite.all():
        raise ValueError(
            f"{name} has {int((~finite).sum())} NaN or infinite value(s); expected raw (non-negative) counts."
        )
    if (vals < 0).any():
        raise ValueError(
            f"{name} has {int((vals < 0).sum())} negative value(s) (min {vals.min():g}); expected raw counts."
        )
    non_integer = not np.array_equal(vals, np.round(vals))
    if non_integer and vals.max() < _LOG_MAX:
        raise ValueError(
            f"{name} looks log-transformed (non-integer values, maximum {vals.max():.3g}); stpredict "
            "normalises itself and needs raw counts: pass the layer that holds them via `layer=`."
        )


def _counts_of(adata: AnnData, layer: str | None, *, fn: str):
    if layer is None:
        return adata.X, "adata.X"
    if layer not in adata.layers:
        raise KeyError(f"{fn}: adata.layers has no key {layer!r}; available: {list(adata.layers)}.")
    return adata.layers[layer], f"adata.layers[{layer!r}]"


def _row_totals(X: Any) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def _median_total(totals: np.ndarray) -> float:
    nonzero = totals[totals > 0]
    return float(np.median(nonzero)) if len(nonzero) else 1.0


def normalize_matrix(counts: Any, *, target_sum: float | None = None) -> np.ndarray:
    """Normalise each row to ``target_sum`` counts, then ``log1p``.

    The single normalisation used for the reference bank (:func:`stpredict.tl.fit`) and for the
    truth in evaluation, so the two agree exactly. ``fit`` records the ``target_sum`` it used and
    ``predict``/``evaluate`` pass that same number back.

    Parameters
    ----------
    counts
        ``(n_spots, n_genes)`` raw counts, dense or sparse.
    target_sum
        Total count of each row after normalisation. ``None``: the median row total of **this**
        matrix over rows with any counts (scanpy's ``normalize_total`` default) — pass a fixed
        value to make two matrices comparable.

    Returns
    -------
    Dense ``float32`` ``(n_spots, n_genes)`` array; rows with zero total stay zero.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic()
    >>> stp.pp.normalize_matrix(adata.X, target_sum=1e4).dtype
    dtype('float32')
    """
    if isinstance(counts, pd.DataFrame):
        counts = counts.to_numpy()
    vals = _values(counts)
    if vals.size and not np.isfinite(vals.astype(np.float64, copy=False)).all():
        raise ValueError("normalize_matrix: `counts` has NaN or infinite values; expected raw counts.")
    if vals.size and (vals < 0).any():
        raise ValueError("normalize_matrix: `counts` has negative values; expected raw counts.")
    if not sparse.issparse(counts):
        counts = np.asarray(counts)
        if counts.ndim != 2:
            raise ValueError(
                f"normalize_matrix: `counts` must be 2-D (spots x genes), got shape {counts.shape}."
            )
    totals = _row_totals(counts)
    if target_sum is None:
        target_sum = _median_total(totals)
    else:
        target_sum = float(target_sum)
        if not np.isfinite(target_sum) or target_sum <= 0:
            raise ValueError(f"normalize_matrix: `target_sum` must be a positive number, got {target_sum!r}.")
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    if sparse.issparse(counts):
        out = (sparse.diags(scale) @ sparse.csr_matrix(counts, dtype=np.float64)).toarray()
    else:
        out = counts.astype(np.float64) * scale[:, None]
    return np.log1p(out).astype(np.float32)


def normalize(
    adata: AnnData,
    *,
    target_sum: float | None = None,
    layer: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Normalise total counts per spot and log-transform (scanpy ``normalize_total`` + ``log1p``).

    Parameters
    ----------
    adata
        Annotated data with raw counts in ``X`` or ``layers[layer]``.
    target_sum
        Counts per spot after normalisation; ``None``: the median total over spots with counts.
        The value used is recorded.
    layer
        Layer holding the raw counts; ``None``: ``X``.
    key_added
        Write the result to ``layers[key_added]``; ``None``: replace ``X``.
    copy
        Return a modified copy instead of changing ``adata`` in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes ``X`` or ``layers[key_added]`` and
    ``uns["stpredict_normalization"]`` (``target_sum``, ``layer``, ``key_added``, ``log1p``).

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic()
    >>> stp.pp.normalize(adata, key_added="lognorm")
    >>> "lognorm" in adata.layers
    True
    """
    import anndata as ad
    import scanpy as sc

    X, name = _counts_of(adata, layer, fn="normalize")
    check_counts(X, name=name)
    if key_added is not None:
        check_key(key_added, what="normalize: `key_added`")
    totals = _row_totals(X)
    if target_sum is None:
        target_sum = _median_total(totals)
    target_sum = float(target_sum)
    if not np.isfinite(target_sum) or target_sum <= 0:
        raise ValueError(f"normalize: `target_sum` must be a positive number, got {target_sum!r}.")

    tmp = ad.AnnData(X=X.astype(np.float32, copy=True))
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)

    out = adata.copy() if copy else adata
    if key_added is None:
        out.X = tmp.X
    else:
        out.layers[key_added] = tmp.X
    out.uns["stpredict_normalization"] = {
        "target_sum": target_sum,
        "layer": layer,
        "key_added": key_added,
        "log1p": True,
    }
    where = "X" if key_added is None else f"layers[{key_added!r}]"
    logger.info(f"normalize: {name} normalised to {target_sum:.0f} counts + log1p, written to {where}")
    return out if copy else None


def select_genes(
    adata: AnnData,
    *,
    n_top_genes: int = 1000,
    library_key: str = "library_id",
    genes: Sequence[str] | None = None,
    flavor: Literal["seurat", "cell_ranger", "seurat_v3"] = "seurat",
    layer: str | None = None,
) -> list[str]:
    """Choose the genes a model predicts.

    Without ``genes``: per slide (``obs[library_key]``; one slide when the column is absent),
    the top ``n_top_genes`` highly variable genes (scanpy ``highly_variable_genes`` with ``flavor``
    on that slide's counts normalised with :func:`normalize_matrix`; raw counts for
    ``"seurat_v3"``), computed among the genes detected (count > 0) in **every** slide; the
    result is the union over slides, in ``var_names`` order. With ``genes``: the list is checked
    against ``var_names`` and returned unchanged.

    Parameters
    ----------
    adata
        Annotated data with raw counts in ``X`` or ``layers[layer]``.
    n_top_genes
        Highly variable genes per slide.
    library_key
        Column of ``adata.obs`` telling slides apart.
    genes
        A user gene list to validate instead of selecting.
    flavor
        Flavor of :func:`scanpy.pp.highly_variable_genes`.
    layer
        Layer holding raw counts; ``None``: ``X``.

    Returns
    -------
    Gene names.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic()
    >>> genes = stp.pp.select_genes(adata, n_top_genes=20)
    >>> set(genes) <= set(adata.var_names)
    True
    """
    var = pd.Index(adata.var_names.astype(str))
    if genes is not None:
        if isinstance(genes, str):
            raise TypeError("select_genes: `genes` must be a list of gene names, not a single string.")
        genes = [str(g) for g in genes]
        if len(genes) == 0:
            raise ValueError("select_genes: `genes` is empty; expected at least one gene name.")
        dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
        if dup:
            raise ValueError(f"select_genes: `genes` lists {dup[:10]} more than once.")
        missing = [g for g in genes if g not in set(var)]
        if missing:
            raise KeyError(
                f"select_genes: {len(missing)} of the {len(genes)} genes are not in adata.var_names, "
                f"e.g. {missing[:10]}."
            )
        return genes

    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, int | np.integer) or n_top_genes < 1:
        raise ValueError(f"select_genes: `n_top_genes` must be a positive integer, got {n_top_genes!r}.")
    if var.has_duplicates:
        raise ValueError(
            "select_genes: adata.var_names are not unique; call `adata.var_names_make_unique()`."
        )
    X, name = _counts_of(adata, layer, fn="select_genes")
    check_counts(X, name=name)
    X = sparse.csr_matrix(X) if not sparse.issparse(X) else X.tocsr()
    if library_key in adata.obs:
        libs = adata.obs[library_key].astype(str).to_numpy()
    else:
        libs = np.full(adata.n_obs, "all", dtype=object)
    slides = list(pd.unique(libs))
    if adata.n_obs == 0 or len(var) == 0:
        raise ValueError(f"select_genes: adata has shape {adata.shape}; expected spots and genes.")

    detected = np.ones(len(var), dtype=bool)
    for lib in slides:
        detected &= np.asarray((X[libs == lib] > 0).sum(axis=0)).ravel() > 0
    if not detected.any():
        raise ValueError(
            f"select_genes: no gene is detected (count > 0) in every one of the {len(slides)} slides "
            f"{slides[:5]}; check that the slides share gene names, or pass `genes=`."
        )
    common = np.flatnonzero(detected)
    if n_top_genes >= len(common):
        logger.info(f"select_genes: all {len(common)} genes detected in every slide (<= n_top_genes)")
        return var[common].tolist()

    import anndata as ad
    import scanpy as sc

    chosen = np.zeros(len(var), dtype=bool)
    for lib in slides:
        sub = X[libs == lib][:, common]
        if sub.shape[0] < 3:
            raise ValueError(
                f"select_genes: slide {lib!r} has only {sub.shape[0]} spot(s); need at least 3 to rank "
                "variable genes (or pass `genes=`)."
            )
        data = sub.astype(np.float32) if flavor == "seurat_v3" else normalize_matrix(sub)
        tmp = ad.AnnData(X=data, var=pd.DataFrame(index=var[common]))
        sc.pp.highly_variable_genes(tmp, n_top_genes=int(n_top_genes), flavor=flavor, subset=False)
        chosen[common[tmp.var["highly_variable"].to_numpy()]] = True
    out = var[chosen].tolist()
    logger.info(
        f"select_genes: {len(out)} genes (union of top {n_top_genes} per slide over {len(slides)} slide(s), "
        f"among {len(common)} detected in every slide)"
    )
    return out
