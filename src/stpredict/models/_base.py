"""The module base classes and the user-facing fitted model :class:`STPredictModel`."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from stpredict._device import resolve_device

from ._encoders import FeatureEncoder, build_image_encoder
from ._layers import ProjectionHead

__all__ = ["RetrievalModule", "ContrastiveModule", "ProjectedExpressionModule", "STPredictModel"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RetrievalModule(nn.Module):
    """Base class of the image–expression retrieval models in :data:`stpredict.models.METHODS`.

    A subclass defines ``name``, ``presets`` (hyper-parameters per preset), ``training``
    (training defaults per preset), ``encode_image``, ``encode_expression`` and ``forward``.

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
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    training_presets: ClassVar[dict[str, dict[str, Any]]] = {}
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
        params = inspect.signature(cls.__init__).parameters
        config = {
            name: copy.deepcopy(p.default)
            for name, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }
        config.update(copy.deepcopy(cls.presets[preset]))
        config["preset"] = preset
        return config

    @property
    def training_defaults(self) -> dict[str, Any]:
        """Optimiser, learning rate, epochs, batch size, image size and retrieval defaults."""
        preset = self.config.get("preset", "paper")
        defaults = copy.deepcopy(self.training_presets.get(preset, self.training_presets["paper"]))
        defaults["image_size"] = int(self.config.get("image_size", defaults.get("image_size", 224)))
        return defaults

    @property
    def embedding_dim(self) -> int:
        """Width of the shared embedding space."""
        return int(self.config["dim"])

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


def _jsonable_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Copy backbone kwargs with tuples as lists, so the config survives a JSON round trip."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (kwargs or {}).items()}


def _tower_config(
    *,
    preset: str,
    backbone: str,
    backbone_kwargs: dict[str, Any] | None,
    image_size: int,
    pretrained: bool,
    weights_path: str | None,
    dim: int,
    dropout: float,
    temperature: float,
    freeze_backbone: bool = False,
) -> dict[str, Any]:
    """The JSON config entries every two-tower module shares (image tower, projection, loss)."""
    return {
        "freeze_backbone": bool(freeze_backbone),
        "preset": preset,
        "backbone": backbone,
        "backbone_kwargs": _jsonable_kwargs(backbone_kwargs),
        "image_size": int(image_size),
        "pretrained": bool(pretrained),
        "weights_path": None if weights_path is None else str(weights_path),
        "dim": int(dim),
        "dropout": float(dropout),
        "temperature": float(temperature),
    }


# The `cpu` preset's image tower, shared by every method: a half-width ResNet-18 from scratch at
# 64 px (a 2 × 2 map + the pooled token), ~240 training images/s on 2 cores. Chosen by the her2st
# ablation (docs/her2st.md): faster and better than the narrow ViT at 112 px it replaces.
CPU_IMAGE_TOWER: dict[str, Any] = {
    "backbone": "resnet18",
    "backbone_kwargs": {"channels": [32, 64, 128, 256]},
    "image_size": 64,
    "pretrained": False,
}
# ... and its training recipe (stpredict.tl._recipe), measured in the same ablation
CPU_RECIPE: dict[str, Any] = {
    "epochs": 30,
    "image_size": 64,
    "lr": 1e-3,
    "lr_min": 1e-5,
    "stain_jitter": 0.05,
    "translate": 0.25,
    "tta": True,
    "select_epoch": "val_pearson",
}


# The authors' training of the projection-head models (BLEEP's code, reused by CMRCNet's)
PROJECTION_TRAINING: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 1e-4,
    "weight_decay": 1e-3,
    "lr_min": 1e-5,
    "scheduler": "cosine",
    "epochs": 60,
    "batch_size": 64,
    "drop_last": True,
    "augment": True,
    "retrieval": {"k": 50, "weighting": "mean"},
}


def _training_presets(base: dict[str, Any], *paper_names: str) -> dict[str, dict[str, Any]]:
    """Training presets from a method's paper settings.

    ``paper_names`` at 224 px with the authors' recipe, then ``cpu`` (:data:`CPU_RECIPE`) and
    ``tiny`` (2 epochs, batches of 16, 32 px).
    """
    presets = {name: {**base, "image_size": 224} for name in paper_names}
    presets["cpu"] = {**base, **CPU_RECIPE}
    presets["tiny"] = {**base, "epochs": 2, "batch_size": 16, "image_size": 32}
    return presets


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
        width = self.image_encoder.out_dim
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


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a batch ``[B, C, S, S]`` (identity first)."""
    return [torch.rot90(v, k, dims=(2, 3)) for v in (images, images.flip(3)) for k in range(4)]


def _to_tensor(patches: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise uint8 patches ``(n, S, S, 3)`` → float32 ``[n, 3, S, S]`` (via the data layer)."""
    try:
        from stpredict.data import to_tensor
    except ImportError:  # data layer not importable: same contract, local implementation
        x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - m) / s
    return to_tensor(patches, mean, std)


