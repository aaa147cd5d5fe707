"""A richer hand-made descriptor of H&E patches: colour, filter-bank, LBP, co-occurrence, nuclei."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from stpredict._validation import check_patches
from stpredict.data._stain import UNMIX, rgb_to_od

from ._features import _batch_features, image_feature_names

__all__ = ["texture_feature_names", "texture_features"]

_CHANNELS = ("grey", "h", "e")
_LEVELS = 4  # pyramid levels of the filter bank: the patch, then halved 3 times
_RESPONSES = ("smooth", "grad", "log", "ridge")
_STATS = ("mean", "std", "q10", "q90")
_LBP_CHANNELS = ("grey", "h")
_LBP_LEVELS = 3
_LBP_BINS = 10  # rotation-invariant uniform codes 0..8 (number of brighter neighbours) + non-uniform
_GLCM_GREY_LEVELS = 16
_GLCM_DISTANCES = (1, 2, 4)
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
_NUCLEI_THRESHOLDS = (0.3, 0.45, 0.6)  # haematoxylin optical density of a "nuclear" pixel
_NUCLEI_STATS = ("density", "area_frac", "area_mean", "area_std", "area_median", "large", "small")
_MIN_NUCLEUS_PX, _SMALL_PX, _LARGE_PX = 4, 25, 60  # at 128 px per 112 µm: ~0.9 µm per pixel
# the 8 neighbours in circular order (row, column offsets)
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def texture_feature_names() -> list[str]:
    """Names of the columns of :func:`texture_features`, in order.

    Examples
    --------
    >>> from stpredict.baselines import texture_feature_names
    >>> len(texture_feature_names())
    366
    """
    names = list(image_feature_names())
    for c in _CHANNELS:
        for lv in range(_LEVELS):
            names += [f"fb_{c}_l{lv}_{r}_{s}" for r in _RESPONSES for s in _STATS]
    for c in _LBP_CHANNELS:
        for lv in range(_LBP_LEVELS):
            names += [f"lbp_{c}_l{lv}_{b}" for b in range(_LBP_BINS)]
    names += [f"glcm_d{d}_{p}" for d in _GLCM_DISTANCES for p in _GLCM_PROPS]
    for t in _NUCLEI_THRESHOLDS:
        names += [f"nuclei_t{int(t * 100)}_{s}" for s in _NUCLEI_STATS]
    return names


def _halve(x: np.ndarray) -> np.ndarray:
    """2 × 2 mean pooling of ``(B, H, W[, C])``."""
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    x = x[:, :h, :w]
    return x.reshape(x.shape[0], h // 2, 2, w // 2, 2, *x.shape[3:]).mean(axis=(2, 4))


def _pyramid(channel: np.ndarray, levels: int) -> Iterator[np.ndarray]:
    """``(B, H, W)`` and its ``levels - 1`` successive halvings."""
    level = channel
    for lv in range(levels):
        yield level if lv == 0 else (level := _halve(level))


def _quantile_stats(r: np.ndarray) -> list[np.ndarray]:
    flat = r.reshape(len(r), -1)
    q10, q90 = np.quantile(flat, (0.1, 0.9), axis=1)
    return [flat.mean(axis=1), flat.std(axis=1), q10, q90]


def _filter_bank(channel: np.ndarray) -> list[np.ndarray]:
    """Gaussian-derivative responses (σ = 1 px) at each pyramid level of ``(B, H, W)``.

    Smoothed intensity, gradient magnitude, Laplacian of Gaussian and the larger Hessian eigenvalue
    (dark blobs and lines, e.g. nuclei and fibres), each summarised by mean, std, 10 % and 90 %.
    """
    from scipy.ndimage import gaussian_filter

    cols: list[np.ndarray] = []
    for level in _pyramid(channel, _LEVELS):

        def g(order: tuple[int, int], img: np.ndarray = level) -> np.ndarray:
            return gaussian_filter(img, sigma=(0, 1, 1), order=(0, *order), mode="reflect")

        hxx, hyy, hxy = g((0, 2)), g((2, 0)), g((1, 1))
        half_diff = np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy**2)
        responses = (g((0, 0)), np.hypot(g((0, 1)), g((1, 0))), hxx + hyy, 0.5 * (hxx + hyy) + half_diff)
        for r in responses:
            cols += _quantile_stats(r)
    return cols


def _lbp_histograms(channel: np.ndarray) -> list[np.ndarray]:
    """Rotation-invariant uniform local binary patterns (8 neighbours, radius 1) per pyramid level."""
    cols: list[np.ndarray] = []
    for level in _pyramid(channel, _LBP_LEVELS):
        centre = level[:, 1:-1, 1:-1]
        h, w = centre.shape[1:]
        bits = np.stack(
            [level[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] >= centre for dy, dx in _RING], axis=-1
        )
        transitions = (bits != np.roll(bits, 1, axis=-1)).sum(axis=-1)
        codes = np.where(transitions <= 2, bits.sum(axis=-1), _LBP_BINS - 1).reshape(len(level), -1)
        offsets = np.arange(len(level))[:, None] * _LBP_BINS
        hist = np.bincount((codes + offsets).ravel(), minlength=len(level) * _LBP_BINS)
        cols += list((hist.reshape(len(level), _LBP_BINS) / codes.shape[1]).T)
    return cols


def _offset_pairs(q: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``(B, H, W)`` and their neighbours ``dy`` rows down (``dy >= 0``), ``dx`` columns right."""
    h, w = q.shape[1:]
    left, right = max(0, -dx), w - max(0, dx)
    return q[:, : h - dy, left:right], q[:, dy:, left + dx : right + dx]


