"""A bounded, per-process cache of decoded tiles of lazy (dask-backed) slide images.

A window of a chunked image (zarr / OME-Zarr / a SpatialData image) is assembled from the image's
own chunks, each decoded once and kept in a least-recently-used cache of at most
``stp.settings.tile_cache_mb`` MiB; neighbouring spots (prediction reads them in order, training
batches of nearby spots) then decode each tile once instead of once per patch. Every DataLoader
worker holds its own cache.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["TileCache", "read_window", "tile_cache"]


class TileCache:
    """Least-recently-used decoded tiles, keyed by (image token, tile row, tile column).

    Parameters
    ----------
    max_bytes
        Upper bound of the bytes held; ``0`` turns the cache off.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, int, int], load: Any) -> np.ndarray:
        """The tile under ``key``, decoded by ``load()`` when not cached."""
        tile = self._tiles.get(key)
        if tile is not None:
            self._tiles.move_to_end(key)
            self.hits += 1
            return tile
        self.misses += 1
        tile = np.asarray(load())
        if 0 < tile.nbytes <= self.max_bytes:
            self._tiles[key] = tile
            self.nbytes += tile.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._tiles.popitem(last=False)
                self.nbytes -= old.nbytes
        return tile

    def clear(self) -> None:
        """Drop every tile (and reset the counters)."""
        self._tiles.clear()
        self.nbytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._tiles)


_CACHE: dict[str, TileCache] = {}


def tile_cache() -> TileCache:
    """The cache of this process, sized by ``stp.settings.tile_cache_mb`` (resized when that changes)."""
    from stpredict._settings import settings

    max_bytes = int(settings.tile_cache_mb * 2**20)
    cache = _CACHE.get("cache")
    if cache is None or cache.max_bytes != max_bytes:
        cache = _CACHE["cache"] = TileCache(max_bytes)
    return cache


def _dask_of(array: Any) -> Any:
    """The dask array behind ``array`` (itself, or an xarray's ``.data``), else ``None``."""
    data = getattr(array, "data", array)
    return data if hasattr(data, "chunks") and hasattr(data, "name") and hasattr(data, "compute") else None


_MIN_TILES = 4  # the cache must hold at least this many of the largest tiles to be used
_MAX_WINDOW_TILES = 16  # windows over more tiles than this are read directly


def _largest_tile_bytes(data: Any) -> int:
    rest = int(np.prod(data.shape[2:])) if data.ndim > 2 else 1
    return max(data.chunks[0]) * max(data.chunks[1]) * rest * data.dtype.itemsize


def _edges(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)])


def read_window(array: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
    """``array[y0:y1, x0:x1]`` assembled from cached tiles.

    ``None`` when the array is not dask-backed, its tiles are too large for the cache or the
    window spans more than 16 of them (the caller then reads the window directly).
    """
    data = _dask_of(array)
    cache = tile_cache()
    if data is None or data.ndim < 2 or _largest_tile_bytes(data) * _MIN_TILES > cache.max_bytes:
        return None  # not chunked, or tiles too large to cache a few (e.g. one chunk per slide)
    ys, xs = _edges(data.chunks[0]), _edges(data.chunks[1])
    ty0, ty1 = int(np.searchsorted(ys, y0, side="right")) - 1, int(np.searchsorted(ys, y1, side="left"))
    tx0, tx1 = int(np.searchsorted(xs, x0, side="right")) - 1, int(np.searchsorted(xs, x1, side="left"))
    if (ty1 - ty0) * (tx1 - tx0) > _MAX_WINDOW_TILES:
        return None  # a large window (many spots read at once) decodes each tile once anyway
    out = np.empty((y1 - y0, x1 - x0, *data.shape[2:]), dtype=data.dtype)
    for ty in range(ty0, ty1):
        for tx in range(tx0, tx1):
            ya, yb, xa, xb = ys[ty], ys[ty + 1], xs[tx], xs[tx + 1]
            tile = cache.get(
                (data.name, ty, tx), lambda ya=ya, yb=yb, xa=xa, xb=xb: data[ya:yb, xa:xb].compute()
            )
            cy0, cy1, cx0, cx1 = max(y0, ya), min(y1, yb), max(x0, xa), min(x1, xb)
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = tile[cy0 - ya : cy1 - ya, cx0 - xa : cx1 - xa]
    return out
