"""Convert a Visium-convention AnnData (one or many slides) into a SpatialData object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._logging import logger
from stpredict._validation import check_positive

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

REGION_KEY = "region"
INSTANCE_KEY = "spot_id"


def _validated_libraries(adata: AnnData, library_key: str) -> list[str]:
    """The slides of `adata`, after checking what `to_spatialdata` needs of it."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"to_spatialdata: expected an AnnData, got {type(adata).__name__}.")
    if library_key not in adata.obs:
        raise KeyError(f"to_spatialdata: adata.obs has no column {library_key!r} (the slide of each spot).")
    if "spatial" not in adata.obsm:
        raise KeyError(
            "to_spatialdata: adata.obsm has no 'spatial' (spot centres in full-resolution pixels)."
        )
    coords: np.ndarray = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2 or not np.isfinite(coords[:, :2]).all():
        raise ValueError("to_spatialdata: adata.obsm['spatial'] must be a finite (n_obs, 2) array of x, y.")
    libs = pd.unique(adata.obs[library_key].astype(str)).tolist()
    spatial = adata.uns.get("spatial", {})
    for lib in libs:
        entry = spatial.get(lib)
        if entry is None:
            raise KeyError(f"to_spatialdata: adata.uns['spatial'] has no entry for {library_key} {lib!r}.")
        images = entry.get("images", {})
        if not any(images.get(k) is not None for k in ("hires", "lowres")):
            raise KeyError(
                f"to_spatialdata: adata.uns['spatial'][{lib!r}]['images'] has neither 'hires' nor 'lowres'."
            )
        sf = entry.get("scalefactors", {})
        where = f"to_spatialdata: adata.uns['spatial'][{lib!r}]['scalefactors']"
        if "spot_diameter_fullres" not in sf:
            raise KeyError(f"{where} lacks 'spot_diameter_fullres'.")
        for name in ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef"):
            if name in sf:
                check_positive(sf[name], what=f"{where}[{name!r}]")
    if adata.obs_names.has_duplicates:
        raise ValueError("to_spatialdata: adata.obs_names must be unique.")
    return libs


def to_spatialdata(adata: AnnData, *, library_key: str = "library_id", images: bool = True) -> SpatialData:
    """Convert a Visium-convention AnnData into a :class:`~spatialdata.SpatialData` object.

    Each slide becomes a coordinate system named after it (full-resolution pixels), holding
    an image element ``"<slide>_image"`` (the ``"hires"`` image, or ``"lowres"`` when there is no
    hires, placed with a :class:`~spatialdata.transformations.Scale` of ``1 / scalef``) and a
    circle shapes element ``"<slide>_spots"`` (centres from ``obsm["spatial"]``, radius
    ``spot_diameter_fullres / 2``). A single table ``"table"`` (a copy of ``adata`` without the
    images in ``uns["spatial"]``; scale factors and metadata are kept) annotates the shapes via
    ``obs["region"]`` and ``obs["spot_id"]``. A single-slide input is also mapped to ``"global"``.

    Parameters
    ----------
    adata
        AnnData in the convention of :func:`stpredict.io.read_legacy_st` /
        :func:`stpredict.datasets.synthetic`; not modified.
    library_key
        Column of ``adata.obs`` telling slides apart.
    images
        Include the image elements; ``False``: the spots and the table only (e.g. predictions of a
        whole slide, whose image stays in its own file).

    Returns
    -------
    The SpatialData object.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=4)
    >>> sdata = stp.io.to_spatialdata(adata)
    >>> sorted(sdata.shapes)
    ['slide0_spots', 'slide1_spots']
    """
    libs = _validated_libraries(adata, library_key)
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    lib_of_spot = adata.obs[library_key].astype(str).to_numpy()
    elements, shapes = {}, {}
    region = np.empty(adata.n_obs, dtype=object)
    instance = np.zeros(adata.n_obs, dtype=np.int64)
    for lib in libs:
        entry = adata.uns["spatial"][lib]
        sf = entry["scalefactors"]
        systems = {lib: None} | ({"global": None} if len(libs) == 1 else {})
        if images:
            elements[f"{lib}_image"] = _image_element(entry, lib, systems)
        mask = lib_of_spot == lib
        idx = np.arange(int(mask.sum()), dtype=np.int64)
        shapes[f"{lib}_spots"] = ShapesModel.parse(
            coords[mask],
            geometry=0,
            radius=np.full(int(mask.sum()), float(sf["spot_diameter_fullres"]) / 2.0),
            index=idx,
            transformations=dict.fromkeys(systems, Identity()),
        )
        region[mask] = f"{lib}_spots"
        instance[mask] = idx

    table = adata.copy()
    table.uns["spatial"] = {
        lib: {k: v for k, v in adata.uns["spatial"][lib].items() if k != "images"} for lib in libs
    }
    table.obs[REGION_KEY] = pd.Categorical(region, categories=[f"{lib}_spots" for lib in libs])
    table.obs[INSTANCE_KEY] = instance
    table = TableModel.parse(
        table, region=[f"{lib}_spots" for lib in libs], region_key=REGION_KEY, instance_key=INSTANCE_KEY
    )
    sdata = SpatialData(images=elements, shapes=shapes, tables={"table": table})
    logger.info(f"built SpatialData with {len(libs)} slide(s): images {list(elements)}, table 'table'")
    return sdata


def _image_element(entry: dict, lib: str, systems: dict) -> Any:
    """The slide's hires (else lowres) image, placed in full-resolution pixels."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    key = "hires" if entry["images"].get("hires") is not None else "lowres"
    scalef = float(entry["scalefactors"].get(f"tissue_{key}_scalef", 1.0))
    array = np.asarray(entry["images"][key])
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(
            f"to_spatialdata: image {key!r} of {lib!r} must be H x W x C, got shape {array.shape}."
        )
    to_fullres = Scale([1.0 / scalef, 1.0 / scalef], axes=("x", "y"))
    return Image2DModel.parse(
        np.ascontiguousarray(np.moveaxis(array, -1, 0)),
        dims=("c", "y", "x"),
        transformations=dict.fromkeys(systems, to_fullres),
    )
