"""BLEEP (Xie et al., NeurIPS 2023): image and expression projected into one space, soft CLIP loss."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ._base import ProjectedExpressionModule, _tower_config
from ._losses import soft_clip_loss
from ._presets import CPU_IMAGE_TOWER, PROJECTION_TRAINING, method_presets
from ._specs import Preset, RetrievalSpec

__all__ = ["BLEEP"]


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
    n_genes
        Length of the expression vectors.
    preset
        Name of the preset these values came from (selects the training defaults).
    backbone
        timm model name (ViT backbones are mean-pooled over all tokens), or ``"features"`` for
        precomputed embeddings (see :func:`~stpredict.models.build_image_encoder`).
    backbone_kwargs
        Extra arguments for :func:`timm.create_model`.
    image_size
        Input size in pixels.
    pretrained
        Load timm's pretrained weights (network).
    weights_path
        Local ``.safetensors``/``.pth`` weights for the backbone.
    freeze_backbone
        Keep the backbone's weights fixed and train only the heads.
    dim
        Embedding width.
    dropout
        Dropout of the projection heads.
    temperature
        τ of the loss.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import BLEEP
    >>> module = BLEEP(20, **BLEEP.default_config("tiny"))
    >>> batch = {"image": torch.randn(4, 3, 32, 32), "expression": torch.rand(4, 20)}
    >>> sorted(module(batch))
    ['contrastive', 'loss']
    """

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

    def __init__(
        self,
        n_genes: int,
        *,
        preset: str = "paper",
        backbone: str = "resnet50",
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 224,
        pretrained: bool = False,
        weights_path: str | None = None,
        dim: int = 256,
        dropout: float = 0.1,
        temperature: float = 1.0,
        freeze_backbone: bool = False,
    ) -> None:
        config = {
            **_tower_config(
                preset=preset,
                backbone=backbone,
                backbone_kwargs=backbone_kwargs,
                image_size=image_size,
                pretrained=pretrained,
                weights_path=weights_path,
                dim=dim,
                dropout=dropout,
                temperature=temperature,
                freeze_backbone=freeze_backbone,
            ),
        }
        self._init_two_tower(n_genes, config)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Soft-target contrastive loss of a batch (``"loss"`` = ``"contrastive"``, its mean)."""
        img = self.encode_image(batch["image"])
        expr = self.encode_expression(batch["expression"], batch.get("coords"))
        loss = soft_clip_loss(expr, img, self.config["temperature"], reduction="mean")
        return {"loss": loss, "contrastive": loss.detach()}
