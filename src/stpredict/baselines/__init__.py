"""Baselines that put a retrieval model's numbers in context.

- :func:`random_retrieval`: the mean of ``k`` random reference spots (the floor, r ≈ 0).
- :func:`oracle_retrieval`: retrieve with the embedding of the *true* test expression (the ceiling
  of any retrieval method with that reference bank and ``k``).
- :func:`image_features` + :class:`ImageFeatureKNN`: hand-made colour/texture features of each
  patch and a plain k-nearest-neighbour retrieval over them (a cheap image baseline without deep
  learning).
- :class:`ImageFeatureRidge`: HEST-Benchmark-style PCA + ridge regression on the same features.

The package holds the reference baselines (``_reference``), the image features (``_features``)
and the estimators on top of :mod:`stpredict.retrieval` (``_estimators``); the runners that
:func:`stpredict.tl.cross_validate` calls live next to it in ``stpredict.tl._runners``.

Everything here works on plain arrays: normalised expression ``(n, n_genes)`` and uint8 patches
``(n, S, S, 3)``. :func:`stpredict.tl.cross_validate` runs them on the same folds, reference bank
and ``k`` as the fitted models.
"""

from __future__ import annotations

from ._estimators import ImageFeatureKNN, ImageFeatureRidge
from ._features import image_feature_names, image_features
from ._reference import oracle_retrieval, random_retrieval
from ._texture import texture_feature_names, texture_features

__all__ = [
    "random_retrieval",
    "oracle_retrieval",
    "image_features",
    "image_feature_names",
    "texture_features",
    "texture_feature_names",
    "ImageFeatureKNN",
    "ImageFeatureRidge",
]