def _cooccurrence(grey: np.ndarray) -> list[np.ndarray]:
    """Grey-level co-occurrence statistics at distances 1, 2, 4 px, averaged over 4 directions."""
    n_lv = _GLCM_GREY_LEVELS
    q = np.clip((grey * n_lv).astype(np.int64), 0, n_lv - 1)
    b = len(q)
    i, j = np.meshgrid(np.arange(n_lv), np.arange(n_lv), indexing="ij")
    cols: list[np.ndarray] = []
    for d in _GLCM_DISTANCES:
        props = np.zeros((len(_GLCM_PROPS), b))
        for dy, dx in ((0, d), (d, d), (d, 0), (d, -d)):
            a, c = _offset_pairs(q, dy, dx)
            pairs = (a * n_lv + c).reshape(b, -1) + np.arange(b)[:, None] * n_lv * n_lv
            m = (
                np.bincount(pairs.ravel(), minlength=b * n_lv * n_lv)
                .reshape(b, n_lv, n_lv)
                .astype(np.float64)
            )
            m = m + m.transpose(0, 2, 1)  # symmetric
            p = m / m.sum(axis=(1, 2), keepdims=True)
            mu = (p * i).sum(axis=(1, 2))
            var = (p * (i - mu[:, None, None]) ** 2).sum(axis=(1, 2))
            cov = (p * (i - mu[:, None, None]) * (j - mu[:, None, None])).sum(axis=(1, 2))
            props += np.stack(
                [
                    (p * (i - j) ** 2).sum(axis=(1, 2)),
                    (p * np.abs(i - j)).sum(axis=(1, 2)),
                    (p / (1.0 + (i - j) ** 2)).sum(axis=(1, 2)),
                    np.sqrt((p * p).sum(axis=(1, 2))),
                    np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0),  # a flat patch: 1
                ]
            )
        cols += list(props / 4.0)
    return cols


