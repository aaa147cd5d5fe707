"""The user-facing fitted model: a trained module with its genes, patch spec and reference bank."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stpredict._device import resolve_device

from ._base import RetrievalModule, dihedral_views
from ._ensemble import Ensemble, members_of
from ._io import build_saved_modules, read_model_folder, write_model_folder
from ._registry import METHODS
from ._specs import Normalization, PatchSpec, ReferenceBank, RetrievalSpec

__all__ = ["STPredictModel"]


class STPredictModel:
    """A fitted image → expression retrieval model with its reference bank.

    Usually created by :func:`stpredict.tl.fit` and read back with :func:`stpredict.models.load`.

    Parameters
    ----------
    method
        Key in :data:`stpredict.models.METHODS` (``"cmrcnet"``, ``"bleep"``, ``"mclstexp"``).
    module
        The trained :class:`RetrievalModule`, or an ensemble of several (``fit(n_members=...)``).
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
        module: RetrievalModule | Ensemble,
        *,
        genes: Sequence[str],
        normalization: dict[str, Any] | None = None,
        patch: dict[str, Any] | None = None,
        retrieval: dict[str, Any] | None = None,
        bank: Mapping[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"STPredictModel: method={method!r}; expected one of {sorted(METHODS)}.")
        for part in members_of(module):
            if not isinstance(part, METHODS[method]):
                raise TypeError(
                    f"STPredictModel: module is a {type(part).__name__}; expected {METHODS[method].__name__} "
                    f"(or an Ensemble of them) for method={method!r}."
                )
        genes = [str(g) for g in genes]
        if len(genes) != module.n_genes:
            raise ValueError(
                f"STPredictModel: {len(genes)} genes given but the module expects {module.n_genes}."
            )
        if len(set(genes)) != len(genes):
            raise ValueError("STPredictModel: genes contain duplicates.")
        self.method = method
        self.module = module
        self.genes = genes
        self.normalization = Normalization.from_dict(normalization, what="STPredictModel: normalization")
        self.patch = PatchSpec.from_dict(
            {"size": int(module.config["image_size"]), **(patch or {})}, what="STPredictModel: patch"
        )
        self.retrieval = RetrievalSpec.from_dict(
            {**module.preset.retrieval.to_dict(), **(retrieval or {})}, what="STPredictModel: retrieval"
        )
        self.history = list(history or [])
        self.training = dict(training or {})
        self.bank: ReferenceBank | None = None
        if bank is not None:
            self.set_bank(**bank)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> dict[str, Any]:
        """The module's hyper-parameters."""
        return self.module.config

    @property
    def n_members(self) -> int:
        """How many networks retrieve together (1, or the ensemble's size)."""
        return len(members_of(self.module))

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
        if not self.patch.tta:
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
        batch_size: int | None = None,
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
            Patches per forward pass; ``None``: 256 on a GPU, and on a CPU as many as hold
            256 × 112² pixels (256 at ≤ 112 px, 64 at 224 px), which bounds the activations'
            host memory.
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
                f"({self.patch.features!r}), not patches; use embed_features."
            )
        from stpredict.data import SlidePatches, to_tensor

        if not isinstance(patches, SlidePatches):  # a SlidePatches is read batch by batch below
            patches = np.asarray(patches)
        size = self.patch.size
        if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[1:] != (size, size, 3):
            raise ValueError(
                f"STPredictModel.embed_images: patches have dtype {patches.dtype} and shape {patches.shape}; "
                f"expected uint8 (n, {size}, {size}, 3) (model.patch['size']={size})."
            )

        def encode(start: int, stop: int, dev: torch.device) -> torch.Tensor:
            return self._encode_views(to_tensor(patches[start:stop], self.patch.mean, self.patch.std).to(dev))

        if batch_size is None:
            batch_size = image_batch_size(size, resolve_device(device))
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
            ``(n, F)`` features of the kind the model was trained on (``model.patch["features"]``),
            standardised per slide with :func:`stpredict.data.slide_standardized` when
            ``model.patch["slide_standardize"]`` is set.
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

    def embed_inputs(self, inputs: np.ndarray, *, batch_size: int | None = None, **kwargs: Any) -> np.ndarray:
        """:meth:`embed_features` or :meth:`embed_images`, whichever the model's image input is.

        ``batch_size=None``: each one's default.
        """
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
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
        library_id: Sequence[str] | np.ndarray,
        obs_names: Sequence[str] | np.ndarray,
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
        if expression.ndim != 2 or expression.shape[1] != len(self.genes):
            raise ValueError(
                f"STPredictModel.set_bank: expression has shape {expression.shape}; "
                f"expected (n, {len(self.genes)})."
            )
        if embeddings is None:
            ReferenceBank.build(  # shapes checked before the embedding work
                expression,
                np.zeros((len(expression), self.embedding_dim)),
                library_id=library_id,
                obs_names=obs_names,
                coords=coords,
            ).validate(len(self.genes), self.embedding_dim, what="STPredictModel.set_bank")
            embeddings = self.embed_expression(expression, coords, batch_size=batch_size, device=device)
        bank = ReferenceBank.build(
            expression, embeddings, library_id=library_id, obs_names=obs_names, coords=coords
        )
        self.bank = bank.validate(len(self.genes), self.embedding_dim, what="STPredictModel.set_bank")

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
        from stpredict._logging import logger

        write_model_folder(
            path,
            meta=self._saved_metadata(),
            state=self.module.state_dict(),
            arrays=self._bank_arrays(),
            overwrite=overwrite,
        )
        logger.info(f"saved {self.method} model to {path}")
        return Path(path)

    def _saved_metadata(self) -> dict[str, Any]:
        """What ``config.json`` holds besides the format (the bank's numbers go to safetensors)."""
        import stpredict

        bank = self.bank
        return {
            "stpredict_version": stpredict.__version__,
            "torch_version": torch.__version__,
            "method": self.method,
            "n_genes": len(self.genes),
            "n_members": self.n_members,
            "config": self.config,
            "genes": self.genes,
            "normalization": self.normalization.to_dict(),
            "patch": self.patch.to_dict(),
            "retrieval": self.retrieval.to_dict(),
            "history": self.history,
            "training": self.training,
            "bank": None
            if bank is None
            else {
                "n_spots": len(bank.expression),
                "library_id": bank.library_id.tolist(),
                "obs_names": bank.obs_names.tolist(),
            },
        }

    def _bank_arrays(self) -> dict[str, np.ndarray]:
        if self.bank is None:
            return {}
        return {k: self.bank[k] for k in ("expression", "embeddings", "coords") if k in self.bank}

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> STPredictModel:
        """Read a model written by :meth:`save` (no pickled code is executed).

        Parameters
        ----------
        path
            The model folder.
        device
            Where to put the module.
        """
        from stpredict._logging import logger

        meta, state, arrays = read_model_folder(path, methods=METHODS)
        where = str(Path(path) / "config.json")
        module = build_saved_modules(METHODS[meta["method"]], meta, state, where)
        model = cls(
            meta["method"],
            module,
            genes=meta["genes"],
            normalization=meta.get("normalization"),
            patch=meta["patch"],
            retrieval=meta["retrieval"],
            history=meta.get("history"),
            training=meta.get("training"),
        )
        model.bank = _saved_bank(meta.get("bank"), arrays, where)
        if model.bank is not None:
            model.bank.validate(len(model.genes), model.embedding_dim, what="stpredict.models.load")
        module.to(resolve_device(device)).eval()
        logger.info(f"loaded {meta['method']} model from {path}")
        return model

    def _image_width(self) -> int:
        encoder = self.module.image_encoder
        return int(getattr(encoder, "in_dim", getattr(encoder, "out_dim", 0)))

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        lines = [
            f"STPredictModel(method={self.method!r}, preset={self.config.get('preset')!r})",
            f"    genes: {len(self.genes)}, embedding dim: {self.embedding_dim}, parameters: {n_params:,}",
            (
                f"    image input: features {self.patch.features!r} ({self._image_width()})"
                + (", standardised per slide" if self.patch.slide_standardize else "")
                if self.patch.features
                else f"    patches: {self.patch.patch_size_um:g} µm → {self.patch.size} px"
                + (" (frozen backbone)" if self.config.get("freeze_backbone") else "")
            ),
            f"    retrieval: k={self.retrieval.k}, weighting={self.retrieval.weighting!r}",
        ]
        if self.n_members > 1:
            lines.append(f"    ensemble: {self.n_members} networks, retrieving by their mean cosine")
        if self.bank is None:
            lines.append("    bank: not set")
        else:
            n_slides = len(np.unique(self.bank.library_id))
            lines.append(f"    bank: {len(self.bank.expression)} spots from {n_slides} slide(s)")
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


