"""Saved-model format: round trip and clear errors for broken or foreign folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stpredict as stp
from stpredict.models import FORMAT_VERSION, METHODS, STPredictModel

N_GENES = 10


def _fitted(method: str = "cmrcnet", *, bank: bool = True) -> STPredictModel:
    cls = METHODS[method]
    torch.manual_seed(0)
    module = cls(N_GENES, **cls.default_config("tiny"))
    model = STPredictModel(
        method,
        module,
        genes=[f"gene{i}" for i in range(N_GENES)],
        normalization={"target_sum": 1234.5, "log1p": True},
        patch={"patch_size_um": 100.0},
        retrieval={"k": 7},
        history=[{"epoch": 0, "train_loss": np.float32(2.5), "val_loss": 2.25}],
        training={"epochs": 1, "batch_size": 16, "checkpoint_dir": None},
    )
    if bank:
        rng = np.random.default_rng(0)
        model.set_bank(
            rng.random((40, N_GENES)).astype(np.float32),
            library_id=["A"] * 25 + ["B"] * 15,
            obs_names=[f"spot{i}" for i in range(40)],
            coords=rng.integers(0, 10, (40, 2)),
        )
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_round_trip_is_exact(tmp_path, method):
    model = _fitted(method)
    path = model.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["bank.safetensors", "config.json", "model.safetensors"]
    again = stp.models.load(path)
    assert type(again.module) is type(model.module)
    before, after = model.module.state_dict(), again.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert again.config == model.config
    assert again.genes == model.genes
    assert again.normalization == model.normalization
    assert again.patch == model.patch
    assert again.patch["patch_size_um"] == 100.0
    assert again.retrieval["k"] == 7
    assert again.history == [{"epoch": 0, "train_loss": 2.5, "val_loss": 2.25}]
    assert again.training == model.training
    for key in ("expression", "embeddings", "library_id", "obs_names", "coords"):
        np.testing.assert_array_equal(again.bank[key], model.bank[key])
    patches = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        again.embed_images(patches, progress=False), model.embed_images(patches, progress=False)
    )
    expr, coords = model.bank["expression"], model.bank["coords"]
    np.testing.assert_array_equal(again.embed_expression(expr, coords), model.embed_expression(expr, coords))
    meta = json.loads((path / "config.json").read_text())
    assert meta["format"] == "stpredict-model"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["torch_version"] == torch.__version__
    assert meta["method"] == method


def test_round_trip_without_bank_and_pretrained_flag_not_followed(tmp_path):
    model = _fitted("bleep", bank=False)
    model.module.config["pretrained"] = True  # fitted with pretrained=True: load must not download
    model.save(tmp_path / "m")
    again = stp.models.load(tmp_path / "m")
    assert again.bank is None
    assert again.config["pretrained"] is True


def test_save_refuses_non_empty_folder(tmp_path):
    model = _fitted(bank=False)
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        model.save(tmp_path / "file")


def test_load_errors_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        stp.models.load(tmp_path / "nothing")
    path = _fitted(bank=False).save(tmp_path / "m")
    (path / "bank.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="bank.safetensors"):
        stp.models.load(path)


def test_load_truncated_weights(tmp_path):
    path = _fitted().save(tmp_path / "m")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*not a valid safetensors"):
        stp.models.load(path)
    (path / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="model.safetensors"):
        stp.models.load(path)


def test_load_foreign_or_newer_json(tmp_path):
    path = _fitted().save(tmp_path / "m")
    config = path / "config.json"
    meta = json.loads(config.read_text())
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        stp.models.load(path)
    config.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="expected 'stpredict-model'"):
        stp.models.load(path)
    config.write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="upgrade stpredict"):
        stp.models.load(path)
    config.write_text(json.dumps({**meta, "method": "hist2st"}))
    with pytest.raises(ValueError, match="method 'hist2st'"):
        stp.models.load(path)
    config.write_text(json.dumps({**meta, "genes": meta["genes"][:-1]}))
    with pytest.raises(ValueError, match="do not match|shape"):
        stp.models.load(path)


def test_load_bank_shape_mismatch(tmp_path):
    from safetensors.numpy import save_file

    model = _fitted()
    path = model.save(tmp_path / "m")
    bank = {k: model.bank[k] for k in ("expression", "embeddings", "coords")}
    bank["expression"] = bank["expression"][:, :-1].copy()
    save_file(bank, str(path / "bank.safetensors"))
    with pytest.raises(ValueError, match="mixes files of different saves"):
        stp.models.load(path)
    # even with a matching sha256 (a hand-edited folder) the shapes are checked
    from stpredict.models._folder import file_sha256

    meta = json.loads((path / "config.json").read_text())
    meta["files"]["bank.safetensors"] = file_sha256(path / "bank.safetensors")
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'expression'.*expected \\(40, 10\\)"):
        stp.models.load(path)
