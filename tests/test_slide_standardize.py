"""Per-slide standardisation of image features (``fit(slide_standardize=True)``)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest

import stpredict as stp
from stpredict.data import slide_standardized
from stpredict.models._specs import PatchSpec

FIT = {"preset": "tiny", "seed": 0, "progress": False, "device": "cpu", "epochs": 2}


def test_each_slide_gets_zero_mean_and_unit_std():
    rng = np.random.default_rng(0)
    libs = np.repeat(["a", "b"], [40, 60])
    feats = rng.normal(size=(100, 5)) * [1, 2, 3, 4, 5] + [0, 10, -3, 7, 1]
    feats[libs == "b"] = feats[libs == "b"] * 3 + 20  # a slide-wide shift and scale
    out = slide_standardized(feats, libs, what="test")
    assert out.dtype == np.float32
    for lib in ("a", "b"):
        np.testing.assert_allclose(out[libs == lib].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(out[libs == lib].std(0), 1, rtol=1e-4)
    # an affine change of one slide's features leaves its standardised features as they were
    shifted = feats.copy()
    shifted[libs == "a"] = 0.5 * feats[libs == "a"] - 4
    np.testing.assert_allclose(slide_standardized(shifted, libs, what="test"), out, atol=1e-5)


def test_constant_features_are_centred_and_views_use_the_first_views_statistics():
    libs = np.repeat(["a", "b"], 4)
    views = np.stack([np.arange(8.0), np.arange(8.0) + 100], axis=1)[:, :, None]  # (8, 2 views, 1)
    views = np.concatenate([views, np.full((8, 2, 1), 3.0)], axis=2)  # a constant second feature
    out = slide_standardized(views, libs, what="test")
    assert out.shape == (8, 2, 2)
    np.testing.assert_array_equal(out[:, :, 1], 0)
    first = out[:, 0, 0]
    np.testing.assert_allclose(first[:4], (np.arange(4) - 1.5) / np.arange(4).std(), rtol=1e-6)
    # view 1 is view 0 + 100, scaled with view 0's statistics
    np.testing.assert_allclose(out[:, 1, 0] - first, 100 / np.arange(4).std(), rtol=1e-5)


def test_bad_slides_are_refused_or_warned_about(caplog):
    with pytest.raises(ValueError, match=r"slide .b. has 1 spot\(s\)"):
        slide_standardized(np.ones((3, 2)), np.array(["a", "a", "b"]), what="test")
    with pytest.raises(ValueError, match="3 feature rows for 2 spots"):
        slide_standardized(np.ones((3, 2)), np.array(["a", "a"]), what="test")
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        slide_standardized(np.random.default_rng(0).normal(size=(5, 2)), np.repeat("a", 5), what="test")
    assert "slide 'a' has only 5 spots" in caplog.text


def test_predictions_ignore_a_slide_wide_shift_of_the_features(slides, tmp_path):
    train, test = slides
    model = stp.tl.fit(train, image_features="X_feat", slide_standardize=True, **FIT)
    assert model.patch["slide_standardize"] is True
    assert "standardised per slide" in repr(model)
    before = stp.tl.predict(test, model=model, copy=True, progress=False)
    shifted = test.copy()
    shifted.obsm["X_feat"] = 1.7 * test.obsm["X_feat"] + 5.0  # another scanner / stain, say
    after = stp.tl.predict(shifted, model=model, copy=True, progress=False)
    np.testing.assert_allclose(after.X, before.X, rtol=1e-5, atol=1e-5)
    # without it the same shift changes the predictions
    plain = stp.tl.fit(train, image_features="X_feat", **FIT)
    assert plain.patch["slide_standardize"] is False
    moved = stp.tl.predict(shifted, model=plain, copy=True, progress=False).X
    assert not np.allclose(moved, stp.tl.predict(test, model=plain, copy=True, progress=False).X, atol=1e-3)
    # saved and loaded, the model standardises the same way
    model.save(tmp_path / "m")
    again = stp.models.load(tmp_path / "m")
    assert again.patch.slide_standardize is True
    np.testing.assert_array_equal(stp.tl.predict(test, model=again, copy=True, progress=False).X, before.X)


def test_predict_retrieves_with_the_embeddings_of_the_standardised_features(slides):
    from stpredict.retrieval import retrieve

    train, test = slides
    model = stp.tl.fit(train, image_features="X_feat", slide_standardize=True, **FIT)
    libs = test.obs["library_id"].astype(str).to_numpy()
    queries = model.embed_features(slide_standardized(test.obsm["X_feat"], libs, what="test"), progress=False)
    manual = retrieve(queries, model.bank.embeddings, model.bank.expression, 10).prediction
    pred = stp.tl.predict(test, model=model, k=10, copy=True, progress=False, uncertainty=False)
    np.testing.assert_allclose(pred.X, np.asarray(manual), rtol=1e-5, atol=1e-6)
    raw = model.embed_features(test.obsm["X_feat"], progress=False)  # what it would be without
    assert not np.allclose(raw, queries, atol=1e-3)


def test_fit_refuses_slide_standardize_without_features(slides):
    train, _ = slides
    with pytest.raises(ValueError, match="slide_standardize=True .* needs image_features="):
        stp.tl.fit(train, slide_standardize=True, **FIT)
    with pytest.raises(TypeError, match="slide_standardize` must be True or False"):
        stp.tl.fit(train, image_features="X_feat", slide_standardize="yes", **FIT)
    with pytest.raises(TypeError, match="PatchSpec.slide_standardize must be True or False"):
        PatchSpec.from_dict({"size": 8, "slide_standardize": "yes"}, what="patch")
    assert PatchSpec.from_dict({"size": 8}, what="patch").slide_standardize is False  # older files


def test_cross_validation_knn_follows_the_models_slide_standardisation(slides):
    data = ad.concat(list(slides), merge="same", uns_merge="unique")
    data.obs["library_id"] = data.obs["library_id"].astype("category")
    libs = data.obs["library_id"].astype(str).to_numpy()
    data.obsm["X_pre"] = slide_standardized(data.obsm["X_feat"], libs, what="test")
    kw = {"preset": "tiny", "epochs": 1, "baselines": ("image_knn",), "progress": False, "n_folds": 3}

    def knn_rows(key: str, **fit_kwargs) -> np.ndarray:
        model = ("cmrcnet", {"image_features": key, "feature_components": 3, **fit_kwargs})
        res = stp.tl.cross_validate(data, method={"m": model}, baseline_features=key, **kw)
        rows = res.per_gene[res.per_gene["method"] == "image_knn"]
        return rows.sort_values(["fold", "gene_set", "gene"])["pearson_r"].to_numpy()

    # the k-NN on the raw features of a slide-standardising model = the k-NN on standardised ones
    np.testing.assert_allclose(knn_rows("X_feat", slide_standardize=True), knn_rows("X_pre"), atol=1e-5)
    assert not np.allclose(knn_rows("X_feat"), knn_rows("X_pre"), atol=1e-3)
