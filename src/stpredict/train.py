"""The training loop shared by every method.

:func:`train_module` trains any module that follows the ``RetrievalModule`` contract
(``forward(batch) -> {"loss": ..., <parts>: ...}``) with AdamW/Adam, per-epoch cosine annealing,
bf16 autocast on CUDA, per-epoch checkpoints, exact resume and Ctrl-C handling.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ._device import resolve_device
from ._distributed import ShardedBatches, init_from_env, is_distributed, is_main, rank, world_size
from ._logging import logger
from ._progress import format_seconds
from ._progress import progress as progress_bar
from ._torchfile import load_weights_only
from ._validation import check_callbacks, check_int, check_not_empty

__all__ = [
    "Checkpoint",
    "LoopSettings",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "make_loader",
    "train_module",
]

CHECKPOINT_NAME = "last.pt"
_OPTIMIZERS = ("adamw", "adam")
_SCHEDULERS = ("cosine", None)
_CKPT_FORMAT = 1


@dataclass
class TrainResult:
    """What :func:`train_module` returns.

    Attributes
    ----------
    history
        One dict per completed epoch (resumed epochs included): ``epoch`` (1-based), ``lr``,
        ``train_loss``, ``train_<part>``, ``val_loss``/``val_<part>`` (with a validation set),
        ``seconds`` (whole epoch) and ``images_per_s`` (training phase).
    best_epoch
        1-based epoch with the lowest validation loss (training loss without a validation set);
        ``0`` if no epoch completed.
    best_state
        ``state_dict`` of the module at ``best_epoch``, on CPU.
    interrupted
        Whether training stopped early on Ctrl-C (``KeyboardInterrupt``).
    epochs_run
        Epochs completed in total, resumed ones included (``len(history)``).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    interrupted: bool = False
    epochs_run: int = 0


def _jsonable(obj: Any) -> Any:
    """Normalise a fingerprint so that tuples/lists, numpy scalars, paths compare equal after saving."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors moved without blocking (pinned memory); 4-D ones in NHWC order with ``channels_last``."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.ndim == 4:
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device, channels_last) for v in batch)
    return batch


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for key in ("index", "image", "expression"):
            if key in batch and isinstance(batch[key], torch.Tensor):
                return int(batch[key].shape[0])
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim:
                return int(v.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    raise TypeError("Cannot tell the batch size: batches must be dicts of tensors (see PatchDataset).")


def _checkpoint_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() or p.suffix != ".pt" else p


@dataclass(frozen=True)
class LoopSettings:
    """The optimisation settings of the training loop, validated.

    A preset's :class:`stpredict.models.TrainingSpec` extends them with the recipe's settings.
    """

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-3
    lr_min: float = 1e-5
    scheduler: Literal["cosine"] | None = "cosine"
    epochs: int = 60
    batch_size: int = 64
    drop_last: bool = True

    def __post_init__(self) -> None:
        check_int(self.epochs, what="train_module: `epochs`")
        check_int(self.batch_size, what="train_module: `batch_size`")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}.")
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {self.scheduler!r}.")
        lr, lr_min, decay = self.lr, self.lr_min, self.weight_decay
        if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}.")
        if not (isinstance(lr_min, int | float) and 0 <= lr_min <= lr):
            raise ValueError(f"lr_min must be in [0, lr={lr}], got {lr_min!r}.")
        if not (isinstance(decay, int | float) and decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {decay!r}.")


# how a run executes, not what it computes: a resume may change them
_EXECUTION = ("num_workers", "channels_last", "compile")


@dataclass(frozen=True)
class TrainConfig(LoopSettings):
    """The settings of one :func:`train_module` run: the loop's, its seed and how it executes.

    ``channels_last`` (``None``: on CUDA) stores 4-D images and the module's convolution weights
    in NHWC order; ``compile`` wraps the module in :func:`torch.compile`.
    """

    seed: int = 0
    num_workers: int = 0
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        workers = self.num_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {workers!r}.")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None, got {self.channels_last!r}.")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}.")

    def recorded(self, n_train: int, n_val: int | None) -> dict[str, Any]:
        """What a checkpoint records (and a resume must match); the execution options may change."""
        entries = {k: v for k, v in asdict(self).items() if k not in _EXECUTION}
        return _jsonable({**entries, "n_train": n_train, "n_val": n_val})

    def optimiser(self, module: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The optimiser of the trainable parameters and the per-epoch schedule (or ``None``)."""
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(module).__name__} has no trainable parameters.")
        opt_cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler != "cosine":
            return opt, None
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs, eta_min=self.lr_min)


