"""Estimators on image features: k-NN retrieval (over :mod:`stpredict.retrieval`) and PCA + ridge."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from stpredict._logging import logger
from stpredict._validation import check_k, check_matrix

from ._features import image_features

__all__ = ["ImageFeatureKNN", "ImageFeatureRidge"]


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

    scaling: str
    clip: float | None
    scale_floor: float

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
    n_components
        Retrieve on the first ``n_components`` principal components of the scaled training
        features, each scaled to unit variance (as ``fit(feature_components=...)`` gives a model);
        ``None``: on the scaled features.

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
        n_components: int | None = None,
    ):
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ValueError(f"`k` must be a positive integer, got {k!r}.")
        if n_components is not None and (
            not isinstance(n_components, int | np.integer)
            or isinstance(n_components, bool)
            or n_components < 1
        ):
            raise ValueError(f"`n_components` must be a positive integer or None, got {n_components!r}.")
        self.n_components = None if n_components is None else int(n_components)
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
        pcs = "" if self.n_components is None else f", n_components={self.n_components}"
        return f"ImageFeatureKNN(k={self.k}, metric={self.metric!r}, scaling={self.scaling!r}{pcs}{fitted})"

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
        z = self.scaler_.transform(feats)
        if self.n_components is not None:
            self._fit_axes(z)
        self.bank_features_ = self._reduced(z)
        self.bank_expression_ = expr
        return self

    def _fit_axes(self, z: np.ndarray) -> None:
        """Principal axes of the scaled training features and the spread along them."""
        assert self.n_components is not None
        if self.n_components > min(z.shape):
            raise ValueError(
                f"ImageFeatureKNN: n_components={self.n_components} is more than the "
                f"{min(z.shape)} that {z.shape[0]} spots x {z.shape[1]} features allow."
            )
        self.pca_mean_ = z.mean(axis=0, dtype=np.float64)
        _, _, vt = np.linalg.svd(z - self.pca_mean_, full_matrices=False)
        self.components_ = vt[: self.n_components]
        self.pca_scale_ = np.maximum(((z - self.pca_mean_) @ self.components_.T).std(axis=0), 1e-6)

    def _reduced(self, z: np.ndarray) -> np.ndarray:
        if self.n_components is None:
            return z
        return (((z - self.pca_mean_) @ self.components_.T) / self.pca_scale_).astype(np.float32)

    def kneighbors(self, test_patches: Any, *, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(n, k)`` of the nearest reference spots and their distances (or 1 - cosine).

        The search is :func:`stpredict.retrieval.topk_cosine` (cosine) or, for Euclidean
        distances, :func:`stpredict.retrieval.topk_inner_product` on vectors extended so that the
        inner product is ``q·x - |x|²/2`` (largest for the nearest ``x``).
        """
        from stpredict.retrieval import topk_cosine, topk_inner_product

        q, keys = self._reduced(self._query(test_patches)), self.bank_features_
        if self.metric == "cosine":
            idx, sims = topk_cosine(q, keys, self.k, chunk_size=chunk_size)
            return idx, (1.0 - sims).astype(np.float32)
        ones = np.ones((len(q), 1), dtype=np.float32)
        half_sq = 0.5 * (keys.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        idx, scores = topk_inner_product(
            np.hstack([q, ones]),
            np.hstack([keys, -half_sq]).astype(np.float32),
            self.k,
            chunk_size=chunk_size,
        )
        sq = (q.astype(np.float64) ** 2).sum(axis=1, keepdims=True) - 2.0 * scores
        return idx, np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)

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
