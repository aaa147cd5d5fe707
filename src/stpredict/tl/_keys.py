"""Reading and writing the result keys of :func:`stpredict.tl.predict` (see docs/design.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._logging import logger

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

WRITTEN_BY = "stpredict"
_WHERE = ("obsm", "layers", "uns")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"`key` must be a non-empty string, got {key!r}.")
    return key


def _table(data: Any, key: str) -> AnnData:
    """The AnnData holding the results: ``data`` itself, or ``data.tables[key]`` for a SpatialData."""
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


def get_prediction(data: Any, key: str = "stpredict") -> tuple[pd.DataFrame, pd.DataFrame | None]:
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
    >>> from stpredict.tl._keys import get_prediction
    >>> pred, truth = get_prediction(adata, "stpredict")  # doctest: +SKIP
    """
    key = _check_key(key)
    adata = _table(data, key)
    truth_key = f"{key}_truth"
    truth = None
    if _is_copy(adata, key):
        pred = _to_frame(adata.X, adata, what="X", columns=adata.var_names)
        if "truth" in adata.layers:
            truth = _to_frame(adata.layers["truth"], adata, what="layers['truth']", columns=adata.var_names)
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


def check_key_writable(
    adata: AnnData,
    key: str,
    *,
    overwrite: bool = False,
    where: Iterable[str] = _WHERE,
) -> bool:
    """Apply the overwrite policy for results written under ``key``.

    Nothing under ``key`` yet: fine. Something there and ``uns[key]["written_by"] == "stpredict"``:
    it will be replaced (logged as a warning). Something else there: a :class:`ValueError`, unless
    ``overwrite=True`` (then replaced with a warning). Nothing is modified here.

    Parameters
    ----------
    adata
        The AnnData results will be written to.
    key
        Result key (``obsm[key]``, ``obsm[key + "_truth"]``, ``layers[key]``, ``uns[key]``).
    overwrite
        Replace entries under ``key`` that stpredict did not write.
    where
        Which attributes of ``adata`` to check (any of ``"obsm"``, ``"layers"``, ``"uns"``,
        ``"obs"``, ``"var"``, ``"varm"``, ``"obsp"``).

    Returns
    -------
    Whether something will be replaced.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.tl._keys import check_key_writable
    >>> adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=4, n_genes=8)
    >>> check_key_writable(adata, "stpredict", overwrite=False)
    False
    """
    key = _check_key(key)
    if isinstance(where, str):
        where = (where,)
    where = tuple(where)
    allowed = ("obsm", "layers", "uns", "obs", "var", "varm", "obsp")
    bad = [w for w in where if w not in allowed]
    if bad:
        raise ValueError(f"`where` must name attributes among {allowed}, got {bad}.")

    found = []
    for attr in where:
        container = getattr(adata, attr)
        names = (key, f"{key}_truth") if attr in ("obsm", "layers") else (key,)
        keys = container.columns if attr in ("obs", "var") else container.keys()
        found += [f"{attr}[{name!r}]" for name in names if name in keys]
    if not found:
        return False
    if is_stpredict_entry(adata, key):
        logger.warning(f"Replacing earlier stpredict results under {key!r}: {', '.join(found)}.")
        return True
    if not overwrite:
        raise ValueError(
            f"Key {key!r} is already used by something stpredict did not write ({', '.join(found)}; "
            f"uns[{key!r}]['written_by'] is not 'stpredict'). Pass another `key`, or `overwrite=True` "
            "to replace it."
        )
    logger.warning(f"Overwriting {', '.join(found)} (overwrite=True).")
    return True
