"""Baselines on tiny hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from stpredict.baselines import (
    ImageFeatureKNN,
    ImageFeatureRidge,
    image_feature_names,
    image_features,
    oracle_retrieval,
    random_retrieval,
)


# ---------------------------------------------------------------------------------------------
# random retrieval
# ---------------------------------------------------------------------------------------------
def test_random_retrieval_is_mean_of_distinct_chosen_rows():
    bank = np.arange(60, dtype=np.float32).reshape(20, 3)
    pred, idx = random_retrieval(bank, 7, k=4, seed=1, return_indices=True)
    assert pred.shape == (7, 3)
    assert pred.dtype == np.float32
    assert idx.shape == (7, 4)
    assert ((idx >= 0) & (idx < 20)).all()
    assert all(len(set(row)) == 4 for row in idx)  # without replacement
    np.testing.assert_allclose(pred, bank[idx].mean(axis=1), rtol=1e-6)
    # reproducible with a seed, different with another
    np.testing.assert_array_equal(random_retrieval(bank, 7, k=4, seed=1), pred)
    assert not np.array_equal(random_retrieval(bank, 7, k=4, seed=2), pred)


def test_random_retrieval_k_equals_bank_is_bank_mean():
    bank = np.random.default_rng(0).random((6, 2)).astype(np.float32)
    pred = random_retrieval(bank, 3, k=6)
    np.testing.assert_allclose(pred, np.tile(bank.mean(axis=0), (3, 1)), rtol=1e-6)


def test_random_retrieval_r_is_near_zero():
    rng = np.random.default_rng(0)
    bank = rng.random((500, 4)).astype(np.float32)
    truth = rng.random((300, 4))
    pred = random_retrieval(bank, 300, k=20)
    r = [np.corrcoef(truth[:, g], pred[:, g])[0, 1] for g in range(4)]
    assert np.all(np.abs(r) < 0.2)


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [({"k": 0}, ValueError), ({"k": 30}, ValueError), ({"k": 2.5}, TypeError)],
)
def test_random_retrieval_bad_k(kwargs, err):
    with pytest.raises(err, match="k"):
        random_retrieval(np.ones((10, 2)), 3, **kwargs)


def test_random_retrieval_bad_bank():
    with pytest.raises(ValueError, match="bank_expression"):
        random_retrieval(np.ones(10), 3, k=2)
    with pytest.raises(ValueError, match="NaN"):
        random_retrieval(np.array([[np.nan, 1.0], [1.0, 1.0]]), 1, k=1)


# ---------------------------------------------------------------------------------------------
# oracle retrieval
# ---------------------------------------------------------------------------------------------
class _StubModel:
    """Linear "expression encoder"; the bank holds the embeddings of its own expression."""

    def __init__(self, bank_expression, weights):
        self.weights = weights
        self.calls = []
        self.bank = {"expression": bank_expression, "embeddings": bank_expression @ weights}

    def embed_expression(self, expression, coords=None):
        self.calls.append(coords)
        return np.asarray(expression) @ self.weights


def _clustered_bank(rng, n_clusters=4, per_cluster=5, n_genes=6):
    centres = rng.normal(size=(n_clusters, n_genes)) * 5
    bank = np.repeat(centres, per_cluster, axis=0) + rng.normal(
        scale=0.05, size=(n_clusters * per_cluster, n_genes)
    )
    return bank.astype(np.float32), centres


def test_oracle_k1_retrieves_identical_rows():
    rng = np.random.default_rng(0)
    bank, _ = _clustered_bank(rng)
    model = _StubModel(bank, rng.normal(size=(bank.shape[1], 8)).astype(np.float32))
    order = rng.permutation(len(bank))
    pred = oracle_retrieval(model, bank[order], k=1)
    np.testing.assert_allclose(pred, bank[order], rtol=1e-5, atol=1e-6)


def test_oracle_retrieves_own_cluster_and_passes_coords():
    rng = np.random.default_rng(1)
    bank, centres = _clustered_bank(rng, per_cluster=5)
    model = _StubModel(bank, np.eye(bank.shape[1], dtype=np.float32))
    queries = centres + rng.normal(scale=0.05, size=centres.shape)
    coords = np.arange(8).reshape(4, 2)
    pred = oracle_retrieval(model, queries, k=5, coords=coords)
    # mean of the cluster's 5 members
    expected = bank.reshape(4, 5, -1).mean(axis=1)
    np.testing.assert_allclose(pred, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(model.calls[-1], coords)


def test_oracle_beats_random():
    rng = np.random.default_rng(2)
    bank, centres = _clustered_bank(rng, n_clusters=6, per_cluster=10)
    model = _StubModel(bank, rng.normal(size=(bank.shape[1], 4)).astype(np.float32))
    labels = rng.integers(0, 6, size=60)
    truth = centres[labels] + rng.normal(scale=0.1, size=(60, bank.shape[1]))
    r_oracle = np.mean(
        [np.corrcoef(truth[:, g], oracle_retrieval(model, truth, k=10)[:, g])[0, 1] for g in range(6)]
    )
    rand = random_retrieval(bank, 60, k=10)
    r_random = np.mean([np.corrcoef(truth[:, g], rand[:, g])[0, 1] for g in range(6)])
    assert r_oracle > 0.9 > r_random


def test_oracle_errors():
    rng = np.random.default_rng(0)
    bank, _ = _clustered_bank(rng)
    model = _StubModel(bank, np.eye(bank.shape[1], dtype=np.float32))
    with pytest.raises(ValueError, match="genes"):
        oracle_retrieval(model, bank[:, :3], k=2)
    with pytest.raises(ValueError, match="coords"):
        oracle_retrieval(model, bank[:4], k=2, coords=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="k"):
        oracle_retrieval(model, bank[:4], k=len(bank) + 1)
    with pytest.raises(TypeError, match="bank"):
        oracle_retrieval(object(), bank[:4], k=2)
    bad = _StubModel(bank, np.eye(bank.shape[1], dtype=np.float32))
    bad.bank = {"expression": bank}
    with pytest.raises(KeyError, match="embeddings"):
        oracle_retrieval(bad, bank[:4], k=2)


# ---------------------------------------------------------------------------------------------
# image features
# ---------------------------------------------------------------------------------------------
def _colour_patches(rng, labels, size=16):
    """Class 0 purple-dense, class 1 pink-smooth, class 2 pale with a few dark dots."""
    palette = np.array([[120, 60, 160], [230, 150, 190], [245, 235, 240]], dtype=np.float64)
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, lab in enumerate(labels):
        img = palette[lab] + rng.normal(scale=12, size=(size, size, 3))
        if lab == 2:
            ys, xs = rng.integers(0, size, size=(2, 4))
            img[ys, xs] = (60, 30, 90)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def test_image_features_shape_names_finite():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(5, 20, 20, 3), dtype=np.uint8)
    feats = image_features(patches, batch_size=2)
    assert feats.shape == (5, len(image_feature_names()))
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # batching does not change the result
    np.testing.assert_allclose(feats, image_features(patches, batch_size=64), rtol=1e-6)
    # float input in [0, 1] is accepted and equivalent
    np.testing.assert_allclose(image_features(patches / 255.0), feats, rtol=1e-5, atol=1e-6)
    # RGBA: alpha ignored
    rgba = np.concatenate([patches, np.full((5, 20, 20, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_allclose(image_features(rgba), feats)


def test_image_features_uniform_patches_and_meaning():
    white = np.full((1, 8, 8, 3), 255, np.uint8)
    black = np.zeros((1, 8, 8, 3), np.uint8)
    names = image_feature_names()
    fw, fb = image_features(white)[0], image_features(black)[0]
    assert np.isfinite(fw).all()
    assert np.isfinite(fb).all()
    col = {n: i for i, n in enumerate(names)}
    assert fw[col["rgb_r_mean"]] == pytest.approx(1.0)
    assert fb[col["rgb_r_mean"]] == pytest.approx(0.0)
    assert fw[col["grad1_mean"]] == 0
    assert fw[col["rgb_g_std"]] == 0
    assert fb[col["dark_frac_30"]] == 1
    assert fw[col["dark_frac_30"]] == 0
    assert fw[col["hist_r_7"]] == 1  # every pixel in the top red bin
    # the haematoxylin concentration of purple exceeds that of pink
    rng = np.random.default_rng(0)
    f = image_features(_colour_patches(rng, [0, 1]))
    assert f[0, col["od_h_mean"]] > f[1, col["od_h_mean"]]


def test_image_features_bad_input():
    with pytest.raises(ValueError, match="shape"):
        image_features(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        image_features(np.full((1, 4, 4, 3), 300, np.int32))


# ---------------------------------------------------------------------------------------------
# k-NN and ridge on the features
# ---------------------------------------------------------------------------------------------
def test_feature_scaling_clips_and_ignores_constant_features():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 4))
    train[:, 1] = 3.0  # constant in training
    train[:, 2] = 0.0
    train[0, 2] = 1e-4  # barely varies: IQR 0, tiny std
    knn = ImageFeatureKNN(k=3).fit(train, rng.random((50, 2)))
    test = rng.normal(size=(5, 4))
    test[:, 1] = 100.0
    test[:, 2] = 0.5
    z = knn.transform(test)
    assert np.isfinite(z).all()
    assert np.abs(z).max() <= 5.0
    np.testing.assert_array_equal(z[:, 1], 0.0)  # constant feature ignored
    np.testing.assert_array_equal(z[:, 2], 5.0)  # huge value clipped
    # ordinary features: z-score with training median / IQR, unclipped
    q25, med, q75 = np.quantile(train[:, 0], (0.25, 0.5, 0.75))
    expected = np.clip((test[:, 0] - med) / ((q75 - q25) / 1.349), -5, 5)
    np.testing.assert_allclose(z[:, 0], expected, rtol=1e-5)
    # standard scaling uses the mean / std
    std = ImageFeatureKNN(k=3, scaling="standard", clip=None).fit(train, rng.random((50, 2)))
    np.testing.assert_allclose(
        std.transform(test)[:, 0], (test[:, 0] - train[:, 0].mean()) / train[:, 0].std(), rtol=1e-5
    )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_image_knn_recovers_colour_coded_expression(metric):
    rng = np.random.default_rng(0)
    train_labels = np.repeat([0, 1, 2], 12)
    test_labels = np.array([0, 1, 2, 2, 1, 0])
    expression = np.eye(3, dtype=np.float32) * 4.0 + 1.0  # one "marker" gene per class
    knn = ImageFeatureKNN(k=5, metric=metric).fit(
        _colour_patches(rng, train_labels), expression[train_labels]
    )
    pred = knn.predict(_colour_patches(rng, test_labels))
    assert pred.shape == (6, 3)
    np.testing.assert_array_equal(pred.argmax(axis=1), test_labels)
    np.testing.assert_allclose(pred, expression[test_labels], atol=1e-5)
    idx, dist = knn.kneighbors(_colour_patches(rng, test_labels))
    assert idx.shape == dist.shape == (6, 5)
    assert (np.diff(dist, axis=1) >= -1e-6).all()  # sorted nearest first
    assert (train_labels[idx] == test_labels[:, None]).all()


def test_image_knn_precomputed_features_equal_patches():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=20)
    patches = _colour_patches(rng, labels)
    expr = rng.random((20, 4)).astype(np.float32)
    a = ImageFeatureKNN(k=4).fit(patches[:15], expr[:15]).predict(patches[15:])
    b = (
        ImageFeatureKNN(k=4)
        .fit(image_features(patches[:15]), expr[:15])
        .predict(image_features(patches[15:]))
    )
    np.testing.assert_allclose(a, b)


def test_image_knn_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="metric"):
        ImageFeatureKNN(metric="manhattan")
    with pytest.raises(ValueError, match="k"):
        ImageFeatureKNN(k=0)
    with pytest.raises(ValueError, match="at most the number of reference spots"):
        ImageFeatureKNN(k=10).fit(rng.random((5, 3)), rng.random((5, 2)))
    with pytest.raises(ValueError, match="same number of rows"):
        ImageFeatureKNN(k=2).fit(rng.random((5, 3)), rng.random((4, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        ImageFeatureKNN(k=2).predict(rng.random((2, 3)))
    knn = ImageFeatureKNN(k=2).fit(rng.random((5, 3)), rng.random((5, 2)))
    with pytest.raises(ValueError, match="fitted on 3"):
        knn.predict(rng.random((2, 4)))


def test_image_ridge_recovers_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    w = rng.normal(size=(6, 3))
    y = x @ w + 2.0
    model = ImageFeatureRidge(n_components=6, alpha=1e-6, scaling="standard", clip=None).fit(x[:150], y[:150])
    np.testing.assert_allclose(model.predict(x[150:]), y[150:], atol=1e-3)
    # fewer components: still correlated, not exact
    small = ImageFeatureRidge(n_components=2, alpha=1.0).fit(x[:150], y[:150]).predict(x[150:])
    assert small.shape == (50, 3)
    assert np.mean([np.corrcoef(small[:, g], y[150:, g])[0, 1] for g in range(3)]) > 0.3


def test_image_ridge_auto_alpha():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 10))
    # pure noise targets: the leave-one-out choice is a strong penalty, predictions near the mean
    noise = rng.normal(size=(120, 2)) + 5.0
    model = ImageFeatureRidge(n_components=10).fit(x[:100], noise[:100])
    assert model.alpha_ >= 100 * 0.5  # ≥ mean(s²)·10^0 ≈ 100 spots · unit variance
    pred = model.predict(x[100:])
    assert np.abs(pred - noise[:100].mean(axis=0)).max() < 0.5
    # a clean linear signal: a weak penalty and accurate predictions
    y = x @ rng.normal(size=(10, 2))
    clean = ImageFeatureRidge(n_components=10, scaling="standard", clip=None).fit(x[:100], y[:100])
    assert clean.alpha_ < 10
    assert np.mean([np.corrcoef(clean.predict(x[100:])[:, g], y[100:, g])[0, 1] for g in range(2)]) > 0.99
    # constant features: the training mean
    const = ImageFeatureRidge().fit(np.ones((10, 3)), y[:10])
    np.testing.assert_allclose(
        const.predict(np.ones((2, 3))), np.tile(y[:10].mean(axis=0), (2, 1)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="alpha"):
        ImageFeatureRidge(alpha="best")


def test_image_knn_euclidean_neighbours_are_the_brute_force_ones():
    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(60, 9)), rng.normal(size=(11, 9))
    knn = ImageFeatureKNN(k=6, metric="euclidean", clip=None).fit(train, rng.random((60, 3)))
    idx, dist = knn.kneighbors(test)
    q, keys = knn.transform(test), knn.bank_features_
    full = np.linalg.norm(q[:, None, :] - keys[None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :6], rtol=1e-4, atol=1e-4)
