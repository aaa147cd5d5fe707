"""Readers: legacy Spatial Transcriptomics sections, HEST-1k samples, and conversion to SpatialData."""

from ._hest import read_hest
from ._legacy_st import read_legacy_st
from ._spatialdata import to_spatialdata

__all__ = ["read_hest", "read_legacy_st", "to_spatialdata"]
