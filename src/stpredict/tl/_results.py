"""Writing results: the one writer of the results contract and its overwrite policy.

:func:`stpredict.tl.predict`, :func:`stpredict.tl.cross_validate` and the command line write
predictions only through these functions (key names from :mod:`stpredict._constants`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._constants import TRUTH_LAYER, WRITTEN_BY, ood_key, std_key, truth_key
from stpredict._logging import logger
from stpredict._validation import check_key
from stpredict.get import is_stpredict_entry

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

_WHERE = ("obsm", "layers", "uns", "obs")


@dataclass
class Result:
    """What one prediction writes: spots as rows (index ``obs_names``), genes as columns."""

    prediction: pd.DataFrame
    truth: pd.DataFrame | None = None
    std: pd.DataFrame | None = None  # spread of the retrieved spots (uncertainty)
    ood: pd.Series | None = None  # out-of-distribution score per spot


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
    >>> from stpredict.tl._results import check_key_writable
    >>> adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=4, n_genes=8)
    >>> check_key_writable(adata, "stpredict", overwrite=False)
    False
    """
    key = check_key(key, what="`key`")
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
        names = {
            "obsm": (key, truth_key(key), std_key(key)),
            "layers": (key, truth_key(key), std_key(key)),
            "obs": (ood_key(key),),
        }.get(attr, (key,))
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


def write_inplace(adata: AnnData, result: Result, key: str, entry: dict) -> None:
    """Write results into ``adata`` in place (keys already checked)."""
    for container in (adata.obsm, adata.layers):
        for name in (key, truth_key(key), std_key(key)):
            if name in container:
                del container[name]
    obs: Any = adata.obs  # anndata 0.13 also types it as a backed Dataset2D
    if ood_key(key) in obs:
        del obs[ood_key(key)]
    pred = result.prediction.reindex(adata.obs_names)
    adata.obsm[key] = pred
    for name, frame in ((truth_key(key), result.truth), (std_key(key), result.std)):
        if frame is not None:
            adata.obsm[name] = frame.reindex(adata.obs_names)
    if result.ood is not None:
        adata.obs[ood_key(key)] = result.ood.reindex(adata.obs_names).to_numpy(dtype=np.float32)
    var = pd.Index(adata.var_names.astype(str))
    if len(var) == len(pred.columns) and set(var) == set(pred.columns):
        adata.layers[key] = pred.loc[:, var].to_numpy(dtype=np.float32)
    adata.uns[key] = entry


def as_anndata(table, sd, result: Result, key: str, entry: dict) -> AnnData:
    """A new AnnData with the prediction as ``X`` (the ``copy=True`` layout)."""
    import anndata as ad

    pred, truth = result.prediction, result.truth
    obs = table.obs.loc[pred.index].copy() if table is not None else pd.DataFrame(index=pred.index)
    for col in obs.columns:  # a subset keeps every slide's categories; plots then see "several libraries"
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.remove_unused_categories()
    out = ad.AnnData(X=pred.to_numpy(dtype=np.float32), obs=obs, var=pd.DataFrame(index=pred.columns.copy()))
    if truth is not None:
        out.layers[TRUTH_LAYER] = truth.to_numpy(dtype=np.float32)
    if result.std is not None:
        out.layers[std_key(key)] = result.std.loc[pred.index, pred.columns].to_numpy(dtype=np.float32)
    if result.ood is not None:
        out.obs[ood_key(key)] = result.ood.reindex(pred.index).to_numpy(dtype=np.float32)
    pos = table.obs_names.get_indexer(pred.index)
    if "spatial" in table.obsm:
        out.obsm["spatial"] = np.asarray(table.obsm["spatial"])[pos].copy()
    else:
        out.obsm["spatial"] = np.asarray(sd.centers, dtype=np.float64).copy()
    if "spatial" in table.uns:
        out.uns["spatial"] = own_libraries(table.uns["spatial"], sd.libraries)
    out.uns[key] = dict(entry, params=dict(entry["params"], copy=True))
    return out


def own_libraries(spatial: dict, libraries) -> dict:
    """``uns["spatial"]`` restricted to ``libraries`` (all of it when none of them is a key)."""
    keep = {str(lib) for lib in libraries}
    own = {lib: entry for lib, entry in spatial.items() if str(lib) in keep}
    return own or dict(spatial)


def add_table(sdata, table, out, key: str, libs: str) -> None:
    """Add ``out`` as ``sdata.tables[key]``, annotating the same shapes as the input ``table``."""
    from spatialdata.models import TableModel, get_table_keys

    region, region_key, instance_key = get_table_keys(table)
    for col in (region_key, instance_key):
        out.obs[col] = table.obs.loc[out.obs_names, col].to_numpy()
    if isinstance(table.obs[region_key].dtype, pd.CategoricalDtype):
        out.obs[region_key] = pd.Categorical(
            out.obs[region_key], categories=table.obs[region_key].cat.categories
        )
    out.uns.pop("spatialdata_attrs", None)
    out = TableModel.parse(out, region=region, region_key=region_key, instance_key=instance_key)
    if key in sdata.tables:
        del sdata.tables[key]
    sdata.tables[key] = out
    logger.info(f"predict: {out.n_obs} spots x {out.n_vars} genes from {libs} → SpatialData table {key!r}")
    return None


def entry(params: dict[str, Any]) -> dict[str, Any]:
    """``uns[key]`` of a result: who wrote it and with which parameters."""
    return {"written_by": WRITTEN_BY, "params": params}


def arrays_result(
    pred: np.ndarray, truth: pd.DataFrame, libraries: pd.Series, key: str, params: dict[str, Any]
) -> AnnData:
    """A ``copy=True``-layout AnnData from plain arrays (baselines in :func:`cross_validate`)."""
    import anndata as ad

    out = ad.AnnData(
        X=np.asarray(pred, dtype=np.float32),
        obs=pd.DataFrame({"library_id": libraries.astype(str).to_numpy()}, index=truth.index.astype(str)),
        var=pd.DataFrame(index=truth.columns.astype(str)),
    )
    out.layers[TRUTH_LAYER] = truth.to_numpy(dtype=np.float32)
    out.uns[key] = entry({**params, "copy": True})
    return out


def check_table_writable(sdata: Any, key: str, overwrite: bool) -> None:
    """May ``predict`` write the SpatialData table ``key``? (stpredict's own: yes, with a warning.)"""
    if key not in sdata.tables:
        return
    if is_stpredict_entry(sdata.tables[key], key):
        logger.warning(f"Replacing the earlier stpredict table {key!r} of the SpatialData.")
        return
    if not overwrite:
        raise ValueError(
            f"predict: the SpatialData already has a table {key!r} that stpredict did not write; pass "
            "another `key_added`, or `overwrite=True` to replace it."
        )
    logger.warning(f"Overwriting table {key!r} of the SpatialData (overwrite=True).")
