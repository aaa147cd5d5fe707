"""Ensembles (``fit(n_members=...)``): mean-cosine retrieval, save/load, seeds, checkpoints, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _builders import synthetic_split

import stpredict as stp
from stpredict.models import BLEEP, METHODS, CMRCNet, Ensemble, STPredictModel

N_GENES = 12
FIT = {"preset": "tiny", "epochs": 2, "seed": 5, "progress": False, "device": "cpu"}


def _members(n: int, cls: type = CMRCNet) -> list:
    out = []
    for j in range(n):
        torch.manual_seed(j)
        out.append(cls(N_GENES, **cls.default_config("tiny")).eval())
    return out


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


@pytest.fixture(scope="module")
def slides():
    return synthetic_split(N_GENES, seed=4)


@pytest.fixture(scope="module")
def pair(slides):
    """An ensemble of two fitted with seed 5, and the single model of seed 5."""
    train = slides[0]
    return stp.tl.fit(train, n_members=2, **FIT), stp.tl.fit(train, **FIT)


def test_ensemble_cosine_is_the_mean_of_the_members_cosines():
    members = _members(3)
    ensemble = Ensemble(members).eval()
    expression, image = torch.rand(6, N_GENES), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        joined = _cosines(ensemble.encode_image(image), ensemble.encode_expression(expression))
        each = [_cosines(m.encode_image(image), m.encode_expression(expression)) for m in members]
    torch.testing.assert_close(joined, torch.stack(each).mean(dim=0), atol=1e-5, rtol=1e-5)
    assert ensemble.embedding_dim == 3 * members[0].embedding_dim
    assert ensemble.config == members[0].config
    assert ensemble.n_genes == N_GENES


def test_ensemble_of_copies_retrieves_like_one_member():
    one = _members(1)[0]
    copy = CMRCNet(N_GENES, **CMRCNet.default_config("tiny")).eval()
    copy.load_state_dict(one.state_dict())
    expression, image = torch.rand(6, N_GENES), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        joined = _cosines(
            Ensemble([one, copy]).encode_image(image), Ensemble([one, copy]).encode_expression(expression)
        )
        single = _cosines(one.encode_image(image), one.encode_expression(expression))
    torch.testing.assert_close(joined, single, atol=1e-5, rtol=1e-5)


def test_ensemble_refuses_mismatched_members():
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(_members(1))
    with pytest.raises(TypeError, match="member 1 is a BLEEP; expected CMRCNet"):
        Ensemble([_members(1)[0], _members(1, BLEEP)[0]])
    other = CMRCNet(N_GENES, **{**CMRCNet.default_config("tiny"), "dim": 16})
    with pytest.raises(ValueError, match="member 1 was built with other genes or config"):
        Ensemble([_members(1)[0], other])
    with pytest.raises(TypeError, match=r"expected CMRCNet \(or an Ensemble of them\)"):
        STPredictModel("cmrcnet", Ensemble(_members(2, BLEEP)), genes=[f"g{i}" for i in range(N_GENES)])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_saved_ensemble_round_trip_is_exact(tmp_path, method):
    model = STPredictModel(
        method, Ensemble(_members(2, METHODS[method])), genes=[f"g{i}" for i in range(N_GENES)]
    )
    rng = np.random.default_rng(0)
    model.set_bank(
        rng.random((20, N_GENES)).astype(np.float32),
        library_id=["A"] * 20,
        obs_names=[f"s{i}" for i in range(20)],
        coords=rng.integers(0, 5, (20, 2)),
    )
    again = stp.models.load(model.save(tmp_path / "m"))
    assert again.n_members == 2
    assert isinstance(again.module, Ensemble)
    before, after = model.module.state_dict(), again.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(again.bank["embeddings"], model.bank["embeddings"])
    assert "ensemble: 2 networks" in repr(again)


@pytest.mark.parametrize("value", [0, 65, "2", True])
def test_load_refuses_a_bad_member_count(tmp_path, value):
    model = STPredictModel("cmrcnet", Ensemble(_members(2)), genes=[f"g{i}" for i in range(N_GENES)])
    path = model.save(tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "n_members": value}))
    with pytest.raises(ValueError, match=r"n_members=.*expected an integer from 1 to 64"):
        stp.models.load(path)


def test_load_refuses_weights_outside_the_members(tmp_path):
    model = STPredictModel("cmrcnet", _members(1)[0], genes=[f"g{i}" for i in range(N_GENES)])
    path = model.save(tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "n_members": 2}))  # plain weights, ensemble claimed
    with pytest.raises(ValueError, match=r"is not 'members.<j>.<name>'"):
        stp.models.load(path)


def test_fit_trains_each_member_with_its_own_seed(pair):
    ensemble, single = pair
    assert ensemble.n_members == 2
    assert single.n_members == 1
    assert [m["seed"] for m in ensemble.training["members"]] == [5, 1005]
    assert ensemble.embedding_dim == 2 * single.embedding_dim
    first = ensemble.module.members[0].state_dict()
    assert all(torch.equal(first[k], v) for k, v in single.module.state_dict().items())  # member 0 = seed 5
    second = ensemble.module.members[1].state_dict()
    assert not all(torch.equal(first[k], second[k]) for k in first)


def test_fitted_ensemble_predicts_and_its_ood_reference_is_its_own(pair, slides):
    ensemble, single = pair
    out = stp.tl.predict(slides[1], model=ensemble, copy=True, progress=False)
    assert out.shape == (slides[1].n_obs, len(ensemble.genes))
    assert np.isfinite(np.asarray(out.X)).all()
    assert ensemble.retrieval.ood_reference != single.retrieval.ood_reference


def test_fit_refuses_a_bad_member_count(slides):
    with pytest.raises(ValueError, match=r"fit: `n_members` must be an integer >= 1"):
        stp.tl.fit(slides[0], n_members=0, **FIT)
    with pytest.raises(ValueError, match="at most 64"):
        stp.tl.fit(slides[0], n_members=65, **FIT)


def test_members_checkpoint_apart_and_resume(slides, tmp_path, monkeypatch):
    import stpredict.train as train_mod

    train, kw = slides[0], {**FIT, "n_members": 2, "genes": list(slides[0].var_names[:8])}
    real = train_mod._run_epoch
    calls = {"n": 0}

    def interrupt_in_member_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # member 1: 2 epochs × (train, val); member 2: epoch 1, then Ctrl-C in epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_run_epoch", interrupt_in_member_2)
    part = stp.tl.fit(train, checkpoint_dir=tmp_path / "run", **kw)
    monkeypatch.setattr(train_mod, "_run_epoch", real)
    assert (tmp_path / "run" / "last.pt").is_file()
    assert (tmp_path / "run" / "member-1" / "last.pt").is_file()
    assert part.training["interrupted"] is True
    assert [m["interrupted"] for m in part.training["members"]] == [False, True]

    resumed = stp.tl.fit(train, checkpoint_dir=tmp_path / "run", resume=True, **kw)
    full = stp.tl.fit(train, checkpoint_dir=tmp_path / "full", **kw)
    assert resumed.training["interrupted"] is False
    np.testing.assert_allclose(resumed.bank["embeddings"], full.bank["embeddings"], atol=1e-5)


def test_cross_validate_fits_ensembles(caplog):
    adata = stp.datasets.synthetic(n_slides=3, n_spots_per_side=6, n_genes=N_GENES, seed=2)
    kw = {"preset": "tiny", "epochs": 1, "k": 5, "n_genes": 5, "baselines": ("random",), "progress": False}
    with caplog.at_level("INFO", logger="stpredict"):
        res = stp.tl.cross_validate(adata, method={"two": ("cmrcnet", {"n_members": 2})}, device="cpu", **kw)
    assert sum("fit: member 2 of 2" in r.getMessage() for r in caplog.records) == 3  # once per fold
    assert list(res.summary.index) == ["two", "random"]
    assert np.isfinite(res.summary.loc["two"]).all()


def test_ctrl_c_before_a_members_first_epoch_keeps_the_members_so_far(slides, monkeypatch):
    import stpredict.train as train_mod

    real = train_mod._run_epoch
    calls = {"n": 0}

    def interrupt_member_2_at_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # member 1: 2 epochs × (train, val); member 2: Ctrl-C in its first epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_run_epoch", interrupt_member_2_at_once)
    model = stp.tl.fit(slides[0], n_members=3, **FIT)
    assert model.n_members == 1
    assert model.training["interrupted"] is True
    assert [m["seed"] for m in model.training["members"]] == [5]
    assert model.bank is not None


def test_interrupted_member_without_checkpoints_names_no_folder(slides, monkeypatch, caplog):
    import stpredict.train as train_mod

    real = train_mod._run_epoch
    calls = {"n": 0}

    def interrupt_in_member_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # member 1: 2 epochs × (train, val); member 2: epoch 1, then Ctrl-C in epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_run_epoch", interrupt_in_member_2)
    with caplog.at_level("WARNING", logger="stpredict"):
        model = stp.tl.fit(slides[0], n_members=2, **FIT)
    assert model.training["interrupted"] is True
    warned = [r.getMessage() for r in caplog.records if "training was interrupted" in r.getMessage()]
    assert len(warned) == 1
    assert "checkpoint_dir" not in warned[0]
