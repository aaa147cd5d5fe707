"""Torch dataset of image patches + expression, and batches of neighbouring spots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stpredict._constants import IMAGENET_MEAN, IMAGENET_STD
from stpredict._validation import check_matrix, check_patches

if TYPE_CHECKING:  # pragma: no cover
    from ._spotdata import LazyPatches


def _stats(values: Sequence[float], *, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.float32).ravel())
    if t.numel() != 3:
        raise ValueError(f"`{what}` must have 3 values (R, G, B), got {t.numel()}.")
    if what == "std" and (t <= 0).any():
        raise ValueError(f"`std` must be positive, got {t.tolist()}.")
    return t.view(3, 1, 1)


def to_tensor(
    patches: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Convert ``uint8`` patches to a normalised float tensor.

    Parameters
    ----------
    patches
        ``uint8`` ``(n, S, S, 3)`` RGB patches (a single ``(S, S, 3)`` patch is also accepted).
    mean
        Per-channel mean subtracted after scaling to ``[0, 1]``.
    std
        Per-channel standard deviation divided by.

    Returns
    -------
    ``float32`` tensor ``(n, 3, S, S)`` (or ``(3, S, S)`` for a single patch).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data import to_tensor
    >>> to_tensor(np.zeros((2, 8, 8, 3), np.uint8)).shape
    torch.Size([2, 3, 8, 8])
    """
    arr = np.asarray(patches)
    single = arr.ndim == 3
    arr = check_patches(arr[None] if single else arr)
    m, s = _stats(mean, what="mean"), _stats(std, what="std")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    x = (x - m) / s
    return x[0] if single else x


def _spot_arrays(n: int, expression: Any, coords: Any) -> tuple[np.ndarray, np.ndarray]:
    """Expression ``(n, G)`` float32 (``(n, 0)`` when ``None``) and grid coordinates ``(n, 2)`` int64."""
    if expression is None:
        expr = np.zeros((n, 0), dtype=np.float32)
    else:
        expr = np.asarray(expression, dtype=np.float32)
        if expr.ndim != 2 or expr.shape[0] != n:
            raise ValueError(f"expression must have shape ({n}, n_genes), got {expr.shape}.")
    if coords is None:
        return expr, np.zeros((n, 2), dtype=np.int64)
    c = np.asarray(coords)
    if c.shape != (n, 2) or not np.issubdtype(c.dtype, np.number) or not np.isfinite(c).all():
        raise ValueError(f"coords must be finite numbers of shape ({n}, 2), got {c.dtype} {c.shape}.")
    return expr, c.astype(np.int64)


