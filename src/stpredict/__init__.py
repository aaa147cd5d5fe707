"""Predict spatially resolved gene expression from H&E histology.

Subpackages are imported on first use, so ``import stpredict`` stays light: torch, timm,
squidpy and spatialdata load only when a function that needs them runs.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ._settings import settings

try:
    __version__ = version("stpredict-he")  # the distribution name on PyPI
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = (
    "pp",
    "tl",
    "pl",
    "get",
    "io",
    "datasets",
    "models",
    "data",
    "metrics",
    "retrieval",
    "train",
    "baselines",
)

if TYPE_CHECKING:  # pragma: no cover
    from . import baselines, data, datasets, get, io, metrics, models, pl, pp, retrieval, tl, train

__all__ = ["settings", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'stpredict' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
