"""Regular grids of pseudo-spots over the tissue of an H&E image, for prediction without spots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._constants import DEFAULT_SPOT_DIAMETER_UM
from stpredict._logging import logger
from stpredict._validation import is_spatialdata

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

# Foreground test on a downsampled image (RGB scaled to [0, 1]): tissue is stained, so it is
# coloured (HSV saturation >= _MIN_SATURATION) and neither glass-white nor scanner-black.
_MIN_SATURATION = 0.07
_MAX_BRIGHTNESS = 0.90
_MIN_BRIGHTNESS = 0.08
_MASK_MAX_SIZE = 1024  # longest side (px) of the image the mask is computed on
_MIN_TISSUE_FRACTION = 0.5  # share of foreground pixels under a pseudo-spot to keep it


def tissue_mask(image: Any) -> np.ndarray:
    """Foreground (tissue) mask of an RGB image: coloured pixels that are neither white nor black.

    A pixel is tissue when its HSV saturation is at least 0.07 and its mean intensity lies in
    ``[0.08, 0.90]`` (on a ``[0, 1]`` scale): H&E stains tissue pink/purple, while glass is close
    to white and grey, and scanner borders are close to black.

    Parameters
    ----------
    image
        ``H x W x C`` array, ``uint8`` or float in ``[0, 1]``; only the first 3 channels are used
        (one channel is read as grey, hence never tissue).

    Returns
    -------
    Boolean ``H x W`` mask.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.tl._grid import tissue_mask
    >>> img = np.full((4, 4, 3), 255, dtype=np.uint8)
    >>> img[:2] = (200, 120, 170)  # pink
    >>> tissue_mask(img).sum()
    np.int64(8)
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"tissue_mask: expected an H x W x C image, got shape {arr.shape}.")
    arr = arr[..., :3].astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.integer) or arr.max(initial=0) > 1.0:
        arr = arr / 255.0
    hi = arr.max(axis=-1)
    lo = arr.min(axis=-1)
    saturation = (hi - lo) / np.maximum(hi, 1e-6)
    brightness = arr.mean(axis=-1)
    return (saturation >= _MIN_SATURATION) & (brightness <= _MAX_BRIGHTNESS) & (brightness >= _MIN_BRIGHTNESS)


def _as_rgb(array: Any, what: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"grid_spots: {what} must be an H x W x 3 RGB array, got shape {arr.shape}.")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not np.isfinite(value):
        raise ValueError(f"grid_spots: `{name}` must be a positive number, got {value!r}.")
    if value <= 0:
        raise ValueError(f"grid_spots: `{name}` must be a positive number, got {value!r}.")
    return float(value)