def _is_lazy(patches: Any) -> bool:
    from ._spotdata import LazyPatches

    return isinstance(patches, LazyPatches)


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset of image patches and expression (picklable for DataLoader workers).

    Item ``i`` is a dict ``{"image": float32 [3, S, S] normalised, "expression": float32 [G]
    (zeros of length 0 when ``expression`` is None), "coords": int64 [2], "index": int64}``.

    Parameters
    ----------
    patches
        ``uint8`` ``(n, S, S, 3)`` RGB patches, or a :class:`~stpredict.data.SlidePatches` (patches
        cut from the slide when an item is read: streaming, memory independent of ``n``).
    expression
        ``(n, G)`` normalised expression, or ``None``.
    coords
        ``(n, 2)`` integer grid coordinates; ``None``: zeros.
    augment
        Random horizontal flip, vertical flip and rotation by k·90° (k in 0..3).
    stain_jitter
        With ``augment``: scale each stain concentration (haematoxylin, eosin, DAB) by
        ``1 + U(-σ, σ)`` and shift it by ``U(-σ, σ)`` (HED jitter, Tellez et al. 2018); ``0``: off.
    crop
        Side (px) of a random crop of each (larger) patch with ``augment`` (random translation
        within the spot); the central crop without. ``None``: the whole patch.
    mean, std
        Normalisation constants (:func:`to_tensor`).
    seed
        With an integer, the augmentation of item ``i`` is drawn from a generator seeded with
        ``(seed, i, epoch)`` (set the epoch with :meth:`set_epoch`), reproducible whatever the
        workers. ``None``: torch's global RNG (seeded by the training loop / DataLoader).
    device_augment
        With ``augment``: cut the random crop only and put the flip/rotation/stain-jitter draws
        in ``item["augment"]`` (float32 ``[9]``) for :class:`~stpredict.data._device_augment.
        DeviceAugment` to apply to the whole batch on the training device.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data import PatchDataset
    >>> ds = PatchDataset(np.zeros((4, 16, 16, 3), np.uint8), np.ones((4, 5), np.float32))
    >>> ds[0]["image"].shape, ds[0]["expression"].shape
    (torch.Size([3, 16, 16]), torch.Size([5]))
    """

    def __init__(
        self,
        patches: np.ndarray | LazyPatches,
        expression: np.ndarray | None = None,
        *,
        coords: np.ndarray | None = None,
        augment: bool = False,
        stain_jitter: float = 0.0,
        crop: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
        device_augment: bool = False,
    ):
        self.patches = patches if _is_lazy(patches) else check_patches(patches)
        self.device_augment = bool(device_augment)
        self.expression, self.coords = _spot_arrays(len(self.patches), expression, coords)
        self.augment = bool(augment)
        if not 0.0 <= float(stain_jitter) < 1.0:
            raise ValueError(f"stain_jitter must be in [0, 1), got {stain_jitter!r}.")
        self.stain_jitter = float(stain_jitter)
        side = self.patches.shape[1]
        if crop is not None and not 1 <= int(crop) <= side:
            raise ValueError(f"crop must be an integer in [1, {side}] (the patch side), got {crop!r}.")
        self.crop = None if crop is None else int(crop)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        _stats(self.mean, what="mean"), _stats(self.std, what="std")
        self.seed = seed
        # in shared memory: DataLoader workers that outlive an epoch (persistent) see the new epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch of the augmentation draw (:meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (only with an integer ``seed``); seen by running workers."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.patches)

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(
            hash((int(self.seed), int(index), self.epoch)) & 0x7FFF_FFFF_FFFF
        )

    def _draws(self, index: int, gen: torch.Generator | None = None) -> tuple[bool, bool, int]:
        r = int(torch.randint(0, 16, (1,), generator=gen).item())
        return bool(r & 1), bool(r & 2), int(r >> 2)

    def _crop(self, img: np.ndarray, gen: torch.Generator | None) -> np.ndarray:
        side = img.shape[0]
        if self.crop is None or self.crop == side:
            return img
        room = side - self.crop
        if self.augment:
            y, x = (int(v) for v in torch.randint(0, room + 1, (2,), generator=gen))
        else:
            y = x = room // 2
        return img[y : y + self.crop, x : x + self.crop]

    @staticmethod
    def _jitter_draws(gen: torch.Generator | None) -> torch.Tensor:
        """The 6 uniforms on ``[-1, 1]`` of the HED jitter (3 scales, 3 shifts), float32."""
        return torch.rand(6, generator=gen) * 2 - 1

    def _jitter(self, img: np.ndarray, gen: torch.Generator | None) -> np.ndarray:
        from ._stain import hed_shift

        u = self._jitter_draws(gen).numpy() * self.stain_jitter
        return hed_shift(img, 1.0 + u[:3], u[3:])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += len(self)
        img = self.patches[index]
        gen = self._generator(index) if self.augment else None
        img = self._crop(img, gen)
        if self.augment and self.device_augment:
            return self._item(img, index, self._device_draws(index, gen))
        if self.augment:
            hflip, vflip, k = self._draws(index, gen)
            if hflip:
                img = img[:, ::-1]
            if vflip:
                img = img[::-1]
            if k:
                img = np.rot90(img, k, axes=(0, 1))
            if self.stain_jitter:
                img = self._jitter(np.ascontiguousarray(img), gen)
        return self._item(img, index)

    def _device_draws(self, index: int, gen: torch.Generator | None) -> torch.Tensor:
        """The draws the loader would use (same order), for the device: hflip, vflip, k, u[6]."""
        hflip, vflip, k = self._draws(index, gen)
        u = self._jitter_draws(gen) if self.stain_jitter else torch.zeros(6)
        return torch.cat([torch.tensor([hflip, vflip, k], dtype=torch.float32), u])

    def _item(
        self, img: np.ndarray, index: int, draws: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        item = {
            "image": to_tensor(np.ascontiguousarray(img), self.mean, self.std),
            "expression": torch.from_numpy(self.expression[index]),
            "coords": torch.from_numpy(self.coords[index]),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if draws is not None:
            item["augment"] = draws
        return item


class FeatureDataset(torch.utils.data.Dataset):
    """Map-style dataset of precomputed image features and expression (no pixels).

    Item ``i`` has the keys of :class:`PatchDataset`, with ``"image"`` the float32 feature vector
    ``[F]``: precomputed patch embeddings (``fit(image_features=...)``) or a frozen backbone's
    pooled output (``fit(freeze_backbone=True)``).

    Parameters
    ----------
    features
        ``(n, F)`` finite features, or ``(n, V, F)``: ``V`` views of each spot (e.g. the 8
        flips/rotations of its patch); with ``augment`` an item is a random view, otherwise view 0.
    expression
        ``(n, G)`` normalised expression, or ``None``.
    coords
        ``(n, 2)`` integer grid coordinates; ``None``: zeros.
    augment
        Draw a random view per item (only with ``(n, V, F)`` features).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data import FeatureDataset
    >>> ds = FeatureDataset(np.ones((4, 8)), np.ones((4, 5)))
    >>> ds[0]["image"].shape
    torch.Size([8])
    """

    def __init__(
        self,
        features: np.ndarray,
        expression: np.ndarray | None = None,
        *,
        coords: np.ndarray | None = None,
        augment: bool = False,
    ):
        views = np.asarray(features)
        if views.ndim == 2:
            views = views[:, None]  # one view per spot
        if views.ndim != 3:
            raise ValueError(f"features must have shape (n, F) or (n, V, F), got {views.shape}.")
        flat = check_matrix(views.reshape(len(views), -1), what="features")
        self.features = np.ascontiguousarray(flat.reshape(views.shape))
        if expression is not None:
            expression = check_matrix(expression, what="expression", min_rows=0)
        self.expression, self.coords = _spot_arrays(len(self.features), expression, coords)
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index) % len(self)
        n_views = self.features.shape[1]
        view = int(torch.randint(0, n_views, (1,))) if self.augment and n_views > 1 else 0
        return {
            "image": torch.from_numpy(self.features[index, view]),
            "expression": torch.from_numpy(self.expression[index]),
            "coords": torch.from_numpy(self.coords[index]),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class NeighbourhoodBatches(list):
    """Batches of spatially contiguous spots (a ``list`` of index arrays with ``set_epoch``).

    Built by :func:`neighbourhood_batches`; :meth:`set_epoch` redraws the tiling offset and the
    batch order for another epoch (the training loop calls it).
    """

    def __init__(
        self, library_ids: np.ndarray, grid_coords: np.ndarray, batch_size: int, seed: int, epoch: int
    ):
        self.library_ids, self.grid_coords = library_ids, grid_coords
        self.batch_size, self.seed = batch_size, seed
        super().__init__()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Recompute the batches for ``epoch``."""
        self.epoch = int(epoch)
        self[:] = _neighbourhood(self.library_ids, self.grid_coords, self.batch_size, self.seed, self.epoch)


