"""``stp.pl.training_history``: losses per epoch, train and validation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._utils import doc_figure, finish, make_axes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_WHAT = "training_history"
_SPLITS = ("train", "val")


def _history_frame(obj: Any) -> pd.DataFrame:
    """History as a DataFrame (one row per epoch) from a model/result, a list of dicts or a dict of lists."""
    history = getattr(obj, "history", obj)
    if isinstance(history, pd.DataFrame):
        df = history.copy()
    elif isinstance(history, Mapping):
        df = pd.DataFrame(dict(history))
    elif (
        isinstance(history, Sequence)
        and not isinstance(history, str)
        and all(isinstance(h, Mapping) for h in history)
    ):
        df = pd.DataFrame(list(history))
    else:
        raise TypeError(
            f"{_WHAT}: expected a fitted model (with `.history`), a list of per-epoch dicts or a dict of "
            f"lists, got {type(obj).__name__}."
        )
    if df.empty:
        raise ValueError(f"{_WHAT}: the training history is empty (was the model trained?).")
    return df


def _parts(columns: Sequence[str]) -> list[str]:
    """Loss parts found as ``train_<part>``/``val_<part>``, ``loss`` first."""
    parts = []
    for col in columns:
        split, _, part = str(col).partition("_")
        if split in _SPLITS and part and part not in parts:
            parts.append(part)
    return sorted(parts, key=lambda p: p != "loss")


@doc_figure
def training_history(
    model_or_history: Any,
    *,
    metrics: str | Sequence[str] | None = None,
    best_metric: str | None = "val_loss",
    ncols: int = 3,
    logy: bool = False,
    panel_size: tuple[float, float] = (4.0, 3.0),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Training curves: every loss part per epoch, train and validation, best epoch marked.

    Parameters
    ----------
    model_or_history
        A fitted model (anything with ``.history``), or the history itself: a list with one dict
        per epoch (keys like ``epoch``, ``train_loss``, ``val_loss``, ``train_contrastive``,
        ``val_reconstruction``), or a dict of lists.
    metrics
        Loss parts to draw (``"loss"``, ``"contrastive"``, ...; ``train_``/``val_`` names and other
        columns such as ``"lr"`` work too). ``None``: every part found.
    best_metric
        Column whose minimum marks the best epoch (``val_loss``; ``train_loss`` when there is no
        validation). ``None``: no mark.
    ncols
        Panels per row.
    logy
        Logarithmic y axes.
    panel_size
        Width and height of one panel (inches).
    ax
        Axes to draw into, one per metric.
    {show_save_returns}

    Examples
    --------
    >>> import stpredict as stp
    >>> history = [
    ...     {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1},
    ...     {"epoch": 2, "train_loss": 1.5, "val_loss": 1.8},
    ...     {"epoch": 3, "train_loss": 1.2, "val_loss": 1.9},
    ... ]
    >>> fig = stp.pl.training_history(history, show=False)
    """
    df = _history_frame(model_or_history)
    epochs = df["epoch"].to_numpy() if "epoch" in df.columns else np.arange(1, len(df) + 1)
    found = _parts(df.columns)
    if metrics is None:
        metrics = found
        if not metrics:
            raise ValueError(
                f"{_WHAT}: no train_*/val_* columns in the history; columns are {list(df.columns)}."
            )
    elif isinstance(metrics, str):
        metrics = [metrics]
    series: list[tuple[str, list[str]]] = []
    for m in metrics:
        cols = [f"{s}_{m}" for s in _SPLITS if f"{s}_{m}" in df.columns]
        if not cols and m in df.columns:
            cols = [m]
        if not cols:
            raise KeyError(
                f"{_WHAT}: metric {m!r} not in the history; loss parts: {found}, columns: {list(df.columns)}."
            )
        series.append((m, cols))

    best_epoch = None
    if best_metric is not None:
        metric = (
            best_metric
            if best_metric in df.columns
            else ("train_loss" if best_metric == "val_loss" else None)
        )
        if metric is not None and metric in df.columns:
            values = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(values).any():
                best_epoch = epochs[int(np.nanargmin(values))]

    fig, axes, given = make_axes(ax, len(series), ncols=ncols, panel_size=panel_size, what=_WHAT)
    styles: dict[str, dict[str, Any]] = {
        "train": {"color": "C0", "ls": "-"},
        "val": {"color": "C1", "ls": "--"},
    }
    for axis, (name, cols) in zip(axes, series):
        for col in cols:
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(values)
            split = col.partition("_")[0]
            style = styles.get(split, {"color": "C2", "ls": "-"})
            axis.plot(
                epochs[ok], values[ok], marker="o" if ok.sum() <= 30 else None, ms=3,
                label=split if split in styles else col, **style,
            )  # fmt: skip
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch {best_epoch}")
        if logy:
            axis.set_yscale("log")
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend(fontsize="small")
    return finish(fig, axes, ax_given=given, show=show, save=save, what=_WHAT)
