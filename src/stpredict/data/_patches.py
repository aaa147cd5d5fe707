"""Slide images and physical-size patch extraction (lazy images are read window by window)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stpredict._validation import check_image, check_positive

from ._stain import match_stain

# Lazy images are read in horizontal bands of at most this many pixels (~200 MB as RGB uint8).
_BAND_PIXELS = 64_000_000
# Extra source pixels read around each window so the resampling filter has support at the edges.
_MARGIN = 3
_WHITE = 255


@dataclass(frozen=True, eq=False)
class SlideImage:
    """One slide's H&E image and its physical pixel size.

    Parameters
    ----------
    array
        ``H x W x C`` image (C = 3 or 4, channels last), ``uint8`` or float in ``[0, 1]``; a numpy
        array or a lazy array (dask, xarray) that is only read window by window.
    um_per_px
        Micrometres per pixel along x and y (may differ: non-square pixels).
    name
        Where the image came from (for messages).
    stain_map
        ``(source, target)`` stain statistics (:func:`stpredict.data._stain.match_stain`): every
        patch cut from the image is stain-matched from one to the other. ``None``: as scanned.
    """

    array: Any
    um_per_px: tuple[float, float]
    name: str | None = None
    stain_map: tuple[np.ndarray, np.ndarray] | None = None  # (source, target) of match_stain

    def __post_init__(self):
        check_image(self.array, what=f"image {self.name!r}" if self.name else "image")
        ux, uy = (check_positive(v, what="SlideImage.um_per_px") for v in self.um_per_px)
        object.__setattr__(self, "um_per_px", (ux, uy))

    def with_stain_map(self, source: np.ndarray, target: np.ndarray) -> SlideImage:
        """The same image, its patches stain-matched from ``source`` to ``target`` statistics."""
        stats = np.asarray(source, np.float32).reshape(2, 3), np.asarray(target, np.float32).reshape(2, 3)
        return dataclasses.replace(self, stain_map=stats)

    def without_stain_map(self) -> SlideImage:
        """The same image, patches as scanned."""
        return dataclasses.replace(self, stain_map=None)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return int(self.array.shape[0]), int(self.array.shape[1])

    @property
    def is_lazy(self) -> bool:
        """Whether the array is not an in-memory numpy array."""
        return not isinstance(self.array, np.ndarray)

    def __repr__(self) -> str:
        h, w = self.shape
        kind = type(self.array).__module__.split(".")[0]
        return (
            f"SlideImage({self.name!r}, {w} x {h} px, {kind} {self.array.dtype}, "
            f"um_per_px=({self.um_per_px[0]:.3g}, {self.um_per_px[1]:.3g}))"
        )


def to_uint8_rgb(block: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` from a ``uint8`` or ``[0, 1]`` float ``H x W x 3/4`` block (alpha dropped)."""
    block = np.asarray(block)[..., :3]
    if block.dtype == np.uint8:
        return block
    out = np.clip(np.nan_to_num(block.astype(np.float32), nan=1.0), 0.0, 1.0) * 255.0 + 0.5
    return out.astype(np.uint8)


