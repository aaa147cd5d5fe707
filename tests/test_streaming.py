"""Streaming patches: cut from the slide when read, equal to the in-memory patches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import stpredict as stp
from stpredict.data import PatchDataset, SlidePatches, SpotData

FIT = {"preset": "tiny", "epochs": 2, "seed": 0, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def adata():
    return stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=20, seed=6)


def test_streamed_patches_equal_the_in_memory_ones(adata):
    sd = SpotData.from_object(adata)
    lazy = SlidePatches(sd, patch_size_um=112, size=24)
    full = sd.extract_patches(patch_size_um=112, size=24, progress=False)
    assert lazy.shape == full.shape
    np.testing.assert_array_equal(lazy[5], full[5])
    np.testing.assert_array_equal(lazy[3:40], full[3:40])
    sub = lazy.subset(np.array([7, 1, 60]))
    np.testing.assert_array_equal(sub.read(), full[[7, 1, 60]])


def test_streamed_patches_of_a_lazy_image(adata):
    dask = pytest.importorskip("dask.array")
    from spatialdata.models import Image2DModel

    sdata = stp.io.to_spatialdata(adata)
    for name, image in list(sdata.images.items()):  # the same pixels, chunked and lazy
        sdata.images[name] = Image2DModel.parse(
            dask.from_array(image.data.compute(), chunks=(3, 64, 64)),
            dims=("c", "y", "x"),
            transformations=image.attrs["transform"],
        )
    sd = SpotData.from_object(sdata)
    assert sd.images["slide0"].is_lazy
    ref = SpotData.from_object(adata).extract_patches(patch_size_um=112, size=24, progress=False)
    np.testing.assert_array_equal(SlidePatches(sd, patch_size_um=112, size=24).read(), ref)


def test_dataset_items_are_the_same_streamed_or_not(adata):
    sd = SpotData.from_object(adata)
    full = sd.extract_patches(patch_size_um=112, size=28, progress=False)
    kw = {"augment": True, "stain_jitter": 0.05, "crop": 24, "seed": 3}
    a = PatchDataset(full, **kw)
    b = PatchDataset(SlidePatches(sd, patch_size_um=112, size=28), **kw)
    b = pickle.loads(pickle.dumps(b))  # what a DataLoader worker receives
    for i in (0, 17, 71):
        np.testing.assert_array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())


def test_fit_streamed_trains_the_same_model(adata):
    streamed = stp.tl.fit(adata, stream=True, **FIT)
    in_memory = stp.tl.fit(adata, stream=False, **FIT)
    assert [h["train_loss"] for h in streamed.history] == [h["train_loss"] for h in in_memory.history]
    np.testing.assert_array_equal(streamed.bank["embeddings"], in_memory.bank["embeddings"])
    a = stp.tl.predict(adata, model=streamed, copy=True, progress=False)
    b = stp.tl.predict(adata, model=in_memory, copy=True, progress=False)
    np.testing.assert_array_equal(a.X, b.X)
