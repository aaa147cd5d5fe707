"""A small synthetic spatial dataset whose H&E-like image predicts its expression by construction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stpredict._logging import logger

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

# What each latent programme does to the image (programme i drives effect i).
PROGRAM_EFFECTS: tuple[str, ...] = ("nuclei_density", "eosin_intensity", "nuclei_size", "fibre_orientation")

# Optical density of one unit of stain per RGB channel (Ruifrok & Johnston 2001 stain vectors).
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])

# Marker-like names for the first genes driven by each programme, and for housekeeping genes.
_MARKERS = (
    ("KRT19", "EPCAM", "ERBB2"),
    ("COL1A1", "COL3A1", "FN1"),
    ("MKI67", "TOP2A", "CCNB1"),
    ("ACTA2", "MYH11", "DES"),
)
_HOUSEKEEPING = ("ACTB", "GAPDH", "B2M", "RPLP0")

_N_BUMPS = 6  # Gaussian bumps per programme field
_NUCLEUS_RADIUS_PX = (1.5, 4.0)  # nucleus radius range (image px), set by the nuclei-size programme
_FIBRE_PERIOD_PX = 7.0
_N_ORIENTATIONS = 8


def _fields(rng: np.random.Generator, n_programs: int, size: int, spacing_px: float):
    """Random smooth fields: per programme, a sum of Gaussian bumps (params only)."""
    bumps = []
    for _ in range(n_programs):
        centres = rng.uniform(0, size, size=(_N_BUMPS, 2))
        sigmas = rng.uniform(1.5, 4.0, size=_N_BUMPS) * spacing_px
        amps = rng.uniform(0.5, 1.5, size=_N_BUMPS) * rng.choice([-1.0, 1.0], size=_N_BUMPS)
        bumps.append((centres, sigmas, amps))
    return bumps


def _eval_field(bumps, x: np.ndarray, y: np.ndarray, *, grid: bool) -> np.ndarray:
    """Evaluate a field at points (``grid=False``) or on the outer grid ``y x x`` (``grid=True``)."""
    centres, sigmas, amps = bumps
    out = np.zeros((len(y), len(x)) if grid else len(x))
    for (cx, cy), s, a in zip(centres, sigmas, amps):
        gx = np.exp(-((x - cx) ** 2) / (2 * s * s))
        gy = np.exp(-((y - cy) ** 2) / (2 * s * s))
        out += a * (np.outer(gy, gx) if grid else gx * gy)
    return out


def _discs(rng, centres: np.ndarray, radii: np.ndarray, strength: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased filled discs (hematoxylin concentration) on a ``size x size`` canvas."""
    canvas = np.zeros((size, size))
    r_max = int(np.ceil(radii.max())) + 1
    oy, ox = np.mgrid[-r_max : r_max + 1, -r_max : r_max + 1]
    oy, ox = oy.ravel(), ox.ravel()
    base = np.round(centres).astype(np.int64)
    px = base[:, 0:1] + ox[None, :]
    py = base[:, 1:2] + oy[None, :]
    dist = np.hypot(px - centres[:, 0:1], py - centres[:, 1:2])
    cover = np.clip(radii[:, None] + 0.5 - dist, 0.0, 1.0) * strength[:, None]
    keep = (cover > 0) & (px >= 0) & (px < size) & (py >= 0) & (py < size)
    np.maximum.at(canvas, (py[keep], px[keep]), cover[keep])
    return canvas


