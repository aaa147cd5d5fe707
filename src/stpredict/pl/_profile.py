"""``stp.pl.expression_profile``: per-gene mean and variance, observed vs predicted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

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

_WHAT = "expression_profile"


@doc_figure
def expression_profile(
    adata: AnnData,
    *,
    key: str = "stpredict",
    genes: Sequence[str] | None = None,
    library_id: str | None = None,
    library_key: str | None = "library_id",
    panel_size: tuple[float, float] = (3.8, 3.5),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Per-gene mean and variance over spots, observed vs predicted (Fig. 3 of CMRCNet).

    One point per gene, the identity line, and the Pearson r across genes in each title.
    Retrieval by averaging k spots shrinks variances: points below the identity line on the right.

    Parameters
    ----------
    adata
        AnnData with predictions and truth written by :func:`stpredict.tl.predict`.
    key
        Key the predictions were written under.
    genes
        Genes to show; ``None``: all predicted genes.
    library_id
        Only the spots of this slide; ``None``: all spots.
    library_key
        Column of ``obs`` telling slides apart.
    panel_size
        Width and height of one panel (inches).
    ax
        Two axes to draw into (mean, variance).
    {show_save_returns}

    Examples
    --------
    A ``copy=True`` result of :func:`stpredict.tl.predict` works as well as the annotated input:

    >>> import stpredict as stp
    >>> result = stp.tl.predict(test, model, copy=True)  # doctest: +SKIP
    >>> fig = stp.pl.expression_profile(result, show=False)  # doctest: +SKIP
    """
    pred, truth = get_prediction(adata, key)
    if truth is None:
        raise ValueError(
            f"{_WHAT}: no true expression next to the predictions under {key!r} "
            f"(expected obsm[{key + '_truth'!r}] or layers['truth'])."
        )
    table = results_table(adata, key)
    genes = list(pred.columns) if genes is None else check_genes(genes, pred.columns, key=key, what=_WHAT)
    _, mask = select_library(
        table, pred.index, library_id, library_key=library_key, what=_WHAT, first_if_many=False
    )
    t = truth.loc[mask, genes].to_numpy()
    p = pred.loc[mask, genes].to_numpy()
    stats = [
        ("mean", np.nanmean(t, axis=0), np.nanmean(p, axis=0)),
        ("variance", np.nanvar(t, axis=0), np.nanvar(p, axis=0)),
    ]

    fig, axes, given = make_axes(ax, 2, ncols=2, panel_size=panel_size, what=_WHAT)
    for axis, (name, obs_v, pred_v) in zip(axes, stats):
        axis.scatter(obs_v, pred_v, s=10, alpha=0.7, edgecolors="none")
        both = np.concatenate([obs_v, pred_v])
        both = both[np.isfinite(both)]
        lo, hi = (both.min(), both.max()) if both.size else (0.0, 1.0)
        margin = 0.05 * (hi - lo) if hi > lo else 0.5
        axis.plot([lo - margin, hi + margin], [lo - margin, hi + margin], color="grey", lw=0.8, ls="--")
        r = pearson_per_gene(obs_v[:, None], pred_v[:, None], nan_to=None)[0]
        axis.set_title(f"{name} per gene (r = {r:.2f})")
        axis.set_xlabel(f"observed {name}")
        axis.set_ylabel(f"predicted {name}")
    return finish(fig, axes, ax_given=given, show=show, save=save, what=_WHAT)
