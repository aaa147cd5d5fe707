"""The training recipe around a network: its settings, the training data, the epoch selection.

A method's presets give defaults (``module.training_defaults``); :func:`stpredict.tl.fit`
keywords override them. Nothing here depends on which method is trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, get_args

import numpy as np

from stpredict._constants import WEIGHTINGS, SelectEpoch, Weighting
from stpredict._logging import logger
from stpredict._validation import check_flag

__all__ = ["DataParts", "Recipe", "build_datasets", "retrieval_score"]

_SELECT: tuple[str, ...] = get_args(SelectEpoch)
_SCORE_GENES = 50  # genes of the validation score: the training spots' most expressed


@dataclass(frozen=True)
class Recipe:
    """Validated training settings (see :func:`stpredict.tl.fit`)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_min: float
    optimizer: str
    scheduler: str | None
    image_size: int
    val_fraction: float
    drop_last: bool
    stain_jitter: float
    translate: float
    tta: bool
    select_epoch: SelectEpoch
    k: int
    weighting: Weighting

    @classmethod
    def resolve(
        cls, defaults: dict[str, Any], overrides: dict[str, Any], *, max_epochs: int | None
    ) -> Recipe:
        """The preset's ``defaults`` with the non-``None`` ``overrides`` (fit keywords), checked."""
        given = {key: value for key, value in overrides.items() if value is not None}
        merged = {**defaults, **given}
        retrieval = merged.get("retrieval", {})
        recipe = cls(
            epochs=int(merged["epochs"]),
            batch_size=int(merged["batch_size"]),
            lr=float(merged["lr"]),
            weight_decay=float(merged["weight_decay"]),
            lr_min=min(float(merged.get("lr_min", 0.0)), float(merged["lr"])),
            optimizer=str(merged.get("optimizer", "adamw")),
            scheduler=merged.get("scheduler", "cosine"),
            image_size=int(merged["image_size"]),
            val_fraction=_fraction(merged.get("val_fraction", 0.2), "val_fraction", upper=1.0),
            drop_last=bool(merged.get("drop_last", True)),
            stain_jitter=_fraction(merged.get("stain_jitter", 0.0), "stain_jitter", upper=1.0),
            translate=_fraction(merged.get("translate", 0.0), "translate", upper=1.0),
            tta=_flag(merged.get("tta", False), "tta"),
            select_epoch=_choice(merged.get("select_epoch", "val_loss"), "select_epoch", _SELECT),
            k=int(retrieval.get("k", 50)),
            weighting=_choice(retrieval.get("weighting", "mean"), "weighting", WEIGHTINGS),
        )
        if max_epochs is not None and recipe.epochs > max_epochs:
            logger.warning(f"fit: {recipe.epochs} epochs capped to stp.settings.max_epochs={max_epochs}")
            recipe = cls(**{**asdict(recipe), "epochs": int(max_epochs)})
        if recipe.select_epoch == "val_pearson" and recipe.val_fraction == 0:
            if "select_epoch" in given:
                raise ValueError("fit: select_epoch='val_pearson' needs validation spots (val_fraction > 0).")
            logger.info("fit: no validation spots (val_fraction=0): the epoch is chosen by the training loss")
            recipe = cls(**{**asdict(recipe), "select_epoch": "val_loss"})
        return recipe

    def for_input(self, *, features: bool, frozen: bool, views: int = 1) -> Recipe:
        """Pixel augmentations off when training never sees pixels (precomputed or cached features).

        A frozen backbone's cache holds the 8 flips/rotations of each patch (flips and rotations
        stay as augmentation, and TTA at prediction); precomputed features have no views, unless
        ``views`` of hand-made features were drawn with the translation and stain jitter.
        """
        if not (features or frozen):
            return self
        off: dict[str, Any] = {"stain_jitter": 0.0, "translate": 0.0, **({"tta": False} if features else {})}
        changed = [key for key, value in off.items() if getattr(self, key) != value]
        if changed:
            source = "precomputed features" if features else "a frozen backbone's cached features"
            drawn = f" (translate and stain_jitter drew its {views} views)" if views > 1 else ""
            logger.info(f"fit: {', '.join(changed)} off: training reads {source}{drawn}, not pixels")
        return replace(self, **off)

    def loop_kwargs(self) -> dict[str, Any]:
        """Keywords of :func:`stpredict.train.train_module`."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "lr_min": self.lr_min,
            "drop_last": self.drop_last,
        }

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able settings (recorded in checkpoints and in ``model.training``)."""
        return asdict(self)


