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


# -- trust: spread and out-of-distribution score ----------------------------------------------------
def test_predict_writes_spread_and_ood(adata):
    from stpredict._constants import ood_key, std_key

    model = stp.tl.fit(adata, **FIT)
    test = adata.copy()
    stp.tl.predict(test, model, k=5, progress=False)
    std, ood = test.obsm[std_key("stpredict")], test.obs[ood_key("stpredict")]
    assert std.shape == test.obsm["stpredict"].shape
    assert list(std.columns) == model.genes
    assert (std.to_numpy() >= 0).all()
    assert np.isfinite(ood.to_numpy()).all()
    out = stp.tl.predict(test, model, k=5, copy=True, key_added="c", progress=False)
    assert out.layers[std_key("c")].shape == out.shape
    assert ood_key("c") in out.obs
    assert stp.get.spread(out, "c").shape == out.shape
    none = adata.copy()
    stp.tl.predict(none, model, k=5, uncertainty=False, progress=False)
    assert std_key("stpredict") not in none.obsm
    assert ood_key("stpredict") not in none.obs


def test_spread_is_zero_for_identical_neighbours():
    from stpredict.retrieval import retrieve

    keys = np.random.default_rng(0).normal(size=(6, 4))
    values = np.tile(np.array([[1.0, 2.0, 3.0]]), (6, 1))  # every bank spot has the same expression
    res = retrieve(keys[:2], keys, values, 4, spread=True)
    np.testing.assert_allclose(res.spread, 0.0, atol=1e-6)
    values[:, 0] = np.arange(6)  # one gene varies: only its spread grows
    res = retrieve(keys[:2], keys, values, 6, spread=True)
    np.testing.assert_allclose(res.spread[:, 0], np.arange(6).std(), rtol=1e-5)
    np.testing.assert_allclose(res.spread[:, 1:], 0.0, atol=1e-6)


def test_ood_score_is_higher_for_unfamiliar_patches(adata):
    model = stp.tl.fit(adata, **{**FIT, "epochs": 3})
    from stpredict.retrieval import ood_score, topk_cosine

    size = model.patch["size"]
    from stpredict.data import SpotData

    own = SpotData.from_object(adata).extract_patches(patch_size_um=112.0, size=size, progress=False)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, own.shape, dtype=np.uint8)  # nothing like tissue
    ref = model.retrieval["ood_reference"]

    def score(patches):
        emb = model.embed_images(patches, progress=False)
        _, sims = topk_cosine(emb, model.bank["embeddings"], 5)
        return float(np.median(ood_score(sims, ref)))

    assert score(noise) > score(own)


def test_grouped_folds_never_split_a_group():
    from stpredict.tl._cv import _make_folds

    groups = np.array(["A"] * 3 + ["B"] * 2 + ["C"] * 4 + ["D"] + ["E"] * 2 + ["F"] * 3)
    for seed in range(5):
        folds = _make_folds(groups, None, seed)
        held = [g for fold in folds for g in fold]
        assert sorted(held) == sorted(set(groups))  # each group held out exactly once
        for fold in folds:
            assert len(set(fold)) == len(fold)


def test_preset_val_pearson_falls_back_without_validation_spots():
    defaults = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "image_size": 32}
    defaults["select_epoch"] = "val_pearson"  # as in the cpu preset
    assert Recipe.resolve(defaults, {"val_fraction": 0.0}, max_epochs=None).select_epoch == "val_loss"
    assert Recipe.resolve(defaults, {}, max_epochs=None).select_epoch == "val_pearson"