def _load(array: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Materialise ``array[y0:y1, x0:x1]`` (in-bounds) as uint8 RGB (chunked: from cached tiles)."""
    from ._tiles import read_window

    block = read_window(array, y0, y1, x0, x1)
    if block is None:
        block = array[y0:y1, x0:x1]
        if hasattr(block, "compute"):  # dask / xarray-backed-by-dask
            block = block.compute()
    return to_uint8_rgb(np.asarray(block))


def _crop(
    source: np.ndarray, offset: tuple[int, int], shape: tuple[int, int], box: tuple[int, ...]
) -> np.ndarray:
    """Window ``box = (x0, y0, x1, y1)`` of an image of ``shape = (H, W)``, white outside it.

    ``source`` holds the image from row/column ``offset = (ox, oy)`` on.
    """
    x0, y0, x1, y1 = box
    h, w = shape
    ox, oy = offset
    out = np.full((y1 - y0, x1 - x0, 3), _WHITE, dtype=np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        block = source[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = to_uint8_rgb(block)
    return out


def window_sizes(image: SlideImage, patch_size_um: float) -> tuple[float, float]:
    """Source-pixel width and height of a ``patch_size_um`` square on ``image``."""
    return patch_size_um / image.um_per_px[0], patch_size_um / image.um_per_px[1]


def extract_image_patches(
    image: SlideImage,
    centers: np.ndarray,
    *,
    patch_size_um: float = 112.0,
    size: int = 224,
    resample: Literal["bilinear", "bicubic"] = "bilinear",
    progress: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Square patches of ``patch_size_um`` µm around ``centers`` of one image, resampled.

    The window is ``patch_size_um / um_per_px`` source pixels per axis (non-square pixels give
    non-square windows), centred with sub-pixel precision, padded with white outside the image
    and resampled (with antialiasing when shrinking) to ``size x size``.

    Parameters
    ----------
    image
        The slide image.
    centers
        ``(n, 2)`` x, y in pixels of ``image.array``.
    patch_size_um
        Side of the square patch in micrometres.
    size
        Output side in pixels.
    resample
        PIL resampling filter.
    progress
        Show a progress bar.
    desc
        Progress bar label.

    Returns
    -------
    ``uint8`` ``(n, size, size, 3)``.
    """
    from PIL import Image

    patch_size_um = check_positive(patch_size_um, what="patch_size_um")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"extract_patches: `size` must be a positive integer, got {size!r}.")
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    if resample not in filters:
        raise ValueError(f"extract_patches: `resample` must be one of {list(filters)}, got {resample!r}.")
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    n = len(centers)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    if n == 0:
        return out
    wx, wy = window_sizes(image, patch_size_um)
    fx0, fy0 = centers[:, 0] - wx / 2, centers[:, 1] - wy / 2
    ix0 = np.floor(fx0).astype(np.int64) - _MARGIN
    iy0 = np.floor(fy0).astype(np.int64) - _MARGIN
    ix1 = np.ceil(fx0 + wx).astype(np.int64) + _MARGIN
    iy1 = np.ceil(fy0 + wy).astype(np.int64) + _MARGIN
    h, w = image.shape

    # group spots into bands whose bounding box is read at once (whole image when in memory)
    if image.is_lazy:
        order = np.argsort(iy0, kind="stable")
        bands, start = [], 0
        while start < n:
            first = order[start]
            lo_x, hi_x, lo_y, hi_y = ix0[first], ix1[first], iy0[first], iy1[first]
            stop = start + 1
            while stop < n:
                j = order[stop]
                nx0, nx1 = min(lo_x, ix0[j]), max(hi_x, ix1[j])
                ny0, ny1 = min(lo_y, iy0[j]), max(hi_y, iy1[j])
                if (min(nx1, w) - max(nx0, 0)) * (min(ny1, h) - max(ny0, 0)) > _BAND_PIXELS:
                    break
                lo_x, hi_x, lo_y, hi_y = nx0, nx1, ny0, ny1
                stop += 1
            bands.append(order[start:stop])
            start = stop
    else:
        bands = [np.arange(n)]

    from stpredict._progress import progress as progress_bar

    with progress_bar(total=n, desc=desc or "patches", unit="patch", enabled=progress) as bar:
        for band in bands:
            if image.is_lazy:
                by0, by1 = max(int(np.min(iy0[band])), 0), min(int(np.max(iy1[band])), h)
                bx0, bx1 = max(int(np.min(ix0[band])), 0), min(int(np.max(ix1[band])), w)
                if by1 > by0 and bx1 > bx0:
                    source, offset = _load(image.array, by0, by1, bx0, bx1), (bx0, by0)
                else:  # every window of the band lies outside the image
                    source, offset = np.empty((0, 0, 3), np.uint8), (0, 0)
            else:
                source, offset = image.array, (0, 0)
            for i in band:
                box = (int(ix0[i]), int(iy0[i]), int(ix1[i]), int(iy1[i]))
                region = _crop(source, offset, (h, w), box)
                fbox = (fx0[i] - box[0], fy0[i] - box[1], fx0[i] - box[0] + wx, fy0[i] - box[1] + wy)
                pil = Image.fromarray(region).resize((size, size), filters[resample], box=fbox)
                patch = np.asarray(pil)
                out[i] = patch if image.stain_map is None else match_stain(patch, *image.stain_map)
                bar.update()
    return out


def patch_window_px(image: SlideImage, patch_size_um: float) -> tuple[int, int]:
    """Rounded source window ``(width, height)`` in pixels for messages and benchmarks."""
    wx, wy = window_sizes(image, patch_size_um)
    return max(1, math.floor(wx + 0.5)), max(1, math.floor(wy + 0.5))