def _fraction(value: Any, name: str, *, upper: float) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.number) and np.isfinite(value)
    if not ok or not 0 <= value < upper:
        raise ValueError(f"fit: `{name}` must be a number in [0, {upper:g}), got {value!r}.")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    return check_flag(value, what=f"fit: `{name}`")


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise ValueError(f"fit: `{name}` must be one of {list(choices)}, got {value!r}.")
    return value


@dataclass
class DataParts:
    """The training and validation datasets of one fit, and what the bank needs.

    ``patches`` are every spot's patches (``None`` when the image input is precomputed
    ``features``); ``features`` are the network's image input when it is not pixels: precomputed
    embeddings ``(n, F)``, or a frozen backbone's pooled output of each spot's 8 views ``(n, 8, C)``.
    """

    train: Any
    val: Any
    train_idx: np.ndarray
    val_idx: np.ndarray
    expression: np.ndarray
    coords: np.ndarray
    batch_sampler: Any
    patches: np.ndarray | None
    margin: int
    features: np.ndarray | None = None
    batch_transform: Any = None  # augmentation of each training batch on the device, if any

    def central_patches(self, size: int, patch_size_um: float) -> Any:
        """Every spot's patch at the model's size (the central crop when cut with a margin).

        Streamed patches stay streamed: a :class:`~stpredict.data.SlidePatches` at the model's
        size and ``patch_size_um``; cached ones are read from the cache, cropped.
        """
        from stpredict.data import SlidePatches

        if self.patches is None:
            raise ValueError("DataParts.central_patches: this fit reads precomputed features, not patches.")
        if isinstance(self.patches, SlidePatches):
            return SlidePatches(self.patches.spots, patch_size_um=patch_size_um, size=size)
        if hasattr(self.patches, "central"):  # the on-disk patch cache
            return self.patches.central(size)
        o = self.margin // 2
        return (
            np.ascontiguousarray(self.patches[:, o : o + size, o : o + size]) if self.margin else self.patches
        )

    @property
    def n_train(self) -> int:
        """Training spots."""
        return len(self.train_idx)

    @property
    def n_val(self) -> int:
        """Validation spots."""
        return len(self.val_idx)


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) indices, each sorted."""
    n_val = round(val_fraction * n) if val_fraction > 0 else 0
    if n - n_val < 2:
        raise ValueError(
            f"fit: only {n - n_val} training spot(s) after holding out {n_val}; need at least 2."
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


STREAM_ABOVE_BYTES = 2 * 2**30  # `stream=None`: cut patches per batch when they would take more


def _patches(
    sd: Any, patch_size_um: float, size: int, stream: bool | None, progress: bool, cache: Any = None
) -> Any:
    """Every spot's patch: in memory, or lazy (read per batch).

    Lazy: a :class:`~stpredict.data.SlidePatches`, or with ``cache`` (a folder) the on-disk cache
    of :func:`~stpredict.data._patch_cache.cached_patches`.
    """
    from stpredict.data import SlidePatches

    if cache is not None:
        from stpredict.data._patch_cache import cached_patches

        return cached_patches(sd, patch_size_um=patch_size_um, size=size, folder=cache, progress=progress)
    nbytes = len(sd.obs_names) * size * size * 3
    if stream is None:
        stream = nbytes > STREAM_ABOVE_BYTES
    if stream:
        logger.info(
            f"fit: streaming patches ({nbytes / 2**30:.1f} GiB if held in memory): cut from the slides "
            "as batches are read"
        )
        return SlidePatches(sd, patch_size_um=patch_size_um, size=size)
    return sd.extract_patches(patch_size_um=patch_size_um, size=size, progress=progress)


def frozen_features(
    module: Any, patches: np.ndarray, *, device: str, batch_size: int = 128, progress: bool = True
) -> np.ndarray:
    """A frozen backbone's pooled output of each patch's 8 views: ``(n, 8, C)`` float32."""
    import torch

    from stpredict._progress import progress as progress_bar
    from stpredict.data import to_tensor
    from stpredict.models._base import dihedral_views

    module.to(device).eval()
    out = np.empty((len(patches), 8, module.image_encoder.out_dim), np.float32)
    starts = range(0, len(patches), batch_size)
    with torch.inference_mode():
        for start in progress_bar(starts, desc="embedding patches once", unit="batch", enabled=progress):
            images = to_tensor(patches[start : start + batch_size]).to(device)
            views = [module.pooled_features(v).float().cpu().numpy() for v in dihedral_views(images)]
            out[start : start + len(images)] = np.stack(views, axis=1)
    return out


def build_datasets(
    sd: Any,
    expression: np.ndarray,
    module: Any,
    recipe: Recipe,
    *,
    patch_size_um: float,
    seed: int,
    progress: bool,
    features: np.ndarray | None = None,
    device: str = "cpu",
    stream: bool | None = None,
    patch_cache: Any = None,
) -> DataParts:
    """Split the spots and wrap their image input and expression in datasets.

    The image input is the precomputed ``features`` when given; otherwise patches cut around the
    spots (with a margin for random translation), which a frozen backbone embeds once. With
    ``stream`` (``None``: when the patches would take more than :data:`STREAM_ABOVE_BYTES`) the
    patches are cut from the slide when a batch is read, never all at once; with ``patch_cache``
    (a folder) they are cut once into an on-disk zarr store there and read from it.
    """
    from stpredict.data import FeatureDataset, PatchDataset
    from stpredict.data._spotdata import LazyPatches

    size = recipe.image_size
    margin = round(size * recipe.translate)
    patches = None
    if features is None:
        window_um = patch_size_um * (size + margin) / size
        patches = _patches(sd, window_um, size + margin, stream, progress, patch_cache)
        if module.config.get("freeze_backbone"):
            features = frozen_features(module, patches, device=device, progress=progress)
    train_idx, val_idx = _split(len(sd.obs_names), recipe.val_fraction, seed)
    coords = np.asarray(sd.grid_coords, dtype=np.int64)
    crop = size if margin else None

    on_device = features is None and _augment_on_device(device)

    def dataset(idx: np.ndarray, train: bool) -> Any:
        if features is not None:
            return FeatureDataset(features[idx], expression[idx], coords=coords[idx], augment=train)
        assert patches is not None  # no precomputed features: the patches were cut
        return PatchDataset(
            patches.subset(idx) if isinstance(patches, LazyPatches) else patches[idx],
            expression[idx],
            coords=coords[idx],
            augment=train,
            stain_jitter=recipe.stain_jitter if train else 0.0,
            crop=crop,
            seed=seed if train else None,  # augmentation drawn from (seed, spot, epoch)
            device_augment=on_device and train,
        )

    batch_sampler = None
    if getattr(module, "spot_context", "none") == "slide":
        from stpredict.data import neighbourhood_batches

        batch_sampler = neighbourhood_batches(
            np.asarray(sd.library_ids)[train_idx], coords[train_idx], recipe.batch_size, seed=seed
        )
    return DataParts(
        train=dataset(train_idx, True),
        val=dataset(val_idx, False) if len(val_idx) else None,
        train_idx=train_idx,
        val_idx=val_idx,
        expression=expression,
        coords=coords,
        batch_sampler=batch_sampler,
        patches=patches,
        margin=margin,
        features=features,
        batch_transform=_device_augmentation(recipe) if on_device else None,
    )


def _augment_on_device(device: str) -> bool:
    """Whether the flips, rotations and stain jitter run on the training device (``settings``)."""
    from stpredict._settings import settings

    choice = settings.device_augment
    return str(device).startswith("cuda") if choice is None else bool(choice)


def _device_augmentation(recipe: Recipe) -> Any:
    from stpredict.data._device_augment import DeviceAugment

    return DeviceAugment(stain_jitter=recipe.stain_jitter)


def retrieval_score(parts: DataParts, recipe: Recipe):
    """``score(module)``: minus the mean Pearson r of the validation spots predicted by retrieval.

    The keys are the training spots' expression embeddings, the queries the validation spots'
    image embeddings (central crops, no augmentation); ``recipe.k`` neighbours, ``recipe.weighting``.
    The genes are the training spots' ``50`` most expressed: no validation expression chooses them.
    """
    import torch

    from stpredict.metrics import pearson_per_gene
    from stpredict.retrieval import retrieve

    train_expr = parts.expression[parts.train_idx]
    genes = np.argsort(-train_expr.mean(axis=0), kind="stable")[:_SCORE_GENES]
    truth = parts.expression[parts.val_idx][:, genes]
    k = min(recipe.k, len(parts.train_idx))
    val_images = torch.stack([parts.val[i]["image"] for i in range(len(parts.val))])
    coords = torch.from_numpy(parts.coords[parts.train_idx])

    def score(module: Any) -> float:
        device = next(module.parameters()).device
        with torch.inference_mode():
            keys = torch.cat(
                [
                    module.encode_expression(
                        torch.from_numpy(train_expr[i : i + 512]).to(device), coords[i : i + 512].to(device)
                    ).float()
                    for i in range(0, len(train_expr), 512)
                ]
            )
            queries = torch.cat(
                [
                    module.encode_image(val_images[i : i + 256].to(device)).float()
                    for i in range(0, len(val_images), 256)
                ]
            )
        pred = retrieve(
            queries.cpu().numpy(), keys.cpu().numpy(), train_expr[:, genes], k, weighting=recipe.weighting
        )
        return -float(np.mean(pearson_per_gene(truth, pred.prediction)))

    return score
