"""BLEEP (Xie et al., NeurIPS 2023): image and expression projected into one space, soft CLIP loss."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ._base import ProjectedExpressionModule, doc_tower
from ._losses import soft_clip_loss
from ._presets import CPU_IMAGE_TOWER, PROJECTION_TRAINING, method_presets
from ._specs import Preset, RetrievalSpec

__all__ = ["BLEEP"]


@doc_tower
class BLEEP(ProjectedExpressionModule):
    """BLEEP: timm image encoder → projection head; expression → projection head.

    Trained with the soft-target CLIP loss (:func:`~stpredict.models.soft_clip_loss`);
    predictions retrieve the top-50 reference spots by cosine similarity and average them.

    Presets: ``"paper"`` (ResNet-50 at 224 px; the authors start from ImageNet weights:
    pass ``pretrained=True`` (network) or ``weights_path=`` to do the same; the default is from
    scratch), ``"cpu"`` (the shared CPU tower: a half-width ResNet-18 from scratch at 64 px, with the
    CPU recipe of :data:`~stpredict.models._presets.CPU_TRAINING`) and ``"tiny"`` (a ResNet with one
    narrow block per stage at 32 px, for tests). In-batch contrastive losses need large
    batches: users of the authors' code report collapse with small batches (see docs).

    Parameters
    ----------
    {tower}

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import BLEEP
    >>> module = BLEEP(20, **BLEEP.default_config("tiny"))
    >>> batch = {"image": torch.randn(4, 3, 32, 32), "expression": torch.rand(4, 20)}
    >>> sorted(module(batch))
    ['contrastive', 'loss']
    """

    tower_backbone: ClassVar[str] = "resnet50"
    name: ClassVar[str] = "bleep"
    presets: ClassVar[dict[str, Preset]] = method_presets(
        {
            "paper": {"backbone": "resnet50", "backbone_kwargs": {}, "image_size": 224, "pretrained": False},
            "cpu": CPU_IMAGE_TOWER,
            "tiny": {
                "backbone": "resnet18",
                "backbone_kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]},
                "image_size": 32,
                "pretrained": False,
                "dim": 32,
            },
        },
        PROJECTION_TRAINING,
        RetrievalSpec(k=50, weighting="mean"),
    )

    def __init__(self, n_genes: int, **tower: Any) -> None:
        self._init_two_tower(n_genes, self.tower_config(tower))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Soft-target contrastive loss of a batch (``"loss"`` = ``"contrastive"``, its mean)."""
        img = self.global_batch(self.encode_image(batch["image"]))  # global negatives with DDP
        expr = self.global_batch(self.encode_expression(batch["expression"], batch.get("coords")))
        loss = soft_clip_loss(expr, img, self.config["temperature"], reduction="mean")
        return {"loss": loss, "contrastive": loss.detach()}
