"""``stp.pl.gene_correlation``: gene–gene correlation structure, observed vs predicted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict._logging import logger
from stpredict._validation import check_genes
from stpredict.get import prediction as get_prediction
from stpredict.get import results_table
from stpredict.metrics import hvg_genes

from ._utils import doc_figure, finish, make_axes, select_library

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_WHAT = "gene_correlation"


def _corr(values: np.ndarray) -> np.ndarray:
    """Gene x gene Pearson correlation; pairs with a constant gene are 0, the diagonal is 1."""
    centred = values - values.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    constant = (np.ptp(values, axis=0) == 0) | (norm == 0)
    norm[constant] = 1.0
    z = centred / norm
    z[:, constant] = 0.0
    c = np.clip(z.T @ z, -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c


def _cluster_order(c: np.ndarray, method: str) -> np.ndarray:
    """Leaf order of hierarchical clustering with distance ``1 - r``."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(c) < 3:
        return np.arange(len(c))
    dist = np.clip(1.0 - (c + c.T) / 2, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return leaves_list(linkage(squareform(dist, checks=False), method=method))


@doc_figure
def gene_correlation(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    *,
    key: str = "stpredict",
    n_genes: int = 30,
    library_id: str | None = None,
    library_key: str | None = "library_id",
    method: str = "average",
    cmap: str | Any = "RdBu_r",
    panel_size: tuple[float, float] = (5.0, 4.5),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Gene–gene Pearson correlation across spots: observed next to predicted (Fig. 4 of CMRCNet).

    Both heatmaps share the gene order, from hierarchical clustering of the observed correlations
    (distance ``1 - r``), and the colour scale -1..1. The predicted panel's title gives the Pearson r
    between the two matrices' off-diagonal entries: how well the prediction keeps co-expression.

    Parameters
    ----------
    adata
        AnnData with predictions (and truth) written by :func:`stpredict.tl.predict`.
    genes
        Genes to show; ``None``: the ``n_genes`` most variable observed genes (predicted ones
        when there is no truth).
    key
        Key the predictions were written under.
    n_genes
        Number of genes when ``genes`` is ``None``.
    library_id
        Only the spots of this slide; ``None``: all spots.
    library_key
        Column of ``obs`` telling slides apart.
    method
        Linkage method of :func:`scipy.cluster.hierarchy.linkage`.
    cmap
        Diverging colour map.
    panel_size
        Width and height of one panel (inches).
    ax
        Axes to draw into: two (observed, predicted), one without truth.
    {show_save_returns}

    Examples
    --------
    >>> import stpredict as stp
    >>> stp.tl.predict(adata, model=model)  # doctest: +SKIP
    >>> fig = stp.pl.gene_correlation(adata, n_genes=20, show=False)  # doctest: +SKIP
    """
    pred, truth = get_prediction(adata, key)
    table = results_table(adata, key)
    library_id, mask = select_library(
        table, pred.index, library_id, library_key=library_key, what=_WHAT, first_if_many=False
    )
    ref = truth if truth is not None else pred
    if genes is None:
        if not isinstance(n_genes, int | np.integer) or n_genes < 2:
            raise ValueError(f"{_WHAT}: `n_genes` must be an integer >= 2, got {n_genes!r}.")
        genes = hvg_genes(ref.loc[mask], n=int(n_genes))
    else:
        genes = check_genes(genes, pred.columns, key=key, what=_WHAT)
    if len(genes) < 2:
        raise ValueError(f"{_WHAT}: need at least 2 genes, got {genes}.")
    if truth is None:
        logger.info(f"{_WHAT}: no truth under {key!r}; showing the predicted correlations only.")

    c_pred = _corr(pred.loc[mask, genes].to_numpy())
    c_truth = _corr(truth.loc[mask, genes].to_numpy()) if truth is not None else None
    order = _cluster_order(c_truth if c_truth is not None else c_pred, method)
    labels = [genes[i] for i in order]
    mats = ([("observed", c_truth)] if c_truth is not None else []) + [("predicted", c_pred)]

    fig, axes, given = make_axes(ax, len(mats), ncols=2, panel_size=panel_size, what=_WHAT)
    fontsize = max(3.0, min(9.0, 240.0 / len(genes)))
    image = None
    for axis, (name, mat) in zip(axes, mats):
        image = axis.imshow(
            mat[np.ix_(order, order)], vmin=-1.0, vmax=1.0, cmap=cmap, interpolation="nearest"
        )
        axis.set_xticks(range(len(labels)))
        axis.set_yticks(range(len(labels)))
        axis.set_xticklabels(labels, rotation=90, fontsize=fontsize)
        axis.set_yticklabels(labels, fontsize=fontsize)
        axis.set_title(name)
    if c_truth is not None:
        upper = np.triu_indices(len(genes), k=1)
        a, b = c_truth[upper], c_pred[upper]
        with np.errstate(invalid="ignore"):
            agreement = np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else np.nan
        axes[-1].set_title(f"predicted (r = {agreement:.2f} with observed)")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="Pearson r")
    if not given and library_id is not None:
        fig.suptitle(str(library_id))
    return finish(fig, axes, ax_given=given, show=show, save=save, what=_WHAT)
