"""Datasets: a synthetic offline default, and published data (legacy ST, HEST-1k) fetched with pooch.

``DEMO_DATASETS`` maps the names ``stpredict demo --dataset`` accepts to a loader
``load(seed, progress) -> AnnData``.
"""

from collections.abc import Callable
from typing import Any

from ._published import her2st, hest, mouse_olfactory_bulb
from ._synthetic import synthetic

DEMO_DATASETS: dict[str, Callable[[int, bool], Any]] = {
    "synthetic": lambda seed, progress: synthetic(seed=seed),
    "her2st": lambda seed, progress: her2st(progress=progress),
    "mouse_olfactory_bulb": lambda seed, progress: mouse_olfactory_bulb(progress=progress),
}

__all__ = ["DEMO_DATASETS", "synthetic", "her2st", "mouse_olfactory_bulb", "hest"]
