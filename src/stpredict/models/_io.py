"""Saved-model format: a folder with ``model.safetensors``, ``bank.safetensors``, ``config.json``.

Nothing is unpickled on load: weights and numeric arrays are safetensors, the rest is JSON.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stpredict._logging import logger

if TYPE_CHECKING:
    from ._base import STPredictModel

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_model", "load_model"]

FORMAT_NAME = "stpredict-model"
FORMAT_VERSION = 1
MODEL_FILE, BANK_FILE, CONFIG_FILE = "model.safetensors", "bank.safetensors", "config.json"
_NUMERIC_BANK = ("expression", "embeddings", "coords")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    raise TypeError(f"config.json: cannot store a {type(obj).__name__} ({obj!r}) as JSON.")


def save_model(model: STPredictModel, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model`` to the folder ``path`` (see :meth:`STPredictModel.save`)."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    import stpredict

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"STPredictModel.save: {str(path)!r} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"STPredictModel.save: folder {str(path)!r} exists and is not empty; "
            "pass overwrite=True to replace it."
        )
    bank = model.bank
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "stpredict_version": stpredict.__version__,
        "torch_version": torch.__version__,
        "method": model.method,
        "n_genes": len(model.genes),
        "config": model.config,
        "genes": model.genes,
        "normalization": model.normalization,
        "patch": model.patch,
        "retrieval": model.retrieval,
        "history": model.history,
        "training": model.training,
        "bank": None
        if bank is None
        else {
            "n_spots": len(bank["expression"]),
            "library_id": bank["library_id"].tolist(),
            "obs_names": bank["obs_names"].tolist(),
        },
    }
    # serialise first: nothing is written if the metadata cannot be stored
    text = json.dumps(meta, indent=1, default=_json_default)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    save_torch(state, str(path / MODEL_FILE), metadata={"format": FORMAT_NAME})
    arrays = {} if bank is None else {k: np.ascontiguousarray(bank[k]) for k in _NUMERIC_BANK if k in bank}
    save_numpy(arrays, str(path / BANK_FILE), metadata={"format": FORMAT_NAME})
    (path / CONFIG_FILE).write_text(text, encoding="utf-8")
    logger.info(f"saved {model.method} model to {path}")
    return path


def _check_safetensors(file: Path) -> None:
    """Validate the header of a safetensors file without reading its data."""
    size = file.stat().st_size
    try:
        with file.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(fh.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        if 8 + n + end > size:
            raise ValueError(f"data needs {8 + n + end} bytes but the file has {size} (truncated?)")
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        raise ValueError(
            f"stpredict.models.load: {str(file)!r} is not a valid safetensors file: {err}."
        ) from err


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> STPredictModel:
    """Read a model folder written by :func:`save_model` (see :meth:`STPredictModel.load`)."""
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    from . import METHODS
    from ._base import STPredictModel, _resolve_device

    path = Path(path)
    what = "stpredict.models.load"
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: {str(path)!r} is not a folder (expected a saved stpredict model).")
    for name in (CONFIG_FILE, MODEL_FILE, BANK_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{what}: {str(path / name)!r} is missing; is {str(path)!r} a saved model?"
            )
    try:
        meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {str(path / CONFIG_FILE)!r} is not valid JSON ({err}).") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{what}: {str(path / CONFIG_FILE)!r} has format {found!r}; expected {FORMAT_NAME!r} "
            "(not a folder written by STPredictModel.save)."
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(
            f"{what}: {str(path / CONFIG_FILE)!r} has format_version {version!r}; expected an integer."
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{what}: {str(path)!r} uses format_version {version} (written by stpredict "
            f"{meta.get('stpredict_version')}); this stpredict reads up to {FORMAT_VERSION}: "
            "upgrade stpredict."
        )
    missing = [k for k in ("method", "config", "genes", "patch", "retrieval") if k not in meta]
    if missing:
        raise ValueError(f"{what}: {str(path / CONFIG_FILE)!r} lacks the keys {missing}.")
    method = meta["method"]
    if method not in METHODS:
        raise ValueError(
            f"{what}: method {method!r} in {str(path / CONFIG_FILE)!r} is unknown; known: {sorted(METHODS)}."
        )
    genes = meta["genes"]
    _check_safetensors(path / MODEL_FILE)
    _check_safetensors(path / BANK_FILE)

    # weights come from the file: never download or read backbone weights again
    config = {**meta["config"], "pretrained": False, "weights_path": None}
    cls = METHODS[method]
    try:
        module = cls(len(genes), **config)
    except TypeError as err:
        raise ValueError(
            f"{what}: the config in {str(path / CONFIG_FILE)!r} does not fit {cls.__name__}: {err}"
        ) from err
    module.config["pretrained"] = meta["config"].get("pretrained", False)
    module.config["weights_path"] = meta["config"].get("weights_path")
    state = load_torch(str(path / MODEL_FILE))
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{what}: weights in {str(path / MODEL_FILE)!r} do not match the config: {err}"
        ) from err

    bank = None
    arrays = load_numpy(str(path / BANK_FILE))
    info = meta.get("bank")
    if info is not None:
        for key in ("expression", "embeddings"):
            if key not in arrays:
                raise ValueError(f"{what}: {str(path / BANK_FILE)!r} lacks the array {key!r}.")
        n = int(info["n_spots"])
        expected = {"expression": (n, len(genes)), "embeddings": (n, module.embedding_dim), "coords": (n, 2)}
        for key, shape in expected.items():
            if key in arrays and arrays[key].shape != shape:
                raise ValueError(
                    f"{what}: bank array {key!r} in {str(path / BANK_FILE)!r} has shape {arrays[key].shape}; "
                    f"expected {shape} ({n} spots, {len(genes)} genes)."
                )
        if len(info["library_id"]) != n or len(info["obs_names"]) != n:
            raise ValueError(
                f"{what}: bank library_id/obs_names in {str(path / CONFIG_FILE)!r} do not have {n} entries."
            )
        bank = {
            "expression": arrays["expression"],
            "embeddings": arrays["embeddings"],
            "library_id": np.asarray(info["library_id"], dtype=str),
            "obs_names": np.asarray(info["obs_names"], dtype=str),
        }
        if "coords" in arrays:
            bank["coords"] = arrays["coords"]

    model = STPredictModel(
        method,
        module,
        genes=genes,
        normalization=meta.get("normalization"),
        patch=meta["patch"],
        retrieval=meta["retrieval"],
        history=meta.get("history"),
        training=meta.get("training"),
    )
    if bank is not None:
        model.bank = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in bank.items()}
    module.to(_resolve_device(device)).eval()
    logger.info(f"loaded {method} model from {path}")
    return model
