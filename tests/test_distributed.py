"""Training under ``torchrun`` (DDP on gloo, 2 CPU processes) equals one process with the same global
batch: the same loss trajectory and the same final weights (global negatives through all-gather)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from stpredict._distributed import ShardedBatches

# The training both runs share: CMRCNet (ViT tokens, no batch norm) with every dropout and the
# mask off, so that nothing random differs between one and two processes.
SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from stpredict import _distributed
    from stpredict.data import PatchDataset
    from stpredict.models import CMRCNet
    from stpredict.train import train_module

    config = {
        **CMRCNet.default_config("tiny"),
        "dropout": 0.0, "snn_dropout": 0.0, "fusion_dropout": 0.0, "cross_dropout": 0.0, "mask_ratio": 0.0,
    }
    torch.manual_seed(0)
    module = CMRCNet(12, **config)
    rng = np.random.default_rng(1)
    data = PatchDataset(
        rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), rng.random((24, 12)).astype(np.float32)
    )
    result = train_module(module, data, epochs=3, batch_size=8, lr=1e-3, device="cpu", progress=False)
    if _distributed.is_main():
        torch.save(
            {"loss": [h["train_loss"] for h in result.history], "state": module.state_dict(),
             "world": _distributed.world_size()},
            sys.argv[1],
        )
    """
)


def _run(tmp_path, *launcher: str) -> dict:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"result-{len(launcher)}.pt"
    done = subprocess.run(
        [sys.executable, *launcher, str(script), str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    one, two = _run(tmp_path), _run(tmp_path, *torchrun)
    assert (one["world"], two["world"]) == (1, 2)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert one["loss"][-1] < one["loss"][0]  # it trained
    for name, value in one["state"].items():
        other = two["state"][name]
        if name.endswith(("qkv.bias", "in_proj_bias")):
            # The key bias of an attention has no true gradient (softmax ignores a constant per
            # query), so Adam turns float rounding into steps of up to lr each: compare q and v exactly.
            third = len(value) // 3
            assert (other[third : 2 * third] - value[third : 2 * third]).abs().max() < 9 * 1e-3  # 9 steps
            other, value = (
                torch.cat([other[:third], other[2 * third :]]),
                torch.cat([value[:third], value[2 * third :]]),
            )
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-5, msg=name)


def test_sharded_batches_split_the_one_process_batches():
    single = list(ShardedBatches(21, 8, drop_last=True, seed=3))
    shards = [list(ShardedBatches(21, 8, drop_last=True, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert [len(b) for b in single] == [8, 8]
    for batch, first, second in zip(single, *shards, strict=True):
        assert first + second == batch  # rank order is the one-process order
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ShardedBatches(20, 8, drop_last=True, seed=0, world=3)


def test_sharded_batches_are_the_shuffling_dataloader_batches():
    """One process: the batches of DataLoader(shuffle=True) seeded with seed + epoch, as before."""
    sampler = ShardedBatches(30, 8, drop_last=False, seed=5)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            torch.arange(30), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5 + epoch)
        )
        assert [b.tolist() for b in loader] == list(sampler)


def test_local_device_is_the_local_rank_gpu_under_torchrun(monkeypatch):
    from stpredict._distributed import local_device
    from stpredict.tl._slides import _local_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device(torch.device("cuda")) == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert local_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # an explicit GPU stays
    assert local_device(torch.device("cpu")) == torch.device("cpu")
    assert _local_device("cpu") == "cpu"