@dataclass
class Checkpoint:
    """The state after a completed epoch: enough to continue exactly where training stopped."""

    module: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    epoch: int
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    fingerprint: dict[str, Any]
    train_config: dict[str, Any]

    def save(self, file: Path) -> None:
        """Write atomically: a temporary file in the same folder, then ``os.replace``."""
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        try:
            torch.save({"format": _CKPT_FORMAT, **asdict(self)}, tmp)
            os.replace(tmp, file)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read a checkpoint (a folder's ``last.pt`` or the file) without executing pickled code."""
        payload = load_checkpoint(path)
        return cls(**{f.name: payload[f.name] for f in fields(cls)})

    def check_compatible(self, fingerprint: dict[str, Any], train_config: dict[str, Any], file: Path) -> None:
        """Refuse to resume a run of another model, other data or other training settings."""
        saved = self.fingerprint or {}
        diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        if diff:
            raise ValueError(
                f"Checkpoint {file} was written for a different model or data (fingerprint "
                f"differs in {diff}); resume with the same settings or pass resume=False."
            )
        saved = self.train_config or {}
        diff = sorted(k for k in set(saved) | set(train_config) if saved.get(k) != train_config.get(k))
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {train_config.get(k)!r}" for k in diff)
            raise ValueError(
                f"Checkpoint {file} used other training settings ({detail}); resume with the "
                "same settings or pass resume=False."
            )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train_module` without executing pickled code.

    Parameters
    ----------
    path
        A checkpoint folder (its ``last.pt`` is read) or the file itself.

    Returns
    -------
    The checkpoint dict: ``module``, ``optimizer``, ``scheduler`` (state dicts), ``epoch``
    (epochs completed), ``history``, ``best_state``, ``best_epoch``, ``fingerprint`` and
    ``train_config``.

    Examples
    --------
    >>> from stpredict.train import load_checkpoint
    >>> ckpt = load_checkpoint("checkpoints")  # doctest: +SKIP
    >>> ckpt["epoch"], ckpt["history"][-1]["val_loss"]  # doctest: +SKIP
    """
    file = _checkpoint_path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {file}; train with checkpoint_dir={str(file.parent)!r} first, "
            "or pass resume=False."
        )
    ckpt = load_weights_only(
        file,
        what=str(file),
        hint="It is not a stpredict checkpoint or is damaged; delete it, or start without resume=True.",
    )
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{file} is not a stpredict training checkpoint (format {_CKPT_FORMAT}).")
    return ckpt


def make_loader(
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    batch_sampler: Iterable[Sequence[int]] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    seed: int | None = None,
) -> torch.utils.data.DataLoader:
    """The one DataLoader builder of training and validation (a ``batch_sampler`` replaces batching).

    ``persistent_workers`` keeps the worker processes between epochs (only with workers).
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    batching: dict[str, Any] = (
        {"batch_sampler": batch_sampler}
        if batch_sampler is not None
        else {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    )
    return torch.utils.data.DataLoader(
        dataset, num_workers=num_workers, pin_memory=pin_memory, generator=generator,
        persistent_workers=persistent_workers and num_workers > 0, **batching,
    )  # fmt: skip


_ESTIMATE_AFTER_STEPS = 3


def _log_estimate(seconds: float, steps: int, loader: Iterable, epochs: int) -> None:
    """Log the time ``epochs`` epochs will take, extrapolated from the first ``steps`` steps."""
    try:
        per_epoch = seconds / steps * len(loader)  # type: ignore[arg-type]
    except TypeError:  # a loader without len
        return
    logger.info(
        f"training: about {format_seconds(per_epoch)} per epoch, {format_seconds(per_epoch * epochs)} "
        f"for the {epochs} epoch(s) to run (estimated from the first {steps} steps, validation not counted)"
    )


def _run_epoch(
    module: nn.Module,
    loader: Iterable,
    device: torch.device,
    autocast: bool,
    optimizer: torch.optim.Optimizer | None,
    desc: str,
    progress: bool,
    estimate_epochs: int = 0,
    channels_last: bool = False,
    transform: Callable[[Any], Any] | None = None,
) -> tuple[dict[str, float], int, float]:
    """One pass over ``loader``; trains when an optimizer is given. Returns size-weighted means.

    With ``estimate_epochs > 0``, logs after a few steps how long that many epochs will take.
    """
    sums: dict[str, torch.Tensor] = {}
    n_seen = 0
    start = time.perf_counter()
    train = optimizer is not None
    module.train(train)
    with torch.set_grad_enabled(train):
        for step, batch in enumerate(
            progress_bar(loader, desc=desc, unit="batch", enabled=progress, inner=True)
        ):
            if estimate_epochs and step == _ESTIMATE_AFTER_STEPS:
                _log_estimate(time.perf_counter() - start, step, loader, estimate_epochs)
            batch = _to_device(batch, device, channels_last)
            if transform is not None:
                batch = transform(batch)
            n = _batch_len(batch)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                losses = module(batch)
            if not isinstance(losses, Mapping) or "loss" not in losses:
                raise KeyError(
                    f"{type(module).__name__}.forward must return a dict of losses with key 'loss', "
                    f"got {type(losses).__name__}"
                    + (f" with keys {sorted(losses)}" if isinstance(losses, Mapping) else "")
                    + "."
                )
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
            for key, value in losses.items():
                value = (
                    value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                )
                sums[key] = sums.get(key, 0.0) + value.reshape(()) * n
            n_seen += n
    seconds = time.perf_counter() - start
    if n_seen == 0:
        raise ValueError(f"The {desc} data loader yielded no batches.")
    return {k: float(v) / n_seen for k, v in sums.items()}, n_seen, seconds


def _selection_score(entry: Mapping[str, Any]) -> float:
    """What picks the best epoch (lower is better): ``val_score``, else the validation or training loss."""
    for key in ("val_score", "val_loss", "train_loss"):
        if key in entry:
            return float(entry[key])
    raise KeyError("a history entry has neither val_score, val_loss nor train_loss")


def train_module(
    module: nn.Module,
    train_dataset: torch.utils.data.Dataset,
    val_dataset: torch.utils.data.Dataset | None = None,
    *,
    epochs: int,
    batch_size: int,
    optimizer: Literal["adamw", "adam"] = "adamw",
    lr: float = 1e-4,
    weight_decay: float = 1e-3,
    lr_min: float = 1e-5,
    scheduler: Literal["cosine"] | None = "cosine",
    device: str | torch.device = "cpu",
    amp: bool = True,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    fingerprint: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    channels_last: bool | None = None,
    compile: bool = False,
    drop_last: bool = True,
    batch_sampler: Iterable[Sequence[int]] | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable[[int, dict[str, Any], nn.Module], Any]] = (),
    score: Callable[[nn.Module], float] | None = None,
    batch_transform: Callable[[Any], Any] | None = None,
) -> TrainResult:
    """Train a retrieval module (contrastive image–expression model).

    Each epoch shuffles the training set with a generator seeded by ``seed + epoch`` and calls
    ``torch.manual_seed(seed + epoch)`` first, so a resumed run reproduces an uninterrupted one
    exactly (on CPU). After each epoch the module is evaluated on ``val_dataset``, the learning
    rate is annealed, the best weights are kept and ``checkpoint_dir/last.pt`` is rewritten.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), the processes join one group (NCCL on CUDA, gloo
    on the CPU) and train the module under DDP: ``batch_size`` is the *global* batch, each process
    takes its share of every shuffled global batch, the module's contrastive losses see the
    embeddings of the whole global batch (:meth:`~stpredict.models.RetrievalModule.global_batch`),
    and rank 0 alone logs, calls ``callbacks`` and writes checkpoints.

    Parameters
    ----------
    module
        An ``nn.Module`` whose ``forward(batch)`` returns a dict of scalar losses; ``"loss"`` is
        minimised, the other entries are logged as parts. Batches are dicts of tensors
        (``image``, ``expression``, ``coords``, ``index``) moved to ``device``. Trained in place.
    train_dataset
        Map-style dataset of training items (e.g. :class:`stpredict.data.PatchDataset`).
    val_dataset
        Optional validation items; selects the best epoch when given.
    epochs
        Total number of epochs (resumed epochs included).
    batch_size
        Items per batch. A training set smaller than ``batch_size`` is used as one smaller batch
        (with a warning) instead of being dropped.
    optimizer
        ``"adamw"`` or ``"adam"``.
    lr
        Initial learning rate.
    weight_decay
        Weight decay (decoupled for AdamW, L2 for Adam).
    lr_min
        Final learning rate of the cosine schedule.
    scheduler
        ``"cosine"``: cosine annealing from ``lr`` to ``lr_min`` over ``epochs``, stepped once per
        epoch; ``None``: constant ``lr``.
    device
        Torch device or name (``"auto"`` picks a GPU when there is one).
    amp
        bf16 autocast on CUDA (ignored on other devices).
    seed
        Base seed of the per-epoch shuffling and random state.
    checkpoint_dir
        Folder for ``last.pt`` (written after every epoch, atomically). ``None``: no checkpoints.
    resume
        ``True`` continues from ``checkpoint_dir/last.pt``; a path (folder or file) continues from
        that checkpoint (and keeps checkpointing next to it when ``checkpoint_dir`` is ``None``).
    fingerprint
        JSON-able description of the model and data (method, config, genes, ...), stored in the
        checkpoint and compared on resume; a mismatch is an error.
    num_workers
        Data-loading worker processes; they read the next batches while the module computes.
        A dataset with ``set_epoch(epoch)`` (:class:`stpredict.data.PatchDataset`) has it called
        before each epoch and keeps its workers between epochs (its augmentation follows the
        epoch); other datasets get new workers, seeded by ``seed + epoch``, every epoch.
    channels_last
        Images (4-D tensors) and the module's weights in channels-last (NHWC) memory order, which
        convolutions and bf16 run faster in on GPUs; ``None``: on CUDA only.
    compile
        Compile the module with :func:`torch.compile` (the first steps are slow while it compiles;
        needs a C++ compiler on CPU). Checkpoints hold the uncompiled module's weights.
    drop_last
        Drop the last incomplete training batch (only when there is more than one batch).
    batch_sampler
        Yields lists of dataset indices per training batch (replaces ``batch_size``, shuffling and
        ``drop_last``). If it has ``set_epoch(epoch)``, it is called before each epoch.
    progress
        Show a progress bar over epochs (and batches).
    callbacks
        Functions ``cb(epoch, history_entry, module)`` called after each epoch's checkpoint is
        written.
    score
        ``score(module) -> float`` evaluated after every epoch (module in eval mode) and stored
        as ``val_score``; the epoch with the lowest score is kept instead of the lowest
        validation loss (e.g. minus the validation retrieval Pearson r).
    batch_transform
        ``batch -> batch`` applied to every training batch on the device, e.g. the augmentation
        of a whole batch on the GPU (:class:`stpredict.data._device_augment.DeviceAugment`).

    Returns
    -------
    A :class:`TrainResult`. On Ctrl-C the run stops, the last completed epoch's checkpoint is
    kept, a warning explains how to resume, and ``interrupted=True`` is returned with the best
    state so far (the module's weights are left where training stopped). If no epoch had
    completed the ``KeyboardInterrupt`` is re-raised. The module is left in eval mode.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from stpredict.train import train_module
    >>> class Tiny(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = nn.Linear(4, 1)
    ...
    ...     def forward(self, batch):
    ...         loss = ((self.lin(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()
    ...         return {"loss": loss}
    >>> data = [{"x": torch.randn(4), "y": torch.tensor(1.0)} for _ in range(32)]
    >>> res = train_module(Tiny(), data, epochs=2, batch_size=8, progress=False)
    >>> len(res.history), res.best_epoch in (1, 2)
    (2, True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    config = TrainConfig(
        optimizer=optimizer, lr=lr, weight_decay=weight_decay, lr_min=lr_min, scheduler=scheduler,
        epochs=epochs, batch_size=batch_size, drop_last=drop_last, seed=seed, num_workers=num_workers,
        channels_last=channels_last, compile=compile,
    )  # fmt: skip
    n_train = check_not_empty(train_dataset, what="train_dataset", hint="need at least one training item")
    if val_dataset is not None:
        check_not_empty(
            val_dataset, what="val_dataset", hint="pass val_dataset=None to train without validation"
        )
    callbacks = check_callbacks(callbacks)
    run = _Run(
        module=module,
        config=config,
        device=init_from_env(resolve_device(device)),
        recorded=config.recorded(n_train, None if val_dataset is None else len(val_dataset)),  # type: ignore[arg-type]
        fingerprint=_jsonable(dict(fingerprint) if fingerprint is not None else {}),
        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
    )
    run.amp = bool(amp) and run.device.type == "cuda"
    run.batch_transform = batch_transform
    run.start(resume)
    return run.train(
        _train_loaders(run, train_dataset, val_dataset, batch_sampler), progress, callbacks, score
    )


def _data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` on several processes."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _train_loaders(
    run: _Run,
    train: torch.utils.data.Dataset,
    val: torch.utils.data.Dataset | None,
    batch_sampler: Iterable[Sequence[int]] | None,
) -> tuple[Callable[[int], Iterable], Iterable | None]:
    """``loader(epoch)`` of the training set (reshuffled by ``seed + epoch``) and the validation loader."""
    cfg, pin = run.config, run.device.type == "cuda"
    sampler = batch_sampler if batch_sampler is not None else _global_batches(cfg, len(train))  # type: ignore[arg-type]
    if batch_sampler is not None and is_distributed():
        raise ValueError(
            "train_module: a custom batch_sampler is not split across processes; train it on one process "
            "(e.g. mclSTExp with spot_context='slide')."
        )

    # a dataset told the epoch keeps its workers; others get new ones seeded by seed + epoch
    persistent = cfg.num_workers > 0 and hasattr(train, "set_epoch")
    kept: list[torch.utils.data.DataLoader] = []

    def train_loader(epoch: int) -> Iterable:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        if kept:
            return kept[0]
        loader = make_loader(
            train, batch_size=cfg.batch_size, batch_sampler=sampler, num_workers=cfg.num_workers,
            pin_memory=pin, persistent_workers=persistent, seed=cfg.seed + epoch,
        )  # fmt: skip
        if persistent:
            kept.append(loader)
        return loader

    val_loader = (
        None
        if val is None
        else make_loader(
            val,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            pin_memory=pin,
            persistent_workers=True,
        )
    )
    return train_loader, val_loader


