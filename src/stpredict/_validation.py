"""Every input check of the package, in one message style.

Each check names the object or argument (``what``), says what was expected and what was given:
``"{what} must be <expected>, got <value>."``. A value of the wrong *type* raises
:class:`TypeError`; a value of the right type but out of range or of the wrong shape raises
:class:`ValueError`. torch is imported only by the checks that take tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_key(key: Any, *, what: str) -> str:
    """A key the package writes under (obsm/layers/uns/tables): letters, digits, ``_ - .`` only.

    SpatialData requires this of table names, and ``/`` would break ``.h5ad`` / zarr paths.
    TypeError for a non-string, ValueError for a string with other characters.
    """
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a string, got {type(key).__name__}.")
    if not _KEY.match(key) or key in (".", ".."):
        raise ValueError(
            f"{what}={key!r} is not a valid key: use letters, digits, '_', '-' and '.' only "
            "(keys become .h5ad / zarr paths and SpatialData table names)."
        )
    return key


def check_obs_names(names: Sequence[Any] | pd.Index, *, what: str = "adata.obs_names") -> pd.Index:
    """Return ``names`` as a string index; raise on missing (empty/NaN) or duplicate names."""
    index = pd.Index(names)
    if index.isna().any():
        raise ValueError(
            f"{what} has {int(index.isna().sum())} missing (NaN) name(s); expected unique spot ids."
        )
    index = index.astype(str)
    empty = index == ""
    if empty.any():
        raise ValueError(f"{what} has {int(empty.sum())} empty name(s); expected unique spot ids.")
    if index.has_duplicates:
        dup = index[index.duplicated()].unique().tolist()
        raise ValueError(
            f"{what} has {len(dup)} duplicated name(s), e.g. {dup[:5]}; expected unique spot ids "
            "(call `adata.obs_names_make_unique()`)."
        )
    return index


def check_coordinates(coords: Any, n: int, *, what: str) -> np.ndarray:
    """Return ``coords`` as float64 ``(n, 2)``; raise on a wrong shape or non-finite values."""
    try:
        arr = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be numeric, got {type(coords).__name__}: {err}") from err
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 2:
        raise ValueError(f"{what} must have shape ({n}, 2) (x, y per spot), got {arr.shape}.")
    arr = arr[:, :2]
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what} has {int(bad.sum())} spot(s) with NaN or infinite coordinates "
            f"(rows {np.flatnonzero(bad)[:5].tolist()}); expected finite x, y."
        )
    return arr


def check_image(array: Any, *, what: str) -> tuple[int, int, int]:
    """Check an ``H x W x C`` image (C = 3 or 4; uint8 or float in [0, 1]); return ``(H, W, C)``."""
    shape = tuple(getattr(array, "shape", ()))
    if len(shape) != 3 or shape[2] not in (3, 4) or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{what} must be an H x W x 3 (RGB) or H x W x 4 (RGBA) image, got shape {shape}.")
    dtype = np.dtype(getattr(array, "dtype", np.float64))
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {dtype}.")
    if np.issubdtype(dtype, np.floating):
        _check_float_range(array, what=what)
    return int(shape[0]), int(shape[1]), int(shape[2])


_RANGE_SAMPLE = 512  # side of the block read from a lazy image to check its value range


def _check_float_range(array: Any, *, what: str) -> None:
    """A float image must hold values in [0, 1]: 0–255 floats would be clipped to white."""
    if isinstance(array, np.ndarray):
        sample = array[:: max(1, array.shape[0] // 1024), :: max(1, array.shape[1] // 1024)]
    else:  # lazy (dask / xarray): one block from the middle, not the whole slide
        h, w = array.shape[:2]
        y0, x0 = max(0, h // 2 - _RANGE_SAMPLE // 2), max(0, w // 2 - _RANGE_SAMPLE // 2)
        sample = np.asarray(array[y0 : y0 + _RANGE_SAMPLE, x0 : x0 + _RANGE_SAMPLE])
    _check_unit_values(sample, what=what)


def _check_unit_values(values: Any, *, what: str) -> None:
    """Every value finite and in [0, 1] (0–255 named as such)."""
    sample = np.asarray(values, dtype=np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size < sample.size:
        raise ValueError(f"{what} has NaN or infinite pixel values; expected floats in [0, 1].")
    if finite.size and (finite.max() > 1.0 or finite.min() < 0.0):
        hint = " They look like 0–255: divide by 255 or convert to uint8." if finite.max() <= 255 else ""
        raise ValueError(
            f"{what} is a float image with values in [{finite.min():g}, {finite.max():g}]; "
            f"expected [0, 1].{hint}"
        )


def check_inside(centers: np.ndarray, height: int, width: int, names: pd.Index, *, what: str) -> None:
    """Raise when a spot centre lies outside ``[0, W) x [0, H)``."""
    out = (centers[:, 0] < 0) | (centers[:, 0] >= width) | (centers[:, 1] < 0) | (centers[:, 1] >= height)
    if out.any():
        ex = [f"{names[i]} at ({centers[i, 0]:.1f}, {centers[i, 1]:.1f})" for i in np.flatnonzero(out)[:3]]
        raise ValueError(
            f"{what}: {int(out.sum())} spot centre(s) lie outside the {width} x {height} px image, e.g. "
            f"{ex}; expected x in [0, {width}) and y in [0, {height}) (wrong image or scale factor?)."
        )


def check_positive(value: Any, *, what: str) -> float:
    """Return ``value`` as a finite positive float or raise."""
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a positive number, got {value!r}.") from err
    if not np.isfinite(out) or out <= 0:
        raise ValueError(f"{what} must be a finite positive number, got {value!r}.")
    return out


def check_int(value: Any, *, what: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (``bool`` is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_flag(value: Any, *, what: str) -> bool:
    """``True`` or ``False`` (numpy booleans too)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be True or False, got {value!r}.")
    return bool(value)