def _render(rng: np.random.Generator, z_img: np.ndarray, size: int) -> np.ndarray:
    """H&E-like RGB uint8 image from per-pixel programme values ``z_img`` (4, H, W) in [0, 1]."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    density, eosin, nsize, orient = z_img
    # nuclei: uniform candidates thinned by the density programme, radius from the size programme
    n_candidates = int(size * size / 90)
    cand = rng.uniform(0, size - 1, size=(n_candidates, 2))
    at = [cand[:, 1], cand[:, 0]]
    p_keep = 0.08 + 0.92 * map_coordinates(density, at, order=1)
    cand = cand[rng.random(n_candidates) < p_keep]
    at = [cand[:, 1], cand[:, 0]]
    lo, hi = _NUCLEUS_RADIUS_PX
    radii = lo + (hi - lo) * map_coordinates(nsize, at, order=1) + rng.normal(0, 0.3, len(cand))
    radii = np.clip(radii, 1.0, hi + 1.0)
    hema = _discs(rng, cand, radii, rng.uniform(0.8, 1.4, len(cand)), size)

    # fibres: straight stripes at 8 orientations, blended by the local orientation programme
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = orient * np.pi  # orientation in [0, pi)
    pos = theta / np.pi * _N_ORIENTATIONS
    k0 = np.floor(pos).astype(int) % _N_ORIENTATIONS
    frac = pos - np.floor(pos)
    fibres = np.zeros((size, size))
    for k in range(_N_ORIENTATIONS):
        w = np.where(k0 == k, 1 - frac, 0.0) + np.where((k0 + 1) % _N_ORIENTATIONS == k, frac, 0.0)
        if not w.any():
            continue
        t = np.pi * k / _N_ORIENTATIONS
        phase = rng.uniform(0, 2 * np.pi)
        stripe = (
            np.maximum(np.sin(2 * np.pi / _FIBRE_PERIOD_PX * (xx * np.cos(t) + yy * np.sin(t)) + phase), 0)
            ** 2
        )
        fibres += w * stripe

    eos = 0.15 + 0.75 * eosin + 0.25 * fibres * (0.5 + eosin)
    eos = eos + gaussian_filter(rng.normal(0, 0.08, (size, size)), 2.0)
    hema = gaussian_filter(hema, 0.6) + 0.04
    # per-slide stain variation, like batches of H&E staining
    h_scale, e_scale = rng.uniform(0.9, 1.1, size=2)
    od = (h_scale * hema)[..., None] * _HEMATOXYLIN + (e_scale * np.clip(eos, 0, None))[..., None] * _EOSIN
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 4.0, (size, size, 3))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _gene_design(rng: np.random.Generator, n_genes: int, n_programs: int):
    """Gene names, kinds, driving programme, loadings (G, P) and baseline logits (G,)."""
    per_prog = max(1, n_genes // (3 * n_programs))
    n_hk = max(1, n_genes // 12)
    n_noise = max(1, n_genes // 12)
    n_mixed = n_genes - per_prog * n_programs - n_hk - n_noise
    kinds = (
        ["marker"] * (per_prog * n_programs)
        + ["housekeeping"] * n_hk
        + ["noise"] * n_noise
        + ["mixed"] * n_mixed
    )
    program = np.full(n_genes, -1, dtype=np.int64)
    program[: per_prog * n_programs] = np.repeat(np.arange(n_programs), per_prog)

    loadings = np.zeros((n_genes, n_programs))
    marker = np.arange(per_prog * n_programs)
    loadings[marker, program[marker]] = rng.uniform(2.0, 3.0, len(marker))
    mixed = np.arange(n_genes - n_mixed, n_genes)
    loadings[mixed] = rng.normal(0, 0.7, (n_mixed, n_programs))
    baseline = rng.normal(0, 0.5, n_genes)
    baseline[np.array(kinds) == "housekeeping"] += 2.5
    baseline[np.array(kinds) == "noise"] -= 1.5

    names = [f"GENE{g:03d}" for g in range(n_genes)]
    for p in range(n_programs):
        for j, g in enumerate(np.flatnonzero(program == p)[: len(_MARKERS[p])]):
            names[g] = _MARKERS[p][j]
    for j, g in enumerate(np.flatnonzero(np.array(kinds) == "housekeeping")[: len(_HOUSEKEEPING)]):
        names[g] = _HOUSEKEEPING[j]
    var = pd.DataFrame({"kind": pd.Categorical(kinds), "program": program}, index=pd.Index(names))
    return var, loadings, baseline


def synthetic(
    *,
    n_slides: int = 3,
    n_spots_per_side: int = 16,
    n_genes: int = 120,
    n_programs: int = 4,
    microns_per_pixel: float = 2.0,
    spot_spacing_um: float = 100.0,
    spot_diameter_um: float = 55.0,
    seed: int = 0,
) -> AnnData:
    """A small synthetic multi-slide dataset where the H&E-like image predicts expression.

    Every slide has latent programmes: smooth random spatial fields (sums of Gaussian bumps,
    different per slide), scaled to ``[0, 1]``. Expression is negative-binomial around
    ``library_size * softmax(loadings @ (2 z - 1) + baseline)``: per programme a block of strongly
    driven marker genes, plus genes mixing all programmes, housekeeping genes (high, flat) and noise
    genes (low, flat). The image is rendered over the whole slide so that the neighbourhood of any
    point reflects the programmes there:

    - programme 0 → nuclei density,
    - programme 1 → eosin (pink) intensity,
    - programme 2 → nucleus size,
    - programme 3 → orientation of the fibre (stripe) texture,

    with random nucleus placement, stain noise and a per-slide stain shift, so that the mapping
    is learnable but not trivial. Programmes that do not exist (``n_programs < 4``) are held at 0.5.

    Parameters
    ----------
    n_slides
        Number of slides (``library_id`` ``"slide0"``, ``"slide1"``, ...).
    n_spots_per_side
        Spots per side of the square spot grid of each slide.
    n_genes
        Number of genes (at least ``n_programs + 2``).
    n_programs
        Number of latent programmes, 1-4.
    microns_per_pixel
        Physical pixel size of the full-resolution image.
    spot_spacing_um
        Centre-to-centre distance of neighbouring spots (µm); the image has a margin of one spacing.
    spot_diameter_um
        Spot diameter (µm).
    seed
        Random seed; the output is identical for identical arguments.

    Returns
    -------
    AnnData in the Visium convention: ``X`` counts (CSR float32); ``obs["library_id"]``,
    ``obs["array_row"]``, ``obs["array_col"]``; ``obsm["spatial"]`` (x, y full-resolution px);
    ``obsm["programs"]`` the true programmes at each spot (n, n_programs); ``var["kind"]``
    (marker, mixed, housekeeping, noise), ``var["program"]`` (driving programme of a marker, else
    -1); ``varm["loadings"]`` (n_genes, n_programs); ``uns["spatial"][slide]`` with ``images``
    (``"hires"`` full resolution, ``"lowres"``), ``scalefactors`` (``tissue_hires_scalef = 1``,
    ``microns_per_pixel``, ``spot_diameter_fullres``) and ``metadata``.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, seed=1)
    >>> adata.n_obs, adata.obs["library_id"].cat.categories.tolist()
    (128, ['slide0', 'slide1'])
    >>> adata.uns["spatial"]["slide0"]["images"]["hires"].shape
    (450, 450, 3)
    """
    import anndata as ad
    import scipy.sparse as sp

    from stpredict.io._image import downsample

    for name, value, minimum in (("n_slides", n_slides, 1), ("n_spots_per_side", n_spots_per_side, 2)):
        if not isinstance(value, int | np.integer) or value < minimum:
            raise ValueError(f"synthetic: `{name}` must be an integer >= {minimum}, got {value!r}.")
    if not isinstance(n_programs, int | np.integer) or not 1 <= n_programs <= len(PROGRAM_EFFECTS):
        raise ValueError(
            f"synthetic: `n_programs` must be an integer in 1-{len(PROGRAM_EFFECTS)}, got {n_programs!r}."
        )
    if not isinstance(n_genes, int | np.integer) or n_genes < n_programs + 2:
        raise ValueError(f"synthetic: `n_genes` must be an integer >= n_programs + 2, got {n_genes!r}.")
    for name, number in (
        ("microns_per_pixel", microns_per_pixel),
        ("spot_spacing_um", spot_spacing_um),
        ("spot_diameter_um", spot_diameter_um),
    ):
        if not (isinstance(number, int | float | np.number) and np.isfinite(number) and number > 0):
            raise ValueError(f"synthetic: `{name}` must be a positive number, got {number!r}.")
    spacing_px = spot_spacing_um / microns_per_pixel
    if spacing_px < 4:
        raise ValueError(
            f"synthetic: spots {spot_spacing_um} µm apart at {microns_per_pixel} µm/px are only "
            f"{spacing_px:.1f} px apart; expected >= 4 px."
        )
    size = int(round(spacing_px * (n_spots_per_side + 1)))
    if size > 8000:
        raise ValueError(f"synthetic: each slide image would be {size} px wide; expected <= 8000 px.")

    rng = np.random.default_rng(seed)
    var, loadings, baseline = _gene_design(rng, n_genes, n_programs)
    grid = np.arange(n_spots_per_side)
    row_grid, col_grid = np.meshgrid(grid, grid, indexing="ij")
    rows, cols = row_grid.ravel(), col_grid.ravel()
    sx = spacing_px * (cols + 1.0)
    sy = spacing_px * (rows + 1.0)
    pix = np.arange(size, dtype=np.float64)

    counts, obs, spatial, programs, uns = [], [], [], [], {}
    for s in range(n_slides):
        lib = f"slide{s}"
        bumps = _fields(rng, n_programs, size, spacing_px)
        z_img = np.full((len(PROGRAM_EFFECTS), size, size), 0.5)
        z_spot = np.empty((len(rows), n_programs))
        for p in range(n_programs):
            field = _eval_field(bumps[p], pix, pix, grid=True)
            lo, hi = field.min(), field.max()
            z_img[p] = (field - lo) / (hi - lo)
            z_spot[:, p] = np.clip((_eval_field(bumps[p], sx, sy, grid=False) - lo) / (hi - lo), 0, 1)
        image = _render(rng, z_img, size)

        logits = (2 * z_spot - 1) @ loadings.T + baseline
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        library_size = np.exp(rng.normal(np.log(2000.0), 0.3, len(rows))) * np.exp(rng.normal(0, 0.15))
        rate = library_size[:, None] * prob
        dispersion = 5.0
        counts.append(rng.poisson(rate * rng.gamma(dispersion, 1 / dispersion, rate.shape)))
        obs.append(
            pd.DataFrame(
                {"library_id": lib, "array_row": rows.astype(np.int64), "array_col": cols.astype(np.int64)},
                index=[f"{lib}_{c}x{r}" for r, c in zip(rows, cols)],
            )
        )
        spatial.append(np.column_stack([sx, sy]))
        programs.append(z_spot)
        lowres, lowres_scalef = downsample(image, 300)
        uns[lib] = {
            "images": {"hires": image, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": 1.0,
                "tissue_lowres_scalef": lowres_scalef,
                "spot_diameter_fullres": spot_diameter_um / microns_per_pixel,
                "microns_per_pixel": float(microns_per_pixel),
            },
            "metadata": {
                "generator": "stpredict.datasets.synthetic",
                "seed": int(seed),
                "spot_spacing_um": float(spot_spacing_um),
                "spot_diameter_um": float(spot_diameter_um),
                "program_effects": list(PROGRAM_EFFECTS[:n_programs]),
            },
        }

    obs_df = pd.concat(obs)
    obs_df["library_id"] = pd.Categorical(obs_df["library_id"], categories=list(uns))
    adata = ad.AnnData(X=sp.csr_matrix(np.vstack(counts).astype(np.float32)), obs=obs_df, var=var)
    adata.obsm["spatial"] = np.vstack(spatial)
    adata.obsm["programs"] = np.vstack(programs)
    adata.varm["loadings"] = loadings
    adata.uns["spatial"] = uns
    logger.info(
        f"synthetic: {n_slides} slide(s) x {len(rows)} spots x {n_genes} genes, images {size} x {size} px"
    )
    return adata
