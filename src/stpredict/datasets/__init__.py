"""Datasets: a synthetic offline default, and published data (legacy ST, HEST-1k) fetched with pooch."""

from ._published import her2st, hest, mouse_olfactory_bulb
from ._synthetic import synthetic

__all__ = ["synthetic", "her2st", "mouse_olfactory_bulb", "hest"]
