"""``stp.pl.uncertainty_map``: how sure each prediction is, next to the prediction."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict._constants import DEFAULT_KEY, ood_key, std_key
from stpredict._validation import check_genes
from stpredict.get import ood, prediction, results_table, spread

from ._expression_map import draw_values, slide_layout
from ._utils import doc_figure, finish, make_axes

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_WHAT = "uncertainty_map"


def _norm(values: np.ndarray):
    from matplotlib.colors import Normalize

    finite = values[np.isfinite(values)]
    return Normalize(vmin=finite.min() if finite.size else 0.0, vmax=finite.max() if finite.size else 1.0)


@doc_figure
def uncertainty_map(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    key: str = DEFAULT_KEY,
    library_id: str | None = None,
    library_key: str | None = "library_id",
    cmap: str | Any = "viridis",
    spread_cmap: str | Any = "magma",
    ood_cmap: str | Any = "coolwarm",
    img: bool = True,
    img_key: str | None = None,
    spot_size: float | None = None,
    panel_size: tuple[float, float] = (3.5, 3.5),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Predicted expression, its spread and the out-of-distribution score over one slide.

    One row per gene: the prediction and the spread of the ``k`` retrieved spots around it
    (``obsm[key + "_std"]``, written by ``stp.tl.predict(..., uncertainty=True)``); then one panel
    with the per-spot out-of-distribution score (``obs[key + "_ood"]``: about 0 for tissue like the
    training spots, large for patches unlike anything in the reference bank).

    Parameters
    ----------
    adata
        AnnData (or SpatialData) with predictions written by :func:`stpredict.tl.predict`.
    genes
        One gene or several.
    key
        Key the predictions were written under.
    library_id, library_key
        As in :func:`stpredict.pl.expression_map`.
    cmap, spread_cmap, ood_cmap
        Colour maps of the prediction, the spread and the OOD score.
    img, img_key, spot_size, panel_size, ax, show, save
        As in :func:`stpredict.pl.expression_map`.

    {returns_figure}

    Examples
    --------
    Train on one synthetic slide, predict the other, and see where the prediction is unsure:

    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=20)
    >>> train = adata[adata.obs["library_id"] == "slide0"].copy()
    >>> test = adata[adata.obs["library_id"] == "slide1"].copy()
    >>> model = stp.tl.fit(train, preset="tiny", epochs=1, progress=False)
    >>> result = stp.tl.predict(test, model, k=5, copy=True, progress=False)  # spread in a layer
    >>> fig = stp.pl.uncertainty_map(result, model.genes[0], show=False)
    """
    pred, _ = prediction(adata, key)
    std = spread(adata, key, like=pred)
    if std is None:
        raise KeyError(
            f"{_WHAT}: no spread under {key!r} (expected obsm[{std_key(key)!r}]); run "
            "`stp.tl.predict(..., uncertainty=True)` (the default) first."
        )
    table = results_table(adata, key)
    genes = check_genes(genes, pred.columns, key=key, what=_WHAT)
    layout = slide_layout(table, pred.index, library_id, library_key, img, img_key, spot_size, panel_size)
    score = ood(adata, key)
    n_panels = 2 * len(genes) + (score is not None)
    fig, axes, given = make_axes(ax, n_panels, ncols=2, panel_size=panel_size, what=_WHAT)
    for i, gene in enumerate(genes):
        values = pred.loc[layout.mask, gene].to_numpy(dtype=float)
        sd = std.loc[layout.mask, gene].to_numpy(dtype=float)
        for axis, v, cm, title, label in (
            (axes[2 * i], values, cmap, f"{gene} predicted", "log-normalised"),
            (axes[2 * i + 1], sd, spread_cmap, f"{gene} spread of the k neighbours", "std"),
        ):
            coll = draw_values(axis, v, layout, _norm(v), cm)
            axis.set_title(title)
            fig.colorbar(coll, ax=axis, shrink=0.8, label=label)
    if score is not None:
        v = score.reindex(pred.index).to_numpy(dtype=float)[layout.mask]
        from matplotlib.colors import TwoSlopeNorm

        top = max(float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0, 1e-6)
        coll = draw_values(axes[-1], v, layout, TwoSlopeNorm(0.0, -top, top), ood_cmap)
        axes[-1].set_title(f"out-of-distribution score ({ood_key(key)})")
        fig.colorbar(coll, ax=axes[-1], shrink=0.8, label="robust z")
    if not given and layout.library_id is not None:
        fig.suptitle(str(layout.library_id))
    return finish(fig, axes, ax_given=given, show=show, save=save, what=_WHAT)
