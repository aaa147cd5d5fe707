from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from stpredict.data import IMAGENET_MEAN, IMAGENET_STD, PatchDataset, neighbourhood_batches, to_tensor


def _patches(n=6, s=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)


def test_to_tensor_values():
    p = _patches(2)
    t = to_tensor(p)
    assert t.dtype == torch.float32
    assert t.shape == (2, 3, 8, 8)
    expected = (p[1, 3, 4, 2] / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert t[1, 2, 3, 4].item() == pytest.approx(expected, rel=1e-5)
    t0 = to_tensor(p, mean=(0, 0, 0), std=(1, 1, 1))
    assert t0.min() >= 0
    assert t0.max() <= 1
    assert to_tensor(p[0]).shape == (3, 8, 8)
    with pytest.raises(TypeError, match="patches must be uint8"):
        to_tensor(p.astype(np.float32))
    with pytest.raises(ValueError, match="std"):
        to_tensor(p, std=(1, 0, 1))


def test_item_contents():
    p = _patches()
    expr = np.arange(18, dtype=np.float32).reshape(6, 3)
    coords = np.arange(12).reshape(6, 2)
    ds = PatchDataset(p, expr, coords=coords)
    assert len(ds) == 6
    item = ds[4]
    assert set(item) == {"image", "expression", "coords", "index"}
    torch.testing.assert_close(item["image"], to_tensor(p[4]))
    torch.testing.assert_close(item["expression"], torch.tensor([12.0, 13.0, 14.0]))
    assert item["coords"].dtype == torch.int64
    assert item["coords"].tolist() == [8, 9]
    assert item["index"].item() == 4
    assert item["index"].dtype == torch.int64
    empty = PatchDataset(p)[0]
    assert empty["expression"].shape == (0,)
    assert empty["coords"].tolist() == [0, 0]


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"expression must have shape \(6, n_genes\)"):
        PatchDataset(_patches(), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="coords"):
        PatchDataset(_patches(), coords=np.zeros((6, 3)))


def test_augmentation_is_a_dihedral_transform_and_reproducible():
    p = _patches(1, s=6)
    ds = PatchDataset(p, augment=True, seed=3)
    plain = torch.from_numpy(p[0])
    variants = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        img = ds[0]["image"]
        variants.add(img.numpy().tobytes())
        ds.set_epoch(epoch)
        torch.testing.assert_close(ds[0]["image"], img)  # same seed, index, epoch -> same draw
    # every draw is one of the 8 flips/rotations of the patch
    dihedral = set()
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(plain, k, (0, 1))
            x = torch.flip(x, (1,)) if flip else x
            dihedral.add(to_tensor(x.numpy().copy()).numpy().tobytes())
    assert variants <= dihedral
    assert len(variants) >= 4
    # without augmentation the image is untouched
    torch.testing.assert_close(PatchDataset(p)[0]["image"], to_tensor(p[0]))


def test_global_rng_augmentation_follows_torch_seed():
    ds = PatchDataset(_patches(8), augment=True)
    torch.manual_seed(0)
    a = torch.stack([ds[i]["image"] for i in range(8)])
    torch.manual_seed(0)
    b = torch.stack([ds[i]["image"] for i in range(8)])
    torch.testing.assert_close(a, b)


def test_picklable_and_works_with_dataloader():
    ds = PatchDataset(_patches(), np.ones((6, 2), np.float32), augment=True, seed=0)
    ds2 = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(ds2[2]["image"], ds[2]["image"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 8, 8)
    assert batch["expression"].shape == (4, 2)


# --------------------------------------------------------------------------------------------
# neighbourhood_batches
# --------------------------------------------------------------------------------------------
def _two_slides():
    g = np.stack(np.meshgrid(np.arange(10), np.arange(8)), -1).reshape(-1, 2)
    grid = np.concatenate([g, g[:50]])
    libs = np.array(["a"] * 80 + ["b"] * 50)
    return libs, grid


def test_neighbourhood_batches_cover_each_spot_once_and_stay_in_one_slide():
    libs, grid = _two_slides()
    batches = neighbourhood_batches(libs, grid, 16, seed=1)
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(130))
    for b in batches:
        assert len(set(libs[b])) == 1
        assert len(b) >= 8  # the short tail was merged
    # compact: a batch spans far less than a whole slide
    spans = [np.ptp(grid[b], axis=0).sum() for b in batches]
    assert np.median(spans) <= 9


def test_neighbourhood_batches_epochs_and_argument_order():
    libs, grid = _two_slides()
    b0 = neighbourhood_batches(libs, grid, 16, seed=1, epoch=0)
    again = neighbourhood_batches(libs, grid, 16, seed=1, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(b0, again, strict=True))
    b0.set_epoch(1)
    b1 = neighbourhood_batches(libs, grid, 16, seed=1, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(b0, b1, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(b1, again, strict=False))
    swapped = neighbourhood_batches(grid, libs, 16, seed=1)  # (grid, libs) is accepted too
    assert all(np.array_equal(x, y) for x, y in zip(swapped, again, strict=True))
    with pytest.raises(ValueError, match="batch_size"):
        neighbourhood_batches(libs, grid, 0)
    with pytest.raises(ValueError, match="grid_coords must have shape"):
        neighbourhood_batches(libs, grid[:5], 4)


def test_neighbourhood_batches_as_batch_sampler():
    libs, grid = _two_slides()
    ds = PatchDataset(_patches(130, s=4), coords=grid)
    sampler = neighbourhood_batches(libs, grid, 32)
    batches = list(torch.utils.data.DataLoader(ds, batch_sampler=sampler))
    assert sum(len(b["index"]) for b in batches) == 130
