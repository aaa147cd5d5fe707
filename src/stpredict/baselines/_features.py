"""Hand-made colour and texture features of H&E patches (the image baselines' input)."""

from __future__ import annotations

from typing import Any

import numpy as np

from stpredict._validation import check_patches
from stpredict.data._stain import UNMIX, rgb_to_od

__all__ = ["image_feature_names", "image_features"]

_QUANTILES = (0.1, 0.5, 0.9)
_HIST_BINS = 8
_DARK_THRESHOLDS = (0.3, 0.45)  # grey level (0..1) below which a pixel counts as "dark"


def image_feature_names() -> list[str]:
    """Names of the columns of :func:`image_features`, in order.

    Examples
    --------
    >>> from stpredict.baselines import image_feature_names
    >>> image_feature_names()[:3]
    ['rgb_r_mean', 'rgb_r_std', 'rgb_r_q10']
    """
    names: list[str] = []
    stats = ["mean", "std", *[f"q{int(q * 100)}" for q in _QUANTILES]]
    for space, channels in (("rgb", "rgb"), ("od", "he")):
        for c in channels:
            names += [f"{space}_{c}_{s}" for s in stats]
    names += ["hsv_s_mean", "hsv_s_std", "hsv_v_mean", "hsv_v_std"]
    for c in "rgb":
        names += [f"hist_{c}_{b}" for b in range(_HIST_BINS)]
    names += [f"hist_h_{b}" for b in range(_HIST_BINS)]
    for scale in (1, 2):
        names += [f"grad{scale}_{s}" for s in ("mean", "std", "q50", "q90")]
        names += [f"lap{scale}_{s}" for s in ("absmean", "std")]
    names += ["locvar_mean", "locvar_q90"]
    names += [f"dark_frac_{int(t * 100)}" for t in _DARK_THRESHOLDS]
    names += ["hema_frac"]
    return names


def _stats(x: np.ndarray) -> list[np.ndarray]:
    """Mean, std and quantiles over axis 1 of ``(B, P)``."""
    q = np.quantile(x, _QUANTILES, axis=1)
    return [x.mean(axis=1), x.std(axis=1), *q]


def _texture(grey: np.ndarray) -> list[np.ndarray]:
    """Gradient-magnitude and Laplacian statistics of ``(B, H, W)`` grey images."""
    gx = grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]
    gy = grey[:, 2:, 1:-1] - grey[:, :-2, 1:-1]
    mag = np.sqrt(gx * gx + gy * gy).reshape(len(grey), -1) * 0.5
    lap = (
        4.0 * grey[:, 1:-1, 1:-1]
        - grey[:, :-2, 1:-1]
        - grey[:, 2:, 1:-1]
        - grey[:, 1:-1, :-2]
        - grey[:, 1:-1, 2:]
    ).reshape(len(grey), -1)
    q50, q90 = np.quantile(mag, (0.5, 0.9), axis=1)
    return [mag.mean(axis=1), mag.std(axis=1), q50, q90, np.abs(lap).mean(axis=1), lap.std(axis=1)]


def _batch_features(batch: np.ndarray) -> np.ndarray:
    """Features of a ``(B, S, S, 3)`` uint8 batch → ``(B, F)`` float32."""
    from scipy.ndimage import uniform_filter

    b = len(batch)
    rgb = batch.astype(np.float32) / 255.0  # (B, H, W, 3)
    flat = rgb.reshape(b, -1, 3)
    cols: list[np.ndarray] = []
    for c in range(3):
        cols += _stats(flat[:, :, c])
    # colour deconvolution: optical density → haematoxylin / eosin concentrations
    conc = rgb_to_od(batch.reshape(b, -1, 3)) @ UNMIX
    for c in range(2):
        cols += _stats(conc[:, :, c])
    # HSV saturation and value
    cmax, cmin = flat.max(axis=2), flat.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    cols += [sat.mean(axis=1), sat.std(axis=1), cmax.mean(axis=1), cmax.std(axis=1)]
    # coarse colour histograms (fractions of pixels), per RGB channel and for haematoxylin
    edges = np.linspace(0.0, 1.0, _HIST_BINS + 1)[1:-1]
    n_px = flat.shape[1]
    for c in range(3):
        bins = np.searchsorted(edges, flat[:, :, c], side="right")
        hist = np.stack([(bins == i).sum(axis=1) for i in range(_HIST_BINS)], axis=1) / n_px
        cols += list(hist.T)
    h = np.clip(conc[:, :, 0] / 1.5, 0.0, 1.0)  # haematoxylin OD above ~1.5 is saturated
    bins = np.searchsorted(edges, h, side="right")
    cols += list((np.stack([(bins == i).sum(axis=1) for i in range(_HIST_BINS)], axis=1) / n_px).T)
    # texture at full and half resolution
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (B, H, W)
    cols += _texture(grey)
    hh, ww = (grey.shape[1] // 2) * 2, (grey.shape[2] // 2) * 2
    half = grey[:, :hh, :ww].reshape(b, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))
    if min(half.shape[1:]) >= 3:
        cols += _texture(half)
    else:  # too small to downsample: repeat the full-resolution texture
        cols += _texture(grey)
    # local variance in 5×5 windows
    mean = uniform_filter(grey, size=(1, 5, 5), mode="reflect")
    sq = uniform_filter(grey * grey, size=(1, 5, 5), mode="reflect")
    locvar = np.maximum(sq - mean * mean, 0.0).reshape(b, -1)
    cols += [locvar.mean(axis=1), np.quantile(locvar, 0.9, axis=1)]
    # "nuclear" pixels: dark, and haematoxylin-dominated
    g = grey.reshape(b, -1)
    cols += [(g < t).mean(axis=1) for t in _DARK_THRESHOLDS]
    cols += [((conc[:, :, 0] > 0.4) & (conc[:, :, 0] > conc[:, :, 1])).mean(axis=1)]
    return np.stack(cols, axis=1).astype(np.float32)


def image_features(
    patches: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Hand-made colour and texture features of H&E patches.

    Per patch (names in :func:`image_feature_names`): mean, standard deviation and 10/50/90 %
    quantiles of each RGB channel and of the haematoxylin and eosin concentrations from a
    Ruifrok–Johnston colour deconvolution; HSV saturation and value mean/std; coarse 8-bin
    histograms of R, G, B and haematoxylin (fractions of pixels); gradient-magnitude and Laplacian
    statistics of the grey image at full and half resolution; local (5×5) variance; and the
    fraction of dark, haematoxylin-dominated ("nuclear") pixels.

    Parameters
    ----------
    patches
        ``(n, S, S, 3)`` uint8 (or float in [0, 1]) RGB patches.
    batch_size
        Patches processed at a time (memory ∝ ``batch_size × S²``).
    progress
        Show a progress bar.

    Returns
    -------
    ``(n, F)`` float32 features, finite.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.baselines import image_features
    >>> patches = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    >>> image_features(patches).shape == (4, len(image_feature_names()))
    True
    """
    from stpredict._progress import progress as progress_bar

    arr = check_patches(patches, floats=True)
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    n_feat = len(image_feature_names())
    out = np.empty((len(arr), n_feat), dtype=np.float32)
    starts = range(0, len(arr), batch_size)
    for start in progress_bar(starts, desc="image features", unit="batch", enabled=progress):
        out[start : start + batch_size] = _batch_features(arr[start : start + batch_size])
    return out
