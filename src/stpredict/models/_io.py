"""Saved-model format: a folder with ``model.safetensors``, ``bank.safetensors``, ``config.json``.

Nothing is unpickled on load: weights and numeric arrays are safetensors, the rest is JSON.
This module knows the folder format only; :class:`~stpredict.models.STPredictModel` decides
what goes into it (it imports this module, never the other way round).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "build_saved_modules", "read_model_folder", "write_model_folder"]

FORMAT_NAME = "stpredict-model"
MAX_MEMBERS = 64  # a saved ensemble may hold at most this many networks
FORMAT_VERSION = 3  # 2: config.json records the sha256 of the weight files; 3: ensembles (n_members)
MODEL_FILE, BANK_FILE, CONFIG_FILE = "model.safetensors", "bank.safetensors", "config.json"
_LOAD = "stpredict.models.load"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    raise TypeError(f"config.json: cannot store a {type(obj).__name__} ({obj!r}) as JSON.")


def _is_model_folder(path: Path) -> bool:
    """Whether ``path`` holds a model written by :func:`write_model_folder` (and nothing else)."""
    names = {p.name for p in path.iterdir()}
    if not names <= {MODEL_FILE, BANK_FILE, CONFIG_FILE}:
        return False
    try:
        return json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def write_model_folder(
    path: str | Path,
    *,
    meta: dict[str, Any],
    state: dict[str, torch.Tensor],
    arrays: dict[str, np.ndarray],
    overwrite: bool = False,
) -> Path:
    """Write a model folder: ``state`` and ``arrays`` as safetensors, ``meta`` as ``config.json``.

    The files are written into a temporary sibling folder, ``config.json`` last with the sha256
    of the two weight files, and the folder is then renamed into place; a lock file
    (``<path>.lock``) keeps a second writer out. An existing folder is replaced only with
    ``overwrite=True`` and only if it is a saved model: other folders are never emptied.
    """
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    from ._folder import file_sha256, replace_folder

    what = "STPredictModel.save"
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta}
    json.dumps(meta, default=_json_default)  # fail before writing anything if it cannot be stored

    def may_replace(folder: Path) -> bool:
        if not overwrite:
            raise FileExistsError(
                f"{what}: folder {str(folder)!r} exists and is not empty; pass overwrite=True to replace it."
            )
        if not _is_model_folder(folder):
            raise FileExistsError(
                f"{what}: folder {str(folder)!r} holds files other than a saved stpredict model; "
                "it is not replaced even with overwrite=True (choose another folder)."
            )
        return True

    def write(folder: Path) -> None:
        cpu_state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_torch(cpu_state, str(folder / MODEL_FILE), metadata={"format": FORMAT_NAME})
        numeric = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        save_numpy(numeric, str(folder / BANK_FILE), metadata={"format": FORMAT_NAME})
        files = {name: file_sha256(folder / name) for name in (MODEL_FILE, BANK_FILE)}
        text = json.dumps({**meta, "files": files}, indent=1, default=_json_default)
        (folder / CONFIG_FILE).write_text(text, encoding="utf-8")

    replace_folder(Path(path), write, may_replace=may_replace, what=what)
    return Path(path)


def _check_files(path: Path, meta: dict[str, Any], what: str) -> None:
    """The weight files are the ones ``config.json`` was written with (format 2 records their sha256)."""
    from ._folder import file_sha256

    files = meta.get("files")
    if files is None:
        if meta.get("format_version", 1) >= 2:
            raise ValueError(f"{what}: {str(path / CONFIG_FILE)!r} lacks the sha256 of the weight files.")
        return  # format 1 had none
    for name in (MODEL_FILE, BANK_FILE):
        digest = file_sha256(path / name)
        if not isinstance(files, dict) or files.get(name) != digest:
            raise ValueError(
                f"{what}: {str(path / name)!r} is not the file {str(path / CONFIG_FILE)!r} was saved with "
                f"(its sha256 starts {digest[:12]}): "
                "the folder mixes files of different saves. Save the model again."
            )


# backbone_kwargs a saved model may pass to timm: sizes and switches of the architecture, never
# anything that names a file, a URL or pretrained weights
ARCHITECTURE_KEYS = frozenset(
    {
        "depth", "num_heads", "embed_dim", "patch_size", "mlp_ratio", "qkv_bias", "qk_norm", "class_token",
        "global_pool", "no_embed_class", "reg_tokens", "fc_norm", "drop_rate", "drop_path_rate",
        "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "init_values", "dynamic_img_size", "layers",
        "channels", "block_config", "growth_rate", "num_init_features", "bn_size", "stem_width",
        "stem_type", "cardinality", "base_width", "output_stride", "in_chans", "act_layer", "in_features",
        "components",
    }
)  # fmt: skip
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _plain_value(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return bool(_PLAIN_NAME.match(value))
    if isinstance(value, list | tuple):
        return all(isinstance(v, bool | int | float) for v in value)
    return False


def check_config(config: Any, cls: type, where: str) -> dict[str, Any]:
    """A saved model's network config, refusing anything but ``cls``'s hyper-parameters.

    The backbone must be a plain timm name (no ``hf-hub:`` or path) and its ``backbone_kwargs``
    may only use :data:`ARCHITECTURE_KEYS` with plain values, so a downloaded model folder cannot
    make loading read a local file or fetch anything.
    """
    what = _LOAD
    if not isinstance(config, dict):
        raise ValueError(f"{what}: 'config' in {where!r} is a {type(config).__name__}; expected an object.")
    unknown = sorted(set(config) - set(cls.hyperparameters()))  # type: ignore[attr-defined]
    if unknown:
        raise ValueError(
            f"{what}: {where!r} config key {unknown[0]!r} is refused: "
            f"not a hyper-parameter of {cls.__name__}."
        )
    backbone = config.get("backbone")
    if backbone is not None and (not isinstance(backbone, str) or not _PLAIN_NAME.match(backbone)):
        raise ValueError(
            f"{what}: {where!r} backbone {backbone!r} is refused: a saved model names a timm architecture "
            "(letters, digits, '_', '-', '.'), not a hub id, path or URL."
        )
    kwargs = config.get("backbone_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"{what}: {where!r} backbone_kwargs is a {type(kwargs).__name__}; expected an object."
        )
    for key, value in kwargs.items():
        if key not in ARCHITECTURE_KEYS:
            raise ValueError(
                f"{what}: {where!r} backbone_kwargs key {key!r} is refused; a saved model may only set "
                f"architecture keys ({', '.join(sorted(ARCHITECTURE_KEYS))})."
            )
        if not _plain_value(value):
            raise ValueError(
                f"{what}: {where!r} backbone_kwargs[{key!r}] = {value!r} is refused: not a plain value."
            )
    return dict(config)


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
            header = json.loads(fh.read(n).rstrip(b" \x00").decode("utf-8"))  # padding varies by version
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


def read_model_folder(
    path: str | os.PathLike, *, methods: Iterable[str]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """``config.json``, the weights and the bank arrays of a folder written by :func:`write_model_folder`.

    Checks the format, its version, the method (one of ``methods``), the required keys, the
    safetensors headers and the sha256 of the weight files before reading any weights.
    """
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    path = Path(path)
    _check_folder(path)
    meta = _read_config(path / CONFIG_FILE)
    methods = sorted(methods)
    if meta["method"] not in methods:
        raise ValueError(
            f"{_LOAD}: method {meta['method']!r} in {str(path / CONFIG_FILE)!r} is unknown; known: {methods}."
        )
    _check_safetensors(path / MODEL_FILE)
    _check_safetensors(path / BANK_FILE)
    _check_files(path, meta, _LOAD)
    return meta, load_torch(str(path / MODEL_FILE)), load_numpy(str(path / BANK_FILE))


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{_LOAD}: {str(path)!r} is not a folder (expected a saved stpredict model).")
    for name in (CONFIG_FILE, MODEL_FILE, BANK_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{_LOAD}: {str(path / name)!r} is missing; is {str(path)!r} a saved model?"
            )


def _read_config(file: Path) -> dict[str, Any]:
    """``config.json`` of a model folder, with its format, version and required keys checked."""
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{_LOAD}: {str(file)!r} is not valid JSON ({err}).") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{_LOAD}: {str(file)!r} has format {found!r}; expected {FORMAT_NAME!r} "
            "(not a folder written by STPredictModel.save)."
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{_LOAD}: {str(file)!r} has format_version {version!r}; expected an integer.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{_LOAD}: {str(file.parent)!r} uses format_version {version} (written by stpredict "
            f"{meta.get('stpredict_version')}); this stpredict reads up to {FORMAT_VERSION}: "
            "upgrade stpredict."
        )
    missing = [k for k in ("method", "config", "genes", "patch", "retrieval") if k not in meta]
    if missing:
        raise ValueError(f"{_LOAD}: {str(file)!r} lacks the keys {missing}.")
    return meta


def build_saved_module(cls: type, meta: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> Any:
    """The ``cls`` module of a saved model with its weights; backbone weights are never fetched."""
    config = {**check_config(meta["config"], cls, where), "pretrained": False, "weights_path": None}
    try:
        module = cls(len(meta["genes"]), **config)
    except TypeError as err:
        raise ValueError(f"{_LOAD}: the config in {where!r} does not fit {cls.__name__}: {err}") from err
    module.config["pretrained"] = meta["config"].get("pretrained", False)
    module.config["weights_path"] = meta["config"].get("weights_path")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{_LOAD}: weights in {where!r} do not match the config: {err}") from err
    return module


def build_saved_modules(cls: type, meta: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> Any:
    """The saved module, or the :class:`~stpredict.models._ensemble.Ensemble` of ``meta["n_members"]``.

    An ensemble's weights are those of member ``j`` under the prefix ``members.<j>.``.
    """
    from ._ensemble import Ensemble

    n = meta.get("n_members", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_MEMBERS:
        raise ValueError(
            f"{_LOAD}: n_members={n!r} in {where!r}; expected an integer from 1 to {MAX_MEMBERS}."
        )
    if n == 1:
        return build_saved_module(cls, meta, state, where)
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, value in state.items():
        head, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if head != "members" or not index.isdigit() or int(index) >= n:
            raise ValueError(
                f"{_LOAD}: weight {key!r} of an ensemble of {n} in {where!r} is not 'members.<j>.<name>'."
            )
        parts[int(index)][name] = value
    return Ensemble([build_saved_module(cls, meta, part, where) for part in parts])
