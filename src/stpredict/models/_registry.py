"""The method registry: each module class under the name it declares (``cls.name``)."""

from __future__ import annotations

from ._base import RetrievalModule
from .bleep import BLEEP
from .cmrcnet import CMRCNet
from .mclstexp import MclSTExp

__all__ = ["METHODS", "PRESETS"]

METHODS: dict[str, type[RetrievalModule]] = {cls.name: cls for cls in (CMRCNet, BLEEP, MclSTExp)}
"""Method name → module class."""

PRESETS: dict[str, tuple[str, ...]] = {name: tuple(cls.presets) for name, cls in METHODS.items()}
"""Method name → the names of its presets."""
