"""Decoding slide images with PIL (large H&E JPEGs included)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# her2st images are ~9,300 x 9,900 px (~92 Mpx), above PIL's default decompression-bomb limit
# (~89 Mpx, warning) and close to twice it (error). 1.5 Gpx is far above any slide we read.
_MAX_PIXELS = 1_500_000_000


@contextmanager
def _large_images(max_pixels: int = _MAX_PIXELS):
    """Raise PIL's decompression-bomb limit for the duration of the block only."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def read_rgb(
    path: str | os.PathLike, *, lowres_max_size: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Decode an image file once into RGB uint8, optionally with a downsampled copy.

    Parameters
    ----------
    path
        Image file (anything PIL reads: JPEG, PNG, TIFF).
    lowres_max_size
        Longest side (px) of the downsampled copy; ``None`` returns no copy.

    Returns
    -------
    ``(full, lowres, lowres_scalef)``: the full-resolution ``H x W x 3`` array, the downsampled one
    (``None`` when not requested) and its scale factor (lowres px per full-res px, ``<= 1``).
    """
    from PIL import Image

    path = Path(path)
    with _large_images(), Image.open(path) as opened:
        img = opened.convert("RGB") if opened.mode != "RGB" else opened
        img.load()
        full = np.asarray(img, dtype=np.uint8)
        if lowres_max_size is None:
            return full, None, 1.0
        width, height = img.size
        scalef = min(1.0, lowres_max_size / max(width, height))
        if scalef >= 1.0:
            return full, full.copy(), 1.0
        size = (max(1, round(width * scalef)), max(1, round(height * scalef)))
        lowres = np.asarray(img.resize(size, Image.Resampling.BOX), dtype=np.uint8)
    return full, lowres, float(scalef)


def downsample(image: np.ndarray, max_size: int) -> tuple[np.ndarray, float]:
    """Downsample an ``H x W x 3`` uint8 array so that its longest side is ``<= max_size``."""
    from PIL import Image

    height, width = image.shape[:2]
    scalef = min(1.0, max_size / max(width, height))
    if scalef >= 1.0:
        return image.copy(), 1.0
    size = (max(1, round(width * scalef)), max(1, round(height * scalef)))
    with _large_images():
        small = Image.fromarray(image).resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8), float(scalef)
