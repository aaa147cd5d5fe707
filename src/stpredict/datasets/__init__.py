"""Datasets: a synthetic offline default, and published legacy ST data fetched with pooch."""

from ._published import her2st, mouse_olfactory_bulb
from ._synthetic import synthetic

__all__ = ["synthetic", "her2st", "mouse_olfactory_bulb"]
