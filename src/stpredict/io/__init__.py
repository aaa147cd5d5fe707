"""Readers: legacy ST sections, HEST-1k samples, whole-slide images; conversion to SpatialData."""

from ._hest import read_hest
from ._legacy_st import read_legacy_st
from ._spatialdata import to_spatialdata
from ._wsi import pixel_size, read_wsi

__all__ = ["pixel_size", "read_hest", "read_legacy_st", "read_wsi", "to_spatialdata"]
