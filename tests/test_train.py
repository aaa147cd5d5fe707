from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from stpredict.train import TrainResult, load_checkpoint, train_module

TIMING = {"seconds", "images_per_s"}


class TinyData(torch.utils.data.Dataset):
    """PatchDataset-like items; random flips draw from torch's global RNG (like augmentations)."""

    def __init__(self, n=24, genes=5, size=4, seed=0, augment=True):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.expr = torch.rand(n, genes, generator=g)
        self.augment = augment

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        if self.augment and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return {
            "image": img,
            "expression": self.expr[i],
            "coords": torch.tensor([i, i], dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }


class TinyRetrieval(nn.Module):
    """Two linear encoders + CLIP-style loss; dropout exercises the per-epoch seeding."""

    def __init__(self, genes=5, size=4, dim=8):
        super().__init__()
        self.img = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, dim), nn.Dropout(0.2))
        self.expr = nn.Linear(genes, dim)
        self.seen = 0

    def forward(self, batch):
        zi = nn.functional.normalize(self.img(batch["image"]), dim=1)
        ze = nn.functional.normalize(self.expr(batch["expression"]), dim=1)
        logits = zi @ ze.T / 0.5
        target = torch.arange(len(zi))
        clip = (
            nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
        ) / 2
        l2 = (zi - ze).pow(2).sum(1).mean()
        if self.training:
            self.seen += len(zi)
        return {"loss": clip + 0.1 * l2, "clip": clip, "l2": l2}


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _fit(module=None, train=None, val=None, **kw):
    kw.setdefault("epochs", 4)
    kw.setdefault("batch_size", 8)
    kw.setdefault("lr", 1e-2)
    kw.setdefault("lr_min", 1e-3)
    kw.setdefault("progress", False)
    torch.manual_seed(123)  # same initial weights for every call
    module = TinyRetrieval() if module is None else module
    return module, train_module(module, TinyData() if train is None else train, val, **kw)


def test_train_history_and_schedule():
    module, res = _fit(val=TinyData(n=10, seed=1, augment=False), epochs=5)
    assert isinstance(res, TrainResult)
    assert res.epochs_run == 5
    assert not res.interrupted
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5]
    for h in res.history:
        assert {"lr", "train_loss", "train_clip", "train_l2", "val_loss", "val_clip", "val_l2"} <= set(h)
        assert h["train_loss"] == pytest.approx(h["train_clip"] + 0.1 * h["train_l2"], rel=1e-5)
        assert h["seconds"] > 0
        assert h["images_per_s"] > 0
    # per-epoch cosine annealing from lr to lr_min over `epochs`
    expected = [1e-3 + (1e-2 - 1e-3) * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(5)]
    np.testing.assert_allclose([h["lr"] for h in res.history], expected, rtol=1e-9)
    # it learns
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    # best epoch = lowest validation loss, best_state on CPU
    best = min(res.history, key=lambda h: h["val_loss"])
    assert res.best_epoch == best["epoch"]
    assert all(t.device.type == "cpu" for t in res.best_state.values())
    assert set(res.best_state) == set(module.state_dict())
    assert not module.training  # left in eval mode


def test_best_state_is_that_epochs_weights():
    snapshots = {}

    def keep(epoch, entry, module):
        snapshots[epoch] = {k: v.clone() for k, v in module.state_dict().items()}

    _, res = _fit(val=TinyData(n=10, seed=1, augment=False), epochs=4, lr=0.05, callbacks=[keep])
    for k, v in res.best_state.items():
        assert torch.equal(v, snapshots[res.best_epoch][k])


