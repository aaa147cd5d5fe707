"""Spots, slide images, patches and the torch dataset.

:class:`SpotData` and :class:`SlideImage` load without torch; :class:`PatchDataset`,
:class:`FeatureDataset`,
:func:`to_tensor`, :func:`neighbourhood_batches` and the ImageNet constants import torch on first
access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stpredict._constants import DEFAULT_SPOT_DIAMETER_UM

from ._features import slide_standardized
from ._patches import SlideImage
from ._spotdata import SlidePatches, SpotData

_TORCH_NAMES = (
    "PatchDataset",
    "FeatureDataset",
    "to_tensor",
    "neighbourhood_batches",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
)

if TYPE_CHECKING:  # pragma: no cover
    from ._dataset import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        FeatureDataset,
        PatchDataset,
        neighbourhood_batches,
        to_tensor,
    )

__all__ = [
    "SpotData",
    "SlideImage",
    "SlidePatches",
    "DEFAULT_SPOT_DIAMETER_UM",
    "slide_standardized",
    *_TORCH_NAMES,
]


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module("._dataset", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stpredict.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
