"""The bounded cache of decoded tiles of chunked (dask / zarr) slide images."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.data._patches import SlideImage, extract_image_patches
from stpredict.data._tiles import TileCache, read_window, tile_cache

da = pytest.importorskip("dask.array")


@pytest.fixture
def cache_mb():
    """Set ``settings.tile_cache_mb`` for one test; the cache starts empty and is restored after."""
    before = stp.settings.tile_cache_mb

    def set_mb(value):
        stp.settings.tile_cache_mb = value
        tile_cache().clear()
        return tile_cache()

    yield set_mb
    stp.settings.tile_cache_mb = before
    tile_cache().clear()


def _image(seed=0, shape=(300, 260, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_windows_equal_the_array_across_irregular_tiles(cache_mb):
    cache_mb(64)
    pixels = _image()
    lazy = da.from_array(pixels, chunks=((64, 100, 36, 100), (50, 50, 160), 3))
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(read_window(lazy, 0, 300, 0, 260), pixels)  # all 4 x 3 tiles
    for _ in range(40):
        y0, x0 = rng.integers(0, 299), rng.integers(0, 259)
        y1, x1 = rng.integers(y0 + 1, 301), rng.integers(x0 + 1, 261)
        np.testing.assert_array_equal(read_window(lazy, y0, y1, x0, x1), pixels[y0:y1, x0:x1])
    small_tiles = da.from_array(pixels, chunks=(50, 50, 3))  # 6 x 6 tiles: more than 16
    assert read_window(small_tiles, 0, 300, 0, 260) is None


def test_patches_from_cached_tiles_equal_in_memory_patches(cache_mb, monkeypatch):
    from stpredict.data import _patches

    monkeypatch.setattr(_patches, "_BAND_PIXELS", 2_000)  # one window per spot, as streaming reads
    cache = cache_mb(64)
    pixels = _image(2)
    centers = np.random.default_rng(3).uniform(-10, 270, size=(50, 2))
    kwargs = {"patch_size_um": 40.0, "size": 24}
    expected = extract_image_patches(SlideImage(pixels, (1.0, 1.0)), centers, **kwargs)
    lazy = SlideImage(da.from_array(pixels, chunks=(64, 64, 3)), (1.0, 1.0))
    np.testing.assert_array_equal(extract_image_patches(lazy, centers, **kwargs), expected)
    misses = cache.misses
    assert misses > 0
    np.testing.assert_array_equal(extract_image_patches(lazy, centers, **kwargs), expected)
    assert cache.misses == misses
    assert cache.hits > 0


def test_cache_stays_within_its_budget(cache_mb):
    cache = cache_mb(0.1)  # 104,857 bytes: 8 full tiles of 64 x 64 x 3 (of 25, edge tiles smaller)
    lazy = da.from_array(_image(4), chunks=(64, 64, 3))
    for y in range(0, 300, 20):
        read_window(lazy, y, min(y + 30, 300), 0, 260)
        assert cache.nbytes <= cache.max_bytes
    assert 0 < len(cache) < 25
    assert cache.misses > len(cache)


def test_arrays_of_the_same_shape_do_not_share_tiles(cache_mb):
    cache_mb(64)
    a, b = _image(5), _image(6)
    lazy_a, lazy_b = (da.from_array(x, chunks=(64, 64, 3)) for x in (a, b))
    np.testing.assert_array_equal(read_window(lazy_a, 0, 64, 0, 64), a[:64, :64])
    np.testing.assert_array_equal(read_window(lazy_b, 0, 64, 0, 64), b[:64, :64])


def test_no_cache_for_numpy_off_or_huge_tiles(cache_mb):
    cache_mb(0)
    assert read_window(da.from_array(_image(), chunks=(64, 64, 3)), 0, 10, 0, 10) is None
    cache_mb(0.1)
    assert read_window(_image(), 0, 10, 0, 10) is None  # in memory: sliced directly
    one_chunk = da.from_array(_image(), chunks=-1)  # 234 kB: fewer than 4 fit in 0.1 MiB
    assert read_window(one_chunk, 0, 10, 0, 10) is None


def test_tile_cache_lru_order():
    cache = TileCache(max_bytes=3 * 8)
    for i in range(3):
        cache.get(("x", i, 0), lambda i=i: np.full(8, i, np.uint8))
    cache.get(("x", 0, 0), lambda: pytest.fail("tile 0 is cached"))  # 0 is now the most recent
    cache.get(("x", 3, 0), lambda: np.full(8, 3, np.uint8))  # evicts tile 1
    assert ("x", 1, 0) not in cache._tiles
    assert ("x", 0, 0) in cache._tiles
    assert cache.nbytes == 24
    assert cache.hits == 1
    assert cache.misses == 4