def _small(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image downsampled (box filter, integer stride) to <= _MASK_MAX_SIZE, and its scale."""
    stride = max(1, int(np.ceil(max(image.shape[:2]) / _MASK_MAX_SIZE)))
    if stride == 1:
        return np.asarray(image), 1.0
    h, w = (image.shape[0] // stride) * stride, (image.shape[1] // stride) * stride
    if hasattr(image, "dask"):  # lazy: block means chunk by chunk, never the whole image at once
        import dask.array as da

        small = da.coarsen(np.mean, image[:h, :w].astype(np.float32), {0: stride, 1: stride})
        return np.asarray(small.compute()).astype(image.dtype, copy=False), 1.0 / stride
    arr = np.asarray(image[:h, :w], dtype=np.float32)
    arr = arr.reshape(h // stride, stride, w // stride, stride, arr.shape[-1]).mean(axis=(1, 3))
    return arr.astype(np.asarray(image).dtype, copy=False), 1.0 / stride


def _layout(
    image: np.ndarray,
    *,
    scalef: float,
    um_per_px: tuple[float, float],
    spacing_um: float,
    spot_diameter_um: float,
    tissue_only: bool,
    overview: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grid centres (full-res px), rows, cols and tissue fraction over one image.

    ``scalef`` is image px per full-res px, ``um_per_px`` µm per full-res px (x, y); the tissue
    mask is computed on ``overview`` (a small copy and its px per image px) when given.
    """
    from scipy.ndimage import uniform_filter

    height, width = image.shape[0] / scalef, image.shape[1] / scalef  # full-res extent
    step = (spacing_um / um_per_px[0], spacing_um / um_per_px[1])
    n_cols = max(1, int(np.floor(width / step[0])))
    n_rows = max(1, int(np.floor(height / step[1])))
    # centre the grid on the image
    x0 = (width - (n_cols - 1) * step[0]) / 2.0
    y0 = (height - (n_rows - 1) * step[1]) / 2.0
    row_grid, col_grid = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = row_grid.ravel(), col_grid.ravel()
    centers = np.column_stack([x0 + cols * step[0], y0 + rows * step[1]])

    if not tissue_only:
        return centers, rows, cols, np.full(len(rows), np.nan)
    small, s = overview if overview is not None else _small(image)
    mask = tissue_mask(small).astype(np.float32)
    to_mask = scalef * s  # mask px per full-res px
    window = (
        max(1, int(round(spot_diameter_um / um_per_px[1] * to_mask))),
        max(1, int(round(spot_diameter_um / um_per_px[0] * to_mask))),
    )
    fraction = uniform_filter(mask, size=window, mode="constant", cval=0.0)
    ix = np.clip(np.floor(centers[:, 0] * to_mask).astype(np.int64), 0, mask.shape[1] - 1)
    iy = np.clip(np.floor(centers[:, 1] * to_mask).astype(np.int64), 0, mask.shape[0] - 1)
    frac = fraction[iy, ix].astype(np.float64)
    keep = frac >= _MIN_TISSUE_FRACTION
    return centers[keep], rows[keep], cols[keep], frac[keep]


def _um_per_px(scalefactors: Mapping, microns_per_pixel: float | None, spot_diameter_um: float, lib: str):
    """µm per full-resolution px (x, y), from the argument, the scale factors or the spot diameter."""
    from stpredict.data._spotdata import pixel_size_um

    override = None
    if microns_per_pixel is not None:
        mpp = _positive(microns_per_pixel, "microns_per_pixel")
        override = (mpp, mpp)
    where = f"grid_spots: the scalefactors of slide {lib!r}"
    um = pixel_size_um(scalefactors, what=where, override=override, spot_diameter_um=spot_diameter_um)
    if um is None:
        raise ValueError(
            f"grid_spots: the physical pixel size of slide {lib!r} is unknown: its scalefactors have none "
            "of 'microns_per_pixel', 'microns_per_pixel_x'/'_y', 'spot_diameter_fullres'. Pass "
            "`microns_per_pixel=` (µm per full-resolution pixel)."
        )
    return um


def _slides_of_spots(adata: AnnData, spatial: Mapping, library_key: str) -> list:
    """The libraries of ``adata``'s spots (a subset keeps every slide's images); all without spots."""
    if adata.n_obs and library_key in adata.obs:
        present = set(adata.obs[library_key].astype(str))
        libs = [lib for lib in spatial if str(lib) in present]
        if libs:
            return libs
    return list(spatial)


def _sources_anndata(
    adata: AnnData,
    library_id,
    image_key,
    microns_per_pixel,
    spot_diameter_um,
    library_key: str = "library_id",
):
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, Mapping) or not spatial:
        raise KeyError(
            "grid_spots: the AnnData has no images: expected adata.uns['spatial'][library_id]['images'] "
            "(the scanpy/squidpy Visium convention)."
        )
    libs = [library_id] if library_id is not None else _slides_of_spots(adata, spatial, library_key)
    out = []
    for lib in libs:
        if lib not in spatial:
            raise KeyError(
                f"grid_spots: adata.uns['spatial'] has no library {lib!r}; available: {list(spatial)}."
            )
        entry = spatial[lib]
        images = entry.get("images", {}) if isinstance(entry, Mapping) else {}
        keys = [k for k in ("hires", "lowres") if images.get(k) is not None]
        if image_key is not None:
            keys = [image_key] if images.get(image_key) is not None else []
        if not keys:
            wanted = repr(image_key) if image_key else "'hires' or 'lowres'"
            raise KeyError(
                f"grid_spots: adata.uns['spatial'][{lib!r}]['images'] has no {wanted} image; "
                f"available: {list(images)}."
            )
        key = keys[0]
        sf = dict(entry.get("scalefactors", {}))
        scalef = float(sf.get(f"tissue_{key}_scalef", 1.0))
        um = _um_per_px(sf, microns_per_pixel, spot_diameter_um, lib)
        image = _as_rgb(images[key], f"adata.uns['spatial'][{lib!r}]['images'][{key!r}]")
        out.append((lib, image, scalef, um, dict(entry), None))
    return out