# patches × pixels of one CPU embedding batch (256 patches at 112 px): at 224 px, 256 patches'
# activations take ~1.6 GiB of RAM in a small CNN, 64 about a quarter of it
_CPU_BATCH_PIXELS = 256 * 112 * 112


def image_batch_size(size: int, device: torch.device) -> int:
    """Default patches per embedding batch: 256 on an accelerator, fewer for large patches on a CPU."""
    if device.type != "cpu":
        return 256
    return int(max(16, min(256, _CPU_BATCH_PIXELS // (size * size))))


def _saved_bank(info: Any, arrays: dict[str, np.ndarray], where: str) -> ReferenceBank | None:
    """The bank of a saved model: numbers from ``bank.safetensors``, ids from ``config.json``."""
    if info is None:
        return None
    for key in ("expression", "embeddings"):
        if key not in arrays:
            raise ValueError(f"stpredict.models.load: the bank of {where!r} lacks the array {key!r}.")
    n = int(info["n_spots"])
    if len(info["library_id"]) != n or len(info["obs_names"]) != n or len(arrays["expression"]) != n:
        raise ValueError(
            f"stpredict.models.load: bank expression/library_id/obs_names in {where!r} "
            f"do not have {n} entries."
        )
    return ReferenceBank.build(
        arrays["expression"].copy(),
        arrays["embeddings"].copy(),
        library_id=info["library_id"],
        obs_names=info["obs_names"],
        coords=None if "coords" not in arrays else arrays["coords"].copy(),
    )
