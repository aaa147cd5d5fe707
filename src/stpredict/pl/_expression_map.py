"""``stp.pl.expression_map``: observed and predicted expression over the H&E image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from stpredict._validation import check_genes
from stpredict.get import prediction as get_prediction
from stpredict.get import results_table
from stpredict.metrics import pearson_per_gene

from ._utils import doc_figure, finish, make_axes, select_library

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_WHAT = "expression_map"


def _image_and_scale(
    adata: AnnData, library_id: str | None, img: bool, img_key: str | None
) -> tuple[np.ndarray | None, float, dict]:
    """The slide image (or ``None``), its scale factor (image px per full-res px), the scalefactors."""
    spatial = adata.uns.get("spatial", {})
    entry = spatial.get(library_id, {}) if isinstance(spatial, dict) and library_id is not None else {}
    scalefactors = dict(entry.get("scalefactors", {}))
    if not img:
        return None, 1.0, scalefactors
    images = entry.get("images", {})
    if img_key is None:
        img_key = next((k for k in ("hires", "lowres") if k in images), None)
        if img_key is None:
            return None, 1.0, scalefactors
    elif img_key not in images:
        raise KeyError(
            f"{_WHAT}: uns['spatial'][{library_id!r}]['images'] has no {img_key!r}; "
            f"available: {list(images)}."
        )
    scalef_key = f"tissue_{img_key}_scalef"
    if scalef_key not in scalefactors:
        raise KeyError(
            f"{_WHAT}: uns['spatial'][{library_id!r}]['scalefactors'] has no {scalef_key!r} "
            f"for image {img_key!r}."
        )
    return np.asarray(images[img_key]), float(scalefactors[scalef_key]), scalefactors


def _spot_diameter(xy: np.ndarray, spot_size: float | None, scalefactors: dict) -> float:
    """Spot diameter in full-resolution pixels."""
    if spot_size is not None:
        if not np.isfinite(spot_size) or spot_size <= 0:
            raise ValueError(f"{_WHAT}: `spot_size` must be a positive number, got {spot_size!r}.")
        return float(spot_size)
    if "spot_diameter_fullres" in scalefactors:
        return float(scalefactors["spot_diameter_fullres"])
    if len(xy) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1])) * 0.9  # near-touching circles when the size is unknown


def _dpi() -> float:
    """The resolution figures are saved at (``savefig.dpi``, or ``figure.dpi`` when that says "figure")."""
    import matplotlib as mpl

    dpi = mpl.rcParams["savefig.dpi"]
    return float(mpl.rcParams["figure.dpi"] if dpi == "figure" else dpi)


def _image_for_panel(image: np.ndarray | None, bounds, panel_px: float) -> tuple[np.ndarray, tuple] | None:
    """The part of ``image`` inside ``bounds``, resampled to about twice the panel's pixel size.

    Returns the pixels and their ``imshow`` extent in image coordinates: a full-resolution
    H&E image of 10,000 px a side is cut and shrunk once instead of drawn whole in every panel.
    """
    if image is None:
        return None
    from PIL import Image

    (x0, x1), (y0, y1) = bounds
    h, w = image.shape[:2]
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
    if c1 <= c0 or r1 <= r0:
        return None
    crop = np.asarray(image[r0:r1, c0:c1])
    if crop.dtype != np.uint8:
        crop = (np.clip(np.asarray(crop, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    factor = max(crop.shape[:2]) / max(2.0 * panel_px, 1.0)
    if factor > 1:
        size = (max(1, round(crop.shape[1] / factor)), max(1, round(crop.shape[0] / factor)))
        crop = np.asarray(Image.fromarray(crop[..., :3]).resize(size, Image.Resampling.BOX))
    return crop, (c0, c1, r1, r0)


def _draw(ax, values, xy_img, diameter_img, norm, cmap, image, bounds):
    from matplotlib.collections import EllipseCollection

    if image is not None:
        ax.imshow(image[0], origin="upper", extent=image[1])
    coll = EllipseCollection(
        widths=np.full(len(xy_img), diameter_img),
        heights=np.full(len(xy_img), diameter_img),
        angles=np.zeros(len(xy_img)),
        units="xy",
        offsets=xy_img,
        offset_transform=ax.transData,
        cmap=cmap,
        norm=norm,
        linewidths=0,
    )
    coll.set_array(np.asarray(values, dtype=float))
    ax.add_collection(coll)
    (x0, x1), (y0, y1) = bounds
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image coordinates: y grows downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return coll


class SlideLayout(NamedTuple):
    """Where one slide's spots are drawn: in the coordinates of the (cropped, resampled) image."""

    library_id: str | None
    mask: np.ndarray  # spots of the slide among the predictions
    xy: np.ndarray  # their centres in image pixels
    diameter: float  # spot diameter in image pixels
    image: tuple[np.ndarray, tuple] | None  # pixels and imshow extent
    bounds: tuple[tuple[float, float], tuple[float, float]]