def _nuclei(haematoxylin: np.ndarray) -> list[np.ndarray]:
    """Connected components of thresholded haematoxylin: density, coverage and size statistics."""
    from scipy.ndimage import binary_opening, gaussian_filter, label

    smooth = gaussian_filter(haematoxylin, sigma=(0, 1, 1))
    n_px = smooth.shape[1] * smooth.shape[2]
    rows = np.zeros((len(smooth), len(_NUCLEI_THRESHOLDS), len(_NUCLEI_STATS)))
    for k, img in enumerate(smooth):
        for t, thr in enumerate(_NUCLEI_THRESHOLDS):
            mask = binary_opening(img > thr)
            labels, n = label(mask)
            areas = np.bincount(labels.ravel())[1:] if n else np.zeros(0, np.int64)
            areas = areas[areas >= _MIN_NUCLEUS_PX]
            found = len(areas) > 0
            rows[k, t] = [
                len(areas) / n_px * 1e3,
                mask.mean(),
                areas.mean() if found else 0.0,
                areas.std() if found else 0.0,
                np.median(areas) if found else 0.0,
                (areas > _LARGE_PX).sum() / n_px * 1e3,
                (areas < _SMALL_PX).sum() / n_px * 1e3,
            ]
    return list(rows.reshape(len(smooth), -1).T)


def _batch_texture(batch: np.ndarray) -> np.ndarray:
    """Features of a ``(B, S, S, 3)`` uint8 batch → ``(B, 366)`` float32."""
    b, s = batch.shape[:2]
    colour = _batch_features(_halve(batch.astype(np.float32)).round().astype(np.uint8))
    grey = (batch.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    conc = (rgb_to_od(batch.reshape(b, -1, 3)) @ UNMIX).reshape(b, s, s, -1)
    channels = {"grey": grey, "h": conc[..., 0], "e": conc[..., 1]}
    cols: list[np.ndarray] = [*colour.T]
    for c in _CHANNELS:
        cols += _filter_bank(channels[c])
    for c in _LBP_CHANNELS:
        cols += _lbp_histograms(channels[c])
    cols += _cooccurrence(grey)
    cols += _nuclei(channels["h"])
    return np.nan_to_num(np.stack(cols, axis=1), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def texture_features(patches: Any, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """A richer hand-made descriptor of H&E patches (366 numbers per patch).

    The colour and texture features of :func:`image_features` (on the patch halved), plus:

    - a Gaussian-derivative filter bank on grey, haematoxylin and eosin images at 4 pyramid
      levels: smoothed intensity, gradient magnitude, Laplacian of Gaussian and the larger Hessian
      eigenvalue (blobs and fibres), each summarised by mean, standard deviation, 10 % and 90 %;
    - rotation-invariant uniform local binary pattern histograms (8 neighbours) of the grey and
      haematoxylin images at 3 levels;
    - grey-level co-occurrence contrast, dissimilarity, homogeneity, energy and correlation at
      1, 2 and 4 pixels;
    - "nuclei": connected components of the haematoxylin image above 3 thresholds (density,
      coverage, size statistics).

    Meant for patches of about 128 px per 112 µm (the sizes in the nuclei statistics assume
    ~0.9 µm per pixel). ``fit(image_features="texture")`` computes them for each spot's patch and
    a patch twice as wide.

    Parameters
    ----------
    patches
        ``(n, S, S, 3)`` uint8 (or float in [0, 1]) RGB patches, ``S >= 16``.
    batch_size
        Patches processed at a time.
    progress
        Show a progress bar.

    Returns
    -------
    ``(n, 366)`` float32 features, finite (names in :func:`texture_feature_names`).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.baselines import texture_features
    >>> patches = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    >>> texture_features(patches).shape
    (2, 366)
    """
    from stpredict._progress import progress as progress_bar

    arr = check_patches(patches, floats=True)
    if min(arr.shape[1:3]) < 16:
        raise ValueError(f"texture_features: patches must be at least 16 px wide, got {arr.shape[1:3]}.")
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    out = np.empty((len(arr), len(texture_feature_names())), dtype=np.float32)
    starts = range(0, len(arr), batch_size)
    for start in progress_bar(starts, desc="texture features", unit="batch", enabled=progress):
        out[start : start + batch_size] = _batch_texture(arr[start : start + batch_size])
    return out
