"""Image encoders built through timm (ViTs return tokens, CNNs return pooled features)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from stpredict._logging import logger

__all__ = ["ImageEncoder", "build_image_encoder", "load_state_dict_file"]


class ImageEncoder(nn.Module):
    """A timm backbone without classifier.

    ``forward`` returns a token sequence ``[B, N, C]``: for Vision Transformers the tokens after
    the final norm (class token included); for CNNs the globally pooled feature map followed by
    its ``h × w`` cells (``1 + h·w`` tokens, e.g. 50 for a 7 × 7 map), so that the mean over the
    tokens is the usual global average pool and CMRCNet's reconstruction sees spatial tokens.

    Attributes
    ----------
    model
        The timm model (``num_classes=0``).
    out_dim
        ``C``, the feature width.
    is_vit
        Whether the backbone is a Vision Transformer.
    """

    def __init__(self, model: nn.Module, is_vit: bool) -> None:
        super().__init__()
        self.model = model
        self.is_vit = is_vit
        self.out_dim = int(model.num_features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(image)
        if self.is_vit:
            return features
        cells = features.flatten(2).transpose(1, 2)  # [B, h·w, C]
        return torch.cat([cells.mean(dim=1, keepdim=True), cells], dim=1)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only=True``).

    Parameters
    ----------
    path
        The weights file.

    Returns
    -------
    The tensors by name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path={str(path)!r}: no such file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise ValueError(f"weights_path={str(path)!r}: not a readable safetensors file ({err}).") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"weights_path={str(path)!r}: could not read it as a plain torch state dict with "
            f"weights_only=True ({err}). Convert it to .safetensors."
        ) from err
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path={str(path)!r}: expected a dict of tensors (a state dict).")
    return state


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def build_image_encoder(
    backbone: str,
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    image_size: int = 224,
    **timm_kwargs: Any,
) -> ImageEncoder:
    """Create an image encoder through :func:`timm.create_model` (``num_classes=0``).

    Parameters
    ----------
    backbone
        A timm model name, e.g. ``"vit_base_patch32_224"``, ``"resnet50"``, ``"densenet121"``.
    pretrained
        Download timm's pretrained weights (needs the network). Default: random initialisation.
    weights_path
        A local ``.safetensors`` (preferred) or ``.pth`` state dict of this backbone to load
        (no pickled code is executed). Classifier weights in the file are ignored.
    image_size
        Input size; passed to timm as ``img_size`` for models that take it (ViTs).
    **timm_kwargs
        Further keyword arguments for :func:`timm.create_model` (``depth``, ``num_heads``, ...).

    Returns
    -------
    An :class:`ImageEncoder` whose output is a token sequence ``[B, N, C]`` (see there).

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import build_image_encoder
    >>> enc = build_image_encoder(
    ...     "vit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    ... )
    >>> enc(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 17, 32])
    """
    import timm

    if pretrained and weights_path is not None:
        raise ValueError("build_image_encoder: give either pretrained=True or weights_path=, not both.")
    if not timm.is_model(backbone):
        raise ValueError(f"build_image_encoder: backbone={backbone!r} is not a timm model name.")
    kwargs = {"pretrained": pretrained, "num_classes": 0, **timm_kwargs}
    try:
        model = timm.create_model(backbone, img_size=image_size, **kwargs)
    except TypeError as err:  # CNNs do not take img_size
        if "img_size" not in str(err):
            raise
        model = timm.create_model(backbone, **kwargs)
    if weights_path is not None:
        state = load_state_dict_file(weights_path)
        classifier = model.pretrained_cfg.get("classifier") or "head"
        classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        expected = set(model.state_dict())
        state = {
            k: v
            for k, v in state.items()
            if k in expected or not any(k.startswith(c + ".") for c in classifiers)
        }
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"weights_path={str(weights_path)!r} does not match backbone {backbone!r} "
                f"({timm_kwargs or 'default arguments'}): missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}."
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # shape mismatch
            raise ValueError(
                f"weights_path={str(weights_path)!r}: shapes do not match {backbone!r}: {err}"
            ) from err
        logger.info(f"loaded {backbone} weights from {weights_path}")
    return ImageEncoder(model, is_vit=_is_vit(model))