def check_number(value: Any, *, what: str, positive: bool = True) -> float:
    """A finite number, ``> 0`` (``positive``) or ``>= 0``."""
    kind = "positive" if positive else "non-negative"
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"{what} must be a {kind} number, got {value!r}.")
    if not np.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{what} must be a finite {kind} number, got {value!r}.")
    return float(value)


def check_smoothing(smooth: Any, radius: Any, *, what: str) -> tuple[float, float]:
    """Spatial smoothing options: a weight ``smooth`` in ``[0, 1]`` and a positive ``radius``."""
    alpha = check_number(smooth, what=f"{what}: `smooth`", positive=False)
    if alpha > 1:
        raise ValueError(f"{what}: `smooth` must be in [0, 1] (0: off), got {smooth!r}.")
    return alpha, check_number(radius, what=f"{what}: `smooth_radius` (spot pitches)")


def check_stain_stats(value: Any, *, what: str) -> np.ndarray:
    """Stain statistics: finite ``(2, 3)`` numbers (mean and positive std of H, E, D), as float32."""
    try:
        stats = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be 2 x 3 numbers (mean, std of H, E, D), got {value!r}.") from None
    if stats.shape != (2, 3) or not np.isfinite(stats).all() or (stats[1] <= 0).any():
        raise ValueError(
            f"{what} must be finite 2 x 3 numbers (mean, positive std of H, E, D), got {stats.tolist()}."
        )
    return stats


def check_k(k: Any, n_reference: int, *, what: str = "k") -> int:
    """A number of neighbours: an integer in ``[1, n_reference]``."""
    k = check_int(k, what=what)
    if k > n_reference:
        raise ValueError(f"{what} must be at most the number of reference spots ({n_reference}), got {k}.")
    return k


