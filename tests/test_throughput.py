"""Execution options of the training loop: channels-last, torch.compile, persistent workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stpredict.data import PatchDataset
from stpredict.train import TrainConfig, load_checkpoint, train_module

TIMING = {"seconds", "images_per_s"}


class ConvRetrieval(nn.Module):
    """A small CNN image tower against a linear expression tower (CLIP loss)."""

    def __init__(self, genes: int = 5, dim: int = 8):
        super().__init__()
        self.img = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, dim)
        )
        self.expr = nn.Linear(genes, dim)
        self.formats: list[bool] = []

    def forward(self, batch):
        image = batch["image"]
        self.formats.append(image.is_contiguous(memory_format=torch.channels_last))
        zi = nn.functional.normalize(self.img(image), dim=1)
        ze = nn.functional.normalize(self.expr(batch["expression"]), dim=1)
        logits = zi @ ze.T / 0.5
        target = torch.arange(len(zi))
        loss = nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
        return {"loss": loss / 2}


def _patches(n: int = 24, size: int = 12, seed: int = 0) -> PatchDataset:
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    expression = rng.random((n, 5), dtype=np.float32)
    # augmentation (flips, rotations, stain jitter) drawn from (seed, spot, epoch)
    return PatchDataset(patches, expression, augment=True, stain_jitter=0.05, seed=7)


def _train(module=None, dataset=None, **kw):
    kw = {"epochs": 3, "batch_size": 8, "lr": 1e-2, "lr_min": 1e-3, "progress": False, **kw}
    torch.manual_seed(0)
    module = ConvRetrieval() if module is None else module
    res = train_module(module, _patches() if dataset is None else dataset, **kw)
    return module, res


def _stop_after(n):
    def stop(epoch, entry, module):
        if epoch == n:
            raise KeyboardInterrupt

    return stop


def _losses(res):
    return [h["train_loss"] for h in res.history]


def test_channels_last_same_losses_and_plain_checkpoint(tmp_path):
    plain, res_plain = _train(channels_last=False)
    nhwc, res_nhwc = _train(channels_last=True, checkpoint_dir=tmp_path)
    assert not any(plain.formats)
    assert all(nhwc.formats)
    assert nhwc.img[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(_losses(res_nhwc), _losses(res_plain), rtol=1e-4)
    # the checkpoint loads into a module in the default layout
    fresh = ConvRetrieval()
    fresh.load_state_dict(load_checkpoint(tmp_path)["module"])
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, nhwc.state_dict()[name].contiguous())


def test_channels_last_is_off_on_cpu_by_default():
    module, _ = _train(epochs=1)
    assert not any(module.formats)


def test_execution_options_are_not_recorded_so_resume_may_change_them(tmp_path):
    _, first = _train(checkpoint_dir=tmp_path, channels_last=False, callbacks=[_stop_after(2)])
    assert first.interrupted
    _, res = _train(checkpoint_dir=tmp_path, resume=True, channels_last=True)
    assert res.epochs_run == 3
    assert not res.interrupted
    recorded = load_checkpoint(tmp_path)["train_config"]
    assert not {"channels_last", "compile", "num_workers"} & set(recorded)


def test_execution_option_validation():
    with pytest.raises(ValueError, match="channels_last must be True, False or None"):
        TrainConfig(channels_last="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile must be True or False"):
        TrainConfig(compile=1)  # type: ignore[arg-type]


def test_persistent_workers_follow_the_epoch():
    """Workers kept between epochs see set_epoch: the same augmentations as without workers."""
    _, in_process = _train(num_workers=0)
    _, workers = _train(num_workers=2)
    assert len(set(_losses(in_process))) == 3
    np.testing.assert_allclose(_losses(workers), _losses(in_process), rtol=1e-5)


def test_persistent_workers_resume_exactly(tmp_path):
    _, straight = _train(num_workers=2)
    _train(num_workers=2, checkpoint_dir=tmp_path, callbacks=[_stop_after(2)])
    _, resumed = _train(num_workers=2, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_allclose(_losses(resumed), _losses(straight), rtol=1e-5)


def test_set_epoch_changes_the_draw_and_is_shared():
    ds = _patches()
    first = ds[3]["image"]
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert ds._epoch.is_shared()
    assert not torch.equal(ds[3]["image"], first)
    ds.set_epoch(0)
    torch.testing.assert_close(ds[3]["image"], first)


@pytest.mark.slow
def test_compile_trains_and_saves_the_plain_module(tmp_path):
    pytest.importorskip("torch._inductor")
    plain, res_plain = _train(epochs=2)
    compiled, res = _train(epochs=2, compile=True, checkpoint_dir=tmp_path)
    np.testing.assert_allclose(_losses(res), _losses(res_plain), rtol=1e-3)
    saved = load_checkpoint(tmp_path)["module"]
    assert set(saved) == set(plain.state_dict())  # no "_orig_mod." prefixes
    assert set(res.best_state) == set(plain.state_dict())


def test_device_augmentation_equals_the_loaders():
    """The batch augmented on the device matches the loader's augmentation (same draws)."""
    from stpredict.data._device_augment import AUGMENT_KEY, DeviceAugment

    rng = np.random.default_rng(3)
    patches = rng.integers(30, 230, size=(64, 14, 14, 3), dtype=np.uint8)
    kwargs = {"augment": True, "stain_jitter": 0.05, "crop": 12, "seed": 7}
    loader = PatchDataset(patches, **kwargs)
    deferred = PatchDataset(patches, **kwargs, device_augment=True)
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        deferred.set_epoch(epoch)
        expected = torch.stack([loader[i]["image"] for i in range(64)])
        items = [deferred[i] for i in range(64)]
        batch = {"image": torch.stack([it["image"] for it in items])}
        batch[AUGMENT_KEY] = torch.stack([it[AUGMENT_KEY] for it in items])
        assert len({tuple(d[:3].tolist()) for d in batch[AUGMENT_KEY]}) > 8  # many flips/rotations
        got = DeviceAugment(stain_jitter=0.05)(batch)["image"]
        # equal up to the loader's rounding to 8 bits (1/255 ≈ 0.018 after normalisation)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.04)
        assert float((got - expected).abs().mean()) < 0.01
    no_jitter = PatchDataset(patches, augment=True, seed=1, device_augment=True)
    plain = PatchDataset(patches, augment=True, seed=1)
    batch = {"image": torch.stack([no_jitter[i]["image"] for i in range(8)])}
    batch[AUGMENT_KEY] = torch.stack([no_jitter[i][AUGMENT_KEY] for i in range(8)])
    exact = torch.stack([plain[i]["image"] for i in range(8)])
    torch.testing.assert_close(DeviceAugment()(batch)["image"], exact)  # flips/rotations: exact


def test_fit_augments_on_the_device_when_asked():
    import stpredict as stp

    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=20, seed=6)
    fit = {"preset": "tiny", "epochs": 2, "seed": 0, "progress": False, "device": "cpu", "stain_jitter": 0.05}
    before = stp.settings.device_augment
    try:
        stp.settings.device_augment = True
        on_device = stp.tl.fit(adata, **fit)
    finally:
        stp.settings.device_augment = before
    in_loader = stp.tl.fit(adata, **fit)
    losses = [[h["train_loss"] for h in m.history] for m in (on_device, in_loader)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=0.02)
