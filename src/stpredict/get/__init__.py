"""Reading what stpredict wrote: the one public reader of the results contract (``stp.get``).

Every plot and :func:`stpredict.tl.evaluate` read predictions through :func:`prediction`; the
layouts it understands are described in docs/design.md ("The results contract").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._constants import DEFAULT_KEY, TRUTH_LAYER, WRITTEN_BY
from stpredict._constants import ood_key as _ood_key
from stpredict._constants import std_key as _std_key
from stpredict._constants import truth_key as _truth_key
from stpredict._validation import check_key

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["is_stpredict_entry", "ood", "prediction", "results_table", "spread"]


def results_table(data: Any, key: str = DEFAULT_KEY) -> AnnData:
    """The AnnData holding the results: ``data`` itself, or ``data.tables[key]`` for a SpatialData.

    Parameters
    ----------
    data
        AnnData or SpatialData with predictions.
    key
        Key the predictions were written under.

    Returns
    -------
    The AnnData (not a copy).
    """
    tables = getattr(data, "tables", None)
    if tables is not None and not hasattr(data, "obsm"):
        if key not in tables:
            raise KeyError(
                f"SpatialData has no table {key!r} with predictions; available tables: {sorted(tables)}. "
                "Run `stp.tl.predict` first or pass the `key` it used."
            )
        return tables[key]
    if not hasattr(data, "obsm") or not hasattr(data, "uns"):
        raise TypeError(f"Expected an AnnData or a SpatialData, got {type(data).__name__}.")
    return data


def is_stpredict_entry(adata: AnnData, key: str) -> bool:
    """Whether ``adata.uns[key]`` exists and was written by stpredict."""
    entry = adata.uns.get(key)
    return isinstance(entry, Mapping) and entry.get("written_by") == WRITTEN_BY


def _is_copy(adata: AnnData, key: str) -> bool:
    if not is_stpredict_entry(adata, key):
        return False
    params = adata.uns[key].get("params", {})
    return isinstance(params, Mapping) and bool(params.get("copy", False))


def _to_frame(value: Any, adata: AnnData, *, what: str, columns: pd.Index | None = None) -> pd.DataFrame:
    """A dense float DataFrame (index obs_names) from a DataFrame, array or sparse matrix."""
    if isinstance(value, pd.DataFrame):
        df = value
    else:
        if hasattr(value, "toarray"):
            value = value.toarray()
        arr = np.asarray(value)
        if arr.ndim != 2 or arr.shape[0] != adata.n_obs:
            raise ValueError(f"{what} must be a 2-d array with one row per spot, got shape {arr.shape}.")
        if columns is None or len(columns) != arr.shape[1]:
            raise ValueError(
                f"{what} is a plain array of {arr.shape[1]} columns and its gene names are unknown; "
                "expected a DataFrame with genes as columns."
            )
        df = pd.DataFrame(arr, index=adata.obs_names, columns=columns)
    return df.astype(np.float64)


def prediction(data: Any, key: str = DEFAULT_KEY) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Read predicted (and true) expression written by :func:`stpredict.tl.predict`.

    The single reader of the result conventions (docs/design.md, "Writing results"), used by
    :func:`stpredict.tl.evaluate` and every ``stp.pl`` function:

    - ``obsm[key]`` (prediction) and ``obsm[key + "_truth"]`` (normalised truth, when known);
    - ``layers[key]`` (prediction over ``var_names``) when there is no ``obsm[key]``;
    - for an AnnData made with ``copy=True`` (``uns[key]["params"]["copy"]``): ``X`` and
      ``layers["truth"]``;
    - for a SpatialData: the table ``tables[key]``, read as above.

    Parameters
    ----------
    data
        AnnData (or SpatialData) with predictions.
    key
        Key the predictions were written under.

    Returns
    -------
    ``(prediction, truth)``: DataFrames with spots as rows (``obs_names``) and genes as columns;
    ``truth`` has the same genes in the same order, or is ``None`` when it is unknown.

    Raises
    ------
    KeyError
        When there is no prediction under ``key``; the message lists the available ``obsm`` keys.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=20)
    >>> model = stp.tl.fit(
    ...     adata[adata.obs["library_id"] == "slide0"].copy(), preset="tiny", epochs=1, progress=False
    ... )
    >>> test = adata[adata.obs["library_id"] == "slide1"].copy()
    >>> stp.tl.predict(test, model, k=5, progress=False)
    >>> pred, truth = stp.get.prediction(test)
    >>> pred.shape == truth.shape
    True
    """
    key = check_key(key, what="key")
    adata = results_table(data, key)
    truth_key = _truth_key(key)
    truth = None
    if _is_copy(adata, key):
        pred = _to_frame(adata.X, adata, what="X", columns=adata.var_names)
        if TRUTH_LAYER in adata.layers:
            truth = _to_frame(
                adata.layers[TRUTH_LAYER], adata, what=f"layers[{TRUTH_LAYER!r}]", columns=adata.var_names
            )
    elif key in adata.obsm:
        pred = _to_frame(adata.obsm[key], adata, what=f"obsm[{key!r}]")
        if truth_key in adata.obsm:
            truth = _to_frame(adata.obsm[truth_key], adata, what=f"obsm[{truth_key!r}]", columns=pred.columns)
    elif key in adata.layers:
        pred = _to_frame(adata.layers[key], adata, what=f"layers[{key!r}]", columns=adata.var_names)
        if truth_key in adata.layers:
            truth = _to_frame(
                adata.layers[truth_key], adata, what=f"layers[{truth_key!r}]", columns=adata.var_names
            )
    else:
        raise KeyError(
            f"No prediction under key {key!r}: expected obsm[{key!r}] (or an AnnData made with "
            f"`copy=True`). Available obsm keys: {list(adata.obsm.keys())}. "
            "Run `stp.tl.predict` first or pass the `key` it used."
        )

    if not pred.columns.is_unique:
        raise ValueError(f"Predictions under {key!r} have duplicated gene names.")
    if truth is not None:
        missing = pred.columns.difference(truth.columns)
        if len(missing):
            raise ValueError(
                f"Truth for {key!r} lacks {len(missing)} predicted genes (e.g. {list(missing[:5])})."
            )
        if not truth.index.equals(pred.index):
            truth = truth.reindex(pred.index)
        truth = truth.loc[:, pred.columns]
    return pred, truth


def spread(data: Any, key: str = DEFAULT_KEY, *, like: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The per-spot, per-gene spread of the retrieved spots written by ``predict(uncertainty=True)``.

    Parameters
    ----------
    data, key
        As in :func:`prediction`.
    like
        The prediction already read with :func:`prediction` (saves reading it again).

    Returns
    -------
    DataFrame (spots × genes, aligned with :func:`prediction`), or ``None`` when none was written.
    """
    adata = results_table(data, key)
    name = _std_key(key)
    pred = prediction(data, key)[0] if like is None else like
    if _is_copy(adata, key):
        if name not in adata.layers:
            return None
        return _to_frame(adata.layers[name], adata, what=f"layers[{name!r}]", columns=adata.var_names).loc[
            :, pred.columns
        ]
    if name not in adata.obsm:
        return None
    return _to_frame(adata.obsm[name], adata, what=f"obsm[{name!r}]").reindex(pred.index).loc[:, pred.columns]


def ood(data: Any, key: str = DEFAULT_KEY) -> pd.Series | None:
    """The per-spot out-of-distribution score written by ``predict(uncertainty=True)`` (or ``None``)."""
    adata = results_table(data, key)
    name = _ood_key(key)
    return adata.obs[name].astype(float) if name in adata.obs else None