def test_validation_average_is_weighted_by_batch_size():
    # 10 validation items in batches of 8 + 2: the mean must be per item, not per batch
    val = TinyData(n=10, seed=1, augment=False)
    module, res = _fit(val=val, epochs=1)
    module.load_state_dict(res.best_state)
    module.eval()
    with torch.no_grad():
        items = [val[i] for i in range(10)]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        b1 = {k: v[:8] for k, v in batch.items()}
        b2 = {k: v[8:] for k, v in batch.items()}
        expected = (module(b1)["loss"].item() * 8 + module(b2)["loss"].item() * 2) / 10
    assert res.history[0]["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_without_validation_best_is_train_loss():
    _, res = _fit(epochs=3, scheduler=None, optimizer="adam")
    assert all("val_loss" not in h for h in res.history)
    assert res.best_epoch == min(res.history, key=lambda h: h["train_loss"])["epoch"]
    assert {h["lr"] for h in res.history} == {1e-2}  # constant without scheduler


def test_seeded_runs_are_reproducible():
    m1, r1 = _fit(epochs=2)
    m2, r2 = _fit(epochs=2)
    assert _strip(r1.history) == _strip(r2.history)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    _, r3 = _fit(epochs=2, seed=1)
    assert _strip(r3.history) != _strip(r1.history)


def test_interrupt_and_resume_reproduce_straight_run(tmp_path, caplog):
    val = TinyData(n=10, seed=1, augment=False)
    straight, res_straight = _fit(val=val, epochs=4, checkpoint_dir=tmp_path / "a")

    def ctrl_c_after_2(epoch, entry, module):
        if epoch == 2:
            raise KeyboardInterrupt

    ckpt_dir = tmp_path / "b"
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        _, res_int = _fit(val=val, epochs=4, checkpoint_dir=ckpt_dir, callbacks=[ctrl_c_after_2])
    assert res_int.interrupted
    assert res_int.epochs_run == 2
    assert res_int.best_epoch in (1, 2)
    assert "resume=True" in caplog.text
    assert str(ckpt_dir) in caplog.text
    ckpt = load_checkpoint(ckpt_dir)
    assert ckpt["epoch"] == 2
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.pt"]  # no temporary files left

    resumed = TinyRetrieval()  # fresh weights: everything must come from the checkpoint
    res_resumed = train_module(
        resumed, TinyData(), val, epochs=4, batch_size=8, lr=1e-2, lr_min=1e-3, progress=False,
        checkpoint_dir=ckpt_dir, resume=True,
    )  # fmt: skip
    assert not res_resumed.interrupted
    assert res_resumed.epochs_run == 4
    assert _strip(res_resumed.history) == _strip(res_straight.history)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert res_resumed.best_epoch == res_straight.best_epoch
    for k, v in res_straight.best_state.items():
        assert torch.equal(v, res_resumed.best_state[k])


def test_resume_from_file_path_and_finished_run(tmp_path):
    _, res = _fit(epochs=2, checkpoint_dir=tmp_path)
    module = TinyRetrieval()
    again = train_module(
        module, TinyData(), epochs=2, batch_size=8, lr=1e-2, lr_min=1e-3, progress=False,
        resume=tmp_path / "last.pt",
    )  # fmt: skip
    # nothing left to do: returns the stored history and the checkpoint's weights
    assert _strip(again.history) == _strip(res.history)
    assert again.epochs_run == 2
    assert torch.equal(module.expr.weight, load_checkpoint(tmp_path)["module"]["expr.weight"])


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        _fit(epochs=2, checkpoint_dir=tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        _fit(epochs=2, resume=True)
    _fit(epochs=1, checkpoint_dir=tmp_path, fingerprint={"method": "tiny", "genes": ("a", "b")})
    # tuples and lists compare equal after saving
    _fit(epochs=1, checkpoint_dir=tmp_path, fingerprint={"method": "tiny", "genes": ["a", "b"]}, resume=True)
    with pytest.raises(ValueError, match=r"fingerprint differs in \['genes'\]"):
        _fit(epochs=1, checkpoint_dir=tmp_path, fingerprint={"method": "tiny", "genes": ["a"]}, resume=True)
    with pytest.raises(ValueError, match=r"other training settings \(lr: 0.01 -> 0.02\)"):
        _fit(epochs=1, lr=0.02, checkpoint_dir=tmp_path, fingerprint={"method": "tiny", "genes": ["a", "b"]},
             resume=True)  # fmt: skip
    # the user's module is untouched when validation fails
    module = TinyRetrieval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match="fingerprint differs"):
        train_module(module, TinyData(), epochs=1, batch_size=8, lr=1e-2, lr_min=1e-3, progress=False,
                     checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_checkpoint_is_plain_tensors(tmp_path):
    _fit(epochs=1, checkpoint_dir=tmp_path, fingerprint={"n": 1})
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"module", "optimizer", "scheduler", "epoch", "history", "best_state", "best_epoch",
            "fingerprint", "train_config"} <= set(ckpt)  # fmt: skip
    assert ckpt["fingerprint"] == {"n": 1}
    assert ckpt["epoch"] == 1


def test_overwrite_warning(tmp_path, caplog):
    _fit(epochs=1, checkpoint_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="stpredict"):
        _fit(epochs=1, checkpoint_dir=tmp_path)
    assert "will be overwritten" in caplog.text
    assert f"Writing checkpoints to {tmp_path}" in caplog.text


def test_interrupt_before_first_epoch_reraises():
    class Broken(TinyData):
        def __getitem__(self, i):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(train=Broken(), epochs=2)


def test_small_dataset_and_drop_last(caplog):
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        module, res = _fit(train=TinyData(n=5), epochs=2, batch_size=8)
    assert "fewer than batch_size=8" in caplog.text
    assert module.seen == 10  # one batch of 5 per epoch, not dropped
    module, _ = _fit(train=TinyData(n=20), epochs=2, batch_size=8)
    assert module.seen == 32  # 2 full batches per epoch, last 4 dropped
    module, _ = _fit(train=TinyData(n=20), epochs=2, batch_size=8, drop_last=False)
    assert module.seen == 40


def test_batch_sampler_and_set_epoch():
    class SlideBatches:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter([list(range(0, 12)), list(range(12, 24))])

        def __len__(self):
            return 2

    sampler = SlideBatches()
    module, res = _fit(epochs=3, batch_sampler=sampler, batch_size=4)
    assert sampler.epochs == [1, 2, 3]
    assert module.seen == 72
    assert res.epochs_run == 3


def test_argument_validation():
    with pytest.raises(ValueError, match="`epochs` must be an integer >= 1"):
        _fit(epochs=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        _fit(optimizer="sgd")
    with pytest.raises(ValueError, match="scheduler must be one of"):
        _fit(scheduler="step")
    with pytest.raises(ValueError, match="train_dataset is empty"):
        _fit(train=TinyData(n=0))
    with pytest.raises(ValueError, match="lr_min must be in"):
        _fit(lr=1e-3, lr_min=1e-2)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        train_module(object(), TinyData(), epochs=1, batch_size=2)

    class NoLoss(TinyRetrieval):
        def forward(self, batch):
            return {"clip": super().forward(batch)["clip"]}

    with pytest.raises(KeyError, match="NoLoss.forward must return a dict of losses with key 'loss'"):
        _fit(module=NoLoss(), epochs=1)


def test_nan_loss_raises():
    class NaN(TinyRetrieval):
        def forward(self, batch):
            out = super().forward(batch)
            out["loss"] = out["loss"] * float("nan")
            return out

    with pytest.raises(FloatingPointError, match="Training loss became nan in epoch 1"):
        _fit(module=NaN(), epochs=1)
