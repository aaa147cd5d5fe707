"""Image encoders built through timm (ViTs return tokens, CNNs return pooled features)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stpredict._logging import logger
from stpredict._torchfile import load_weights_only

__all__ = [
    "FEATURES",
    "FeatureEncoder",
    "HubBackbone",
    "ImageEncoder",
    "build_image_encoder",
    "load_state_dict_file",
    "resolve_hub_backbone",
]

FEATURES = "features"  # the `backbone` name of a model whose image input is precomputed embeddings


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

    def __init__(self, model: Any, is_vit: bool) -> None:  # a timm model (num_features, forward_features)
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


class FeatureEncoder(nn.Module):
    """The image tower of a model fed precomputed patch embeddings (``backbone="features"``).

    ``forward`` standardises ``[B, F]`` features with the training spots' mean and standard
    deviation (buffers, saved with the weights; set by :meth:`fit_standardisation`) and returns
    them as one token ``[B, 1, F]``, so every method's heads work unchanged.

    With ``components=d`` the standardised features are clipped to ``±5`` and projected on the
    first ``d`` principal axes of the training spots' features, scaled to unit variance
    (``[B, 1, d]``): a fixed, unsupervised reduction that keeps the heads from fitting hundreds of
    noisy inputs of a few hundred spots (``fit(feature_components=d)``).

    Attributes
    ----------
    in_dim
        ``F``, the width of the features it takes.
    out_dim
        The width of its token: ``d`` with ``components``, else ``F``.
    """

    is_vit = False
    clip = 5.0  # standard deviations, before the principal axes

    mean: torch.Tensor  # buffers: saved with the weights
    std: torch.Tensor
    center: torch.Tensor  # with components
    axes: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_features: int, components: int | None = None) -> None:
        super().__init__()
        self.in_dim = int(in_features)
        self.components = None if components is None else int(components)
        if self.components is not None and not 1 <= self.components <= self.in_dim:
            raise ValueError(
                f"FeatureEncoder: components={components} must be between 1 and in_features={in_features}."
            )
        self.out_dim = self.components or self.in_dim
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("std", torch.ones(self.in_dim))
        if self.components is not None:  # z ↦ ((clip(z) - center) @ axes) / scale
            self.register_buffer("center", torch.zeros(self.in_dim))
            self.register_buffer("axes", torch.zeros(self.in_dim, self.components))
            self.register_buffer("scale", torch.ones(self.components))

    def fit_standardisation(self, features: torch.Tensor) -> None:
        """Set the mean and standard deviation (floored at 1e-6) from training features ``[n, F]``.

        With ``components``, also the principal axes of the clipped standardised features (each
        axis signed so that its largest loading is positive) and the spread along them.
        """
        features = features.to(self.mean.dtype)
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(features.std(dim=0, unbiased=False).clamp_min(1e-6))
        if self.components is None:
            return
        if self.components > len(features):
            raise ValueError(
                f"FeatureEncoder: {self.components} principal components need at least as many "
                f"training spots, got {len(features)}."
            )
        z = self._clipped(features)
        center = z.mean(dim=0)
        _, _, vt = torch.linalg.svd((z - center).double(), full_matrices=False)
        axes = vt[: self.components].T
        rows = axes.abs().argmax(dim=0)
        axes = axes * torch.sign(axes[rows, torch.arange(self.components)])[None]
        self.center.copy_(center)
        self.axes.copy_(axes.to(self.axes.dtype))
        self.scale.copy_(((z - center) @ self.axes).std(dim=0, unbiased=False).clamp_min(1e-6))

    def _clipped(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std).clamp(-self.clip, self.clip)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.components is None:
            return ((features - self.mean) / self.std)[:, None]
        return (((self._clipped(features) - self.center) @ self.axes) / self.scale)[:, None]


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
    state = load_weights_only(
        path, what=f"weights_path={str(path)!r}", hint="Is it a plain state dict? Convert it to .safetensors."
    )
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path={str(path)!r}: expected a dict of tensors (a state dict).")
    return state


HUB_PREFIXES = ("hf-hub:", "local-dir:")  # timm's names for a model on the Hugging Face Hub / in a folder
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_NOT_ARCHITECTURE = ("num_classes", "pretrained_cfg", "pretrained_cfg_overlay")


@dataclass(frozen=True)
class HubBackbone:
    """A timm model published as a folder (``config.json`` + weights), resolved to plain parts.

    Attributes
    ----------
    architecture
        The timm architecture name (``config.json``'s ``"architecture"``).
    model_args
        Its keyword arguments (``"model_args"``, without ``num_classes``).
    weights
        The local weights file (``model.safetensors`` or ``pytorch_model.bin``).
    """

    architecture: str
    model_args: dict[str, Any]
    weights: Path


def _hub_file(name: str, filename: str) -> Path | None:
    """``filename`` of the hub model or folder ``name`` (``None`` when it has no such file).

    Hub errors other than a missing file (no network, gated repository, unknown id) propagate
    with huggingface_hub's own message.
    """
    source, _, where = name.partition(":")
    if source == "local-dir":
        path = Path(where).expanduser() / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    repo, _, revision = where.partition("@")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision or None))
    except LocalEntryNotFoundError:  # offline (a subclass of the next): this file is not in the cache
        if filename == "config.json":
            raise
        return None
    except EntryNotFoundError:
        return None


def resolve_hub_backbone(name: str) -> HubBackbone:
    """Resolve ``"hf-hub:org/model[@revision]"`` or ``"local-dir:/path"`` to architecture, arguments, weights.

    Hub files are fetched through :func:`huggingface_hub.hf_hub_download` (cached; gated models
    such as UNI need ``huggingface-cli login`` or ``HF_TOKEN`` and accepted terms; offline,
    ``HF_HUB_OFFLINE=1`` reads the cache). A fitted model then records only the architecture and
    its arguments, never the hub id or the folder, so loading it reads nothing else.

    Parameters
    ----------
    name
        The hub id or folder, with timm's prefix.

    Returns
    -------
    A :class:`HubBackbone`.
    """
    if not name.startswith(HUB_PREFIXES):
        raise ValueError(f"resolve_hub_backbone: {name!r} does not start with {' or '.join(HUB_PREFIXES)}.")
    config_file = _hub_file(name, "config.json")
    if config_file is None:
        raise FileNotFoundError(f"backbone={name!r}: no config.json (a timm model folder has one).")
    try:
        config = json.loads(config_file.read_text())
        architecture = str(config["architecture"])
        args = dict(config.get("model_args") or {})
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"backbone={name!r}: {config_file} is not a timm model config (needs 'architecture'): {err}"
        ) from err
    weights = next((f for f in (_hub_file(name, w) for w in _WEIGHT_FILES) if f is not None), None)
    if weights is None:
        raise FileNotFoundError(f"backbone={name!r}: none of {list(_WEIGHT_FILES)} found.")
    args = {k: v for k, v in args.items() if k not in _NOT_ARCHITECTURE}
    return HubBackbone(architecture, args, weights)


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
) -> ImageEncoder | FeatureEncoder:
    """Create an image encoder through :func:`timm.create_model` (``num_classes=0``).

    Parameters
    ----------
    backbone
        A timm model name, e.g. ``"vit_base_patch32_224"``, ``"resnet50"``, ``"densenet121"``,
        or ``"features"``: no network, the input is precomputed patch embeddings of width
        ``in_features`` (a :class:`FeatureEncoder`).
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
    if backbone == FEATURES:
        extra = set(timm_kwargs) - {"in_features", "components"}
        if pretrained or weights_path is not None or extra or "in_features" not in timm_kwargs:
            raise ValueError(
                "build_image_encoder: backbone='features' takes only in_features= (the width of the "
                f"precomputed embeddings) and components=, got {sorted(timm_kwargs)}"
                + (" and pretrained/weights_path" if pretrained or weights_path is not None else "")
                + "."
            )
        return FeatureEncoder(timm_kwargs["in_features"], timm_kwargs.get("components"))
    import timm

    if pretrained and weights_path is not None:
        raise ValueError("build_image_encoder: give either pretrained=True or weights_path=, not both.")
    if not timm.is_model(backbone):
        hub = " (hub ids and folders are resolved by stp.tl.fit, see resolve_hub_backbone)"
        raise ValueError(
            f"build_image_encoder: backbone={backbone!r} is not a timm model name"
            + (hub if backbone.startswith(HUB_PREFIXES) else "")
            + "."
        )
    kwargs = {"pretrained": pretrained, "num_classes": 0, **timm_kwargs}
    model: Any  # a timm model
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
