"""Training on several processes (``torchrun``): the group, each rank's share, global negatives.

The process group, each rank's share of a batch, and embeddings gathered from every rank with
their gradients.

With ``torchrun --nproc_per_node=N`` every process runs the same code; ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` come from the environment. ``batch_size`` stays the *global* batch:
each rank takes its contiguous share of every shuffled global batch, and the contrastive losses
are computed on the embeddings of the whole global batch, gathered with
:func:`torch.distributed.nn.functional.all_gather` so that gradients reach every rank's encoders.
The loss, and after the gradient averaging of DDP the update, are those of one process with the
same global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from stpredict._logging import logger

__all__ = ["ShardedBatches", "gather", "init_from_env", "is_main", "rank", "world_size"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def world_size() -> int:
    """Processes of the group (1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def rank() -> int:
    """The rank of this process (0 without a group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def is_main() -> bool:
    """Rank 0: the process that logs, checkpoints and saves."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun`` (``LOCAL_RANK`` set), GPU ``LOCAL_RANK`` for an unnumbered CUDA device."""
    local = os.environ.get("LOCAL_RANK")
    if local is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(local))
    return device


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1) unless already in one.

    NCCL on CUDA (each process on GPU ``LOCAL_RANK``), gloo on the CPU. Returns the device this
    rank trains on.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return device
    device = local_device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        logger.info(f"training: rank {rank()} of {world_size()} ({backend}) on {device}")
    return device


def gather(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` from every rank, in rank order, differentiable (identity on one process)."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class ShardedBatches:
    """Shuffled global batches of ``batch_size`` items, each cut into ``world`` contiguous shards.

    Rank ``r`` yields shard ``r`` of every global batch; the permutation is drawn from
    ``seed + epoch`` (:meth:`set_epoch`), so every rank agrees on it and a resumed run repeats it.
    With one process these are the batches of ``DataLoader(shuffle=True, generator=seeded)``.
    """

    def __init__(
        self, n: int, batch_size: int, *, drop_last: bool, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        if batch_size % world:
            raise ValueError(
                f"train_module: batch_size={batch_size} (the global batch) must be a multiple of the "
                f"{world} processes."
            )
        self.n, self.batch_size, self.drop_last = n, batch_size, drop_last
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the permutation of this epoch (called by the training loop before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # the order of torch's shuffling DataLoader seeded so (it draws the workers' base seed first)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.n, generator=generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start : start + self.batch_size]
            shard = -(-len(batch) // self.world)  # ceil: the last batch may be short
            yield batch[self.rank * shard : (self.rank + 1) * shard].tolist()