def _sources_spatialdata(sdata, library_id, image_key, microns_per_pixel):
    """The full-resolution image (lazy when the element is), its overview for the mask, its pixel size."""
    names = list(sdata.images)
    if image_key is None:
        if len(names) != 1:
            raise ValueError(
                f"grid_spots: the SpatialData has {len(names)} image elements {names}; "
                "choose one with `image_key=`."
            )
        image_key = names[0]
    if image_key not in sdata.images:
        raise KeyError(f"grid_spots: the SpatialData has no image element {image_key!r}; available: {names}.")
    element = sdata.images[image_key]
    lib = library_id if library_id is not None else image_key.removesuffix("_image")
    um = _um_per_px({}, microns_per_pixel, DEFAULT_SPOT_DIAMETER_UM, lib) if microns_per_pixel else None
    um = um or _element_pixel_size(sdata, element, lib, image_key)
    full, overview = _levels(element, f"image element {image_key!r}")
    return [(lib, full, 1.0, um, None, overview)]


def _element_pixel_size(sdata, element, lib: str, image_key: str) -> tuple[float, float]:
    """µm per pixel: of a read_wsi image, or from the scale factors stp.io.to_spatialdata keeps."""
    from stpredict.io import pixel_size

    um = pixel_size(element)
    if um is not None:
        return um
    for table in sdata.tables.values():
        entry = table.uns.get("spatial", {}).get(lib)
        if isinstance(entry, Mapping) and "scalefactors" in entry:
            full = dict(entry["scalefactors"])
            scalef = float(full.get("tissue_hires_scalef", 1.0))
            um = _um_per_px(full, None, DEFAULT_SPOT_DIAMETER_UM, lib)
            return um[0] / scalef, um[1] / scalef
    raise ValueError(
        f"grid_spots: the pixel size of image {image_key!r} is unknown; pass `microns_per_pixel=` "
        "(µm per pixel of that image)."
    )


