"""Typed parts of a method's presets and of a fitted model.

Each part is a dataclass that also reads like the mapping it replaces (``model.patch["size"]``,
``dict(model.retrieval)``), so the JSON it is saved as and code written against the earlier
dict attributes keep working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from stpredict._constants import IMAGENET_MEAN, IMAGENET_STD, Weighting
from stpredict._validation import check_flag, check_stain_stats
from stpredict.train import LoopSettings

__all__ = ["Normalization", "PatchSpec", "Preset", "ReferenceBank", "RetrievalSpec", "TrainingSpec"]


class _Fields(Mapping[str, Any]):
    """Read a dataclass's fields like a mapping (``spec["k"]``, ``spec.get("k")``, ``dict(spec)``).

    Fields named in ``_optional`` are left out of the mapping while they are ``None``; two parts
    compare equal when their mappings do (so ``model.retrieval == {"k": 50, ...}`` works).
    """

    _optional: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self._present():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def _present(self) -> tuple[str, ...]:
        return tuple(n for n in self._names() if n not in self._optional or getattr(self, n) is not None)

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON-able) dict."""
        return {name: getattr(self, name) for name in self._names()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, *, what: str) -> Any:
        """Build from a mapping, refusing keys the part does not have."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{what}: unknown keys {unknown}; expected some of {sorted(names)}.")
        return cls(**values)


@dataclass(frozen=True, eq=False)
class TrainingSpec(_Fields, LoopSettings):
    """A preset's training defaults, overridden by :func:`stpredict.tl.fit` keywords.

    The loop's settings (:class:`stpredict.train.LoopSettings`) and the recipe's augmentation and
    epoch selection.
    """

    stain_jitter: float = 0.0
    translate: float = 0.0
    tta: bool = False
    select_epoch: Literal["val_loss", "val_pearson"] = "val_loss"


@dataclass(eq=False)
class RetrievalSpec(_Fields):
    """How predictions retrieve: ``k`` neighbours, their weighting and (softmax) temperature.

    ``ood_reference`` is the training spots' own similarity statistics, the yardstick of the
    out-of-distribution score (set by :func:`stpredict.tl.fit`).
    """

    _optional: ClassVar[tuple[str, ...]] = ("temperature", "ood_reference")

    k: int = 50
    weighting: Weighting = "mean"
    temperature: float | None = None  # of softmax weighting; None: 1
    ood_reference: dict[str, float] | None = None


@dataclass(frozen=True)
class Preset:
    """One method × preset: the network's keywords, the training defaults, the retrieval defaults."""

    network: Mapping[str, Any]
    training: TrainingSpec
    retrieval: RetrievalSpec


@dataclass(eq=False)
class PatchSpec(_Fields):
    """What the image encoder is fed.

    ``patch_size_um`` of tissue resized to ``size`` px and normalised by ``mean``/``std``;
    ``tta`` averages the embeddings of the 8 flips/rotations; ``features`` names precomputed
    features used instead of pixels; ``stain_target`` (``fit(stain_normalize=True)``) holds the
    training slides' mean and std of the H, E, D concentrations that every slide's patches are
    matched to; ``slide_standardize`` (``fit(slide_standardize=True)``): each slide's features are
    standardised on its own spots.
    """

    _optional: ClassVar[tuple[str, ...]] = ("stain_target",)

    size: int
    patch_size_um: float = 112.0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    tta: bool = False
    features: str | None = None
    stain_target: list[list[float]] | None = None
    slide_standardize: bool = False

    def __post_init__(self):
        self.slide_standardize = check_flag(self.slide_standardize, what="PatchSpec.slide_standardize")
        if self.stain_target is not None:
            stats = check_stain_stats(self.stain_target, what="PatchSpec.stain_target")
            self.stain_target = stats.tolist()


@dataclass(eq=False)
class Normalization(_Fields):
    """How the bank's expression was normalised: counts per ``target_sum``, then ``log1p``."""

    target_sum: float | None = None
    log1p: bool = True


@dataclass(eq=False)
class ReferenceBank(_Fields):
    """The spots predictions retrieve from: expression, its embeddings, slide and id of each."""

    expression: np.ndarray
    embeddings: np.ndarray
    library_id: np.ndarray
    obs_names: np.ndarray
    coords: np.ndarray | None = None

    _optional: ClassVar[tuple[str, ...]] = ("coords",)

    @classmethod
    def build(
        cls,
        expression: Any,
        embeddings: Any,
        *,
        library_id: Sequence[str] | np.ndarray,
        obs_names: Sequence[str] | np.ndarray,
        coords: Any = None,
    ) -> ReferenceBank:
        """A bank with arrays of the stored dtypes (``float32``, ``str``, ``int64``)."""
        return cls(
            expression=np.asarray(expression, dtype=np.float32),
            embeddings=np.asarray(embeddings, dtype=np.float32),
            library_id=np.asarray(library_id).astype(str),
            obs_names=np.asarray(obs_names).astype(str),
            coords=None if coords is None else np.asarray(coords, dtype=np.int64),
        )

    def validate(self, n_genes: int, dim: int, *, what: str) -> ReferenceBank:
        """Check shapes and finiteness (``what`` names the caller in errors); returns ``self``."""
        n = len(self.expression)
        expected = {
            "expression": (n, n_genes),
            "embeddings": (n, dim),
            "library_id": (n,),
            "obs_names": (n,),
            "coords": (n, 2),
        }
        for key, shape in expected.items():
            value = getattr(self, key)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"{what}: bank {key!r} has shape {value.shape}; expected {shape} "
                    f"({n} spots, {n_genes} genes, embedding dim {dim})."
                )
        if not (np.isfinite(self.expression).all() and np.isfinite(self.embeddings).all()):
            raise ValueError(f"{what}: bank expression or embeddings contain NaN or inf.")
        return self
