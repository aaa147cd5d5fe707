"""Readers: legacy Spatial Transcriptomics sections, and conversion to SpatialData."""

from ._legacy_st import read_legacy_st
from ._spatialdata import to_spatialdata

__all__ = ["read_legacy_st", "to_spatialdata"]
