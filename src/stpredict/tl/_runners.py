"""What :func:`stpredict.tl.cross_validate` runs on a fold: methods and baselines, one protocol.

A runner's ``fit_predict(fold)`` trains on ``fold.train`` and returns predictions of the held-out
spots (rows of ``fold.truth``). Methods run first: the first one sets the fold's reference bank,
genes and truth, which the baselines then share, so every row of the result compares the same
spots, genes and ``k``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from stpredict._constants import Weighting
from stpredict._logging import logger

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from stpredict.models import ReferenceBank, STPredictModel

__all__ = ["BASELINES", "Fold", "MethodRunner", "Prediction", "Runner"]

_KEY = "stpredict_cv"


@dataclass
class Fold:
    """One fold: its slides, and (after the first method ran) the truth and reference bank."""

    index: int
    held_out: list[str]
    train: AnnData
    test: AnnData
    k: int
    seed: int
    library_key: str
    spot_kwargs: dict[str, Any] = field(default_factory=dict)
    smooth: float = 0.0  # α of the spatial smoothing applied to every prediction (0: off)
    smooth_radius: float = 1.5
    observed: pd.DataFrame | None = None  # set by the first method (see truth)
    slides: pd.Series | None = None
    first_model: STPredictModel | None = None

    @property
    def truth(self) -> pd.DataFrame:
        """The held-out spots' normalised expression (rows) of the fold's genes (columns)."""
        if self.observed is None:
            raise RuntimeError("cross_validate: a method must run on the fold before the baselines.")
        return self.observed

    @property
    def libraries(self) -> pd.Series:
        """The slide of each held-out spot, in the order of :attr:`truth`."""
        if self.slides is None:
            raise RuntimeError("cross_validate: a method must run on the fold before the baselines.")
        return self.slides

    @property
    def reference(self) -> STPredictModel:
        """The first method's fitted model: its bank is the baselines' reference."""
        if self.first_model is None:
            raise RuntimeError("cross_validate: a method must run on the fold before the baselines.")
        return self.first_model

    def bank(self, model: STPredictModel | None = None) -> ReferenceBank:
        """The reference bank of ``model`` (default: :attr:`reference`), read by key."""
        bank = (model or self.reference).bank
        if bank is None:
            raise ValueError("cross_validate: a fitted model has no reference bank.")
        return bank

    def k_for(self, bank_size: int) -> int:
        """``k``, lowered (with a warning) when the bank has fewer spots."""
        if bank_size < self.k:
            logger.warning(
                f"cross_validate: fold {self.index}: only {bank_size} reference spots; k={self.k} lowered."
            )
        return min(self.k, bank_size)

    def grid_coords(self) -> np.ndarray:
        """Grid coordinates of the held-out spots, in the order of ``truth``."""
        return self._held_out_spots("grid_coords")

    def smoothed(self, values: np.ndarray) -> np.ndarray:
        """``values`` of the held-out spots smoothed over their spot graph (unchanged when off)."""
        if self.smooth <= 0:
            return values
        from ._smooth import spatial_smooth

        centers, libraries = self._held_out_spots("centers"), self.libraries.to_numpy()
        return spatial_smooth(values, centers, libraries, alpha=self.smooth, radius=self.smooth_radius)

    def _held_out_spots(self, attribute: str) -> np.ndarray:
        """A per-spot array of the held-out slides' :class:`~stpredict.data.SpotData`, rows as ``truth``."""
        from stpredict.data import SpotData

        sd = SpotData.from_object(self.test, library_key=self.library_key, **self.spot_kwargs)
        values = pd.DataFrame(getattr(sd, attribute), index=sd.obs_names.astype(str))
        return values.reindex(self.truth.index.astype(str)).to_numpy()


@dataclass
class Prediction:
    """A runner's predictions of the held-out spots (rows of ``fold.truth``) and its timings."""

    label: str
    values: np.ndarray
    fit_s: float = 0.0
    predict_s: float = 0.0


class Runner(Protocol):
    """Anything :func:`~stpredict.tl.cross_validate` can run on a fold."""

    label: str

    def fit_predict(self, fold: Fold) -> list[Prediction]:
        """Train on ``fold.train``; predict the held-out spots."""
        ...


