"""Smoothing of per-spot values over the spot graph (spots within a radius, per slide)."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def spot_graph(centers: np.ndarray, library_ids: np.ndarray, *, radius: float) -> sparse.csr_matrix:
    """Row-normalised adjacency of the spots within ``radius`` spot pitches of each other, per slide.

    The pitch of a slide is the median distance of its spots to their nearest neighbour; a spot
    is not its own neighbour, and spots of different slides are never neighbours.
    """
    from scipy.spatial import cKDTree

    n = len(centers)
    rows, cols = [], []
    for lib in np.unique(library_ids):
        idx = np.flatnonzero(library_ids == lib)
        if len(idx) < 2:
            continue
        tree = cKDTree(centers[idx])
        pitch = float(np.median(tree.query(centers[idx], k=2)[0][:, 1]))
        pairs = tree.query_pairs(radius * pitch, output_type="ndarray")
        rows += [idx[pairs[:, 0]], idx[pairs[:, 1]]]
        cols += [idx[pairs[:, 1]], idx[pairs[:, 0]]]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    adjacency = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.maximum(degree, 1)) @ adjacency


def spatial_smooth(
    values: np.ndarray, centers: np.ndarray, library_ids: np.ndarray, *, alpha: float, radius: float
) -> np.ndarray:
    """``(1 - alpha) * own + alpha * mean of the neighbours`` for every spot that has neighbours.

    Neighbours: :func:`spot_graph`. A spot without neighbours keeps its values.
    """
    graph = spot_graph(centers, np.asarray(library_ids), radius=radius)
    has = np.asarray(graph.sum(axis=1)).ravel() > 0
    out = np.array(values, dtype=np.float32, copy=True)
    out[has] = (1 - alpha) * out[has] + alpha * (graph @ np.asarray(values, np.float64))[has]
    return out
