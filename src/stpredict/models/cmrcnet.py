"""CMRCNet (Liu et al., Medical Image Analysis 2025): BLEEP plus cross-modal masked reconstruction."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ._base import ProjectedExpressionModule, _pool_tokens, doc_tower
from ._layers import CrossAttention, FusionBlock, SNNGeneTokens, feature_mask
from ._losses import cmrcnet_total_loss, reconstruction_loss, soft_clip_loss
from ._presets import CPU_IMAGE_TOWER, PROJECTION_TRAINING, method_presets
from ._specs import Preset, RetrievalSpec

__all__ = ["CMRCNet"]


@doc_tower
class CMRCNet(ProjectedExpressionModule):
    """CMRCNet: contrastive image–expression retrieval with cross-modal masked reconstruction.

    Image encoder: a ViT trained from scratch (authors' code: patch 32 at 224 px, width 768,
    depth 8, 8 heads); the image embedding is the mean over all tokens (class token included)
    through a projection head. Expression embedding: a projection head on the log-normalised
    expression. Loss: BLEEP's soft-target contrastive loss per sample, plus (training only) a
    reconstruction branch: the image tokens are linearly projected, each feature value is
    zeroed with probability ``mask_ratio``, a cross-attention with gene tokens and a fusion block
    applied ``fusion_depth`` times (shared weights by default) produce tokens whose mean must
    reconstruct the (unmasked, not detached) image embedding. Total loss
    ``mean(log(1 + L_c)) + log(1 + L_r)``. Inference uses only the two embeddings.

    Presets: ``"paper"`` (authors' code), ``"paper-vitb"`` (the paper's ViT-B: depth 12, 12
    heads), ``"cpu"`` (the shared CPU tower: a half-width ResNet-18 from scratch at 64 px, with the
    CPU recipe of :data:`~stpredict.models._presets.CPU_TRAINING`) and ``"tiny"`` (32 px, patch 8,
    width 32: 17 tokens, for tests).

    Parameters
    ----------
    {tower}
    reconstruction
        ``"mse"`` (authors' default), ``"cosine"``, or ``None`` for the contrastive loss alone
        (then the loss is BLEEP's: the mean soft-target loss, no log).
    mask_ratio
        Probability of zeroing each image-token feature value.
    mask_in_eval
        Keep masking on in eval mode (authors' code; affects only the validation loss).
    gene_tokens
        Number of gene tokens of the SNN branch.
    snn_activation
        ``"elu"`` (authors' code) or ``"selu"`` (paper).
    snn_dropout
        AlphaDropout of the SNN branch.
    cross_heads
        Heads of the first cross-attention.
    fusion_heads
        Heads of the fusion block (self-attention and residual cross-attention).
    fusion_depth
        How many times the fusion block is applied.
    share_fusion
        Apply one block ``fusion_depth`` times (authors' code) instead of separate blocks.
    fusion_dropout
        Dropout of the fusion MLP.
    cross_dropout
        Dropout in the residual cross-attention's query/key blocks.

    Examples
    --------
    The network and its contrastive-only ablation (the paper's comparison):

    >>> import torch
    >>> from stpredict.models import CMRCNet
    >>> batch = {"image": torch.randn(4, 3, 32, 32), "expression": torch.rand(4, 20)}
    >>> config = CMRCNet.default_config("tiny")
    >>> sorted(CMRCNet(20, **config)(batch))
    ['contrastive', 'loss', 'reconstruction']
    >>> sorted(CMRCNet(20, **{**config, "reconstruction": None})(batch))
    ['contrastive', 'loss']
    """

    tower_backbone: ClassVar[str] = "vit_base_patch32_224"
    name: ClassVar[str] = "cmrcnet"
    presets: ClassVar[dict[str, Preset]] = method_presets(
        {
            "paper": {"backbone": "vit_base_patch32_224", "backbone_kwargs": {"depth": 8, "num_heads": 8}},
            "paper-vitb": {"backbone": "vit_base_patch32_224", "backbone_kwargs": {}},
            "cpu": CPU_IMAGE_TOWER,
            "tiny": {
                "backbone": "vit_tiny_patch16_224",
                "backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
                "image_size": 32,
                "dim": 32,
                "cross_heads": 2,
                "fusion_heads": 4,
            },
        },
        PROJECTION_TRAINING,
        RetrievalSpec(k=50, weighting="mean"),
    )

    def __init__(
        self,
        n_genes: int,
        *,
        reconstruction: Literal["mse", "cosine"] | None = "mse",
        mask_ratio: float = 0.5,
        mask_in_eval: bool = True,
        gene_tokens: int = 8,
        snn_activation: Literal["elu", "selu"] = "elu",
        snn_dropout: float = 0.25,
        cross_heads: int = 4,
        fusion_heads: int = 8,
        fusion_depth: int = 2,
        share_fusion: bool = True,
        fusion_dropout: float = 0.1,
        cross_dropout: float = 0.25,
        **tower: Any,
    ) -> None:
        if reconstruction not in ("mse", "cosine", None):
            raise ValueError(f"CMRCNet: reconstruction={reconstruction!r}; expected 'mse', 'cosine' or None.")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"CMRCNet: mask_ratio={mask_ratio!r}; expected a probability in [0, 1].")
        if fusion_depth < 0:
            raise ValueError(f"CMRCNet: fusion_depth={fusion_depth!r}; expected >= 0.")
        config = {
            **self.tower_config(tower),
            "reconstruction": reconstruction,
            "mask_ratio": float(mask_ratio),
            "mask_in_eval": bool(mask_in_eval),
            "gene_tokens": int(gene_tokens),
            "snn_activation": snn_activation,
            "snn_dropout": float(snn_dropout),
            "cross_heads": int(cross_heads),
            "fusion_heads": int(fusion_heads),
            "fusion_depth": int(fusion_depth),
            "share_fusion": bool(share_fusion),
            "fusion_dropout": float(fusion_dropout),
            "cross_dropout": float(cross_dropout),
        }
        self._init_two_tower(n_genes, config)
        if reconstruction is None:
            return
        dim = config["dim"]
        self.token_projection = nn.Linear(self.image_encoder.out_dim, dim)
        self.gene_tokenizer = SNNGeneTokens(self.n_genes, gene_tokens, dim, snn_activation, snn_dropout)
        self.cross_attention = CrossAttention(dim, cross_heads)
        n_blocks = min(1, fusion_depth) if share_fusion else fusion_depth
        self.fusion = nn.ModuleList(
            FusionBlock(dim, fusion_heads, 4.0, fusion_dropout, cross_dropout) for _ in range(n_blocks)
        )

    def _fusion_blocks(self) -> list[nn.Module]:
        if self.config["share_fusion"]:
            return [self.fusion[0]] * self.config["fusion_depth"] if len(self.fusion) else []
        return list(self.fusion)

    def reconstruct(
        self, tokens: torch.Tensor, expression: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reconstruct the image embedding from masked image tokens and gene tokens.

        Parameters
        ----------
        tokens
            Image encoder output ``[B, N, C]`` (or pooled ``[B, C]``, used as one token).
        expression
            Expression ``[B, G]``.
        generator
            Random generator for the mask.

        Returns
        -------
        ``[B, dim]``: the mean of the fused tokens.
        """
        if self.config["reconstruction"] is None:
            raise ValueError("CMRCNet.reconstruct: the model was built with reconstruction=None.")
        if tokens.ndim == 2:
            tokens = tokens[:, None]
        x = self.token_projection(tokens)
        if self.training or self.config["mask_in_eval"]:
            x = feature_mask(x, self.config["mask_ratio"], generator=generator)
        genes = self.gene_tokenizer(expression)
        x = self.cross_attention(x, genes)
        for block in self._fusion_blocks():
            x = block(x, genes)
        return x.mean(dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses of a batch: ``"loss"``, ``"contrastive"`` (mean), ``"reconstruction"``."""
        image, expression = batch["image"], batch["expression"]
        tokens = self.image_tokens(image)
        img = self.global_batch(self.image_projection(_pool_tokens(tokens)))  # global batch with DDP
        expr = self.global_batch(self.encode_expression(expression, batch.get("coords")))
        contrastive = soft_clip_loss(expr, img, self.config["temperature"], reduction="none")
        if self.config["reconstruction"] is None:
            loss = contrastive.mean()
            return {"loss": loss, "contrastive": loss.detach()}
        rebuilt = self.global_batch(self.reconstruct(tokens, expression))
        rec = reconstruction_loss(rebuilt, img, self.config["reconstruction"])
        return {
            "loss": cmrcnet_total_loss(contrastive, rec),
            "contrastive": contrastive.mean().detach(),
            "reconstruction": rec.detach(),
        }
