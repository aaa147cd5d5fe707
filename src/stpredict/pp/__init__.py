"""Preprocessing: count checks, normalisation, gene selection, and pooling into pseudo-spots."""

from __future__ import annotations

from ._expression import check_counts, normalize, normalize_matrix, select_genes
from ._pseudo_spots import bin_spots, pseudo_spots

__all__ = ["bin_spots", "check_counts", "normalize", "normalize_matrix", "pseudo_spots", "select_genes"]