def check_matrix(x: Any, *, what: str, min_rows: int = 1) -> np.ndarray:
    """A finite float32 ``(n, features)`` array, ``n >= min_rows`` (DataFrames, sparse matrices too)."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{what} must be a numeric array, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise TypeError(f"{what} must be real-valued, got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array (n, features), got shape {arr.shape}.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{what} must have at least {min_rows} row(s), got shape {arr.shape}.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite, got NaN or infinite values.")
    return arr


def check_tensor_matrix(x: Any, *, what: str) -> Any:
    """As :func:`check_matrix` (no rows allowed), for arrays or tensors → a float32 tensor (same device)."""
    import torch

    if not isinstance(x, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(check_matrix(x, what=what, min_rows=0)))
    t = x.detach()
    if t.is_complex():
        raise TypeError(f"{what} must be real-valued, got dtype {t.dtype}.")
    if t.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array (n, features), got shape {tuple(t.shape)}.")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} must be finite, got NaN or infinite values.")
    return t


def check_patches(patches: Any, *, what: str = "patches", floats: bool = False) -> np.ndarray:
    """RGB patches ``(n, S, S, 3)`` as uint8.

    With ``floats``, float patches in ``[0, 1]`` and RGBA patches are converted; otherwise only
    uint8 RGB is accepted.
    """
    arr = np.asarray(patches)
    channels = (3, 4) if floats else (3,)
    if arr.ndim != 4 or arr.shape[-1] not in channels or arr.shape[1] < 3 or arr.shape[2] < 3:
        raise ValueError(f"{what} must have shape (n, S, S, 3) with S >= 3, got {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr[..., :3]
    if floats and np.issubdtype(arr.dtype, np.floating):
        _check_unit_values(arr, what=what)
        return np.clip(np.round(arr[..., :3] * 255.0), 0, 255).astype(np.uint8)
    expected = "uint8 (0..255) or float in [0, 1]" if floats else "uint8"
    raise TypeError(f"{what} must be {expected}, got dtype {arr.dtype}.")


def check_pair(value: Any, *, what: str) -> tuple[float, float]:
    """A positive number or a pair of them (x, y) → ``(x, y)``."""
    if np.ndim(value) == 0:
        v = check_positive(value, what=what)
        return v, v
    vals = list(np.asarray(value, dtype=object).ravel())
    if len(vals) != 2:
        raise ValueError(f"{what} must be a number or an (x, y) pair, got {value!r}.")
    return check_positive(vals[0], what=what), check_positive(vals[1], what=what)


def is_spatialdata(data: Any) -> bool:
    """Whether ``data`` is a :class:`spatialdata.SpatialData`, without importing spatialdata."""
    return any(
        c.__name__ == "SpatialData" and c.__module__.startswith("spatialdata") for c in type(data).__mro__
    )


def written_by_stpredict(table: Any) -> bool:
    """Whether a table is a result stpredict wrote (``uns[key]["written_by"] == "stpredict"``)."""
    uns = getattr(table, "uns", {})
    return any(
        isinstance(v, dict) and v.get("written_by") == "stpredict" and v.get("params", {}).get("copy")
        for v in uns.values()
    )


def spatialdata_table(sdata: Any, table_key: str | None, *, what: str = "sdata") -> tuple[str, Any]:
    """The table of ``sdata`` annotating the spots: ``table_key``, or the only one there is.

    ``what`` names the SpatialData in errors. Returns ``(table_key, table)``.
    """
    tables = sdata.tables
    if table_key is None:
        inputs = [key for key in tables if not written_by_stpredict(tables[key])]
        if len(inputs) != 1:
            ours = [key for key in tables if key not in inputs]
            raise ValueError(
                f"{what} has {len(inputs)} input tables {inputs}"
                + (f" (besides stpredict's results {ours})" if ours else "")
                + "; pass `table_key=` naming the one annotating the spots."
            )
        table_key = inputs[0]
    elif table_key not in tables:
        raise KeyError(f"{what}.tables has no table {table_key!r}; available: {list(tables)}.")
    return table_key, tables[table_key]


def check_genes(genes: Any, available: pd.Index, *, key: str, what: str) -> list[str]:
    """A list of gene names, all predicted under ``key``."""
    if isinstance(genes, str):
        genes = [genes]
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError(f"{what}: `genes` is empty.")
    missing = [g for g in genes if g not in available]
    if missing:
        raise KeyError(
            f"{what}: genes {missing[:10]} are not among the predictions under {key!r} "
            f"({len(available)} genes, e.g. {list(available[:5])})."
        )
    return genes


def check_frame(truth_df: Any, *, what: str) -> pd.DataFrame:
    """Expression as a DataFrame (spots x genes)."""
    if not isinstance(truth_df, pd.DataFrame):
        raise TypeError(
            f"{what}: `truth_df` must be a DataFrame (spots x genes, gene names as columns), "
            f"got {type(truth_df).__name__}."
        )
    return truth_df


def check_output_folder(path: Path, *, overwrite: bool, what: str) -> None:
    """Refuse, before any work, an output that exists and may not be replaced."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what} {path}: exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{what} {path}: folder exists and is not empty; add --overwrite to replace it."
        )


