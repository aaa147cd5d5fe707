"""No wrong result accepted, no half-written model, no code run from a model folder (issue 13)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import stpredict as stp
from stpredict.models import _io

FIT = {"preset": "tiny", "epochs": 1, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def adata():
    return stp.datasets.synthetic(n_slides=1, n_spots_per_side=6, n_genes=12, seed=4)


@pytest.fixture(scope="module")
def models(adata):
    return stp.tl.fit(adata, **FIT, seed=0), stp.tl.fit(adata, **FIT, seed=1)


# -- 1. half-written models -----------------------------------------------------------------------
def test_failed_overwrite_leaves_the_old_model(models, tmp_path, monkeypatch):
    old, new = models
    path = old.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    import safetensors.numpy

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)  # fails after the weights are written
    with pytest.raises(OSError, match="No space"):
        new.save(path, overwrite=True)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no temporary left behind
    assert not (tmp_path / "m.lock").exists()
    np.testing.assert_array_equal(stp.models.load(path).bank["embeddings"], old.bank["embeddings"])


def test_mixed_files_are_refused(models, tmp_path):
    a = models[0].save(tmp_path / "a")
    b = models[1].save(tmp_path / "b")
    (a / "bank.safetensors").write_bytes((b / "bank.safetensors").read_bytes())
    with pytest.raises(ValueError, match="mixes files of different saves"):
        stp.models.load(a)


def test_second_writer_is_refused(models, tmp_path):
    path = tmp_path / "m"
    models[0].save(path)
    with pytest.raises(FileExistsError, match="not empty"):
        models[1].save(path)  # without overwrite: the first writer's folder stays
    lock = tmp_path / "m.lock"
    lock.write_text(str(os.getpid()))  # a live writer holds the lock
    with pytest.raises(FileExistsError, match="another process"):
        models[1].save(path, overwrite=True)
    lock.write_text("999999999")  # a dead writer's lock is taken over
    models[1].save(path, overwrite=True)
    assert not lock.exists()


def test_overwrite_never_empties_a_foreign_folder(models, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other than a saved stpredict model"):
        models[0].save(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"


def test_saved_files_get_the_usual_modes(models, tmp_path):
    mask = os.umask(0o022)
    try:
        path = models[0].save(tmp_path / "m")
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


# -- 2. untrusted model folders -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"backbone_kwargs": {"checkpoint_path": "/etc/passwd"}}, "checkpoint_path"),
        ({"backbone_kwargs": {"pretrained_cfg_overlay": {"url": "http://x"}}}, "pretrained_cfg_overlay"),
        ({"backbone_kwargs": {"depth": "../../x"}}, "depth"),
        ({"backbone": "hf-hub:someone/model"}, "hf-hub"),
        ({"loader": "os.system"}, "loader"),
    ],
)
def test_load_refuses_paths_urls_and_unknown_keys(models, tmp_path, change, refused, monkeypatch):
    path = models[0].save(tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    cfg = meta["config"]
    for key, value in change.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    (path / "config.json").write_text(json.dumps(meta))
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm was called"))
    with pytest.raises(ValueError, match=refused):
        stp.models.load(path)


def test_architecture_keys_still_load(models, tmp_path):
    path = models[0].save(tmp_path / "m")
    kwargs = json.loads((path / "config.json").read_text())["config"]["backbone_kwargs"]
    assert set(kwargs) <= _io.ARCHITECTURE_KEYS
    assert stp.models.load(path).genes == models[0].genes


# -- 3. wrong results accepted silently -----------------------------------------------------------
def test_float_image_in_0_255_is_refused(adata, models):
    bad = adata.copy()
    entry = bad.uns["spatial"]["slide0"]
    entry["images"]["hires"] = entry["images"]["hires"].astype(np.float32)  # 0..255 as floats
    with pytest.raises(ValueError, match="0–255"):
        stp.tl.predict(bad, models[0], k=5, progress=False)
    ok = adata.copy()
    ok.uns["spatial"]["slide0"]["images"]["hires"] = entry["images"]["hires"] / 255.0
    stp.tl.predict(ok, models[0], k=5, progress=False)


def test_nan_spot_diameter_is_refused(adata):
    bad = adata.copy()
    bad.uns["spatial"]["slide0"]["scalefactors"]["spot_diameter_fullres"] = float("nan")
    with pytest.raises(ValueError, match="spot_diameter_fullres"):
        stp.io.to_spatialdata(bad)


# -- 4. keys that break files --------------------------------------------------------------------
def test_keys_are_valid_for_every_writer(adata, models, tmp_path):
    test = adata.copy()
    for bad in ("a/b", "", "..", "x y"):
        with pytest.raises(ValueError, match="not a valid key"):
            stp.tl.predict(test, models[0], k=5, key_added=bad, progress=False)
    stp.tl.predict(test, models[0], k=5, key_added="run-1.a_b", progress=False)
    with pytest.raises(ValueError, match="not a valid key"):
        stp.tl.evaluate(test, key="run-1.a_b", key_added="bad/key")
    test.write_h5ad(tmp_path / "t.h5ad")
    import anndata as ad

    assert "run-1.a_b" in ad.read_h5ad(tmp_path / "t.h5ad").obsm


# -- 5. unclear errors ----------------------------------------------------------------------------
def test_all_zero_counts_are_named(adata):
    bad = adata.copy()
    bad.X = bad.X * 0
    with pytest.raises(ValueError, match="all zero"):
        stp.tl.fit(bad, **FIT)


def test_replaced_checkpoint_names_the_file(adata, tmp_path):
    stp.tl.fit(adata, **FIT, checkpoint_dir=tmp_path / "ck")
    (tmp_path / "ck" / "last.pt").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match=r"last\.pt could not be read"):
        stp.tl.fit(adata, **FIT, checkpoint_dir=tmp_path / "ck", resume=True)


def test_unreachable_mirror_names_the_setting(tmp_path, monkeypatch):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setattr(stp.settings, "_datasets_url", None)
    monkeypatch.setenv("STPREDICT_DATASETS_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match="STPREDICT_DATASETS_URL") as info:
        stp.datasets.mouse_olfactory_bulb(sections="MOB1", progress=False)
    assert "MOB1" in str(info.value)


# -- one validation module, one message style ------------------------------------------------

_WRONG_TYPE_AND_VALUE = [
    # (call, wrong type, wrong value)
    ("retrieval k", lambda k: stp.retrieval.topk_cosine(np.ones((2, 3)), np.ones((4, 3)), k), 2.5, 0),
    ("baseline k", lambda k: stp.baselines.random_retrieval(np.ones((4, 2)), 2, k=k), "3", 9),
    ("chunk", lambda c: stp.retrieval.topk_cosine(np.ones((2, 3)), np.ones((4, 3)), 1, chunk_size=c), 1.0, 0),
]


@pytest.mark.parametrize(("name", "call", "bad_type", "bad_value"), _WRONG_TYPE_AND_VALUE)
def test_wrong_type_is_typeerror_wrong_value_is_valueerror(name, call, bad_type, bad_value):
    with pytest.raises(TypeError, match=r"must be an integer >= 1, got"):
        call(bad_type)
    with pytest.raises(ValueError, match=r"must be .*, got"):
        call(bad_value)


def test_fit_arguments_use_the_shared_checks(adata):
    with pytest.raises(TypeError, match=r"fit: `epochs` must be an integer >= 1, got '3'"):
        stp.tl.fit(adata, preset="tiny", epochs="3", progress=False)
    with pytest.raises(ValueError, match=r"fit: `lr` must be a finite positive number, got -1"):
        stp.tl.fit(adata, preset="tiny", lr=-1.0, progress=False)
    with pytest.raises(TypeError, match=r"fit: `lr` must be a positive number, got True"):
        stp.tl.fit(adata, preset="tiny", lr=True, progress=False)


def test_input_checks_live_in_the_validation_module():
    """Argument checks are `stpredict._validation`'s; only checks that guard a file format
    (models/_io, the training checkpoint in train.py), the results-writing policy (tl/_results)
    or tensor shapes inside torch modules stay with what they protect."""
    import re
    from pathlib import Path

    src = Path(stp.__file__).parent
    allowed = {
        "_validation.py",
        "models/_io.py",
        "train.py",
        "tl/_results.py",
        "models/_losses.py",
        "models/_base.py",
    }
    found = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).as_posix()
        for match in re.finditer(r"^\s*def (_?check_\w+)\(", path.read_text(), flags=re.M):
            if rel not in allowed and match.group(1) != "check_counts":  # stp.pp.check_counts is public API
                found.append(f"{rel}: {match.group(1)}")
    assert not found, found