@dataclass
class MethodRunner:
    """A method of :data:`stpredict.models.METHODS`: ``tl.fit`` then ``tl.predict(copy=True)``.

    With ``oracle``, also the retrieval with the embeddings of the true held-out expression
    (the ceiling of retrieval from that bank with that ``k``), labelled ``"oracle (<label>)"``.
    """

    label: str
    method: str
    fit_kwargs: dict[str, Any]
    weighting: Weighting | None = None
    temperature: float | None = None
    oracle: bool = False
    keep: Callable[[str, int, STPredictModel], None] | None = None

    def fit_predict(self, fold: Fold) -> list[Prediction]:
        from ._fit import fit

        t0 = time.perf_counter()
        model = fit(fold.train, method=self.method, seed=fold.seed, progress=False, **self.fit_kwargs)  # type: ignore[arg-type]
        fit_s = time.perf_counter() - t0
        k = fold.k_for(len(fold.bank(model)["expression"]))
        t0 = time.perf_counter()
        pred = self._predict(fold, model, k)
        out = [Prediction(self.label, pred, fit_s, time.perf_counter() - t0)]
        if self.oracle:
            out.append(self._oracle(fold, model, k))
        if fold.first_model is None:
            fold.first_model = model
        if self.keep is not None:
            self.keep(self.label, fold.index, model)
        return out

    def _predict(self, fold: Fold, model: STPredictModel, k: int) -> np.ndarray:
        from stpredict.get import prediction as get_prediction

        from ._predict import predict

        passed = {key: self.fit_kwargs[key] for key in ("device", "table_key") if key in self.fit_kwargs}
        result = predict(
            fold.test, model, k=k, weighting=self.weighting, temperature=self.temperature, copy=True,
            key_added=_KEY, progress=False,
            library_key=fold.library_key, **passed,
        )  # fmt: skip
        assert result is not None  # copy=True returns the new AnnData
        pred, truth = get_prediction(result, _KEY)
        if truth is None:
            raise ValueError(
                f"cross_validate: the held-out slides {fold.held_out} have no counts for the genes."
            )
        if fold.library_key not in result.obs:
            raise KeyError(f"cross_validate: predict(copy=True) dropped obs[{fold.library_key!r}].")
        if fold.observed is None:
            fold.observed, fold.slides = truth, result.obs[fold.library_key].astype(str)
        return pred.reindex(index=fold.truth.index, columns=fold.truth.columns).to_numpy()

    def _oracle(self, fold: Fold, model: STPredictModel, k: int) -> Prediction:
        from stpredict.baselines import oracle_retrieval

        t0 = time.perf_counter()
        weighting = self.weighting or model.retrieval["weighting"]
        values = oracle_retrieval(
            model, fold.truth.to_numpy(np.float32), k=k, weighting=weighting, coords=fold.grid_coords()
        )
        return Prediction(f"oracle ({self.label})", values, 0.0, time.perf_counter() - t0)


@dataclass
class RandomRunner:
    """The mean of ``k`` random bank spots: the floor (r ≈ 0)."""

    label: str = "random"

    def fit_predict(self, fold: Fold) -> list[Prediction]:
        from stpredict.baselines import random_retrieval

        t0 = time.perf_counter()
        bank = fold.bank()["expression"]
        values = random_retrieval(bank, len(fold.truth), k=fold.k_for(len(bank)), seed=fold.seed + fold.index)
        assert isinstance(values, np.ndarray)  # without return_indices
        return [Prediction(self.label, values, 0.0, time.perf_counter() - t0)]


@dataclass
class FeatureRunner:
    """An estimator on image features (``image_knn``, ``image_ridge``) fitted on the bank's spots."""

    label: str
    features: Any  # a _FeatureCache: the features of each spot, computed once per slide

    def fit_predict(self, fold: Fold) -> list[Prediction]:
        from stpredict.baselines import ImageFeatureKNN, ImageFeatureRidge

        t0 = time.perf_counter()
        reference = fold.reference
        patch_um = float(reference.patch["patch_size_um"])
        bank = fold.bank()["expression"]
        stain = reference.patch.get("stain_target")  # the model's stain matching applies to the baseline too
        # and so does its per-slide standardisation, when it reads the baseline's own features
        per_slide = self._same_features(reference) and reference.patch.slide_standardize
        train = self.features.get(
            np.asarray(fold.bank()["obs_names"]).astype(str), patch_um, stain, per_slide=per_slide
        )
        test = self.features.get(fold.truth.index, patch_um, stain, per_slide=per_slide)
        if self.label == "image_ridge":
            estimator: ImageFeatureKNN | ImageFeatureRidge = ImageFeatureRidge()
        else:  # on the model's principal axes when it reduces the same features (feature_components)
            estimator = ImageFeatureKNN(k=fold.k_for(len(bank)), n_components=self._components(reference))
        values = estimator.fit(train, bank).predict(test)
        return [Prediction(self.label, values, 0.0, time.perf_counter() - t0)]

    def _same_features(self, reference: STPredictModel) -> bool:
        """Whether the reference model reads the baseline's own features."""
        return reference.patch.get("features") == self.features.key

    def _components(self, reference: STPredictModel) -> int | None:
        """The reference model's ``feature_components`` if it reads the baseline's own features."""
        if not self._same_features(reference):
            return None
        return reference.config.get("backbone_kwargs", {}).get("components")


# Baseline name → how to build its runner from the cross-validation's shared image features.
# "oracle" is not here: it runs with each method (it needs that method's embeddings).
BASELINES: dict[str, Callable[[Any], Runner] | None] = {
    "random": lambda features: RandomRunner(),
    "oracle": None,
    "image_knn": lambda features: FeatureRunner("image_knn", features),
    "image_ridge": lambda features: FeatureRunner("image_ridge", features),
}
