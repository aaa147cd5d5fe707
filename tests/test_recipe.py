"""The training recipe: stain jitter, random translation, test-time augmentation, epoch selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stpredict as stp
from stpredict.data import PatchDataset
from stpredict.data._stain import hed_shift
from stpredict.tl._recipe import Recipe

FIT = {"preset": "tiny", "epochs": 2, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def adata():
    return stp.datasets.synthetic(n_slides=1, n_spots_per_side=8, n_genes=20, seed=2)


def _patches(n=4, side=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_hed_shift_identity_and_direction():
    px = _patches(1, 8)[0]
    np.testing.assert_array_equal(hed_shift(px, (1, 1, 1)), px)
    more_h = hed_shift(np.full((2, 2, 3), 200, np.uint8), (1, 1, 1), (0.3, 0, 0))
    assert more_h.mean() < 200  # more haematoxylin: darker


def test_stain_jitter_only_when_augmenting():
    patches = np.full((2, 8, 8, 3), 180, np.uint8)
    plain = PatchDataset(patches, augment=False, stain_jitter=0.2)
    torch.testing.assert_close(plain[0]["image"], PatchDataset(patches)[0]["image"])
    jittered = PatchDataset(patches, augment=True, stain_jitter=0.2, seed=0)
    assert not torch.allclose(jittered[0]["image"], plain[0]["image"])
    with pytest.raises(ValueError, match="stain_jitter"):
        PatchDataset(patches, stain_jitter=1.5)


def test_crop_is_central_without_augmentation_and_moves_with_it():
    patches = _patches(1, 12)
    central = PatchDataset(patches, crop=8)[0]["image"]
    assert central.shape == (3, 8, 8)
    expected = PatchDataset(np.ascontiguousarray(patches[:, 2:10, 2:10]))[0]["image"]
    torch.testing.assert_close(central, expected)
    moved = PatchDataset(patches, crop=8, augment=True, seed=1)
    draws = {
        tuple(moved[0]["image"][:, 0, 0].tolist()) for epoch in range(8) if moved.set_epoch(epoch) or True
    }
    assert len(draws) > 1
    with pytest.raises(ValueError, match="crop"):
        PatchDataset(patches, crop=13)


def test_tta_embeddings_are_rotation_invariant(adata, tmp_path):
    model = stp.tl.fit(adata, **FIT, tta=True)
    assert model.patch["tta"] is True
    size = model.patch["size"]
    patch = _patches(1, size, seed=3)
    rotated = np.ascontiguousarray(np.rot90(patch, 1, axes=(1, 2)))
    a = model.embed_images(patch, progress=False)
    b = model.embed_images(rotated, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m")
    assert stp.models.load(tmp_path / "m").patch["tta"] is True


def test_select_epoch_by_validation_pearson(adata):
    model = stp.tl.fit(adata, **{**FIT, "epochs": 3}, select_epoch="val_pearson")
    scores = [h["val_score"] for h in model.history]
    assert all(-1 <= s <= 1 for s in scores)
    assert model.training["best_epoch"] == int(np.argmin(scores)) + 1
    assert model.training["select_epoch"] == "val_pearson"


def test_translate_trains_on_larger_patches(adata):
    model = stp.tl.fit(adata, **FIT, translate=0.25, stain_jitter=0.05)
    assert model.training["translate"] == 0.25
    test = adata.copy()
    stp.tl.predict(test, model, k=5, progress=False)  # prediction patches are the plain size
    assert test.obsm["stpredict"].shape[0] == test.n_obs


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("stain_jitter", -0.1, ValueError),
        ("translate", 1.0, ValueError),
        ("tta", "yes", TypeError),
        ("select_epoch", "best", ValueError),
        ("val_fraction", 1.0, ValueError),
    ],
)
def test_recipe_rejects_bad_values(key, value, error):
    defaults = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "image_size": 32}
    with pytest.raises(error, match=key):
        Recipe.resolve(defaults, {key: value}, max_epochs=None)


def test_val_pearson_needs_validation_spots():
    defaults = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "image_size": 32}
    with pytest.raises(ValueError, match="val_fraction"):
        Recipe.resolve(defaults, {"select_epoch": "val_pearson", "val_fraction": 0.0}, max_epochs=None)
