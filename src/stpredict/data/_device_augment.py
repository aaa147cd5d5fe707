"""Augmentation of a whole batch on the training device (GPU), with the loader's random draws.

With ``PatchDataset(device_augment=True)`` an item carries its crop (cut by the loader) and, in
``item["augment"]``, the draws its augmentation would have used: ``(hflip, vflip, k, u_1..u_6)``,
drawn exactly as the loader would (from ``(seed, spot, epoch)`` with a seed). :class:`DeviceAugment`
applies them to the batch on its device: flips, rotation by ``k·90°`` and the HED stain jitter
(Ruifrok–Johnston deconvolution, concentrations ``c·(1 + σu_{1..3}) + σu_{4..6}``), as the loader
does on the CPU (equal up to the loader's rounding to 8 bits; ``tests/test_throughput.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._dataset import IMAGENET_MEAN, IMAGENET_STD
from ._stain import STAIN_VECTORS, UNMIX

__all__ = ["AUGMENT_KEY", "DeviceAugment"]

AUGMENT_KEY = "augment"  # the item's draws: hflip, vflip, k, then the 6 stain-jitter uniforms


class DeviceAugment:
    """``batch → batch`` with ``batch["image"]`` (normalised ``(B, 3, S, S)``) augmented on its device.

    Parameters
    ----------
    stain_jitter
        ``σ`` of the HED jitter (``0``: flips and rotations only).
    mean, std
        The images' normalisation (undone for the jitter, redone after).
    """

    def __init__(
        self,
        stain_jitter: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.stain_jitter = float(stain_jitter)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        draws = batch.get(AUGMENT_KEY)
        if draws is None:
            return batch
        images = _dihedral(batch["image"], draws[:, :3].round().long())
        if self.stain_jitter:
            images = self._jitter(images, draws[:, 3:9].to(images.dtype))
        return {**batch, "image": images}

    def _jitter(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        shape = (1, 3, 1, 1)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(shape)
        rgb = (images * std + mean).clamp(0.0, 1.0) * 255.0  # (B, 3, S, S) on [0, 255]
        unmix = torch.as_tensor(UNMIX, device=images.device, dtype=images.dtype)
        mix = torch.as_tensor(STAIN_VECTORS, device=images.device, dtype=images.dtype)
        od = -torch.log((rgb + 1.0) / 256.0)
        conc = torch.einsum("bchw,cs->bshw", od, unmix)
        scale, shift = 1.0 + u[:, :3] * self.stain_jitter, u[:, 3:] * self.stain_jitter
        conc = conc * scale[:, :, None, None] + shift[:, :, None, None]
        od = torch.einsum("bshw,sc->bchw", conc, mix)
        rgb = (256.0 * torch.exp(-od) - 1.0).clamp(0.0, 255.0) / 255.0
        return (rgb - mean) / std


def _dihedral(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Each image flipped (columns, then rows) and rotated by ``k·90°`` as its row of ``codes``."""
    out = images.clone()
    combos = codes[:, 0] * 8 + codes[:, 1] * 4 + codes[:, 2]
    for combo in torch.unique(combos).tolist():
        hflip, vflip, k = combo // 8, (combo // 4) % 2, combo % 4
        if combo == 0:
            continue
        sel = (combos == combo).nonzero().squeeze(1)
        x = images.index_select(0, sel)
        if hflip:
            x = x.flip(-1)
        if vflip:
            x = x.flip(-2)
        if k:
            x = torch.rot90(x, int(k), dims=(-2, -1))
        out.index_copy_(0, sel, x)
    return out
