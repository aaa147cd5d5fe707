"""The on-disk (zarr) patch cache of fit(patch_cache=...)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

import stpredict as stp
from stpredict.data import SpotData
from stpredict.data._patch_cache import CachedPatches, cached_patches, patch_cache_key

pytest.importorskip("zarr")
FIT = {"preset": "tiny", "epochs": 2, "seed": 0, "progress": False, "device": "cpu"}
PATCH = {"patch_size_um": 112.0, "size": 24}


@pytest.fixture(scope="module")
def adata():
    return stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=20, seed=6)


def _stores(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cached_patches_equal_the_cut_ones_and_pickle(adata, tmp_path):
    sd = SpotData.from_object(adata)
    full = sd.extract_patches(**PATCH, progress=False)
    cached = cached_patches(sd, **PATCH, folder=tmp_path, progress=False)
    assert isinstance(cached, CachedPatches)
    assert cached.shape == full.shape
    np.testing.assert_array_equal(cached[np.arange(len(full))], full)
    np.testing.assert_array_equal(cached[5], full[5])
    sub = pickle.loads(pickle.dumps(cached.subset(np.array([7, 1, 60]))))
    np.testing.assert_array_equal(sub[np.arange(3)], full[[7, 1, 60]])
    central = cached.central(16)
    assert central.shape == (len(full), 16, 16, 3)
    np.testing.assert_array_equal(central[3], full[3, 4:20, 4:20])


def test_cache_is_reused_and_keyed_by_what_the_pixels_depend_on(adata, tmp_path, caplog):
    sd = SpotData.from_object(adata)
    cached_patches(sd, **PATCH, folder=tmp_path, progress=False)
    first = _stores(tmp_path)
    with caplog.at_level(logging.INFO, logger="stpredict"):
        cached_patches(sd, **PATCH, folder=tmp_path, progress=False)
    assert "reading 72 patches from the cache" in caplog.text
    assert _stores(tmp_path) == first
    cached_patches(sd, patch_size_um=100.0, size=24, folder=tmp_path, progress=False)
    cached_patches(sd.subset(np.arange(10)), **PATCH, folder=tmp_path, progress=False)
    assert len(_stores(tmp_path)) == 3
    assert patch_cache_key(sd, **PATCH) != patch_cache_key(sd, patch_size_um=112.0, size=32)


def test_stale_or_incomplete_cache_is_rebuilt(adata, tmp_path, caplog):
    import zarr

    sd = SpotData.from_object(adata)
    full = sd.extract_patches(**PATCH, progress=False)
    path = cached_patches(sd, **PATCH, folder=tmp_path, progress=False).path
    store = zarr.open_array(str(path), mode="r+")
    store[0] = 0  # pixels that no longer match the slide (e.g. the image file was replaced)
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        again = cached_patches(sd, **PATCH, folder=tmp_path, progress=False)
    assert "does not match these slides; rebuilding" in caplog.text
    np.testing.assert_array_equal(again[0], full[0])
    zarr.open_array(str(path), mode="r+").attrs["complete"] = False  # an interrupted write
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        cached_patches(sd, **PATCH, folder=tmp_path, progress=False)
    assert "rebuilding" in caplog.text


def test_fit_with_patch_cache_trains_the_same_model(adata, tmp_path):
    cached = stp.tl.fit(adata, patch_cache=tmp_path / "cache", **FIT)
    in_memory = stp.tl.fit(adata, stream=False, **FIT)
    assert len(_stores(tmp_path / "cache")) == 1
    np.testing.assert_array_equal(cached.bank["embeddings"], in_memory.bank["embeddings"])
    again = stp.tl.fit(adata, patch_cache=tmp_path / "cache", **FIT)  # read back from the cache
    np.testing.assert_array_equal(again.bank["embeddings"], in_memory.bank["embeddings"])


def test_patch_cache_errors(adata, tmp_path):
    with pytest.raises(ValueError, match="`patch_cache` stores image patches"):
        stp.tl.fit(adata, patch_cache=tmp_path, image_features="handmade", **FIT)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        stp.tl.fit(adata, patch_cache=tmp_path / "file", **FIT)
    with pytest.raises(TypeError, match="must be a folder path"):
        stp.tl.fit(adata, patch_cache=3, **FIT)


def test_cli_fit_patch_cache_and_compile_flags():
    from stpredict.cli import _fit_options, _parser

    on = _parser().parse_args(["fit", "x.h5ad", "--out", "m", "--patch-cache", "cache", "--compile"])
    off = _parser().parse_args(["fit", "x.h5ad", "--out", "m"])
    assert _fit_options(on)["patch_cache"] == "cache"
    assert _fit_options(on)["compile"] is True
    assert not {"patch_cache", "compile"} & set(_fit_options(off))
