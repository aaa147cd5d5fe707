"""The torch base classes the methods share (siblings: no method imports another)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from ._encoders import FeatureEncoder, build_image_encoder
from ._layers import ProjectionHead
from ._specs import Preset

__all__ = ["RetrievalModule", "ContrastiveModule", "ProjectedExpressionModule", "dihedral_views"]


class RetrievalModule(nn.Module):
    """Base class of the image–expression retrieval models in :data:`stpredict.models.METHODS`.

    A subclass defines ``name`` (its key in the registry), ``presets`` (one
    :class:`~stpredict.models.Preset` per preset: network, training and retrieval defaults),
    ``encode_image``, ``encode_expression`` and ``forward``.

    Attributes
    ----------
    n_genes
        Length of the expression vectors.
    config
        The JSON-able hyper-parameters the module was built with (``preset`` included).
    spot_context
        What the expression encoder attends over: ``"none"`` (each spot alone), ``"batch"``
        (the spots of the batch form one set) or ``"slide"`` (batches of neighbouring spots of
        one slide; the training loop should then use a neighbourhood batch sampler).
    eval_set_size
        For set-based expression encoders: the number of consecutive spots embedded together at
        inference; ``None`` when embeddings do not depend on other spots.
    """

    name: ClassVar[str] = ""
    presets: ClassVar[dict[str, Preset]] = {}
    tower_backbone: ClassVar[str] = ""  # default backbone of the image tower
    spot_context: str = "none"
    eval_set_size: int | None = None

    def __init__(self, n_genes: int, config: dict[str, Any]) -> None:
        super().__init__()
        if not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
            raise ValueError(f"{type(self).__name__}: n_genes={n_genes!r}; expected a positive integer.")
        if config.get("preset", "paper") not in self.presets:
            raise ValueError(
                f"{type(self).__name__}: preset={config.get('preset')!r}; "
                f"expected one of {sorted(self.presets)}."
            )
        self.n_genes = int(n_genes)
        self.config = copy.deepcopy(config)

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Every hyper-parameter with its default: the image tower's, then the class's own keywords."""
        own = {
            name: p.default
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        return {**TOWER_DEFAULTS, "backbone": cls.tower_backbone, **own}

    @classmethod
    def tower_config(cls, tower: dict[str, Any]) -> dict[str, Any]:
        """The JSON-able image-tower config from ``**tower`` keywords (defaults filled, types fixed)."""
        unknown = sorted(set(tower) - set(TOWER_DEFAULTS) - {"backbone"})
        if unknown:
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {unknown}.")
        cfg = {**TOWER_DEFAULTS, "backbone": cls.tower_backbone, **tower}
        return {
            **cfg,
            "backbone_kwargs": _plain_kwargs(cfg["backbone_kwargs"]),
            "image_size": int(cfg["image_size"]),
            "pretrained": bool(cfg["pretrained"]),
            "weights_path": None if cfg["weights_path"] is None else str(cfg["weights_path"]),
            "dim": int(cfg["dim"]),
            "dropout": float(cfg["dropout"]),
            "temperature": float(cfg["temperature"]),
            "freeze_backbone": bool(cfg["freeze_backbone"]),
        }

    @classmethod
    def default_config(cls, preset: str = "paper") -> dict[str, Any]:
        """Hyper-parameters of a preset (JSON-able), to pass as ``cls(n_genes, **config)``.

        Parameters
        ----------
        preset
            ``"paper"`` (the authors' code), ``"cpu"`` (trains in minutes on a laptop),
            ``"tiny"`` (unit tests and docs), and method-specific ones.
        """
        if preset not in cls.presets:
            raise ValueError(
                f"{cls.__name__}.default_config: preset={preset!r}; expected one of {sorted(cls.presets)}."
            )
        config = copy.deepcopy(cls.hyperparameters())
        config.update(copy.deepcopy(dict(cls.presets[preset].network)))
        config["preset"] = preset
        return config

    @property
    def preset(self) -> Preset:
        """The preset the module was built from (training and retrieval defaults)."""
        return self.presets[self.config.get("preset", "paper")]

    @property
    def training_defaults(self) -> dict[str, Any]:
        """Optimiser, learning rate, epochs, batch size, image size and retrieval defaults."""
        retrieval = self.preset.retrieval
        return {
            **self.preset.training.to_dict(),
            "image_size": int(self.config["image_size"]),
            "retrieval": {"k": retrieval.k, "weighting": retrieval.weighting},
        }

    @property
    def embedding_dim(self) -> int:
        """Width of the shared embedding space."""
        return int(self.config["dim"])

    def global_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the rows of every process (differentiable) when training under DDP, else ``x``.

        The contrastive losses then compare the whole global batch (global negatives).
        """
        from stpredict._distributed import gather

        return gather(x) if self.training else x

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Embed normalised images ``[B, 3, S, S]`` → ``[B, D]``."""
        raise NotImplementedError

    def encode_expression(self, expression: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Embed log-normalised expression ``[B, G]`` (and grid coordinates ``[B, 2]``) → ``[B, D]``."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses of a batch (``"image"``, ``"expression"``, ``"coords"``); ``"loss"`` is minimised."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}, preset={self.config.get('preset')!r}"


# The image tower's hyper-parameters, shared by every two-tower method (its default backbone is
# the class's `tower_backbone`); a method's own hyper-parameters are the keywords of its __init__.
TOWER_DEFAULTS: dict[str, Any] = {
    "preset": "paper",
    "backbone_kwargs": None,
    "image_size": 224,
    "pretrained": False,
    "weights_path": None,
    "dim": 256,
    "dropout": 0.1,
    "temperature": 1.0,
    "freeze_backbone": False,
}


_M = TypeVar("_M", bound=type)

_TOWER_DOC = """n_genes
        Length of the expression vectors.
    **tower
        The image tower's hyper-parameters, shared by every method (all keyword-only; see
        :meth:`~stpredict.models.RetrievalModule.hyperparameters`): ``preset`` (the preset these
        values came from; selects the training defaults), ``backbone`` (a timm model name, default
        ``"{backbone}"``; ViT tokens are mean-pooled; ``"features"`` for precomputed embeddings, see
        :func:`~stpredict.models.build_image_encoder`), ``backbone_kwargs`` (extra arguments of
        :func:`timm.create_model`), ``image_size`` (input pixels), ``pretrained`` (timm's weights,
        network), ``weights_path`` (local ``.safetensors``/``.pth`` backbone weights),
        ``freeze_backbone`` (keep the backbone fixed, train only the heads), ``dim`` (embedding
        width), ``dropout`` (of the projection heads) and ``temperature`` (τ of the contrastive
        loss). Defaults: ``TOWER_DEFAULTS``."""


def doc_tower(cls: _M) -> _M:
    """Fill the ``{tower}`` placeholder of a method's docstring with the shared tower parameters."""
    tower = _TOWER_DOC.replace("{backbone}", cls.tower_backbone)  # type: ignore[attr-defined]
    cls.__doc__ = (cls.__doc__ or "").replace("{tower}", tower)
    return cls


def _plain_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Copy backbone kwargs with tuples as lists, so the config survives a JSON round trip."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (kwargs or {}).items()}


def _pool_tokens(features: torch.Tensor) -> torch.Tensor:
    """Mean over all tokens (class token included) for token outputs; pooled features pass through."""
    return features.mean(dim=1) if features.ndim == 3 else features


class ContrastiveModule(RetrievalModule):
    """A two-tower module: timm image encoder → projection head, expression → projection head.

    Subclasses choose the expression encoder and the loss.
    """

    def _build_image_tower(self) -> None:
        cfg = self.config
        self.image_encoder = build_image_encoder(
            cfg["backbone"],
            pretrained=cfg.get("pretrained", False),
            weights_path=cfg.get("weights_path"),
            image_size=cfg["image_size"],
            # JSON stores tuples (e.g. DenseNet's block_config) as lists; timm expects tuples
            **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("backbone_kwargs", {}).items()},
        )
        if cfg.get("freeze_backbone"):
            self.image_encoder.requires_grad_(False)
        self.image_projection = ProjectionHead(self.image_encoder.out_dim, cfg["dim"], cfg["dropout"])

    @property
    def takes_features(self) -> bool:
        """Whether the image input is precomputed embeddings (``backbone="features"``), not pixels."""
        return isinstance(self.image_encoder, FeatureEncoder)

    def train(self, mode: bool = True) -> ContrastiveModule:
        """As :meth:`torch.nn.Module.train`; a frozen backbone stays in eval mode (batch-norm stats kept)."""
        super().train(mode)
        if self.config.get("freeze_backbone"):
            self.image_encoder.eval()
        return self

    def _check_image(self, image: torch.Tensor) -> None:
        size = self.config["image_size"]
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[2] != size or image.shape[3] != size:
            raise ValueError(
                f"{type(self).__name__}.encode_image: image has shape {tuple(image.shape)}; "
                f"expected [B, 3, {size}, {size}] (config image_size={size})."
            )

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Image encoder output ``[B, N, C]``.

        ``image`` is normalised pixels ``[B, 3, S, S]``, or ``[B, C]`` features: precomputed
        embeddings for ``backbone="features"``, or the frozen backbone's pooled output (cached by
        :func:`stpredict.tl.fit` with ``freeze_backbone=True``), used as one token.
        """
        width = getattr(self.image_encoder, "in_dim", self.image_encoder.out_dim)
        if image.ndim == 2 and (self.takes_features or self.config.get("freeze_backbone")):
            if image.shape[1] != width:
                raise ValueError(
                    f"{type(self).__name__}.encode_image: features have shape {tuple(image.shape)}; "
                    f"expected [B, {width}]."
                )
            return self.image_encoder(image) if self.takes_features else image[:, None]
        if self.takes_features:
            raise ValueError(
                f"{type(self).__name__}.encode_image: this model takes precomputed features [B, {width}], "
                f"got shape {tuple(image.shape)}."
            )
        self._check_image(image)
        if self.config.get("freeze_backbone"):
            with torch.no_grad():
                return self.image_encoder(image)
        return self.image_encoder(image)

    def pooled_features(self, image: torch.Tensor) -> torch.Tensor:
        """The (frozen) backbone's pooled output ``[B, C]``: what ``freeze_backbone`` caches."""
        return _pool_tokens(self.image_tokens(image))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_projection(_pool_tokens(self.image_tokens(image)))

    def _check_expression(self, expression: torch.Tensor) -> None:
        if expression.ndim != 2 or expression.shape[1] != self.n_genes:
            raise ValueError(
                f"{type(self).__name__}.encode_expression: expression has shape {tuple(expression.shape)}; "
                f"expected [B, {self.n_genes}]."
            )


class ProjectedExpressionModule(ContrastiveModule):
    """A two-tower module whose expression encoder is one projection head (BLEEP, CMRCNet)."""

    def _init_two_tower(self, n_genes: int, config: dict[str, Any]) -> None:
        super().__init__(n_genes, config)
        self._build_image_tower()
        self.expression_projection = ProjectionHead(self.n_genes, config["dim"], config["dropout"])

    def encode_expression(self, expression: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        self._check_expression(expression)
        return self.expression_projection(expression)


def dihedral_views(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 flips/rotations of a batch ``[B, C, S, S]`` (identity first), made one at a time.

    Lazy, so that test-time augmentation holds one rotated copy of the batch, not eight.
    """
    flipped = images.flip(3)
    for view in (images, flipped):
        for k in range(4):
            yield torch.rot90(view, k, dims=(2, 3))
