"""Colour deconvolution of H&E (Ruifrok & Johnston 2001) and stain augmentation / shift in HED space."""

from __future__ import annotations

import numpy as np

__all__ = ["STAIN_VECTORS", "UNMIX", "hed_shift", "rgb_to_od"]

# optical-density vectors of haematoxylin, eosin and DAB (rows), unit length
STAIN_VECTORS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
STAIN_VECTORS = STAIN_VECTORS / np.linalg.norm(STAIN_VECTORS, axis=1, keepdims=True)
UNMIX = np.linalg.inv(STAIN_VECTORS).astype(np.float32)  # OD (rgb) @ UNMIX → concentrations (h, e, d)


def rgb_to_od(rgb_uint8: np.ndarray) -> np.ndarray:
    """Optical density ``-log((I + 1) / 256)`` of ``uint8`` RGB values (same shape, float32)."""
    return -np.log((rgb_uint8.astype(np.float32) + 1.0) / 256.0)


def hed_shift(
    rgb: np.ndarray,
    scale: np.ndarray | tuple[float, float, float],
    shift: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 0.0),
    gamma: float = 1.0,
) -> np.ndarray:
    """Rescale and shift the stain concentrations of an H&E image, then apply a gamma.

    Each pixel's concentrations ``c`` (haematoxylin, eosin, DAB) become ``c * scale + shift``; the
    result is turned back into RGB and raised to ``gamma`` (on ``[0, 1]``). With small random
    ``scale`` / ``shift`` around ``1`` / ``0`` this is the HED jitter of Tellez et al. (2018); a
    fixed large one simulates a section stained or scanned differently.

    Parameters
    ----------
    rgb
        ``uint8`` ``(..., 3)`` RGB pixels.
    scale, shift
        Per-stain factors and offsets (3 values each).
    gamma
        Exponent applied to the result on ``[0, 1]`` (``> 1`` darkens).

    Returns
    -------
    ``uint8`` pixels of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data._stain import hed_shift
    >>> px = np.array([[[200, 120, 180]]], np.uint8)
    >>> bool((hed_shift(px, (1, 1, 1)) == px).all())
    True
    """
    conc = rgb_to_od(rgb) @ UNMIX
    conc = conc * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)
    od = conc @ STAIN_VECTORS.astype(np.float32)
    out = np.clip(256.0 * np.exp(-od) - 1.0, 0.0, 255.0) / 255.0
    if gamma != 1.0:
        out = out**gamma
    return np.round(out * 255.0).astype(np.uint8)
