"""Whole-slide images (pyramidal TIFF, OME-TIFF, SVS, NDPI, ...) as lazy SpatialData images.

The reader is `tiffslide <https://github.com/Bayer-Group/tiffslide>`_: pure Python on top of
``tifffile`` and ``zarr`` (a wheel on every platform, no system library), with OpenSlide's API and
its metadata (pixel size per axis). Each pyramid level of the file becomes a level of the image
element, read tile by tile through dask when something asks for pixels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from stpredict._logging import logger

__all__ = ["MICROMETERS", "pixel_size", "read_wsi"]

MICROMETERS = "micrometers"  # the coordinate system of physical positions of a read_wsi image


def read_wsi(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    microns_per_pixel: float | None = None,
) -> Any:
    """Read a whole-slide image lazily as a SpatialData object with one multiscale image element.

    Nothing is decoded until pixels are asked for (a patch, or a low-resolution level for the
    tissue mask): ``stp.tl.predict(sdata, model, grid_spacing_um=...)`` then works on slides far
    larger than memory.

    Parameters
    ----------
    path
        A whole-slide image that `tiffslide` opens: pyramidal TIFF / OME-TIFF, Aperio SVS,
        Hamamatsu NDPI, Leica SCN, ... (``pip install tiffslide``).
    name
        Name of the image element; default: the file name without suffixes (letters, digits,
        ``_ - .``) followed by ``"_image"``.
    microns_per_pixel
        µm per full-resolution pixel when the file does not record it (or records it wrongly).

    Returns
    -------
    SpatialData with ``images[name]``: one level per level of the file (``scale0`` is the full
    resolution), in the coordinate system ``"global"`` (full-resolution pixels) and, when the
    pixel size is known, ``"micrometers"`` (:func:`stpredict.io.pixel_size` reads it back).

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.io.read_wsi("slide.svs")  # doctest: +SKIP
    >>> pred = stp.tl.predict(sdata, model, grid_spacing_um=100.0)  # doctest: +SKIP
    """
    import spatialdata

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"read_wsi: {str(file)!r} is not a file.")
    slide = _open(file)
    mpp = _pixel_size(slide, microns_per_pixel, file)
    element = _multiscale(slide, mpp)
    name = name or slide_name(file) + "_image"
    width, height = slide.dimensions
    logger.info(
        f"read_wsi: {file.name}: {width} x {height} px, {slide.level_count} level(s)"
        + (f", {mpp[0]:.4g} x {mpp[1]:.4g} µm/px" if mpp else ", pixel size unknown")
    )
    return spatialdata.SpatialData(images={name: element})


def slide_name(path: str | os.PathLike) -> str:
    """A file's name without suffixes, as letters, digits and ``_ - .`` (an element or file name)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(path).name.split(".")[0])


def pixel_size(element: Any) -> tuple[float, float] | None:
    """µm per full-resolution pixel (x, y) of an image element read by :func:`read_wsi`, or ``None``."""
    from spatialdata.transformations import Scale, get_transformation

    transform = get_transformation(element, get_all=True).get(MICROMETERS)
    if not isinstance(transform, Scale):
        return None
    scale = dict(zip(transform.axes, transform.scale, strict=True))
    return float(scale["x"]), float(scale["y"])


def _open(file: Path) -> Any:
    try:
        import tiffslide
    except ImportError as err:
        raise ImportError(
            "read_wsi needs tiffslide: `pip install tiffslide` (or stpredict-he[wsi])."
        ) from err
    try:
        return tiffslide.TiffSlide(file)
    except Exception as err:  # tiffslide raises several kinds for files it cannot parse
        raise ValueError(
            f"read_wsi: {str(file)!r} is not a whole-slide image tiffslide reads ({err})."
        ) from err


def _pixel_size(slide: Any, override: float | None, file: Path) -> tuple[float, float] | None:
    if override is not None:
        if not (isinstance(override, int | float) and np.isfinite(override) and override > 0):
            raise ValueError(f"read_wsi: `microns_per_pixel` must be a positive number, got {override!r}.")
        return float(override), float(override)
    props = slide.properties
    x, y = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
    if x and y and float(x) > 0 and float(y) > 0:
        return float(x), float(y)
    logger.warning(
        f"read_wsi: {file.name} records no pixel size; pass `microns_per_pixel=` (here or to grid_spots)"
    )
    return None


def _multiscale(slide: Any, mpp: tuple[float, float] | None) -> Any:
    """The file's levels as a SpatialData multiscale image (c, y, x), each lazy through dask."""
    import dask.array as da
    import xarray as xr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    group = slide.zarr_group
    full_w, full_h = slide.dimensions
    levels = {}
    for i in range(slide.level_count):
        array = da.moveaxis(da.from_zarr(group[str(i)]), -1, 0)[:3]  # (c, y, x), RGB
        sy, sx = full_h / array.shape[1], full_w / array.shape[2]
        transforms: dict[str, Any] = {"global": Identity() if i == 0 else Scale([sy, sx], axes=("y", "x"))}
        if mpp is not None:
            transforms[MICROMETERS] = Scale([mpp[1] * sy, mpp[0] * sx], axes=("y", "x"))
        image = Image2DModel.parse(array, dims=("c", "y", "x"), transformations=transforms)
        levels[f"scale{i}"] = xr.Dataset({"image": image})
    tree = xr.DataTree.from_dict(levels)
    Image2DModel().validate(tree)
    return tree
