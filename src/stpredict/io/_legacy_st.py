"""Reader for legacy Spatial Transcriptomics (ST, Ståhl et al. 2016) data: her2st, STUtility."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from stpredict._logging import logger

# Array geometry per platform: centre-to-centre distance of one array-coordinate step (µm) and
# spot diameter (µm). 1k: 100 µm spots, 200 µm apart along the array axes (her2st). 2k: spots on a
# checkerboard of a 100 µm unit (nearest neighbours 141 µm apart), 100 µm spots (STUtility).
PLATFORMS: dict[str, dict[str, float]] = {
    "1k": {"array_pitch_um": 200.0, "spot_diameter_um": 100.0},
    "2k": {"array_pitch_um": 100.0, "spot_diameter_um": 100.0},
}

_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"read_legacy_st: `{what}` must be a path, got {type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_legacy_st: {what} file {str(path)!r} does not exist.")
    return path


def _default_library_id(counts: Path) -> str:
    name = counts.name
    for suffix in (".gz", ".bz2", ".xz", ".zip", ".tsv", ".txt", ".csv"):
        name = name.removesuffix(suffix)
    return name or counts.name


def _read_counts(path: Path) -> tuple[pd.Index, list[str], np.ndarray]:
    """Spot ids, gene names (as written, duplicates kept) and a dense float matrix."""
    try:
        header = pd.read_csv(path, sep="\t", header=None, nrows=1, dtype=str, keep_default_na=False)
        table = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"read_legacy_st: could not parse counts file {str(path)!r} as TSV: {err}") from err
    genes = header.iloc[0, 1:].astype(str).tolist()
    if table.shape[0] == 0 or len(genes) == 0:
        raise ValueError(
            f"read_legacy_st: counts file {str(path)!r} has no spots or no genes; expected a spot id "
            "column followed by one column per gene."
        )
    if table.shape[1] != len(genes):
        raise ValueError(
            f"read_legacy_st: counts file {str(path)!r} has {len(genes)} gene names in its header but "
            f"{table.shape[1]} value columns."
        )
    non_numeric = [g for g, dt in zip(genes, table.dtypes) if not pd.api.types.is_numeric_dtype(dt)]
    if non_numeric:
        raise ValueError(
            f"read_legacy_st: counts file {str(path)!r} has non-numeric values in gene column(s) "
            f"{non_numeric[:5]}; expected integer counts."
        )
    values = table.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        rows = table.index[np.isnan(values).any(axis=1)].astype(str).tolist()
        raise ValueError(
            f"read_legacy_st: counts file {str(path)!r} has missing (NaN) values in spot(s) {rows[:5]}; "
            "expected non-negative counts."
        )
    if (values < 0).any():
        rows = table.index[(values < 0).any(axis=1)].astype(str).tolist()
        raise ValueError(
            f"read_legacy_st: counts file {str(path)!r} has negative values in spot(s) {rows[:5]}; "
            "expected non-negative counts."
        )
    ids = pd.Index(table.index.astype(str).str.strip())
    if ids.has_duplicates:
        dup = ids[ids.duplicated()].unique().tolist()
        raise ValueError(f"read_legacy_st: counts file {str(path)!r} has duplicate spot ids {dup[:5]}.")
    return ids, genes, values


def _read_spots(path: Path, *, selected_only: bool) -> pd.DataFrame:
    try:
        spots = pd.read_csv(path, sep="\t")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"read_legacy_st: could not parse spot file {str(path)!r} as TSV: {err}") from err
    spots.columns = [str(c).strip() for c in spots.columns]
    required = list(_SPOT_COLUMNS) + (["selected"] if selected_only else [])
    missing = [c for c in required if c not in spots.columns]
    if missing:
        raise KeyError(
            f"read_legacy_st: spot file {str(path)!r} lacks column(s) {missing}; expected columns "
            f"'x y new_x new_y pixel_x pixel_y selected' (found {list(spots.columns)})."
        )
    if len(spots) == 0:
        raise ValueError(f"read_legacy_st: spot file {str(path)!r} has no rows.")
    for col in [*_SPOT_COLUMNS, *(c for c in ("new_x", "new_y", "selected") if c in spots.columns)]:
        spots[col] = pd.to_numeric(spots[col], errors="coerce")
    for col in _SPOT_COLUMNS:
        if spots[col].isna().any():
            raise ValueError(
                f"read_legacy_st: spot file {str(path)!r} has missing or non-numeric values "
                f"in column {col!r}."
            )
    xy = spots[["x", "y"]].to_numpy()
    if not np.allclose(xy, np.round(xy)):
        raise ValueError(
            f"read_legacy_st: spot file {str(path)!r} columns 'x' and 'y' must be integer array "
            "coordinates (they form the spot id '<x>x<y>')."
        )
    spots["x"] = spots["x"].round().astype(np.int64)
    spots["y"] = spots["y"].round().astype(np.int64)
    spots.index = pd.Index(spots["x"].astype(str) + "x" + spots["y"].astype(str))
    if spots.index.has_duplicates:
        dup = spots.index[spots.index.duplicated()].unique().tolist()
        raise ValueError(f"read_legacy_st: spot file {str(path)!r} has duplicate spot ids (x, y) {dup[:5]}.")
    return spots


def fit_pixel_scale(spots: pd.DataFrame) -> dict[str, float | str]:
    """Pixels per array-coordinate step along the image x and y axes, from a spot table.

    Fits the affine map ``(pixel_x, pixel_y) = t + A @ (ax, ay)`` by least squares over all spots
    with finite values, where ``(ax, ay)`` are the sub-spot adjusted array coordinates
    ``new_x``/``new_y`` when present (the spot detector derived the pixel positions from them, so
    the fit is near exact) and the integer ``x``/``y`` otherwise. One step along image x covers
    ``hypot(A[0, 0], A[0, 1])`` pixels (the row norm stays correct when the array is slightly
    rotated in the image); likewise for y. Images resized by different factors per axis therefore
    get different µm/px per axis.

    Parameters
    ----------
    spots
        Spot table with columns ``x``, ``y``, ``pixel_x``, ``pixel_y`` (and optionally
        ``new_x``, ``new_y``).

    Returns
    -------
    ``{"px_per_step_x", "px_per_step_y", "rmse_px", "array_columns"}``.
    """
    cols = ("new_x", "new_y") if {"new_x", "new_y"} <= set(spots.columns) else ("x", "y")
    arr = spots[list(cols)].to_numpy(dtype=np.float64)
    pix = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    ok = np.isfinite(arr).all(axis=1) & np.isfinite(pix).all(axis=1)
    if cols == ("new_x", "new_y") and ok.sum() < 3:
        return fit_pixel_scale(spots.drop(columns=["new_x", "new_y"]))
    arr, pix = arr[ok], pix[ok]
    design = np.column_stack([np.ones(len(arr)), arr])
    if len(arr) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            "read_legacy_st: cannot derive the pixel size from the spot table: need at least 3 spots "
            f"not on one line in both array axes (got {len(arr)} usable spots)."
        )
    coef, *_ = np.linalg.lstsq(design, pix, rcond=None)
    lin = coef[1:].T  # 2 x 2: rows = image axes (x, y), columns = array axes
    residual = pix - design @ coef
    px_x, px_y = float(np.hypot(*lin[0])), float(np.hypot(*lin[1]))
    if not (px_x > 0 and px_y > 0):
        raise ValueError("read_legacy_st: spot table pixel positions do not vary with array coordinates.")
    return {
        "px_per_step_x": px_x,
        "px_per_step_y": px_y,
        "rmse_px": float(np.sqrt((residual**2).sum(axis=1).mean())),
        "array_columns": f"{cols[0]},{cols[1]}",
    }


def read_legacy_st(
    counts: str | os.PathLike,
    spots: str | os.PathLike,
    image: str | os.PathLike,
    *,
    library_id: str | None = None,
    platform: Literal["1k", "2k"] = "1k",
    array_pitch_um: float | None = None,
    spot_diameter_um: float | None = None,
    selected_only: bool = True,
    lowres_max_size: int = 2000,
):
    """Read one legacy ST section (counts TSV, spot table, H&E image) into AnnData.

    Counts and spot table are joined on the spot id ``"<x>x<y>"``: spots without a counts row and
    counts rows without a spot are dropped (and logged). The pixel size is derived per image axis
    from the spot table (see :func:`fit_pixel_scale`) and the array pitch of the platform.

    Parameters
    ----------
    counts
        Spots x genes TSV (optionally compressed): first column the spot id ``"<x>x<y>"``,
        then one column per gene.
    spots
        Spot table (TSV) with columns ``x y new_x new_y pixel_x pixel_y selected``; ``pixel_x``,
        ``pixel_y`` are spot centres in full-resolution image pixels.
    image
        H&E image of the section at full resolution (JPEG, PNG, TIFF).
    library_id
        Slide name; defaults to the counts file name without extensions (``"C3"``, ``"MOB1"``).
    platform
        ``"1k"`` (her2st: 100 µm spots, 200 µm apart along the array axes) or ``"2k"``
        (STUtility: checkerboard array with a 100 µm unit, 100 µm spots).
    array_pitch_um
        Distance (µm) of one array-coordinate step; overrides the platform's.
    spot_diameter_um
        Spot diameter (µm); overrides the platform's.
    selected_only
        Keep only spots with ``selected == 1`` (under the tissue).
    lowres_max_size
        Longest side (px) of the ``"lowres"`` image.

    Returns
    -------
    AnnData in the scanpy/squidpy Visium convention: ``X`` raw counts (CSR, float32),
    ``obs_names`` ``"<library_id>_<x>x<y>"``, ``obs["library_id"]`` (categorical),
    ``obs["array_col"]`` = x, ``obs["array_row"]`` = y, ``obsm["spatial"]`` = (pixel_x, pixel_y),
    ``uns["spatial"][library_id]`` with ``images`` (``"hires"`` = the full-resolution image,
    ``tissue_hires_scalef = 1``; ``"lowres"``), ``scalefactors`` (incl. ``microns_per_pixel``,
    ``microns_per_pixel_x``, ``microns_per_pixel_y``, ``spot_diameter_fullres``) and ``metadata``.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.io.read_legacy_st(  # doctest: +SKIP
    ...     "ST-cnts/C3.tsv.gz", "ST-spotfiles/C3_selection.tsv", "ST-imgs/C/C3/5714_HE_BT_D1.jpg"
    ... )
    >>> adata.uns["spatial"]["C3"]["scalefactors"]["microns_per_pixel"]  # doctest: +SKIP
    0.687...
    """
    import anndata as ad
    import scipy.sparse as sp

    pitch, diameter = _geometry(platform, array_pitch_um, spot_diameter_um, lowres_max_size)
    counts_path = _existing_file(counts, "counts")
    spots_path = _existing_file(spots, "spots")
    image_path = _existing_file(image, "image")
    if library_id is None:
        library_id = _default_library_id(counts_path)
    if not isinstance(library_id, str) or not library_id:
        raise ValueError(f"read_legacy_st: `library_id` must be a non-empty string, got {library_id!r}.")

    ids, genes, values, table, scale = _joined_spots(counts_path, spots_path, selected_only, library_id)
    centres = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)

    full, lowres, lowres_scalef = _section_image(image_path, centres, ids, spots_path, lowres_max_size)
    height, width = full.shape[:2]
    um_x = pitch / scale["px_per_step_x"]
    um_y = pitch / scale["px_per_step_y"]
    um = (um_x + um_y) / 2

    obs = pd.DataFrame(
        {
            "library_id": pd.Categorical([library_id] * len(ids), categories=[library_id]),
            "array_row": table["y"].to_numpy(dtype=np.int64),
            "array_col": table["x"].to_numpy(dtype=np.int64),
        },
        index=pd.Index([f"{library_id}_{i}" for i in ids]),
    )
    var_names = pd.Index(genes)
    if var_names.has_duplicates:
        logger.info(
            f"{library_id}: duplicate gene names in {str(counts_path)!r} made unique ('-1', '-2', ...)."
        )
        var_names = ad.utils.make_index_unique(var_names)
    adata = ad.AnnData(X=sp.csr_matrix(values.astype(np.float32)), obs=obs, var=pd.DataFrame(index=var_names))
    adata.obsm["spatial"] = centres
    adata.uns["spatial"] = {
        library_id: {
            "images": {"hires": full, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": 1.0,
                "tissue_lowres_scalef": lowres_scalef,
                "spot_diameter_fullres": diameter / um,
                "microns_per_pixel": um,
                "microns_per_pixel_x": um_x,
                "microns_per_pixel_y": um_y,
            },
            "metadata": {
                "reader": "stpredict.io.read_legacy_st",
                "platform": platform,
                "array_pitch_um": pitch,
                "spot_diameter_um": diameter,
                "pixel_fit_columns": scale["array_columns"],
                "pixel_fit_rmse_px": scale["rmse_px"],
                "counts_file": str(counts_path),
                "spots_file": str(spots_path),
                "image_file": str(image_path),
            },
        }
    }
    logger.info(
        f"read {library_id}: {adata.n_obs} spots x {adata.n_vars} genes, image {width} x {height} px, "
        f"{um_x:.3f} x {um_y:.3f} µm/px"
    )
    return adata


def _geometry(
    platform: str, pitch: float | None, diameter: float | None, lowres_max_size: Any
) -> tuple[float, float]:
    """The array pitch and spot diameter (µm) of the platform unless given, checked with the image size."""
    if platform not in PLATFORMS:
        raise ValueError(f"read_legacy_st: `platform` must be one of {sorted(PLATFORMS)}, got {platform!r}.")
    pitch = float(PLATFORMS[platform]["array_pitch_um"] if pitch is None else pitch)
    diameter = float(PLATFORMS[platform]["spot_diameter_um"] if diameter is None else diameter)
    for name, value in (("array_pitch_um", pitch), ("spot_diameter_um", diameter)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"read_legacy_st: `{name}` must be a positive number, got {value!r}.")
    if not isinstance(lowres_max_size, int | np.integer) or lowres_max_size < 1:
        raise ValueError(
            f"read_legacy_st: `lowres_max_size` must be a positive integer, got {lowres_max_size!r}."
        )
    return pitch, diameter


def _joined_spots(counts_path: Path, spots_path: Path, selected_only: bool, library_id: str):
    """The counts rows that are (selected) spots of the spot table, and the table's rows for them."""
    spot_ids, genes, values = _read_counts(counts_path)
    spot_table = _read_spots(spots_path, selected_only=selected_only)
    scale = fit_pixel_scale(spot_table)  # all spots: more points, same array
    kept = spot_table[spot_table["selected"] == 1] if selected_only else spot_table
    if len(kept) == 0:
        raise ValueError(f"read_legacy_st: spot file {str(spots_path)!r} has no spot with selected == 1.")
    in_spots = spot_ids.isin(kept.index)
    if not in_spots.any():
        raise ValueError(
            f"read_legacy_st: no spot id of counts file {str(counts_path)!r} (e.g. {spot_ids[:3].tolist()}) "
            f"matches a{' selected' if selected_only else ''} spot of {str(spots_path)!r} "
            f"(e.g. {kept.index[:3].tolist()}); expected ids '<x>x<y>' from the columns x and y."
        )
    n_no_counts = int((~kept.index.isin(spot_ids)).sum())
    n_no_spot = int((~in_spots).sum())
    if n_no_counts or n_no_spot:
        logger.info(
            f"{library_id}: {n_no_counts} spot(s) of the spot table have no counts row and {n_no_spot} "
            f"counts row(s) are not{' selected' if selected_only else ''} spots; both are dropped."
        )
    ids = spot_ids[in_spots]
    return ids, genes, values[in_spots], kept.loc[ids], scale


def _section_image(
    image_path: Path, centres: np.ndarray, ids: pd.Index, spots_path: Path, lowres_max_size: int
):
    """The H&E image (decoded once) and its low-resolution copy; every spot centre must lie on it."""
    try:
        full, lowres, lowres_scalef = _read_image(image_path, lowres_max_size)
    except OSError as err:
        raise ValueError(f"read_legacy_st: could not decode image file {str(image_path)!r}: {err}") from err
    height, width = full.shape[:2]
    outside = (centres[:, 0] < 0) | (centres[:, 0] >= width) | (centres[:, 1] < 0) | (centres[:, 1] >= height)
    if outside.any():
        raise ValueError(
            f"read_legacy_st: {int(outside.sum())} spot centre(s) of {str(spots_path)!r} lie outside the "
            f"{width} x {height} px image {str(image_path)!r} (e.g. spot {ids[outside][0]!r} at "
            f"{tuple(np.round(centres[outside][0], 1))}); is this the full-resolution image of the section?"
        )
    return full, lowres, lowres_scalef


def _read_image(path: Path, lowres_max_size: int):
    from ._image import read_rgb

    return read_rgb(path, lowres_max_size=lowres_max_size)
