"""mclSTExp (Min et al., Briefings in Bioinformatics 2024): spots as words of a Transformer."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ._base import ContrastiveModule, doc_tower
from ._layers import ProjectionHead, SpotTransformerBlock
from ._losses import info_nce_loss
from ._presets import CPU_IMAGE_TOWER, method_presets
from ._specs import Preset, RetrievalSpec, TrainingSpec

__all__ = ["MclSTExp"]

# The authors' training: Adam at a constant learning rate, 90 epochs of batches of 128
_TRAINING = TrainingSpec(optimizer="adam", scheduler=None, epochs=90, batch_size=128)


@doc_tower
class MclSTExp(ContrastiveModule):
    """mclSTExp: DenseNet image encoder; spot encoder = expression + position over a set of spots.

    Each spot is a "word": its expression vector plus learned x and y position embeddings
    (``nn.Embedding(max_coord, n_genes)`` each, indexed by integer grid coordinates). A set of
    spots (the training batch, as in the authors' code, or neighbouring spots of one slide with
    ``spot_context="slide"``) goes through pre-norm Transformer blocks (8 heads × 64, MLP hidden
    ``n_genes``, no dropout), then a projection head. Loss: symmetric InfoNCE, τ = 1. At
    inference, expression is embedded in consecutive sets of ``eval_set_size`` spots, and
    predictions weight the top-k (k = 200) references by 1/d².

    Presets: ``"paper"`` (DenseNet-121 at 224 px; the authors start from ImageNet weights:
    pass ``pretrained=True`` (network) or ``weights_path=`` to do the same; the default is from
    scratch), ``"cpu"`` (the shared CPU tower: a half-width ResNet-18 from scratch at 64 px, with the
    CPU recipe of :data:`~stpredict.models._presets.CPU_TRAINING` at the authors' learning rate,
    1e-4, for 30 epochs instead of 100) and ``"tiny"`` (a one-layer-per-block DenseNet at 32 px,
    for tests).

    Parameters
    ----------
    {tower}
    depth
        Number of Transformer blocks of the spot encoder.
    heads, head_dim
        Attention heads of the spot encoder and their width.
    max_coord
        Number of position embeddings per axis: grid coordinates must lie in ``[0, max_coord)``.
    spot_context
        ``"batch"`` (authors' code: the shuffled training batch is one set) or ``"slide"``
        (batches of neighbouring spots from one slide; needs a neighbourhood batch sampler).
    eval_set_size
        Spots per set when embedding the reference bank.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import MclSTExp
    >>> module = MclSTExp(20, **MclSTExp.default_config("tiny"))
    >>> coords = torch.randint(0, 10, (4, 2))
    >>> module.encode_expression(torch.rand(4, 20), coords).shape
    torch.Size([4, 32])
    """

    tower_backbone: ClassVar[str] = "densenet121"
    name: ClassVar[str] = "mclstexp"
    presets: ClassVar[dict[str, Preset]] = method_presets(
        {
            "paper": {
                "backbone": "densenet121",
                "backbone_kwargs": {},
                "image_size": 224,
                "pretrained": False,
            },
            "cpu": CPU_IMAGE_TOWER,
            "tiny": {
                "backbone": "densenet121",
                "backbone_kwargs": {"growth_rate": 8, "block_config": [1, 1, 1, 1]},
                "image_size": 32,
                "pretrained": False,
                "dim": 32,
                "heads": 2,
                "head_dim": 8,
                "max_coord": 64,
            },
        },
        _TRAINING,
        RetrievalSpec(k=200, weighting="inverse_distance2"),
        # its authors' learning rate: with the shared 1e-3, Adam at a constant rate from scratch
        # reaches 0.05 HEG r on her2st, with 1e-4 0.18 (docs/her2st.md, "Sixth step"); 30 epochs
        # (100 reach 0.21 on her2st at three times its ~1.5 min per fold, not measured on MOB)
        cpu_training={"lr": 1e-4, "epochs": 30},
    )

    def __init__(
        self,
        n_genes: int,
        *,
        depth: int = 2,
        heads: int = 8,
        head_dim: int = 64,
        max_coord: int = 128,
        spot_context: Literal["batch", "slide"] = "batch",
        eval_set_size: int = 32,
        **tower: Any,
    ) -> None:
        if spot_context not in ("batch", "slide"):
            raise ValueError(f"MclSTExp: spot_context={spot_context!r}; expected 'batch' or 'slide'.")
        if max_coord < 1 or eval_set_size < 1:
            raise ValueError(
                f"MclSTExp: max_coord={max_coord} and eval_set_size={eval_set_size} must be >= 1."
            )
        config = {
            **self.tower_config(tower),
            "depth": int(depth),
            "heads": int(heads),
            "head_dim": int(head_dim),
            "max_coord": int(max_coord),
            "spot_context": spot_context,
            "eval_set_size": int(eval_set_size),
        }
        super().__init__(n_genes, config)
        self.spot_context = spot_context
        self.eval_set_size = int(eval_set_size)
        self._build_image_tower()
        g = self.n_genes
        self.x_embedding = nn.Embedding(max_coord, g)
        self.y_embedding = nn.Embedding(max_coord, g)
        self.spot_blocks = nn.ModuleList(
            SpotTransformerBlock(g, heads, head_dim, mlp_dim=g) for _ in range(depth)
        )
        self.expression_projection = ProjectionHead(g, config["dim"], config["dropout"])

    def encode_expression(self, expression: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a SET of spots: all rows of ``expression`` attend to each other.

        Parameters
        ----------
        expression
            ``[B, G]`` log-normalised expression.
        coords
            ``[B, 2]`` integer grid coordinates (x, y) in ``[0, max_coord)``.
        """
        self._check_expression(expression)
        if coords is None:
            raise ValueError("MclSTExp.encode_expression: coords (integer grid x, y per spot) are required.")
        coords = torch.as_tensor(coords, device=expression.device)
        if coords.shape != (expression.shape[0], 2):
            raise ValueError(
                f"MclSTExp.encode_expression: coords has shape {tuple(coords.shape)}; "
                f"expected ({expression.shape[0]}, 2)."
            )
        if coords.is_floating_point():
            coords = coords.round()
        coords = coords.long()
        max_coord = self.config["max_coord"]
        if coords.numel() and (int(coords.min()) < 0 or int(coords.max()) >= max_coord):
            raise ValueError(
                f"MclSTExp.encode_expression: coords range [{int(coords.min())}, {int(coords.max())}] is "
                f"outside [0, {max_coord}); build the model with a larger max_coord="
            )
        x = expression + self.x_embedding(coords[:, 0]) + self.y_embedding(coords[:, 1])
        x = x[None]  # one set
        for block in self.spot_blocks:
            x = block(x)
        return self.expression_projection(x[0])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE over the batch (``"loss"`` = ``"contrastive"``)."""
        img = self.global_batch(self.encode_image(batch["image"]))  # global negatives with DDP
        expr = self.global_batch(self.encode_expression(batch["expression"], batch.get("coords")))
        loss = info_nce_loss(img, expr, self.config["temperature"])
        return {"loss": loss, "contrastive": loss.detach()}