def slide_layout(table, index, library_id, library_key, img, img_key, spot_size, panel_size) -> SlideLayout:
    """Choose the slide, place its spots on its image and cut the image to the figure's size."""
    if "spatial" not in table.obsm:
        raise KeyError(f"obsm['spatial'] (spot centres) is missing; available obsm: {list(table.obsm)}.")
    library_id, mask = select_library(table, index, library_id, library_key=library_key, what=_WHAT)
    image, scalef, scalefactors = _image_and_scale(table, library_id, img, img_key)
    xy_full = np.asarray(table.obsm["spatial"], dtype=float)[table.obs_names.get_indexer(index)][mask]
    diameter = _spot_diameter(xy_full, spot_size, scalefactors) * scalef
    xy = xy_full * scalef
    pad = diameter
    bounds = ((xy[:, 0].min() - pad, xy[:, 0].max() + pad), (xy[:, 1].min() - pad, xy[:, 1].max() + pad))
    return SlideLayout(
        library_id, mask, xy, diameter, _image_for_panel(image, bounds, max(panel_size) * _dpi()), bounds
    )


def draw_values(ax, values: np.ndarray, layout: SlideLayout, norm, cmap):
    """Spots coloured by ``values`` over the slide image."""
    return _draw(ax, values, layout.xy, layout.diameter, norm, cmap, layout.image, layout.bounds)


@doc_figure
def expression_map(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    key: str = "stpredict",
    library_id: str | None = None,
    library_key: str | None = "library_id",
    img: bool = True,
    img_key: str | None = None,
    spot_size: float | None = None,
    cmap: str | Any = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int = 1,
    panel_size: tuple[float, float] = (3.5, 3.5),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Observed and predicted expression of genes over the H&E image of one slide.

    For each gene, the observed (normalised) and predicted expression side by side, spots drawn
    as circles of the spot diameter over the slide image, on a colour scale shared by both panels.
    The predicted panel's title gives the Pearson r across the slide's spots. Without truth only
    the prediction is drawn.

    Parameters
    ----------
    adata
        AnnData with predictions written by :func:`stpredict.tl.predict`, ``obsm["spatial"]`` and
        (for the image) ``uns["spatial"]``.
    genes
        One gene or several (one row each, or ``ncols`` per row).
    key
        Key the predictions were written under.
    library_id
        Slide to draw. ``None``: the first slide (logged when there are several).
    library_key
        Column of ``obs`` telling slides apart.
    img
        Draw the H&E image under the spots.
    img_key
        ``"hires"`` or ``"lowres"``; ``None``: hires when present.
    spot_size
        Spot diameter in full-resolution pixels; ``None``: ``spot_diameter_fullres`` of the slide
        (else 90% of the median nearest-neighbour distance).
    cmap
        Colour map.
    vmin, vmax
        Colour limits for every gene; ``None``: per gene, the range of observed and predicted together.
    ncols
        Genes per row.
    panel_size
        Width and height of one panel (inches).
    ax
        Axes to draw into: one per panel (2 per gene with truth, 1 without), in gene order.
    {show_save_returns}

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=8, n_genes=40)
    >>> stp.tl.predict(adata, model=model)  # doctest: +SKIP
    >>> fig = stp.pl.expression_map(adata, ["KRT19", "COL1A1"], show=False)  # doctest: +SKIP
    """
    from matplotlib.colors import Normalize

    if not isinstance(ncols, int | np.integer) or ncols < 1:
        raise ValueError(f"{_WHAT}: `ncols` must be a positive integer, got {ncols!r}.")
    pred, truth = get_prediction(adata, key)
    table = results_table(adata, key)
    genes = check_genes(genes, pred.columns, key=key, what=_WHAT)
    layout = slide_layout(table, pred.index, library_id, library_key, img, img_key, spot_size, panel_size)
    library_id, mask, xy, diameter, image, bounds = layout
    p_sel = pred.loc[mask, genes].to_numpy()
    t_sel = truth.loc[mask, genes].to_numpy() if truth is not None else None
    r = pearson_per_gene(t_sel, p_sel, nan_to=None) if t_sel is not None else None
    per_gene = 1 if t_sel is None else 2

    fig, axes, given = make_axes(
        ax, per_gene * len(genes), ncols=per_gene * ncols, panel_size=panel_size, what=_WHAT
    )
    for i, gene in enumerate(genes):
        both = p_sel[:, i] if t_sel is None else np.concatenate([t_sel[:, i], p_sel[:, i]])
        finite = both[np.isfinite(both)]
        lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
        hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
        norm = Normalize(vmin=lo, vmax=hi)
        panel = axes[per_gene * i : per_gene * (i + 1)]
        if t_sel is not None:
            draw_values(panel[0], t_sel[:, i], layout, norm, cmap)
            panel[0].set_title(f"{gene} observed")
        coll = draw_values(panel[-1], p_sel[:, i], layout, norm, cmap)
        title = f"{gene} predicted" if r is None else f"{gene} predicted (r = {r[i]:.2f})"
        panel[-1].set_title(title)
        fig.colorbar(coll, ax=panel, shrink=0.8, label="log-normalised")
    if not given and library_id is not None:
        fig.suptitle(str(library_id))
    return finish(fig, axes, ax_given=given, show=show, save=save, what=_WHAT)
