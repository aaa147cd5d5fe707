"""Colour deconvolution of H&E (Ruifrok & Johnston 2001) and stain augmentation / shift in HED space."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ._spotdata import SpotData

__all__ = [
    "STAIN_VECTORS",
    "UNMIX",
    "hed_shift",
    "match_stain",
    "rgb_to_od",
    "slide_stain_stats",
    "stain_matched",
    "stain_stats",
    "stain_target",
]

# a pixel is tissue when its optical density summed over R, G, B exceeds this (glass is ~0)
_TISSUE_OD = 0.3
# spots per slide whose patches give the slide's stain statistics
_STAT_SPOTS = 256
_STAT_PX = 48

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
    out = _concentrations_to_unit_rgb(conc)
    if gamma != 1.0:
        out = out**gamma
    return np.round(out * 255.0).astype(np.uint8)


def _concentrations_to_unit_rgb(conc: np.ndarray) -> np.ndarray:
    """RGB on ``[0, 1]`` of stain concentrations ``(..., 3)`` (the inverse of ``rgb_to_od @ UNMIX``)."""
    od = conc @ STAIN_VECTORS.astype(np.float32)
    return np.clip(256.0 * np.exp(-od) - 1.0, 0.0, 255.0) / 255.0


def stain_stats(rgb: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of the H, E, D concentrations of the tissue pixels of ``rgb``.

    Tissue: pixels whose optical density summed over the channels exceeds 0.3 (all pixels when
    fewer than 100 are). ``rgb``: ``uint8`` ``(..., 3)``. Returns ``float32`` ``(2, 3)``.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data._stain import stain_stats
    >>> stain_stats(np.full((4, 4, 3), 150, np.uint8)).shape
    (2, 3)
    """
    od = rgb_to_od(np.asarray(rgb)).reshape(-1, 3)
    tissue = od.sum(axis=1) > _TISSUE_OD
    conc = (od[tissue] if tissue.sum() >= 100 else od) @ UNMIX
    return np.stack([conc.mean(axis=0), np.maximum(conc.std(axis=0), 1e-3)]).astype(np.float32)


def match_stain(rgb: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``rgb`` so that stain statistics ``source`` become ``target`` (Reinhard et al. 2001, in HED).

    Each stain concentration ``c`` becomes ``(c - mean_s) / std_s * std_t + mean_t``, with the
    ``(2, 3)`` statistics of :func:`stain_stats`; the result is turned back into ``uint8`` RGB. A
    rescaling and shift of the concentrations, as a different stain batch or scanner gives, is
    undone exactly; a gamma of the scan approximately (it scales optical density).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data._stain import hed_shift, match_stain, stain_stats
    >>> rng = np.random.default_rng(0)
    >>> px = rng.integers(60, 230, size=(32, 32, 3)).astype(np.uint8)
    >>> moved = hed_shift(px, (1.3, 0.7, 1.0), (0.05, -0.05, 0.0))
    >>> back = match_stain(moved, stain_stats(moved), stain_stats(px))
    >>> int(np.abs(back.astype(int) - px).mean()) <= 2
    True
    """
    source, target = np.asarray(source, np.float32), np.asarray(target, np.float32)
    conc = rgb_to_od(np.asarray(rgb)) @ UNMIX
    conc = (conc - source[0]) / source[1] * target[1] + target[0]
    return np.round(_concentrations_to_unit_rgb(conc) * 255.0).astype(np.uint8)


def slide_stain_stats(sd: SpotData, *, patch_size_um: float, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`stain_stats` of each slide of ``sd``, over the patches of up to 256 of its spots.

    The spots of a slide are drawn with their own ``seed``-ed generator, so a slide gets the same
    statistics whichever other slides come with it (in ``fit``, ``predict``, ``cross_validate``).
    """
    out = {}
    for lib in sd.libraries:
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(sd.library_ids == lib)
        chosen = np.sort(rng.choice(idx, size=min(len(idx), _STAT_SPOTS), replace=False))
        raw = sd.subset(chosen)
        raw.images = {lib: raw.images[lib].without_stain_map()}
        patches = raw.extract_patches(patch_size_um=patch_size_um, size=_STAT_PX, progress=False)
        out[lib] = stain_stats(patches)
    return out


def stain_target(stats: dict[str, np.ndarray]) -> np.ndarray:
    """The training slides' common stain statistics: the mean of their :func:`slide_stain_stats`."""
    return np.mean(np.stack(list(stats.values())), axis=0).astype(np.float32)


def stain_matched(
    sd: SpotData, target: np.ndarray, *, patch_size_um: float, stats: dict[str, np.ndarray] | None = None
) -> SpotData:
    """A copy of ``sd`` whose patches are read stain-matched to ``target``, slide by slide.

    Each slide's own statistics (``stats``, default :func:`slide_stain_stats`) are mapped to
    ``target`` (:func:`match_stain`) whenever a patch is cut, streamed or in memory alike.
    """
    if stats is None:
        stats = slide_stain_stats(sd, patch_size_um=patch_size_um)
    out = sd.subset(np.arange(sd.n_obs))
    out.images = {lib: image.with_stain_map(stats[lib], target) for lib, image in out.images.items()}
    return out