def check_some_counts(counts: Any, library_ids: Sequence[str], *, what: str, library_key: str) -> None:
    """Every slide has some counts: all-zero expression (wrong layer, a normalised-away matrix) is named."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    libs = np.asarray(library_ids).astype(str)
    empty = [lib for lib in pd.unique(libs) if not (totals[libs == lib] > 0).any()]
    if empty:
        raise ValueError(
            f"{what}: the counts of slide(s) {empty} ({library_key!r}) are all zero; expected raw counts "
            "in X (or in the layer given as `layer=`)."
        )


def check_image_input(
    freeze_backbone: Any, image_features: Any, pretrained: bool, weights_path: Any, *, what: str
) -> None:
    """``freeze_backbone`` (a flag) and ``image_features`` (a key) exclude each other and the weights."""
    if not isinstance(freeze_backbone, bool):
        raise TypeError(f"{what}: `freeze_backbone` must be True or False, got {freeze_backbone!r}.")
    if image_features is None:
        if freeze_backbone and not pretrained and weights_path is None:
            from stpredict._logging import logger

            logger.warning(
                f"{what}: freeze_backbone=True with a randomly initialised backbone: only the heads "
                "learn. Pass `pretrained=True`, `weights_path=` or a hub backbone (a pretrained encoder)."
            )
        return
    check_key(image_features, what=f"{what}: `image_features`")
    if freeze_backbone or pretrained or weights_path is not None:
        raise ValueError(
            f"{what}: `image_features` replaces the image backbone; it excludes `freeze_backbone`, "
            "`pretrained` and `weights_path`."
        )


def check_new_reference(
    bank_libraries: Any, bank_obs_names: Any, libraries: Sequence[str], obs_names: Any, *, what: str
) -> None:
    """Slides and spot ids added to a reference bank must not be in it already."""
    slides = sorted(
        set(map(str, libraries)) & set(np.unique(np.asarray(bank_libraries).astype(str)).tolist())
    )
    if slides:
        raise ValueError(f"{what}: slide(s) {slides} are already in the model's bank.")
    clash = pd.Index(obs_names).astype(str).intersection(pd.Index(np.asarray(bank_obs_names).astype(str)))
    if len(clash):
        raise ValueError(
            f"{what}: {len(clash)} spot id(s) are already in the bank, e.g. {list(clash[:5])}; "
            "make the new slide's obs_names unique (e.g. prefix them with the slide name)."
        )


def check_obs_column(data: Any, key: str, *, what: str) -> str:
    """``key`` is a column of ``data.obs`` (``what`` names the argument)."""
    if key not in data.obs.columns:
        raise KeyError(f"`{what}` {key!r} is not a column of data.obs; available: {list(data.obs.columns)}.")
    return key


def check_not_set(options: Mapping[str, Any], names: Sequence[str], *, what: str) -> None:
    """None of ``names`` is among ``options`` (keywords that ``what`` sets itself)."""
    for name in names:
        if name in options:
            raise TypeError(f"`{name}` is set by {what}; pass it as its own argument, not to fit.")


def check_callbacks(callbacks: Sequence[Any], *, what: str = "callbacks") -> tuple[Any, ...]:
    """A tuple of callables ``cb(epoch, entry, module)``."""
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"{what} must be callables cb(epoch, entry, module), got {cb!r}.")
    return tuple(callbacks)


def check_not_empty(items: Any, *, what: str, hint: str = "") -> int:
    """``len(items) > 0``; returns the length."""
    n = len(items)
    if n == 0:
        raise ValueError(f"{what} is empty{'; ' + hint if hint else ''}.")
    return n


def check_image_names(sdata: Any, images: Mapping[str, str] | None, image_key: str | None) -> None:
    """``images`` (a dict shapes or slide name → image name) and ``image_key`` name images of ``sdata``."""
    if images is not None and not isinstance(images, Mapping):
        raise TypeError(
            f"`images` must be a dict {{shapes or slide name: image name}}, got {type(images).__name__}."
        )
    if image_key is not None and image_key not in sdata.images:
        raise KeyError(f"sdata.images has no image {image_key!r}; available: {list(sdata.images)}.")
    bad = [v for v in (images or {}).values() if v not in sdata.images]
    if bad:
        raise KeyError(
            f"`images` names image(s) {bad} that sdata.images lacks; available: {list(sdata.images)}."
        )
