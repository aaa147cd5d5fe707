"""Image input other than trainable pixels: precomputed features and a frozen backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stpredict as stp
from stpredict.metrics import pearson_per_gene

FIT = {"preset": "tiny", "seed": 0, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def slides():
    """Two training slides and one test slide whose obsm['X_feat'] are noisy latent programmes."""
    adata = stp.datasets.synthetic(n_slides=3, n_spots_per_side=10, n_genes=30, seed=3)
    rng = np.random.default_rng(0)
    programs = np.asarray(adata.obsm["programs"], dtype=np.float32)
    noise = rng.normal(size=(adata.n_obs, 12)).astype(np.float32)
    adata.obsm["X_feat"] = np.hstack([programs + 0.1 * rng.normal(size=programs.shape), noise])
    train = adata[adata.obs["library_id"] != "slide2"].copy()
    test = adata[adata.obs["library_id"] == "slide2"].copy()
    return train, test


@pytest.fixture(scope="module")
def feature_model(slides):
    return stp.tl.fit(slides[0], image_features="X_feat", epochs=30, lr=1e-3, **FIT)


def _mean_r(adata) -> float:
    truth = adata.obsm["stpredict_truth"].to_numpy()
    return float(np.nanmean(pearson_per_gene(truth, adata.obsm["stpredict"].to_numpy())))


def test_features_model_learns_from_the_features(slides, feature_model):
    train, test = slides
    assert feature_model.module.takes_features
    assert feature_model.config["backbone"] == "features"
    assert "features 'X_feat' (16)" in repr(feature_model)
    stp.tl.predict(test, model=feature_model, progress=False)
    informative = _mean_r(test)
    shuffled = test.copy()
    shuffled.obsm["X_feat"] = np.random.default_rng(1).permutation(shuffled.obsm["X_feat"])
    stp.tl.predict(shuffled, model=feature_model, progress=False)
    assert informative > 0.35
    assert informative > _mean_r(shuffled) + 0.3  # the prediction follows the features


def test_features_are_standardised_with_training_statistics(slides):
    train = slides[0]
    model = stp.tl.fit(train, image_features="X_feat", epochs=1, val_fraction=0.0, **FIT)
    encoder = model.module.image_encoder
    feats = np.asarray(train.obsm["X_feat"], dtype=np.float64)
    np.testing.assert_allclose(encoder.mean.numpy(), feats.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(encoder.std.numpy(), feats.std(0), rtol=1e-4)


def test_features_model_round_trips(slides, feature_model, tmp_path):
    test = slides[1]
    before = stp.tl.predict(test, model=feature_model, copy=True, progress=False)
    feature_model.save(tmp_path / "m")
    again = stp.models.load(tmp_path / "m")
    after = stp.tl.predict(test, model=again, copy=True, progress=False)
    np.testing.assert_array_equal(before.X, after.X)
    assert again.patch["features"] == "X_feat"


def test_features_model_refuses_patches_and_missing_keys(slides, feature_model):
    test = slides[1].copy()
    with pytest.raises(ValueError, match="takes precomputed features"):
        feature_model.embed_images(np.zeros((2, 32, 32, 3), np.uint8))
    del test.obsm["X_feat"]
    with pytest.raises(KeyError, match="image_features='X_feat' is not in the spots' table's obsm"):
        stp.tl.predict(test, model=feature_model, progress=False)


def test_features_from_a_spatialdata_table(slides):
    import anndata as ad

    train, test = slides
    sdata = stp.io.to_spatialdata(train)
    spots = sdata.tables["table"]
    feats = ad.AnnData(np.asarray(train.obsm["X_feat"])[::-1].copy())  # rows in another order
    feats.obs_names = list(train.obs_names[::-1])
    sdata.tables["uni"] = feats
    model = stp.tl.fit(sdata, table_key="table", image_features="uni", epochs=2, **FIT)
    assert model.module.image_encoder.out_dim == 16
    assert spots.n_obs == train.n_obs  # the input table is untouched
    # the same features from obsm give the same standardisation: rows were matched by spot id
    ref = stp.tl.fit(train, image_features="X_feat", epochs=2, **FIT)
    np.testing.assert_allclose(model.module.image_encoder.mean, ref.module.image_encoder.mean, rtol=1e-5)


def test_bad_feature_input_is_named(slides):
    train = slides[0].copy()
    train.obsm["X_bad"] = np.asarray(train.obsm["X_feat"]).copy()
    train.obsm["X_bad"][3, 2] = np.nan
    with pytest.raises(ValueError, match=r"obsm\['X_bad'\] must be finite"):
        stp.tl.fit(train, image_features="X_bad", epochs=1, **FIT)
    with pytest.raises(ValueError, match="excludes `freeze_backbone`"):
        stp.tl.fit(train, image_features="X_feat", freeze_backbone=True, epochs=1, **FIT)
    with pytest.raises(TypeError, match="`freeze_backbone` must be True or False"):
        stp.tl.fit(train, freeze_backbone="yes", epochs=1, **FIT)


# -- frozen backbone ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory):
    """A local weights file for the `tiny` BLEEP backbone (as a downloaded encoder would be)."""
    from safetensors.torch import save_file

    from stpredict.models import BLEEP

    torch.manual_seed(5)
    module = BLEEP(4, **BLEEP.default_config("tiny"))
    path = tmp_path_factory.mktemp("weights") / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in module.image_encoder.model.state_dict().items()}, str(path))
    return path, {k: v.clone() for k, v in module.image_encoder.model.state_dict().items()}


def test_frozen_backbone_keeps_its_weights_and_trains_the_heads(slides, backbone_weights):
    path, weights = backbone_weights
    train, test = slides
    calls = []
    model = stp.tl.fit(train, method="bleep", weights_path=path, freeze_backbone=True, epochs=3, **FIT)
    state = model.module.image_encoder.model.state_dict()
    for name, value in weights.items():  # every backbone tensor, batch-norm statistics included
        torch.testing.assert_close(state[name], value, msg=name)
    assert model.config["freeze_backbone"] is True
    assert "(frozen backbone)" in repr(model)
    assert len(model.history) == 3
    # training read the cache: the backbone ran over each spot's 8 views once, not per epoch
    handle = model.module.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    stp.tl.predict(test, model=model, progress=False)
    handle.remove()
    assert calls  # prediction runs the backbone on the new slide's patches
    assert np.isfinite(test.obsm["stpredict"].to_numpy()).all()


def test_frozen_backbone_runs_once_per_view(slides, backbone_weights, monkeypatch):
    from stpredict.models import BLEEP

    path, _ = backbone_weights
    train = slides[0]
    seen = []
    original = BLEEP.pooled_features

    def counting(self, image):
        seen.append(len(image))
        return original(self, image)

    monkeypatch.setattr(BLEEP, "pooled_features", counting)
    stp.tl.fit(train, method="bleep", weights_path=path, freeze_backbone=True, epochs=4, **FIT)
    assert sum(seen) == 8 * train.n_obs  # 8 views of every spot, whatever the number of epochs


def test_frozen_backbone_stays_in_eval_mode():
    from stpredict.models import CMRCNet

    module = CMRCNet(10, **{**CMRCNet.default_config("tiny"), "freeze_backbone": True})
    module.train()
    assert not module.image_encoder.training
    assert module.image_projection.training
    assert not any(p.requires_grad for p in module.image_encoder.parameters())


def test_cli_fits_and_predicts_from_features(slides, tmp_path):
    from stpredict.cli import main

    train, test = slides
    train.write_h5ad(tmp_path / "train.h5ad")
    test.write_h5ad(tmp_path / "test.h5ad")
    fit_args = ["fit", str(tmp_path / "train.h5ad"), "--out", str(tmp_path / "model"), "--preset", "tiny"]
    assert main([*fit_args, "--epochs", "1", "--image-features", "X_feat", "--no-progress", "-q"]) == 0
    assert stp.models.load(tmp_path / "model").patch["features"] == "X_feat"
    out = tmp_path / "pred.h5ad"
    predict_args = ["predict", str(tmp_path / "test.h5ad"), "--model", str(tmp_path / "model")]
    assert main([*predict_args, "--out", str(out), "--no-progress", "-q"]) == 0
    assert "stpredict" in __import__("anndata").read_h5ad(out).obsm


# -- encoders from the Hugging Face Hub or a timm model folder --------------------------------

_HUB_ARGS = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "num_classes": 0}


def _timm_folder(folder, *, seed: int = 7):
    """A timm model folder as the hub serves it: config.json (architecture + model_args) + weights."""
    import json

    import timm
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = timm.create_model("resnet18", **_HUB_ARGS)
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "model_args": _HUB_ARGS}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    return net.state_dict()


def test_local_dir_backbone_is_saved_as_plain_architecture(slides, tmp_path):
    train, test = slides
    weights = _timm_folder(tmp_path / "enc")
    model = stp.tl.fit(
        train, method="bleep", backbone=f"local-dir:{tmp_path / 'enc'}", freeze_backbone=True, epochs=1, **FIT
    )
    assert model.config["backbone"] == "resnet18"
    assert model.config["backbone_kwargs"] == {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]}
    state = model.module.image_encoder.model.state_dict()
    torch.testing.assert_close(state["conv1.weight"], weights["conv1.weight"])
    model.save(tmp_path / "m")
    (tmp_path / "enc" / "model.safetensors").unlink()  # the saved model does not need the folder
    again = stp.models.load(tmp_path / "m")
    a = stp.tl.predict(test, model=model, copy=True, progress=False)
    b = stp.tl.predict(test, model=again, copy=True, progress=False)
    np.testing.assert_array_equal(a.X, b.X)


def test_hf_hub_backbone_from_the_cache_offline(slides, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    repo = tmp_path / "hub" / "models--lab--encoder"
    revision = "0" * 40
    _timm_folder(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    model = stp.tl.fit(slides[0], method="bleep", backbone="hf-hub:lab/encoder", epochs=1, **FIT)
    assert model.config["backbone"] == "resnet18"
    assert model.config["weights_path"].endswith("model.safetensors")
    with pytest.raises(Exception, match="lab/other|cache|offline"):  # huggingface_hub's own message
        stp.tl.fit(slides[0], method="bleep", backbone="hf-hub:lab/other", epochs=1, **FIT)


def test_hub_folder_without_weights_is_named(tmp_path):
    from stpredict.models._encoders import resolve_hub_backbone

    _timm_folder(tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        resolve_hub_backbone(f"local-dir:{tmp_path / 'enc'}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_hub_backbone(f"local-dir:{tmp_path / 'nothing'}")


def test_handmade_features_are_computed_from_the_pixels(slides, tmp_path):
    from stpredict.data import SpotData

    train, test = slides
    model = stp.tl.fit(train, image_features="handmade", epochs=2, val_fraction=0.0, **FIT)
    patches = SpotData.from_object(train).extract_patches(patch_size_um=112, size=64, progress=False)
    expected = stp.baselines.image_features(patches)
    np.testing.assert_allclose(
        model.module.image_encoder.mean.numpy(), expected.mean(0), rtol=1e-4, atol=1e-5
    )
    bare = test.copy()
    bare.obsm.clear()  # nothing precomputed: predict cuts the patches and computes the features
    bare.obsm["spatial"] = test.obsm["spatial"]
    model.save(tmp_path / "m")
    a = stp.tl.predict(bare, model=stp.models.load(tmp_path / "m"), copy=True, progress=False)
    b = stp.tl.predict(bare, model=model, copy=True, progress=False)
    np.testing.assert_array_equal(a.X, b.X)
    wide = stp.tl.fit(train, image_features="handmade_context", epochs=1, **FIT)
    assert wide.module.image_encoder.out_dim == 2 * expected.shape[1]


def test_cross_validation_knn_on_the_same_features(slides):
    import anndata as ad

    data = ad.concat(list(slides), merge="same", uns_merge="unique")
    data.obs["library_id"] = data.obs["library_id"].astype("category")
    kw = {"method": "cmrcnet", "preset": "tiny", "epochs": 1, "baselines": ("image_knn",), "progress": False}
    on_pixels = stp.tl.cross_validate(data, **kw).summary.loc["image_knn"]
    on_obsm = stp.tl.cross_validate(data, baseline_features="X_feat", **kw).summary.loc["image_knn"]
    # the noisy programmes in X_feat describe the expression better than colour statistics do
    assert on_obsm["heg"] > on_pixels["heg"]


def test_feature_views_augment_training_and_keep_the_first_view_for_the_bank(slides, monkeypatch):
    from stpredict.data import FeatureDataset, SpotData
    from stpredict.data._features import ViewAugmentation, handmade_features

    train, _ = slides
    sd = SpotData.from_object(train)
    plain = handmade_features(sd, "handmade", patch_size_um=112)
    views = handmade_features(sd, "handmade", patch_size_um=112, augment=ViewAugmentation(3, 0.25, 0.05, 0))
    assert views.shape == (len(plain), 3, plain.shape[1])
    np.testing.assert_allclose(views[:, 0], plain, atol=0.02)  # the central crop of a wider cut
    assert np.abs(views[:, 1] - views[:, 0]).mean() > 1e-3  # shifted, jittered
    again = handmade_features(sd, "handmade", patch_size_um=112, augment=ViewAugmentation(3, 0.25, 0.05, 0))
    np.testing.assert_array_equal(views, again)  # drawn from the seed

    seen: list[tuple[int, ...]] = []
    original = FeatureDataset.__init__

    def spy(self, features, *args, **kwargs):
        seen.append(np.asarray(features).shape)
        original(self, features, *args, **kwargs)

    monkeypatch.setattr(FeatureDataset, "__init__", spy)
    kw = {**FIT, "preset": "cpu", "epochs": 1, "val_fraction": 0.0}
    model = stp.tl.fit(train, image_features="handmade", feature_views=3, **kw)
    assert seen
    assert all(shape[1:] == (3, plain.shape[1]) for shape in seen)
    assert model.training["feature_views"] == 3
    assert model.module.image_encoder.out_dim == plain.shape[1]
    # standardised with the first view of every (training) spot: what predict computes
    np.testing.assert_allclose(
        model.module.image_encoder.mean.numpy(), views[:, 0].mean(0), rtol=1e-4, atol=1e-5
    )


def test_feature_views_are_refused_where_they_mean_nothing(slides):
    train, _ = slides
    with pytest.raises(ValueError, match=r"feature_views=2 .*image_features in \['handmade'"):
        stp.tl.fit(train, image_features="X_feat", feature_views=2, **FIT)
    with pytest.raises(ValueError, match="identical views"):
        stp.tl.fit(train, image_features="handmade", feature_views=2, translate=0.0, stain_jitter=0.0, **FIT)
    with pytest.raises(ValueError, match="feature_views"):
        stp.tl.fit(train, image_features="handmade", feature_views=0, **FIT)