def _levels(element, what: str):
    """The full-resolution ``H x W x 3`` image (dask when lazy) and a small overview (array, scale)."""
    import xarray as xr
    from spatialdata import get_pyramid_levels

    if isinstance(element, xr.DataArray):  # one level
        full_level, coarse = element, element
    else:  # a pyramid: the coarsest level at least _MASK_MAX_SIZE / 2 px wide, else the finest
        levels = [get_pyramid_levels(element, n=i) for i in range(len(element.children))]
        full_level = levels[0]
        wide = [lvl for lvl in levels if max(lvl.shape[1:]) >= _MASK_MAX_SIZE // 2]
        coarse = wide[-1] if wide else full_level
    full = _rgb_view(full_level.transpose("c", "y", "x").data, what)
    small = _rgb_view(coarse.transpose("c", "y", "x").data, what)
    small_np, s = _small(small)
    return full, (small_np, s * small.shape[1] / full.shape[1])


def _rgb_view(chw, what: str):
    """``(C, H, W)`` → ``H x W x 3`` without reading a lazy array."""
    if chw.ndim != 3 or chw.shape[0] not in (1, 3, 4):
        raise ValueError(f"grid_spots: {what} must have 1, 3 or 4 channels, got shape {chw.shape}.")
    if hasattr(chw, "dask"):
        import dask.array as da

        hwc = da.moveaxis(chw, 0, -1)
        return da.repeat(hwc, 3, axis=-1) if hwc.shape[-1] == 1 else hwc[..., :3]
    return _as_rgb(np.moveaxis(np.asarray(chw), 0, -1), what)


def grid_spots(
    data: Any,
    *,
    spacing_um: float = 100.0,
    library_id: str | None = None,
    image_key: str | None = None,
    microns_per_pixel: float | None = None,
    tissue_only: bool = True,
    spot_diameter_um: float = DEFAULT_SPOT_DIAMETER_UM,
    library_key: str = "library_id",
) -> AnnData:
    """Lay a regular grid of pseudo-spots over the tissue of an H&E image.

    The result is an H&E-only AnnData in the Visium convention (no genes, ``X`` of shape
    ``(n_spots, 0)``) that :func:`stpredict.tl.predict` can predict on.

    The tissue is found with a simple foreground test on a downsampled copy of the image (at most
    1024 px per side): a pixel is tissue when it is coloured (HSV saturation ≥ 0.07) and neither
    white nor black (mean intensity in ``[0.08, 0.90]``). A pseudo-spot is kept when at least half
    of the pixels within ``spot_diameter_um`` around its centre are tissue.

    Parameters
    ----------
    data
        An AnnData with images in ``uns["spatial"]`` (its spots, if any, are ignored); a SpatialData
        object with an image element; or an ``H x W x 3`` RGB array (then ``microns_per_pixel`` is
        required).
    spacing_um
        Centre-to-centre distance of neighbouring pseudo-spots (µm), along both axes.
    library_id
        AnnData: the slide to cover (default: the slides of its spots' ``obs[library_key]``;
        every slide in ``uns["spatial"]`` when it has no spots). SpatialData / array:
        the library id given to the slide (default: the image element's name without ``"_image"``,
        or ``"image"``).
    image_key
        AnnData: ``"hires"`` or ``"lowres"`` (default: ``"hires"`` when present). SpatialData: the
        image element (default: the only one).
    microns_per_pixel
        µm per pixel: of the full-resolution frame for an AnnData (default: from its scale factors),
        of the image itself for an array or a SpatialData image (default for a SpatialData written
        by :func:`stpredict.io.to_spatialdata`: from its table's scale factors).
    tissue_only
        Keep only pseudo-spots over tissue; ``False`` covers the whole image.
    spot_diameter_um
        Diameter of a pseudo-spot (µm), written to ``spot_diameter_fullres``; also used to derive
        the pixel size from ``spot_diameter_fullres`` when an AnnData records no
        ``microns_per_pixel``.
    library_key
        Column of ``obs`` telling slides apart.

    Returns
    -------
    AnnData with ``obs[library_key]`` (categorical), ``obs["array_row"]``, ``obs["array_col"]``
    (grid indices), ``obs["in_tissue"]``, ``obs["tissue_fraction"]`` (NaN with
    ``tissue_only=False``), ``obsm["spatial"]`` (x, y in full-resolution px) and
    ``uns["spatial"][library_id]`` with the images, scale factors (including
    ``microns_per_pixel``) and ``metadata["grid_spacing_um"]``. Images are shared, not copied.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.tl._grid import grid_spots
    >>> adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=8)
    >>> grid = grid_spots(adata, spacing_um=150.0)
    >>> grid.n_vars, grid.obs["library_id"].unique().tolist()
    (0, ['slide0'])
    """
    import anndata as ad
    import scipy.sparse as sp

    spacing_um = _positive(spacing_um, "spacing_um")
    spot_diameter_um = _positive(spot_diameter_um, "spot_diameter_um")
    if not isinstance(library_key, str) or not library_key:
        raise TypeError(f"grid_spots: `library_key` must be a non-empty string, got {library_key!r}.")

    if isinstance(data, ad.AnnData):
        sources = _sources_anndata(
            data, library_id, image_key, microns_per_pixel, spot_diameter_um, library_key
        )
    elif is_spatialdata(data):
        sources = _sources_spatialdata(data, library_id, image_key, microns_per_pixel)
    elif isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        if microns_per_pixel is None:
            raise ValueError("grid_spots: for an image array, pass `microns_per_pixel=` (µm per pixel).")
        um = _um_per_px({}, microns_per_pixel, spot_diameter_um, "image")
        sources = [(library_id or "image", _as_rgb(data, "the image"), 1.0, um, None, None)]
    else:
        raise TypeError(
            f"grid_spots: expected an AnnData, a SpatialData or an RGB array, got {type(data).__name__}."
        )

    obs, coords, spatial = [], [], {}
    for lib, image, scalef, um, entry, overview in sources:
        centers, rows, cols, frac = _layout(
            image,
            overview=overview,
            scalef=scalef,
            um_per_px=um,
            spacing_um=spacing_um,
            spot_diameter_um=spot_diameter_um,
            tissue_only=tissue_only,
        )
        if len(centers) == 0:
            raise ValueError(
                f"grid_spots: found no tissue on slide {lib!r} (no pseudo-spot has >= "
                f"{_MIN_TISSUE_FRACTION:.0%} stained pixels); pass `tissue_only=False` to cover the "
                "whole image."
            )
        obs.append(
            pd.DataFrame(
                {
                    library_key: lib,
                    "array_row": rows.astype(np.int64),
                    "array_col": cols.astype(np.int64),
                    "in_tissue": np.ones(len(rows), dtype=np.int64),
                    "tissue_fraction": frac,
                },
                index=[f"{lib}_grid_{c}x{r}" for r, c in zip(rows, cols)],
            )
        )
        coords.append(centers)
        if entry is None:
            entry = {"images": {"hires": image}, "scalefactors": {"tissue_hires_scalef": 1.0}}
        scalefactors = dict(entry.get("scalefactors", {}))
        scalefactors.update(
            spot_diameter_fullres=spot_diameter_um / float(np.sqrt(um[0] * um[1])),
            microns_per_pixel=float(np.sqrt(um[0] * um[1])),
        )
        if not np.isclose(um[0], um[1]):
            scalefactors.update(microns_per_pixel_x=float(um[0]), microns_per_pixel_y=float(um[1]))
        metadata = dict(entry.get("metadata", {}) or {})
        metadata.update(
            grid_spacing_um=spacing_um,
            grid_spot_diameter_um=spot_diameter_um,
            grid_tissue_only=bool(tissue_only),
            generator="stpredict.tl.grid_spots",
        )
        spatial[lib] = {"images": dict(entry["images"]), "scalefactors": scalefactors, "metadata": metadata}
        logger.info(f"grid_spots: {len(centers)} pseudo-spots {spacing_um:g} µm apart on slide {lib!r}")

    libs = [s[0] for s in sources]
    if len(set(libs)) != len(libs):
        raise ValueError(f"grid_spots: library ids repeat: {libs}.")
    obs_df = pd.concat(obs)
    obs_df[library_key] = pd.Categorical(obs_df[library_key], categories=libs)
    grid = ad.AnnData(X=sp.csr_matrix((len(obs_df), 0), dtype=np.float32), obs=obs_df)
    grid.obsm["spatial"] = np.vstack(coords).astype(np.float64)
    grid.uns["spatial"] = spatial
    return grid
