"""HEST-1k samples in their published layout: ``st/<id>.h5ad``, ``wsis/<id>.tif``, ``metadata/<id>.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._logging import logger
from stpredict._validation import check_key, check_positive

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = ["read_hest"]

_PIXEL_SIZE_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
_DEFAULT_SPOT_UM = {"visium": 55.0, "spatial transcriptomics": 100.0}  # by metadata "st_technology"


def _files(root: Path, sample: str) -> dict[str, Path]:
    files = {
        "st": root / "st" / f"{sample}.h5ad",
        "wsi": root / "wsis" / f"{sample}.tif",
        "metadata": root / "metadata" / f"{sample}.json",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"read_hest: sample {sample!r} lacks {missing}; expected HEST's layout st/<id>.h5ad, "
            "wsis/<id>.tif, metadata/<id>.json under the root."
        )
    return files


def _scale(meta: dict[str, Any], path: Path) -> tuple[float, float]:
    """µm per full-resolution WSI pixel and the spot diameter in µm, from the sample's metadata."""
    key = next((k for k in _PIXEL_SIZE_KEYS if meta.get(k) is not None), None)
    if key is None:
        raise KeyError(f"read_hest: {path} has none of {list(_PIXEL_SIZE_KEYS)} (µm per WSI pixel).")
    um = check_positive(meta[key], what=f"read_hest: {path} [{key!r}]")
    if meta.get("spot_diameter") is not None:
        return um, check_positive(meta["spot_diameter"], what=f"read_hest: {path} ['spot_diameter']")
    tech = str(meta.get("st_technology", "")).lower()
    if tech not in _DEFAULT_SPOT_UM:
        raise KeyError(
            f"read_hest: {path} has no 'spot_diameter' and st_technology={meta.get('st_technology')!r} has "
            "no known spot size; spot-level HEST samples record it."
        )
    return um, _DEFAULT_SPOT_UM[tech]


def _lazy_wsi(path: Path) -> Any:
    """The full-resolution level of a (pyramidal) TIFF as a lazy dask array ``(c, y, x)``."""
    import dask.array as da
    import tifffile
    import zarr

    store = tifffile.imread(str(path), aszarr=True, level=0)
    array = da.from_zarr(zarr.open(store, mode="r"))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"read_hest: {path} must be an RGB(A) image, got shape {array.shape}.")
    return array[..., :3].transpose(2, 0, 1)


def _sample(files: dict[str, Path], sample: str) -> tuple[Any, Any, Any]:
    """One sample's image element, circle shapes and table (not yet linked by a TableModel)."""
    import anndata as ad
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity

    meta = json.loads(files["metadata"].read_text())
    um, spot_um = _scale(meta, files["metadata"])
    adata = ad.read_h5ad(files["st"])
    if "spatial" not in adata.obsm:
        raise KeyError(f"read_hest: {files['st']} has no obsm['spatial'] (spot centres in WSI pixels).")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    image = Image2DModel.parse(
        _lazy_wsi(files["wsi"]), dims=("c", "y", "x"), transformations={sample: Identity()}
    )
    n = adata.n_obs
    shapes = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(n, spot_um / um / 2.0),
        index=np.arange(n, dtype=np.int64),
        transformations={sample: Identity()},
    )
    adata.obs_names = [f"{sample}_{name}" for name in adata.obs_names]
    adata.obs["library_id"] = sample
    adata.obs["region"] = f"{sample}_spots"
    adata.obs["spot_id"] = np.arange(n, dtype=np.int64)
    scalefactors = {"spot_diameter_fullres": spot_um / um, "microns_per_pixel": um}
    adata.uns["spatial"] = {sample: {"scalefactors": scalefactors, "metadata": _plain(meta)}}
    return image, shapes, adata


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata values that an .h5ad / zarr table can store (strings and numbers)."""
    return {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool) and v is not None}


def read_hest(root: str | Path, ids: str | Sequence[str]) -> SpatialData:
    """Read HEST-1k samples (Jaume et al. 2024) from their published layout into one SpatialData.

    Each sample ``<id>`` has ``st/<id>.h5ad`` (spots, counts, ``obsm["spatial"]`` in WSI pixels),
    ``wsis/<id>.tif`` (the pyramidal whole-slide image) and ``metadata/<id>.json`` (with the pixel
    size ``pixel_size_um_estimated`` and the ``spot_diameter`` in µm). The slide is read lazily
    (its full-resolution level, window by window when patches are cut), so whole-slide images do
    not have to fit in memory.

    Parameters
    ----------
    root
        The folder holding ``st/``, ``wsis/`` and ``metadata/``.
    ids
        Sample id(s), e.g. ``"TENX95"`` or ``["NCBI783", "NCBI785"]``.

    Returns
    -------
    A SpatialData with, per sample, an image ``"<id>_image"``, circles ``"<id>_spots"`` (radius
    from the spot diameter and pixel size) in a coordinate system ``"<id>"``, and one table
    ``"table"`` (``obs["library_id"]`` = the sample id; spot ids prefixed with it), ready for
    :func:`stpredict.tl.fit` / :func:`stpredict.tl.predict`.

    Examples
    --------
    ::

        sdata = stp.io.read_hest("hest_data", ["NCBI783", "NCBI785"])
        model = stp.tl.fit(sdata)
    """
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    root = Path(root)
    ids = [ids] if isinstance(ids, str) else list(ids)
    if not ids:
        raise ValueError("read_hest: `ids` is empty; name at least one sample.")
    for sample in ids:
        check_key(sample, what="read_hest: sample id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"read_hest: `ids` has duplicates: {ids}.")
    images, shapes, tables = {}, {}, []
    for sample in ids:
        image, spots, table = _sample(_files(root, sample), sample)
        images[f"{sample}_image"], shapes[f"{sample}_spots"] = image, spots
        tables.append(table)
    import anndata as ad

    table = ad.concat(tables, join="inner", merge="first", uns_merge="unique")
    table.uns["spatial"] = {k: v for t in tables for k, v in t.uns["spatial"].items()}
    table.obs["region"] = pd.Categorical(table.obs["region"], categories=[f"{s}_spots" for s in ids])
    table = TableModel.parse(
        table, region=[f"{s}_spots" for s in ids], region_key="region", instance_key="spot_id"
    )
    logger.info(f"read_hest: {len(ids)} sample(s), {table.n_obs} spots, {table.n_vars} genes from {root}")
    return SpatialData(images=images, shapes=shapes, tables={"table": table})