def _neighbourhood(
    libs: np.ndarray, grid: np.ndarray, batch_size: int, seed: int, epoch: int
) -> list[np.ndarray]:
    rng = np.random.default_rng([int(seed), int(epoch)])
    band = max(1, round(math.sqrt(batch_size)))
    batches: list[np.ndarray] = []
    for lib in dict.fromkeys(libs.tolist()):
        idx = np.flatnonzero(libs == lib)
        x, y = grid[idx, 0], grid[idx, 1]
        # serpentine walk over horizontal bands of `band` grid rows, shifted randomly per epoch
        row = (y - y.min() + int(rng.integers(band))) // band
        xs = np.where(row % 2 == 0, x, -x)
        order = idx[np.lexsort((y, xs, row))]
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) < batch_size / 2:
            tail = chunks.pop()
            chunks[-1] = np.concatenate([chunks[-1], tail])
        batches.extend(chunks)
    return [batches[i] for i in rng.permutation(len(batches))]


def neighbourhood_batches(
    library_ids: Sequence[str] | np.ndarray,
    grid_coords: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
) -> NeighbourhoodBatches:
    """Cut each slide's spots into batches of spatial neighbours (for per-slide context models).

    Spots of one slide are walked band by band (bands of ``round(sqrt(batch_size))`` grid rows,
    serpentine within), and the walk is cut every ``batch_size`` spots, so each batch is a
    compact block of one slide; a slide's last batch is merged into the previous one when it
    would hold fewer than ``batch_size / 2`` spots. Batch order is shuffled. The result can be
    passed as a DataLoader ``batch_sampler``; its ``set_epoch`` shifts the bands and reshuffles.

    Parameters
    ----------
    library_ids
        ``(n,)`` slide of each spot.
    grid_coords
        ``(n, 2)`` integer grid x, y (:attr:`SpotData.grid_coords`).
        (The two may also be given in the order ``grid_coords, library_ids``.)
    batch_size
        Spots per batch.
    seed, epoch
        Randomness of band offsets and batch order.

    Returns
    -------
    A list of index arrays (positions into ``library_ids``) with a ``set_epoch`` method.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data import neighbourhood_batches
    >>> grid = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2)
    >>> batches = neighbourhood_batches(np.repeat("a", 36), grid, 9)
    >>> sorted(len(b) for b in batches)
    [9, 9, 9, 9]
    """
    libs, grid = np.asarray(library_ids), np.asarray(grid_coords)
    if libs.ndim == 2 and grid.ndim == 1:  # given as (grid_coords, library_ids)
        libs, grid = grid, libs
    libs = libs.astype(str)
    if grid.shape != (len(libs), 2):
        raise ValueError(
            f"grid_coords must have shape ({len(libs)}, 2) matching library_ids, got {grid.shape}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return NeighbourhoodBatches(libs, grid.astype(np.int64), int(batch_size), int(seed), int(epoch))
