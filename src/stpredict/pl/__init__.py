"""Plotting: figures from what ``stp.tl`` wrote (never recompute a model inside a plot).

Every function returns the matplotlib :class:`~matplotlib.figure.Figure` (or the axes when
drawing into ``ax=``), shows it when ``show=True`` (default: only in interactive sessions, then
returning ``None`` like scanpy) and writes it to ``save=`` when given.
"""

from ._boxplot import pcc_boxplot
from ._correlation import gene_correlation
from ._expression_map import expression_map
from ._history import training_history
from ._profile import expression_profile
from ._uncertainty import uncertainty_map

__all__ = [
    "expression_map",
    "uncertainty_map",
    "pcc_boxplot",
    "gene_correlation",
    "expression_profile",
    "training_history",
]
