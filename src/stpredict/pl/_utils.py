"""Shared plumbing of the plotting functions: axes, show/save, slide selection."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pandas as pd

from stpredict._logging import logger

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_FIGURE_DOCS = {  # replaced in this order
    "{show_save_returns}": "{show_save}\n\n    {returns_figure}",
    "{show_save}": (
        "show\n        Show the figure; ``None``: only in an interactive session.\n"
        "    save\n        Path to write the figure to (format from the suffix; missing folders are created)."
    ),
    "{returns_figure}": (
        "Returns\n    -------\n    The figure (the given axes when ``ax`` is passed); ``None`` when shown."
    ),
}


def doc_figure(func: F) -> F:
    """Fill a plot function's docstring placeholders ``{show_save}`` and ``{returns_figure}``."""
    doc = func.__doc__ or ""
    for placeholder, text in _FIGURE_DOCS.items():
        doc = doc.replace(placeholder, text)
    func.__doc__ = doc
    return func


def make_axes(
    ax: Axes | Sequence[Axes] | np.ndarray | None,
    n: int,
    *,
    ncols: int,
    panel_size: tuple[float, float],
    what: str,
) -> tuple[Figure, list[Axes], bool]:
    """``n`` axes: new ones on a grid of ``ncols`` columns, or the ``n`` given in ``ax``.

    Returns the figure, the axes to draw into and whether they were given by the user.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        ncols = max(1, min(ncols, n))
        nrows = int(np.ceil(n / ncols))
        fig, grid = plt.subplots(
            nrows,
            ncols,
            figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
            squeeze=False,
            layout="constrained",
        )
        axes = list(grid.ravel())
        for extra in axes[n:]:
            extra.set_visible(False)
        return cast("Figure", fig), cast("list[Axes]", axes[:n]), False
    given = list(np.ravel(np.asarray(ax, dtype=object))) if not hasattr(ax, "figure") else [ax]
    if len(given) != n or not all(hasattr(a, "figure") for a in given):
        raise ValueError(f"{what}: `ax` must be {n} matplotlib Axes for this figure, got {len(given)}.")
    return cast("Figure", given[0].figure), cast("list[Axes]", given), True


def finish(
    fig: Figure,
    axes: list[Axes],
    *,
    ax_given: bool,
    show: bool | None,
    save: str | os.PathLike | None,
    what: str,
) -> Figure | Axes | list[Axes] | None:
    """Save and/or show; return the figure (or the given axes), ``None`` after showing."""
    import matplotlib.pyplot as plt

    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
        logger.info(f"{what}: figure written to {path}")
    if plt.isinteractive() if show is None else show:
        plt.show()
        return None
    if ax_given:
        return axes[0] if len(axes) == 1 else axes
    return fig


def spot_libraries(adata: AnnData, index: pd.Index, library_key: str | None) -> pd.Series | None:
    """Slide of each spot in ``index`` (``None`` when the AnnData has no slide column)."""
    if library_key is None or library_key not in adata.obs.columns:
        return None
    return adata.obs[library_key].reindex(index).astype(str)


def select_library(
    adata: AnnData,
    index: pd.Index,
    library_id: str | None,
    *,
    library_key: str | None,
    what: str,
    first_if_many: bool = True,
) -> tuple[str | None, np.ndarray]:
    """Pick one slide: its id (``None`` = all spots) and a boolean mask over ``index``.

    ``library_id=None`` with several slides: the first when ``first_if_many`` (logged), else all spots.
    """
    libs = spot_libraries(adata, index, library_key)
    spatial = adata.uns.get("spatial", {}) if isinstance(adata.uns.get("spatial", {}), dict) else {}
    if libs is None:
        if library_id is not None and library_id not in spatial:
            raise KeyError(
                f"{what}: library_id {library_id!r} not found (no obs[{library_key!r}]; "
                f"uns['spatial'] has {list(spatial)})."
            )
        if library_id is None and len(spatial) == 1:
            library_id = next(iter(spatial))
        return library_id, np.ones(len(index), dtype=bool)
    available = list(pd.unique(libs))
    if library_id is None:
        if len(available) == 1 or not first_if_many:
            return (available[0] if len(available) == 1 else None), np.ones(len(index), dtype=bool)
        library_id = available[0]
        logger.info(
            f"{what}: {len(available)} slides in obs[{library_key!r}]; showing the first, {library_id!r}."
        )
    elif str(library_id) not in available:
        raise KeyError(
            f"{what}: library_id {library_id!r} not in obs[{library_key!r}]; available: {available}."
        )
    library_id = str(library_id)
    return library_id, (libs == library_id).to_numpy()
