"""The richer hand-made descriptor (``texture_features``) and the principal-axis feature tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stpredict as stp
from stpredict.baselines import image_features, texture_feature_names, texture_features
from stpredict.models import FeatureEncoder

FIT = {"preset": "tiny", "seed": 0, "progress": False, "device": "cpu"}


def _col(name: str) -> int:
    return texture_feature_names().index(name)


def _discs(n_discs: int, *, size: int = 128, radius: int = 4, seed: int = 0) -> np.ndarray:
    """A pink patch with ``n_discs`` separate dark-purple discs (nuclei) on a grid."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (235, 170, 200)
    img += rng.normal(0, 2, size=img.shape)
    yy, xx = np.mgrid[:size, :size]
    step = size // 8
    centres = [(step // 2 + step * (i // 8), step // 2 + step * (i % 8)) for i in range(n_discs)]
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (70, 40, 120)
    return np.clip(img, 0, 255).astype(np.uint8)[None]


def test_texture_features_shape_names_finite_and_batching():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(5, 40, 40, 3), dtype=np.uint8)
    feats = texture_features(patches, batch_size=2)
    names = texture_feature_names()
    assert feats.shape == (5, len(names)) == (5, 366)
    assert len(set(names)) == len(names)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats, texture_features(patches, batch_size=64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(texture_features(patches / 255.0), feats, rtol=1e-5, atol=1e-5)


def test_texture_features_start_with_the_colour_features_of_the_halved_patch():
    rng = np.random.default_rng(1)
    patches = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    halved = patches.astype(np.float32).reshape(3, 16, 2, 16, 2, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    n = len(stp.baselines.image_feature_names())
    np.testing.assert_allclose(texture_features(patches)[:, :n], image_features(halved), rtol=1e-5, atol=1e-6)


def test_texture_features_of_a_flat_patch():
    flat = texture_features(np.full((1, 32, 32, 3), 128, np.uint8))[0]
    assert flat[_col("fb_grey_l0_grad_mean")] == pytest.approx(0.0, abs=1e-6)
    assert flat[_col("fb_grey_l2_log_std")] == pytest.approx(0.0, abs=1e-6)
    # every neighbour ties with the centre: all pixels have the uniform code 8
    assert flat[_col("lbp_grey_l0_8")] == pytest.approx(1.0)
    assert flat[_col("lbp_h_l1_0")] == 0
    assert flat[_col("glcm_d1_contrast")] == 0
    assert flat[_col("glcm_d4_energy")] == pytest.approx(1.0)
    assert flat[_col("glcm_d2_correlation")] == pytest.approx(1.0)  # a flat patch: defined as 1
    light = texture_features(np.full((1, 32, 32, 3), 235, np.uint8))[0]
    assert light[_col("nuclei_t30_density")] == 0  # no haematoxylin: no nucleus
    assert flat[_col("nuclei_t45_area_frac")] == pytest.approx(1.0, abs=0.01)  # mid-grey: one dark blob


def test_texture_cooccurrence_matches_scikit_image():
    skimage_feature = pytest.importorskip("skimage.feature")
    rng = np.random.default_rng(2)
    patch = rng.integers(0, 256, size=(1, 24, 24, 3), dtype=np.uint8)
    grey = (patch[0].astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], np.float32)
    q = np.clip((grey * 16).astype(np.int64), 0, 15).astype(np.uint8)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = skimage_feature.graycomatrix(q, [1], angles, levels=16, symmetric=True, normed=True)
    ours = texture_features(patch)[0]
    for prop in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation"):
        expected = skimage_feature.graycoprops(glcm, prop).mean()
        assert ours[_col(f"glcm_d1_{prop}")] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_texture_nuclei_counts_follow_the_discs():
    few, many = texture_features(np.concatenate([_discs(8), _discs(40)]))
    density = _col("nuclei_t45_density")
    # 8 and 40 discs on 128 x 128 px: 0.49 and 2.44 per 1000 px
    assert few[density] == pytest.approx(8 / 128**2 * 1e3, rel=0.1)
    assert many[density] == pytest.approx(40 / 128**2 * 1e3, rel=0.1)
    assert many[_col("nuclei_t45_area_frac")] > 4 * few[_col("nuclei_t45_area_frac")]
    assert few[_col("nuclei_t45_area_mean")] == pytest.approx(np.pi * 4**2, rel=0.35)


def test_texture_features_tell_stripes_from_blobs():
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, :, ::4] = 255
    stripes[:, :, 1::4] = 255
    coarse = np.zeros((1, 64, 64, 3), np.uint8)
    coarse[:, :32] = 255
    f_stripes, f_coarse = texture_features(np.concatenate([stripes, coarse]))
    assert f_stripes[_col("glcm_d2_contrast")] > 10 * f_coarse[_col("glcm_d2_contrast")]
    assert f_stripes[_col("fb_grey_l0_grad_mean")] > f_coarse[_col("fb_grey_l0_grad_mean")]


def test_texture_features_bad_input():
    with pytest.raises(ValueError, match="at least 16 px"):
        texture_features(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        texture_features(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        texture_features(np.zeros((1, 16, 16, 3), np.uint8), batch_size=0)


# --------------------------------------------------------------------------------------------
# FeatureEncoder(components=d): principal axes of the training features
# --------------------------------------------------------------------------------------------
def _correlated(n: int = 200, f: int = 12, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    x = latent @ rng.normal(size=(3, f)) + 0.05 * rng.normal(size=(n, f))
    return torch.from_numpy((x * rng.uniform(0.5, 20, size=f) + rng.normal(size=f)).astype(np.float32))


def test_feature_encoder_projects_on_the_principal_axes():
    x = _correlated()
    enc = FeatureEncoder(12, components=3)
    assert (enc.in_dim, enc.out_dim) == (12, 3)
    enc.fit_standardisation(x)
    out = enc(x)[:, 0]
    assert out.shape == (200, 3)
    np.testing.assert_allclose(out.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(0, unbiased=False).numpy(), 1, rtol=1e-4)
    axes = enc.axes.double()
    np.testing.assert_allclose((axes.T @ axes).numpy(), np.eye(3), atol=1e-5)
    # the same axes as a plain SVD of the clipped, standardised training features (up to sign)
    z = np.clip((x.numpy() - x.numpy().mean(0)) / x.numpy().std(0), -5, 5)
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(vt[:3] @ axes.numpy()), np.eye(3), atol=1e-4)
    # the three latent factors explain almost everything: reconstruction from 3 axes is close
    assert (enc.axes[enc.axes.abs().argmax(0), torch.arange(3)] > 0).all()  # signed deterministically


def test_feature_encoder_without_components_is_the_plain_standardisation():
    x = _correlated()
    enc = FeatureEncoder(12)
    enc.fit_standardisation(x)
    assert enc.out_dim == 12
    np.testing.assert_allclose(
        enc(x)[:, 0].numpy(), ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy(), atol=1e-5
    )
    assert not hasattr(enc, "axes")


def test_feature_encoder_clips_outliers_before_the_axes():
    x = _correlated()
    enc = FeatureEncoder(12, components=2)
    enc.fit_standardisation(x)
    far = x[:1].clone()
    far[0, 0] = 1e6
    farther = far.clone()
    farther[0, 0] = 1e9
    torch.testing.assert_close(enc(far), enc(farther))  # one wild feature moves a spot by at most 5 sd


def test_feature_encoder_bad_components():
    with pytest.raises(ValueError, match="between 1 and in_features=4"):
        FeatureEncoder(4, components=5)
    enc = FeatureEncoder(12, components=10)
    with pytest.raises(ValueError, match="at least as many training spots"):
        enc.fit_standardisation(_correlated(n=6))


def test_fit_with_feature_components_round_trips(slides, tmp_path):
    train, test = slides
    model = stp.tl.fit(train, image_features="X_feat", feature_components=4, epochs=2, **FIT)
    encoder = model.module.image_encoder
    assert (encoder.in_dim, encoder.out_dim) == (train.obsm["X_feat"].shape[1], 4)
    assert model.config["backbone_kwargs"] == {"in_features": encoder.in_dim, "components": 4}
    assert f"features 'X_feat' ({encoder.in_dim})" in repr(model)
    before = stp.tl.predict(test, model=model, copy=True, progress=False)
    model.save(tmp_path / "m")
    again = stp.models.load(tmp_path / "m")
    torch.testing.assert_close(again.module.image_encoder.axes, encoder.axes)
    after = stp.tl.predict(test, model=again, copy=True, progress=False)
    np.testing.assert_array_equal(before.X, after.X)


def test_fit_refuses_feature_components_it_cannot_use(slides):
    train, _ = slides
    with pytest.raises(ValueError, match="needs image_features="):
        stp.tl.fit(train, feature_components=4, **FIT)
    with pytest.raises(ValueError, match="more than the 24 features"):
        stp.tl.fit(train, image_features="X_feat", feature_components=25, **FIT)
    with pytest.raises(ValueError, match="feature_components"):
        stp.tl.fit(train, image_features="X_feat", feature_components=0, **FIT)


@pytest.mark.slow
def test_fit_on_texture_features_computes_them_from_the_pixels(slides):
    from stpredict.data import SpotData

    train, test = slides
    model = stp.tl.fit(
        train, image_features="texture", feature_components=8, epochs=1, val_fraction=0.0, **FIT
    )
    sd = SpotData.from_object(train)
    spot = texture_features(sd.extract_patches(patch_size_um=112, size=128, progress=False))
    wide = texture_features(sd.extract_patches(patch_size_um=224, size=128, progress=False))
    encoder = model.module.image_encoder
    assert encoder.in_dim == 2 * len(texture_feature_names())
    expected = np.hstack([spot, wide]).mean(0)
    np.testing.assert_allclose(encoder.mean.numpy(), expected, rtol=1e-4, atol=1e-4)
    pred = stp.tl.predict(test, model=model, copy=True, progress=False)
    assert np.isfinite(pred.X).all()


def test_image_knn_on_principal_components():
    from stpredict.baselines import ImageFeatureKNN

    rng = np.random.default_rng(5)
    latent = rng.normal(size=(120, 2))
    feats = np.hstack([latent @ rng.normal(size=(2, 16)), 0.01 * rng.normal(size=(120, 40))])
    expression = latent.astype(np.float32)
    knn = ImageFeatureKNN(k=5, metric="euclidean", scaling="standard", clip=None, n_components=2).fit(
        feats[:100], expression[:100]
    )
    assert knn.bank_features_.shape == (100, 2)
    np.testing.assert_allclose(knn.bank_features_.std(0), 1, rtol=1e-4)
    assert "n_components=2" in repr(knn)
    # the 40 scaled noise columns blur the distances; the 2 leading axes keep the signal
    plain = ImageFeatureKNN(k=5, metric="euclidean", scaling="standard", clip=None).fit(
        feats[:100], expression[:100]
    )
    r_pcs = np.corrcoef(knn.predict(feats[100:])[:, 0], latent[100:, 0])[0, 1]
    r_plain = np.corrcoef(plain.predict(feats[100:])[:, 0], latent[100:, 0])[0, 1]
    assert r_pcs > 0.9
    assert r_pcs > r_plain + 0.03
    with pytest.raises(ValueError, match="n_components=80 is more than the 56"):
        ImageFeatureKNN(k=5, n_components=80).fit(feats[:100], expression[:100])
    with pytest.raises(ValueError, match="n_components"):
        ImageFeatureKNN(k=5, n_components=0)


def test_cross_validation_knn_follows_the_models_components(slides, monkeypatch):
    import anndata as ad

    from stpredict.baselines import ImageFeatureKNN

    data = ad.concat(list(slides), merge="same", uns_merge="unique")
    data.obs["library_id"] = data.obs["library_id"].astype("category")
    seen: list[int | None] = []
    original = ImageFeatureKNN.fit

    def spy(self, *args, **kwargs):
        seen.append(self.n_components)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFeatureKNN, "fit", spy)
    kw = {"preset": "tiny", "epochs": 1, "baselines": ("image_knn",), "progress": False, "n_folds": 2}
    model = ("cmrcnet", {"image_features": "X_feat", "feature_components": 3})
    stp.tl.cross_validate(data, method={"m": model}, baseline_features="X_feat", **kw)
    assert seen == [3, 3]  # the k-NN retrieves on the same input as the model
    seen.clear()
    stp.tl.cross_validate(data, method={"m": model}, **kw)  # other features: no axes of the model's
    assert seen == [None, None]