def _global_batches(cfg: TrainConfig, n_train: int) -> ShardedBatches:
    """The share of this rank of shuffled global batches of ``cfg.batch_size`` items.

    A training set smaller than one batch is one batch; several processes drop an incomplete last
    batch (every rank must see a batch of the same size).
    """
    batch_size, drop_last = cfg.batch_size, cfg.drop_last
    if n_train < batch_size:
        logger.warning(
            f"train_dataset has {n_train} items, fewer than batch_size={batch_size}; "
            f"training on one batch of {n_train} per epoch."
        )
        batch_size, drop_last = n_train, False
    if is_distributed() and not drop_last and n_train % batch_size:
        logger.info("training: the incomplete last batch is dropped on several processes")
        drop_last = True
    return ShardedBatches(
        n_train, batch_size, drop_last=drop_last, seed=cfg.seed, rank=rank(), world=world_size()
    )


@dataclass
class _Run:
    """One training run: the module, its optimiser and schedule, the best state, the checkpoints."""

    module: nn.Module
    config: TrainConfig
    device: torch.device
    recorded: dict[str, Any]
    fingerprint: dict[str, Any]
    checkpoint_dir: Path | None
    amp: bool = False
    channels_last: bool = False
    batch_transform: Callable[[Any], Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    start_epoch: int = 0

    def start(self, resume: bool | str | os.PathLike | None) -> None:
        """Load the checkpoint to resume (checked first), then build the optimiser on the device."""
        ckpt, file = self._resume_from(resume)
        if ckpt is not None:
            try:
                self.module.load_state_dict(ckpt.module)
            except RuntimeError as err:
                raise ValueError(
                    f"Checkpoint {file} does not match {type(self.module).__name__}'s parameters: {err}"
                ) from err
        self.module.to(self.device)
        self.channels_last = (
            self.device.type == "cuda" if self.config.channels_last is None else self.config.channels_last
        )
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.net = _data_parallel(self.module, self.device)
        if self.config.compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]
        self.opt, self.sched = self.config.optimiser(self.module)
        if ckpt is not None:
            self._restore(ckpt)
            logger.info(f"Resuming from {file} after epoch {self.start_epoch} of {self.config.epochs}.")
        if self.checkpoint_dir is not None and is_main():
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            logger.info(
                f"Writing checkpoints to {self.checkpoint_dir} ({CHECKPOINT_NAME} after every epoch)."
            )

    def _resume_from(self, resume: bool | str | os.PathLike | None) -> tuple[Checkpoint | None, Path | None]:
        if resume is False or resume is None:
            if self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT_NAME).exists():
                logger.warning(
                    f"{self.checkpoint_dir / CHECKPOINT_NAME} exists and will be overwritten by a new run "
                    "(pass resume=True to continue it instead)."
                )
            return None, None
        if resume is True:
            if self.checkpoint_dir is None:
                raise ValueError("resume=True needs checkpoint_dir (the folder holding last.pt).")
            file = self.checkpoint_dir / CHECKPOINT_NAME
        else:
            file = _checkpoint_path(resume)
            self.checkpoint_dir = self.checkpoint_dir or file.parent
        ckpt = Checkpoint.load(file)
        ckpt.check_compatible(self.fingerprint, self.recorded, file)
        return ckpt, file

    def _restore(self, ckpt: Checkpoint) -> None:
        self.opt.load_state_dict(ckpt.optimizer)
        if self.sched is not None and ckpt.scheduler is not None:
            self.sched.load_state_dict(ckpt.scheduler)
        self.history = list(ckpt.history)
        self.best_epoch, self.best_state = int(ckpt.best_epoch), dict(ckpt.best_state)
        self.start_epoch = int(ckpt.epoch)
        if self.history:
            self.best_score = min(_selection_score(h) for h in self.history)

    def train(self, loaders, progress: bool, callbacks, score) -> TrainResult:
        """Epochs ``start_epoch + 1 .. epochs``; Ctrl-C after an epoch returns what was done so far."""
        train_loader, val_loader = loaders
        epochs = self.config.epochs
        progress = progress and is_main()
        bar = progress_bar(
            range(self.start_epoch, epochs), desc="epochs", unit="epoch", total=epochs - self.start_epoch,
            enabled=progress,
        )  # fmt: skip
        interrupted = False
        try:
            for epoch0 in bar:
                entry = self._epoch(epoch0 + 1, train_loader, val_loader, progress, score)
                bar.set_postfix({k: f"{entry[k]:.4g}" for k in ("train_loss", "val_loss") if k in entry})
                for cb in callbacks if is_main() else ():
                    cb(epoch0 + 1, entry, self.module)
        except KeyboardInterrupt:
            if not self.history:
                raise
            interrupted = True
            self._log_interrupt()
        finally:
            bar.close()
            self.module.eval()
        return TrainResult(self.history, self.best_epoch, self.best_state, interrupted, len(self.history))

    def _epoch(self, epoch: int, train_loader, val_loader, progress: bool, score) -> dict[str, Any]:
        """Train one epoch, validate, anneal, keep the best state, write the checkpoint."""
        t0 = time.perf_counter()
        torch.manual_seed(self.config.seed + epoch)
        lr = float(self.opt.param_groups[0]["lr"])
        estimate = self.config.epochs - self.start_epoch if epoch == self.start_epoch + 1 else 0
        stats, n_images, seconds = _run_epoch(
            self.net, train_loader(epoch), self.device, self.amp, self.opt, f"train {epoch}", progress,
            estimate_epochs=estimate, channels_last=self.channels_last, transform=self.batch_transform,
        )  # fmt: skip
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(
                f"Training loss became {stats['loss']} in epoch {epoch}; try a lower lr "
                f"(now {lr:g}) or amp=False."
            )
        entry: dict[str, Any] = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in stats.items()}}
        if val_loader is not None:
            val, _, _ = _run_epoch(
                self.net, val_loader, self.device, self.amp, None, f"val {epoch}", progress,
                channels_last=self.channels_last,
            )  # fmt: skip
            entry.update({f"val_{k}": v for k, v in val.items()})
        if self.sched is not None:
            self.sched.step()
        entry["seconds"] = time.perf_counter() - t0
        entry["images_per_s"] = n_images / seconds if seconds > 0 else float("nan")
        self.history.append(entry)
        if score is not None:
            self.module.eval()
            entry["val_score"] = float(score(self.module))
        self._keep_best(epoch, _selection_score(entry))
        self._checkpoint(epoch)
        return entry

    def _keep_best(self, epoch: int, epoch_score: float) -> None:
        if epoch_score < self.best_score or not self.best_state:
            self.best_epoch, self.best_score, self.best_state = epoch, epoch_score, _cpu_state(self.module)

    def _checkpoint(self, epoch: int) -> None:
        if self.checkpoint_dir is None or not is_main():
            return
        Checkpoint(
            module=_cpu_state(self.module),
            optimizer=self.opt.state_dict(),
            scheduler=None if self.sched is None else self.sched.state_dict(),
            epoch=epoch,
            history=self.history,
            best_state=self.best_state,
            best_epoch=self.best_epoch,
            fingerprint=self.fingerprint,
            train_config=self.recorded,
        ).save(self.checkpoint_dir / CHECKPOINT_NAME)

    def _log_interrupt(self) -> None:
        how = (
            f"call again with resume=True and checkpoint_dir={str(self.checkpoint_dir)!r}"
            if self.checkpoint_dir is not None
            else "pass checkpoint_dir= next time to be able to resume"
        )
        logger.warning(
            f"Training interrupted after {len(self.history)} completed epoch(s) of {self.config.epochs}; "
            f"returning the best state so far (epoch {self.best_epoch}). To continue, {how}."
        )
