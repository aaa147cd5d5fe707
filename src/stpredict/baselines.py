"""Baselines that put a retrieval model's numbers in context.

- :func:`random_retrieval`: the mean of ``k`` random reference spots (the floor, r ≈ 0).
- :func:`oracle_retrieval`: retrieve with the embedding of the *true* test expression (the ceiling
  of any retrieval method with that reference bank and ``k``).
- :func:`image_features` + :class:`ImageFeatureKNN`: hand-made colour/texture features of each
  patch and a plain k-nearest-neighbour retrieval over them (a cheap image baseline without deep
  learning).
- :class:`ImageFeatureRidge`: HEST-Benchmark-style PCA + ridge regression on the same features.

Everything here works on plain arrays: normalised expression ``(n, n_genes)`` and uint8 patches
``(n, S, S, 3)``. :func:`stpredict.tl.cross_validate` runs them on the same folds, reference bank
and ``k`` as the fitted models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from stpredict._logging import logger
from stpredict._validation import check_k, check_matrix, check_patches
from stpredict.data._stain import UNMIX, rgb_to_od

if TYPE_CHECKING:  # pragma: no cover
    from stpredict.models import STPredictModel

__all__ = [
    "random_retrieval",
    "oracle_retrieval",
    "image_features",
    "image_feature_names",
    "ImageFeatureKNN",
    "ImageFeatureRidge",
]


_QUANTILES = (0.1, 0.5, 0.9)
_HIST_BINS = 8
_DARK_THRESHOLDS = (0.3, 0.45)  # grey level (0..1) below which a pixel counts as "dark"


# --------------------------------------------------------------------------------------------
# random and oracle retrieval
# --------------------------------------------------------------------------------------------
def random_retrieval(
    bank_expression: Any,
    n_queries: int,
    *,
    k: int = 50,
    seed: int | None = 0,
    return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict every query as the mean of ``k`` random reference spots.

    The floor for any retrieval method: the prediction does not depend on the query, so its
    per-gene Pearson r across spots is about 0.

    Parameters
    ----------
    bank_expression
        Normalised expression of the reference spots, shape ``(r, n_genes)``.
    n_queries
        Number of spots to predict.
    k
        Reference spots averaged per query (drawn without replacement).
    seed
        Seed of the random generator (``None``: not reproducible).
    return_indices
        Also return the ``(n_queries, k)`` indices of the chosen reference spots.

    Returns
    -------
    Predicted expression ``(n_queries, n_genes)`` float32 (and the indices when asked).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.baselines import random_retrieval
    >>> bank = np.random.default_rng(0).poisson(2.0, size=(100, 5)).astype("float32")
    >>> random_retrieval(bank, 3, k=10).shape
    (3, 5)
    """
    bank = check_matrix(bank_expression, what="bank_expression")
    if not isinstance(n_queries, int | np.integer) or isinstance(n_queries, bool) or n_queries < 0:
        raise ValueError(f"`n_queries` must be a non-negative integer, got {n_queries!r}.")
    r = bank.shape[0]
    k = check_k(k, r)
    rng = np.random.default_rng(seed)
    # k distinct rows per query: the first k of a random permutation, drawn in chunks
    indices = np.empty((int(n_queries), k), dtype=np.int64)
    chunk = max(1, 2**22 // r)
    for start in range(0, int(n_queries), chunk):
        stop = min(start + chunk, int(n_queries))
        keys = rng.random((stop - start, r))
        indices[start:stop] = (
            np.argpartition(keys, k - 1, axis=1)[:, :k] if k < r else np.argsort(keys, axis=1)
        )
    pred = bank[indices].mean(axis=1, dtype=np.float64).astype(np.float32)
    return (pred, indices) if return_indices else pred


def _bank_arrays(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(expression, embeddings) of a fitted model's reference bank."""
    bank = getattr(model, "bank", None)
    if bank is None:
        raise TypeError(
            f"`model` must be a fitted STPredictModel with a reference bank, got {type(model).__name__}."
        )
    try:
        expression, embeddings = bank["expression"], bank["embeddings"]
    except (KeyError, TypeError) as err:
        raise KeyError(
            "`model.bank` must hold 'expression' and 'embeddings' arrays; "
            f"found {list(bank) if hasattr(bank, 'keys') else type(bank).__name__}."
        ) from err
    return check_matrix(expression, what="model.bank['expression']"), check_matrix(
        embeddings, what="model.bank['embeddings']"
    )


def oracle_retrieval(
    model: STPredictModel,
    truth_expression: Any,
    *,
    k: int = 50,
    weighting: str = "mean",
    coords: Any = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Retrieve with the embedding of the *true* expression: the ceiling of retrieval.

    The true (normalised) expression of each test spot is embedded with the model's expression
    encoder and used as the query against the expression embeddings of the reference bank (cosine
    top-``k``); the prediction aggregates those reference spots' expression like the model does.
    No image-based query can retrieve better neighbours in that embedding, so this is an upper
    bound for the method with that bank and ``k`` (it is not an upper bound for every predictor:
    averaging ``k`` neighbours still smooths the expression).

    Parameters
    ----------
    model
        Fitted :class:`~stpredict.models.STPredictModel` (anything with ``bank`` = dict with
        ``"expression"`` and ``"embeddings"``, and ``embed_expression(expression, coords=None)``).
    truth_expression
        True expression of the test spots, normalised like the bank (``pp.normalize_matrix`` with
        the model's ``target_sum``), shape ``(n, n_genes)`` in the model's gene order.
    k
        Reference spots retrieved per query.
    weighting
        Aggregation of the ``k`` spots: ``"mean"``, ``"inverse_distance2"`` or ``"softmax"``
        (see :func:`stpredict.retrieval.retrieve`).
    coords
        Integer grid coordinates ``(n, 2)`` of the test spots (needed by methods whose
        expression encoder uses positions, e.g. mclSTExp).
    batch_size, device
        Passed to ``model.embed_expression`` when it accepts them.

    Returns
    -------
    Predicted expression ``(n, n_genes)`` float32.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.baselines import oracle_retrieval
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=40)
    >>> model = stp.tl.fit(adata, preset="tiny", epochs=1)  # doctest: +SKIP
    >>> truth = stp.pp.normalize_matrix(adata[:, model.genes].X)  # doctest: +SKIP
    >>> oracle_retrieval(model, truth, k=10).shape  # doctest: +SKIP
    (128, 40)
    """
    bank_expr, bank_emb = _bank_arrays(model)
    truth = check_matrix(truth_expression, what="truth_expression")
    if truth.shape[1] != bank_expr.shape[1]:
        raise ValueError(
            f"`truth_expression` has {truth.shape[1]} genes but the model's bank has "
            f"{bank_expr.shape[1]}; pass the truth for the model's genes in the model's order."
        )
    if coords is not None:
        coords = np.asarray(coords)
        if coords.shape != (truth.shape[0], 2):
            raise ValueError(
                f"`coords` must have shape ({truth.shape[0]}, 2) like `truth_expression`, got {coords.shape}."
            )
    k = check_k(k, bank_expr.shape[0])
    embed = getattr(model, "embed_expression", None)
    if not callable(embed):
        raise TypeError(f"`model` ({type(model).__name__}) has no `embed_expression` method.")
    import inspect

    options = {"batch_size": batch_size, "device": device}
    params = inspect.signature(embed).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {key: v for key, v in options.items() if key in params}  # e.g. a stub without them
    queries = embed(truth, coords=coords, **options)
    queries = check_matrix(queries, what="model.embed_expression(...)")
    if queries.shape[1] != bank_emb.shape[1]:
        raise ValueError(
            f"Expression embeddings have {queries.shape[1]} dimensions but the bank embeddings have "
            f"{bank_emb.shape[1]}."
        )
    from stpredict.retrieval import retrieve

    result = retrieve(queries, bank_emb, bank_expr, k, weighting=weighting)
    return np.asarray(result.prediction, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# hand-made image features
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# k-NN and ridge on the features
# --------------------------------------------------------------------------------------------
class _FeatureScaler:
    """z-score with training statistics, a scale floor, then clipping."""

    def __init__(self, scaling: str, clip: float | None, scale_floor: float):
        self.scaling, self.clip, self.scale_floor = scaling, clip, scale_floor

    def fit(self, x: np.ndarray) -> _FeatureScaler:
        if self.scaling == "robust":
            q25, med, q75 = np.quantile(x, (0.25, 0.5, 0.75), axis=0)
            scale = (q75 - q25) / 1.349  # IQR of a normal distribution → its std
            std = x.std(axis=0)
            scale = np.where(scale > self.scale_floor, scale, std)  # IQR 0: fall back to the std
            self.center_ = med
        else:
            scale = x.std(axis=0)
            self.center_ = x.mean(axis=0)
        self.informative_ = x.std(axis=0) > 0  # features constant in training cannot rank anything
        self.scale_ = np.maximum(scale, self.scale_floor).astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.center_) / self.scale_
        z[:, ~self.informative_] = 0.0
        if self.clip is not None:
            np.clip(z, -self.clip, self.clip, out=z)
        return z.astype(np.float32)


def _features_or_patches(x: Any, name: str) -> np.ndarray:
    """Accept patches ``(n, S, S, 3)`` (→ features) or precomputed features ``(n, F)``."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.ndim == 4:
        return image_features(arr)
    if arr.ndim == 2:
        return check_matrix(arr, what=name)
    raise ValueError(
        f"`{name}` must be patches (n, S, S, 3) or precomputed features (n, F), got shape {arr.shape}."
    )


class _FeatureModel:
    """Shared fit-input handling of the feature baselines."""

    def _prepare_fit(self, train_patches: Any, train_expression: Any) -> tuple[np.ndarray, np.ndarray]:
        feats = _features_or_patches(train_patches, "train_patches")
        expr = check_matrix(train_expression, what="train_expression")
        if feats.shape[0] != expr.shape[0]:
            raise ValueError(
                f"`train_patches` ({feats.shape[0]} spots) and `train_expression` ({expr.shape[0]} spots) "
                "must have the same number of rows."
            )
        self.scaler_ = _FeatureScaler(self.scaling, self.clip, self.scale_floor).fit(feats)
        self.n_features_ = feats.shape[1]
        return feats, expr

    def transform(self, patches: Any) -> np.ndarray:
        """Scaled, clipped features ``(n, F)`` of patches (or raw features), as used for the fit."""
        return self._query(patches)

    def _query(self, test_patches: Any) -> np.ndarray:
        if not hasattr(self, "scaler_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call `.fit(...)` first.")
        feats = _features_or_patches(test_patches, "test_patches")
        if feats.shape[1] != self.n_features_:
            raise ValueError(
                f"`test_patches` give {feats.shape[1]} features, but the model was fitted on "
                f"{self.n_features_}."
            )
        return self.scaler_.transform(feats)


class ImageFeatureKNN(_FeatureModel):
    """k-nearest-neighbour retrieval on hand-made image features.

    Features (:func:`image_features`) are scaled with the *training* statistics (``"robust"``:
    median and IQR/1.349, falling back to the standard deviation where the IQR is 0;
    ``"standard"``: mean and standard deviation), with a floor on the scale, then clipped to
    ``[-clip, clip]`` (some histogram bins barely vary, and a rare value would otherwise dominate
    the distances). Features constant in training are ignored. The prediction of a test patch is
    the plain mean expression of its ``k`` nearest training patches.

    Parameters
    ----------
    k
        Neighbours averaged per query.
    metric
        ``"cosine"`` or ``"euclidean"``.
    scaling
        ``"robust"`` or ``"standard"``.
    clip
        Clip scaled features to ``[-clip, clip]`` (``None``: no clipping).
    scale_floor
        Smallest scale a feature is divided by.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.baselines import ImageFeatureKNN
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> patches = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    >>> expression = rng.random((40, 5)).astype("float32")
    >>> knn = ImageFeatureKNN(k=5).fit(patches[:30], expression[:30])
    >>> knn.predict(patches[30:]).shape
    (10, 5)
    """

    def __init__(
        self,
        k: int = 50,
        *,
        metric: Literal["cosine", "euclidean"] = "cosine",
        scaling: Literal["robust", "standard"] = "robust",
        clip: float | None = 5.0,
        scale_floor: float = 1e-3,
    ):
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ValueError(f"`k` must be a positive integer, got {k!r}.")
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"`metric` must be 'cosine' or 'euclidean', got {metric!r}.")
        if scaling not in ("robust", "standard"):
            raise ValueError(f"`scaling` must be 'robust' or 'standard', got {scaling!r}.")
        if clip is not None and not clip > 0:
            raise ValueError(f"`clip` must be positive or None, got {clip!r}.")
        if not scale_floor > 0:
            raise ValueError(f"`scale_floor` must be positive, got {scale_floor!r}.")
        self.k, self.metric, self.scaling, self.clip, self.scale_floor = (
            int(k),
            metric,
            scaling,
            clip,
            scale_floor,
        )

    def __repr__(self) -> str:
        fitted = (
            f", fitted on {len(self.bank_expression_)} spots" if hasattr(self, "bank_expression_") else ""
        )
        return f"ImageFeatureKNN(k={self.k}, metric={self.metric!r}, scaling={self.scaling!r}{fitted})"

    def fit(self, train_patches: Any, train_expression: Any) -> ImageFeatureKNN:
        """Compute and scale the features of the reference patches and keep their expression.

        Parameters
        ----------
        train_patches
            ``(r, S, S, 3)`` uint8 patches, or their precomputed :func:`image_features` ``(r, F)``.
        train_expression
            Normalised expression of the same spots ``(r, n_genes)``.

        Returns
        -------
        ``self``.
        """
        feats, expr = self._prepare_fit(train_patches, train_expression)
        check_k(self.k, len(expr), what="k")
        self.bank_features_ = self.scaler_.transform(feats)
        self.bank_expression_ = expr
        return self

    def kneighbors(self, test_patches: Any, *, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(n, k)`` of the nearest reference spots and their distances (or 1 - cosine)."""
        q = self._query(test_patches)
        keys = self.bank_features_
        if self.metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
        k = self.k
        idx = np.empty((len(q), k), dtype=np.int64)
        dist = np.empty((len(q), k), dtype=np.float32)
        key_sq = (keys * keys).sum(axis=1)
        for start in range(0, len(q), chunk_size):
            block = q[start : start + chunk_size]
            if self.metric == "cosine":
                d = 1.0 - block @ keys.T
            else:
                d = np.maximum(
                    (block * block).sum(axis=1, keepdims=True) - 2.0 * block @ keys.T + key_sq, 0.0
                )
            part = (
                np.argpartition(d, k - 1, axis=1)[:, :k]
                if k < d.shape[1]
                else np.tile(np.arange(d.shape[1]), (len(d), 1))
            )
            dpart = np.take_along_axis(d, part, axis=1)
            order = np.argsort(dpart, axis=1, kind="stable")
            idx[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
            dd = np.take_along_axis(dpart, order, axis=1)
            dist[start : start + len(block)] = np.sqrt(dd) if self.metric == "euclidean" else dd
        return idx, dist

    def predict(self, test_patches: Any) -> np.ndarray:
        """Mean expression of the ``k`` nearest reference spots of each test patch.

        Parameters
        ----------
        test_patches
            ``(n, S, S, 3)`` uint8 patches or their precomputed features ``(n, F)``.

        Returns
        -------
        ``(n, n_genes)`` float32.
        """
        idx, _ = self.kneighbors(test_patches)
        return self.bank_expression_[idx].mean(axis=1, dtype=np.float64).astype(np.float32)


class ImageFeatureRidge(_FeatureModel):
    """HEST-Benchmark-style regression: scaled image features → PCA → ridge, per gene.

    The features are scaled and clipped as in :class:`ImageFeatureKNN`, projected on their first
    ``n_components`` principal components (of the training set), and a ridge regression (closed
    form, one penalty for all genes, intercept not penalised) maps the component scores to
    expression. With ``alpha="auto"`` the penalty is chosen on a grid by the exact leave-one-spot-out
    error (cheap from the SVD); neighbouring spots are correlated, so this errs towards weak
    penalties. HEST-Benchmark applies this to frozen foundation-model embeddings; here it runs on
    the cheap hand-made features, so it is a floor for what an image model should beat.

    Parameters
    ----------
    n_components
        Principal components kept (at most ``min(r - 1, F)`` and the rank of the features).
    alpha
        Ridge penalty, or ``"auto"`` (leave-one-out over ``mean(s²) × 10^[-3..3]``, ``s`` the
        singular values of the kept components).
    scaling, clip, scale_floor
        As in :class:`ImageFeatureKNN`.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.baselines import ImageFeatureRidge
    >>> rng = np.random.default_rng(0)
    >>> feats, expression = rng.random((50, 8)), rng.random((50, 3))
    >>> ImageFeatureRidge(n_components=4).fit(feats, expression).predict(feats[:2]).shape
    (2, 3)
    """

    def __init__(
        self,
        n_components: int = 256,
        *,
        alpha: float | Literal["auto"] = "auto",
        scaling: Literal["robust", "standard"] = "robust",
        clip: float | None = 5.0,
        scale_floor: float = 1e-3,
    ):
        if (
            not isinstance(n_components, int | np.integer)
            or isinstance(n_components, bool)
            or n_components < 1
        ):
            raise ValueError(f"`n_components` must be a positive integer, got {n_components!r}.")
        if alpha != "auto" and (isinstance(alpha, str) or not alpha >= 0):
            raise ValueError(f"`alpha` must be 'auto' or a non-negative number, got {alpha!r}.")
        if scaling not in ("robust", "standard"):
            raise ValueError(f"`scaling` must be 'robust' or 'standard', got {scaling!r}.")
        self.n_components = int(n_components)
        self.alpha = alpha if alpha == "auto" else float(alpha)
        self.scaling, self.clip, self.scale_floor = scaling, clip, scale_floor

    def __repr__(self) -> str:
        chosen = f" (chose {self.alpha_:.3g})" if hasattr(self, "alpha_") and self.alpha == "auto" else ""
        return f"ImageFeatureRidge(n_components={self.n_components}, alpha={self.alpha!r}{chosen})"

    def fit(self, train_patches: Any, train_expression: Any) -> ImageFeatureRidge:
        """Fit PCA and ridge on reference patches (or features) and their expression; returns ``self``."""
        feats, expr = self._prepare_fit(train_patches, train_expression)
        z = self.scaler_.transform(feats).astype(np.float64)
        n = len(z)
        self.pca_mean_ = z.mean(axis=0)
        u, s, vt = np.linalg.svd(z - self.pca_mean_, full_matrices=False)
        rank = int((s > 1e-10 * s[0]).sum()) if s[0] > 0 else 0
        n_comp = max(1, min(self.n_components, max(1, n - 1), rank))
        self.components_ = vt[:n_comp]
        u, s = u[:, :n_comp], s[:n_comp]
        y = expr.astype(np.float64)
        self.y_mean_ = y.mean(axis=0)
        uty = u.T @ (y - self.y_mean_)  # scores x = u·s, so ridge works in the SVD basis
        if self.alpha == "auto":
            alphas = np.logspace(-3, 3, 13) * max(float(np.mean(s**2)), 1e-12)
            errors = []
            for a in alphas:
                shrink = s**2 / (s**2 + a)
                fitted = u @ (shrink[:, None] * uty)
                hat = (u**2) @ shrink + 1.0 / n  # leverage, intercept included
                resid = (y - self.y_mean_ - fitted) / np.maximum(1.0 - hat, 1e-6)[:, None]
                errors.append(float(np.mean(resid**2)))
            self.alpha_ = float(alphas[int(np.argmin(errors))])
        else:
            self.alpha_ = float(self.alpha)
        # coefficients on the component scores x = (z - mean) @ components.T
        gain = np.divide(s, s**2 + self.alpha_, out=np.zeros_like(s), where=s > 0)  # 0: constant features
        self.coef_ = gain[:, None] * uty
        logger.debug(f"ImageFeatureRidge: {n_comp} components, alpha={self.alpha_:.3g}.")
        return self

    def predict(self, test_patches: Any) -> np.ndarray:
        """Predicted expression ``(n, n_genes)`` float32 of test patches (or their features)."""
        z = self._query(test_patches).astype(np.float64)
        x = (z - self.pca_mean_) @ self.components_.T
        return (x @ self.coef_ + self.y_mean_).astype(np.float32)
