"""``stp.pl.pcc_boxplot``: per-gene Pearson r distributions by method or slide."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stpredict._logging import logger

from ._utils import doc_figure, finish, make_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_WHAT = "pcc_boxplot"


def _levels(values: pd.Series, order: Sequence[str] | None, name: str) -> list[str]:
    present = list(pd.unique(values.astype(str)))
    if order is None:
        return present
    order = [str(o) for o in order]
    unknown = [o for o in order if o not in present]
    if unknown:
        raise ValueError(f"{_WHAT}: {unknown} are not values of column {name!r}; present: {present}.")
    return order


@doc_figure
def pcc_boxplot(
    results: pd.DataFrame,
    *,
    x: str = "method",
    hue: str | None = None,
    gene_set: str | Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    hue_order: Sequence[str] | None = None,
    ncols: int = 3,
    panel_size: tuple[float, float] = (4.0, 3.5),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Box plots of per-gene Pearson r, one panel per gene set (Fig. 2 of the CMRCNet paper).

    Every row of ``results`` (one gene of one slide, fold and method) is one observation; the
    white marker is the mean, the number the papers report.

    Parameters
    ----------
    results
        Tidy table with at least columns ``gene_set``, ``gene``, ``pearson_r`` and the ``x`` (and
        ``hue``) columns: the output of :func:`stpredict.tl.evaluate` (``library_id``) or of
        :func:`stpredict.tl.cross_validate` (adds ``method`` and ``fold``), or several concatenated.
    x
        Column whose values become the boxes; ``"gene_set"`` draws one panel with a box per set.
        When ``"method"`` is not a column (one model's
        ``evaluate`` output), the slides (``library_id``) are used.
    hue
        Optional column splitting each box by colour (e.g. ``"method"`` with ``x="library_id"``).
    gene_set
        Gene set(s) to show (``"heg"``, ``"hvg"``, ...); ``None``: every set in ``results``.
    order, hue_order
        Order of the ``x`` and ``hue`` values; ``None``: order of appearance.
    ncols
        Panels per row.
    panel_size
        Width and height of one panel (inches).
    ax
        Axes to draw into, one per gene set.
    {show_save_returns}

    Examples
    --------
    >>> import pandas as pd
    >>> import stpredict as stp
    >>> res = pd.DataFrame(
    ...     {
    ...         "method": ["bleep"] * 3 + ["cmrcnet"] * 3,
    ...         "gene_set": "heg",
    ...         "gene": ["A", "B", "C"] * 2,
    ...         "pearson_r": [0.1, 0.3, 0.2, 0.2, 0.4, 0.3],
    ...     }
    ... )
    >>> fig = stp.pl.pcc_boxplot(res, show=False)
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not isinstance(results, pd.DataFrame):
        raise TypeError(
            f"{_WHAT}: `results` must be a DataFrame (from stp.tl.evaluate), got {type(results).__name__}."
        )
    if x == "method" and "method" not in results.columns and "library_id" in results.columns:
        logger.info(f"{_WHAT}: `results` has no 'method' column; boxes are slides ('library_id').")
        x = "library_id"
    needed = ["gene_set", "gene", "pearson_r", x] + ([hue] if hue is not None else [])
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise KeyError(f"{_WHAT}: `results` lacks columns {missing}; it has {list(results.columns)}.")

    sets = _levels(results["gene_set"], None, "gene_set")
    if gene_set is not None:
        wanted = [gene_set] if isinstance(gene_set, str) else [str(s) for s in gene_set]
        unknown = [s for s in wanted if s not in sets]
        if unknown:
            raise KeyError(f"{_WHAT}: gene sets {unknown} not in `results`; available: {sets}.")
        sets = wanted
    by_set = x == "gene_set"  # the sets are the boxes of a single panel
    x_levels = _levels(results[x], order if order is not None or not by_set else sets, x)
    panels = ["gene sets"] if by_set else sets
    hue_levels = _levels(results[hue], hue_order, hue) if hue is not None else [None]
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])

    fig, axes, given = make_axes(ax, len(panels), ncols=ncols, panel_size=panel_size, what=_WHAT)
    n_hue = len(hue_levels)
    width = 0.8 / n_hue
    for axis, name in zip(axes, panels):
        in_panel = results["gene_set"].astype(str)
        sub = results[in_panel.isin(sets) if by_set else in_panel == name]
        for j, level in enumerate(hue_levels):
            data, positions = [], []
            for i, xv in enumerate(x_levels):
                sel = sub[x].astype(str) == xv
                if hue is not None:
                    sel &= sub[hue].astype(str) == level
                values = sub.loc[sel, "pearson_r"].to_numpy(dtype=float)
                values = values[np.isfinite(values)]
                if values.size:
                    data.append(values)
                    positions.append(i + (j - (n_hue - 1) / 2) * width)
            if not data:
                continue
            boxes = axis.boxplot(
                data,
                positions=positions,
                widths=width * 0.85,
                patch_artist=True,
                showmeans=True,
                manage_ticks=False,
                meanprops={
                    "marker": "D",
                    "markerfacecolor": "white",
                    "markeredgecolor": "black",
                    "markersize": 4,
                },
                medianprops={"color": "black"},
                flierprops={"markersize": 2},
            )
            for line in boxes["medians"]:
                line.set_gid("median")
            for k, patch in enumerate(boxes["boxes"]):
                color = colors[j % len(colors)] if hue is not None else colors[k % len(colors)]
                patch.set_facecolor(color)
                patch.set_alpha(0.8)
        axis.axhline(0, color="grey", lw=0.8, ls=":")
        axis.set_xticks(range(len(x_levels)))
        axis.set_xticklabels(
            x_levels, rotation=30 if len(x_levels) > 3 else 0, ha="right" if len(x_levels) > 3 else "center"
        )
        axis.set_xlim(-0.6, len(x_levels) - 0.4)
        axis.set_xlabel(x)
        axis.set_ylabel("Pearson r per gene")
        axis.set_title(name)
        if hue is not None:
            handles = [
                Patch(facecolor=colors[j % len(colors)], alpha=0.8, label=str(lv))
                for j, lv in enumerate(hue_levels)
            ]
            axis.legend(handles=handles, title=hue, fontsize="small")
    return finish(fig, axes, ax_given=given, show=show, save=save, what=_WHAT)