class STPredictModel:
    """A fitted image → expression retrieval model with its reference bank.

    Usually created by :func:`stpredict.tl.fit` and read back with :func:`stpredict.models.load`.

    Parameters
    ----------
    method
        Key in :data:`stpredict.models.METHODS` (``"cmrcnet"``, ``"bleep"``, ``"mclstexp"``).
    module
        The trained :class:`RetrievalModule`.
    genes
        Gene names, in the order of the expression vectors.
    normalization
        How expression was normalised (e.g. ``{"target_sum": 1e4, "log1p": True}``).
    patch
        Patch parameters: ``patch_size_um``, ``size`` (pixels fed to the model), ``mean``,
        ``std``, ``tta`` (average the embeddings of the 8 flips/rotations of each patch).
        Defaults: 112 µm, the module's image size, ImageNet statistics, no TTA.
    retrieval
        Retrieval defaults ``{"k": ..., "weighting": ...}``; default from the module.
    bank
        Reference bank (see :meth:`set_bank`); can be set later.
    history
        Training history, one dict per epoch.
    training
        Training parameters (epochs, batch size, device, checkpoint folder, ...).

    Examples
    --------
    >>> import numpy as np
    >>> import stpredict as stp
    >>> from stpredict.models import CMRCNet, STPredictModel
    >>> module = CMRCNet(20, **CMRCNet.default_config("tiny"))
    >>> model = STPredictModel("cmrcnet", module, genes=[f"g{i}" for i in range(20)])
    >>> model.embed_images(np.zeros((2, 32, 32, 3), np.uint8), progress=False).shape
    (2, 32)
    """

    def __init__(
        self,
        method: str,
        module: RetrievalModule,
        *,
        genes: Sequence[str],
        normalization: dict[str, Any] | None = None,
        patch: dict[str, Any] | None = None,
        retrieval: dict[str, Any] | None = None,
        bank: dict[str, np.ndarray] | None = None,
        history: list[dict[str, Any]] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        from . import METHODS

        if method not in METHODS:
            raise ValueError(f"STPredictModel: method={method!r}; expected one of {sorted(METHODS)}.")
        if not isinstance(module, METHODS[method]):
            raise TypeError(
                f"STPredictModel: module is a {type(module).__name__}; expected {METHODS[method].__name__} "
                f"for method={method!r}."
            )
        genes = [str(g) for g in genes]
        if len(genes) != module.n_genes:
            raise ValueError(
                f"STPredictModel: {len(genes)} genes given but the module expects {module.n_genes}."
            )
        if len(set(genes)) != len(genes):
            raise ValueError("STPredictModel: genes contain duplicates.")
        defaults = module.training_defaults
        self.method = method
        self.module = module
        self.genes = genes
        self.normalization = dict(normalization or {})
        self.patch = {
            "patch_size_um": 112.0,
            "size": int(module.config.get("image_size", defaults["image_size"])),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "tta": False,
            "features": None,
            **(patch or {}),
        }
        self.retrieval = {**defaults["retrieval"], **(retrieval or {})}
        self.history = list(history or [])
        self.training = dict(training or {})
        self.bank: dict[str, np.ndarray] | None = None
        if bank is not None:
            self.set_bank(**bank)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> dict[str, Any]:
        """The module's hyper-parameters."""
        return self.module.config

    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings."""
        return self.module.embedding_dim

    @property
    def device(self) -> torch.device:
        """Where the module's weights are."""
        return next(self.module.parameters()).device

    # ------------------------------------------------------------------ embedding
    def _encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings; with ``patch["tta"]`` the mean over the 8 dihedral views."""
        if not self.patch.get("tta"):
            return self.module.encode_image(images)
        return torch.stack([self.module.encode_image(v) for v in dihedral_views(images)]).mean(dim=0)

    @property
    def _takes_features(self) -> bool:
        return bool(getattr(self.module, "takes_features", False))

    def _embed_batches(
        self, n: int, batch_size: int, device: Any, progress: bool, desc: str, encode
    ) -> np.ndarray:
        """``(n, D)`` embeddings: ``encode(start, stop, device)`` for each batch, in eval mode."""
        from stpredict._progress import progress as progress_bar

        dev = resolve_device(device)
        self.module.to(dev)
        out = np.empty((n, self.embedding_dim), dtype=np.float32)
        with _eval_mode(self.module), torch.inference_mode():
            starts = range(0, n, batch_size)
            for start in progress_bar(starts, desc=desc, unit="batch", enabled=progress):
                stop = min(start + batch_size, n)
                out[start:stop] = encode(start, stop, dev).float().cpu().numpy()
        return out

    def embed_images(
        self,
        patches: np.ndarray,
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> np.ndarray:
        """Embed H&E patches with the image encoder.

        Parameters
        ----------
        patches
            ``uint8`` array ``(n, S, S, 3)`` with ``S == model.patch["size"]``, or a
            :class:`~stpredict.data.SlidePatches` (cut from the slides batch by batch).
        batch_size
            Patches per forward pass.
        device
            ``"cpu"``, ``"cuda"``, ``"auto"``, ...; the module is moved there.
        progress
            Show a progress bar.

        Returns
        -------
        ``float32`` array ``(n, D)``.
        """
        if self._takes_features:
            raise ValueError(
                f"STPredictModel.embed_images: this model takes precomputed features "
                f"({self.patch['features']!r}), not patches; use embed_features."
            )
        from stpredict.data import SlidePatches

        if not isinstance(patches, SlidePatches):  # a SlidePatches is read batch by batch below
            patches = np.asarray(patches)
        size = self.patch["size"]
        if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[1:] != (size, size, 3):
            raise ValueError(
                f"STPredictModel.embed_images: patches have dtype {patches.dtype} and shape {patches.shape}; "
                f"expected uint8 (n, {size}, {size}, 3) (model.patch['size']={size})."
            )

        def encode(start: int, stop: int, dev: torch.device) -> torch.Tensor:
            return self._encode_views(
                _to_tensor(patches[start:stop], self.patch["mean"], self.patch["std"]).to(dev)
            )

        return self._embed_batches(len(patches), batch_size, device, progress, "embedding images", encode)

    def embed_features(
        self,
        features: np.ndarray,
        *,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> np.ndarray:
        """Embed precomputed patch features (a model fitted with ``image_features=``).

        Parameters
        ----------
        features
            ``(n, F)`` features of the kind the model was trained on (``model.patch["features"]``).
        batch_size, device, progress
            As in :meth:`embed_images`.

        Returns
        -------
        ``float32`` array ``(n, D)``.
        """
        from stpredict._validation import check_matrix

        if not self._takes_features:
            raise ValueError(
                "STPredictModel.embed_features: this model embeds image patches (embed_images); it was "
                "not fitted with `image_features=`."
            )
        features = check_matrix(features, what="STPredictModel.embed_features: features", min_rows=0)

        def encode(start: int, stop: int, dev: torch.device) -> torch.Tensor:
            return self.module.encode_image(torch.from_numpy(features[start:stop]).to(dev))

        return self._embed_batches(len(features), batch_size, device, progress, "embedding features", encode)

    def embed_inputs(self, inputs: np.ndarray, **kwargs: Any) -> np.ndarray:
        """:meth:`embed_features` or :meth:`embed_images`, whichever the model's image input is."""
        if self._takes_features:
            return self.embed_features(inputs, **kwargs)
        return self.embed_images(inputs, **kwargs)

    def embed_expression(
        self,
        expression: np.ndarray,
        coords: np.ndarray | None = None,
        *,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
    ) -> np.ndarray:
        """Embed log-normalised expression with the expression encoder.

        Set-based encoders (mclSTExp) embed consecutive sets of ``module.eval_set_size`` spots
        together, as in the authors' evaluation; other encoders treat each spot alone.

        Parameters
        ----------
        expression
            ``(n, G)`` log-normalised expression in the order of ``model.genes``.
        coords
            ``(n, 2)`` integer grid coordinates (x, y); required by mclSTExp.
        batch_size
            Spots per forward pass (for encoders that do not attend across spots).
        device
            Where to compute.

        Returns
        -------
        ``float32`` array ``(n, D)``.
        """
        expression = np.asarray(expression, dtype=np.float32)
        if expression.ndim != 2 or expression.shape[1] != len(self.genes):
            raise ValueError(
                f"STPredictModel.embed_expression: expression has shape {expression.shape}; "
                f"expected (n, {len(self.genes)}) for the model's genes."
            )
        if coords is not None:
            coords = np.asarray(coords)
            if coords.shape != (len(expression), 2):
                raise ValueError(
                    f"STPredictModel.embed_expression: coords has shape {coords.shape}; "
                    f"expected ({len(expression)}, 2)."
                )
        dev = resolve_device(device)
        self.module.to(dev)
        step = self.module.eval_set_size or batch_size
        out = np.empty((len(expression), self.embedding_dim), dtype=np.float32)
        with _eval_mode(self.module), torch.inference_mode():
            for start in range(0, len(expression), step):
                expr = torch.from_numpy(expression[start : start + step]).to(dev)
                xy = (
                    None
                    if coords is None
                    else torch.as_tensor(coords[start : start + step], dtype=torch.long, device=dev)
                )
                out[start : start + len(expr)] = self.module.encode_expression(expr, xy).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------ bank
    def extend_bank(self, data: Any, **kwargs: Any) -> STPredictModel:
        """Add the spots of more sequenced slides to the bank, without retraining.

        See :func:`stpredict.tl._bank.extend_bank` for the keywords (``library_key``,
        ``table_key``, ``layer``, ``device``).

        Examples
        --------
        >>> import stpredict as stp
        >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=20)
        >>> one, two = (adata[adata.obs["library_id"] == s].copy() for s in ("slide0", "slide1"))
        >>> model = stp.tl.fit(one, preset="tiny", epochs=1, progress=False)
        >>> len(model.extend_bank(two).bank["expression"])
        72
        """
        from stpredict.tl._bank import extend_bank

        return extend_bank(self, data, **kwargs)

    def set_bank(
        self,
        expression: np.ndarray,
        embeddings: np.ndarray | None = None,
        *,
        library_id: Sequence[str],
        obs_names: Sequence[str],
        coords: np.ndarray | None = None,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
    ) -> None:
        """Set the reference bank that predictions retrieve from.

        Parameters
        ----------
        expression
            ``(n, G)`` log-normalised expression of the reference spots.
        embeddings
            ``(n, D)`` their expression embeddings; computed with :meth:`embed_expression`
            when omitted.
        library_id
            Slide of each reference spot.
        obs_names
            Spot ids.
        coords
            ``(n, 2)`` grid coordinates (needed to embed for mclSTExp; stored when given).
        batch_size, device
            Passed to :meth:`embed_expression`.
        """
        expression = np.asarray(expression, dtype=np.float32)
        n = len(expression)
        if expression.ndim != 2 or expression.shape[1] != len(self.genes):
            raise ValueError(
                f"STPredictModel.set_bank: expression has shape {expression.shape}; "
                f"expected (n, {len(self.genes)})."
            )
        library_id = np.asarray(library_id).astype(str)
        obs_names = np.asarray(obs_names).astype(str)
        for key, arr in (("library_id", library_id), ("obs_names", obs_names)):
            if arr.shape != (n,):
                raise ValueError(f"STPredictModel.set_bank: {key} has shape {arr.shape}; expected ({n},).")
        if coords is not None:
            coords = np.asarray(coords, dtype=np.int64)
            if coords.shape != (n, 2):
                raise ValueError(
                    f"STPredictModel.set_bank: coords has shape {coords.shape}; expected ({n}, 2)."
                )
        if embeddings is None:
            embeddings = self.embed_expression(expression, coords, batch_size=batch_size, device=device)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape != (n, self.embedding_dim):
            raise ValueError(
                f"STPredictModel.set_bank: embeddings have shape {embeddings.shape}; "
                f"expected ({n}, {self.embedding_dim})."
            )
        if not (np.isfinite(expression).all() and np.isfinite(embeddings).all()):
            raise ValueError("STPredictModel.set_bank: expression or embeddings contain NaN or inf.")
        bank = {
            "expression": expression,
            "embeddings": embeddings,
            "library_id": library_id,
            "obs_names": obs_names,
        }
        if coords is not None:
            bank["coords"] = coords
        self.bank = bank

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to a folder (``model.safetensors``, ``bank.safetensors``, ``config.json``).

        Parameters
        ----------
        path
            Folder to create.
        overwrite
            Replace the model files in an existing non-empty folder.

        Returns
        -------
        The folder.
        """
        from ._io import save_model

        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> STPredictModel:
        """Read a model written by :meth:`save` (no pickled code is executed).

        Parameters
        ----------
        path
            The model folder.
        device
            Where to put the module.
        """
        from ._io import load_model

        return load_model(path, device=device)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        lines = [
            f"STPredictModel(method={self.method!r}, preset={self.config.get('preset')!r})",
            f"    genes: {len(self.genes)}, embedding dim: {self.embedding_dim}, parameters: {n_params:,}",
            (
                f"    image input: features {self.patch['features']!r} ({self.module.image_encoder.out_dim})"
                if self.patch.get("features")
                else f"    patches: {self.patch['patch_size_um']:g} µm → {self.patch['size']} px"
                + (" (frozen backbone)" if self.config.get("freeze_backbone") else "")
            ),
            f"    retrieval: k={self.retrieval.get('k')}, weighting={self.retrieval.get('weighting')!r}",
        ]
        if self.bank is None:
            lines.append("    bank: not set")
        else:
            n_slides = len(np.unique(self.bank["library_id"]))
            lines.append(f"    bank: {len(self.bank['expression'])} spots from {n_slides} slide(s)")
        if self.history:
            lines.append(f"    trained: {len(self.history)} epoch(s)")
        return "\n".join(lines)


class _eval_mode:
    """Context manager: module in eval mode, previous mode restored afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)
