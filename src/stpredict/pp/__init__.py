"""Expression preprocessing: count checks, normalisation and gene selection."""

from __future__ import annotations

from ._expression import check_counts, normalize, normalize_matrix, select_genes

__all__ = ["check_counts", "normalize", "normalize_matrix", "select_genes"]
