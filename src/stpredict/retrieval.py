"""Top-k cosine retrieval over a reference bank and aggregation of the retrieved expression.

All methods predict a query spot's expression from the ``k`` reference spots whose expression
embeddings are most similar (cosine) to the query's image embedding. The search is done in
chunks of queries (and, for very large banks, chunks of keys), so memory stays bounded whatever
the number of queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ._constants import WEIGHTINGS, Weighting
from ._device import resolve_device
from ._validation import check_int, check_k, check_tensor_matrix

__all__ = [
    "WEIGHTINGS",
    "RetrievalResult",
    "aggregate",
    "naive_topk_cosine",
    "resolve_device",
    "retrieve",
    "topk_cosine",
    "topk_inner_product",
]

Backend = Literal["torch", "faiss"]
_BACKENDS = ("torch", "faiss")
# Largest number of keys compared with one chunk of queries at once; bigger banks are split and
# the running top-k is merged across the splits.
_KEY_CHUNK = 16_384  # keys per similarity block: 2,048 × 16,384 float32 = 128 MiB
# Target number of floats per block of output rows or of gathered (queries, k, features) neighbours.
_GATHER_FLOATS = 1 << 23


@dataclass
class RetrievalResult:
    """Output of :func:`retrieve`.

    Attributes
    ----------
    prediction
        ``float32 (q, G)``, the aggregated expression of each query.
    indices
        ``int64 (q, k)``, rows of the reference bank, most similar first.
    similarities
        ``float32 (q, k)``, cosine similarity of each query to its neighbours.
    distances
        ``float32 (q, k)``, Euclidean distance between the un-normalised query and neighbour
        embeddings.
    spread
        ``float32 (q, G)``, the standard deviation of the neighbours' values around the
        prediction, weighted like it (``None`` unless ``retrieve(..., spread=True)``).
    """

    prediction: np.ndarray
    indices: np.ndarray
    similarities: np.ndarray
    distances: np.ndarray
    spread: np.ndarray | None = None


def _default_device(device, *tensors) -> torch.device:
    if device is not None:
        return resolve_device(device)
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _topk_normalised(
    q: torch.Tensor, keys_n: torch.Tensor, k: int, key_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``q @ keys_n.T`` for one chunk of (normalised) queries, merging key chunks."""
    n_keys = keys_n.shape[0]
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start in range(0, n_keys, key_chunk):
        block = keys_n[start : start + key_chunk]
        sims = q @ block.T
        kk = min(k, block.shape[0])
        s, i = torch.topk(sims, kk, dim=1, largest=True, sorted=True)
        i = i + start
        if best_s is None or best_i is None:
            best_s, best_i = s, i
        else:
            cat_s = torch.cat([best_s, s], dim=1)
            cat_i = torch.cat([best_i, i], dim=1)
            best_s, pos = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1, largest=True, sorted=True)
            best_i = torch.gather(cat_i, 1, pos)
    assert best_s is not None  # n_keys >= 1 (checked by the callers)
    assert best_i is not None
    return best_s, best_i


def topk_cosine(
    queries: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    chunk_size: int = 2048,
    key_chunk_size: int = _KEY_CHUNK,
    device: str | torch.device | None = None,
    backend: Backend = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Find the ``k`` keys most cosine-similar to each query.

    Both sets are L2-normalised, then the queries are processed ``chunk_size`` at a time: the
    full ``(q, r)`` similarity matrix is never built. Peak extra memory is about
    ``chunk_size × min(r, key_chunk_size)`` float32 values for one block of similarities, plus
    the normalised keys (``r × D``) and the running top-k (``chunk_size × 2k``). Banks larger than
    ``key_chunk_size`` rows are searched block by block and the running top-k is merged.

    Parameters
    ----------
    queries
        ``(q, D)`` query embeddings (numpy or torch).
    keys
        ``(r, D)`` reference embeddings (numpy or torch).
    k
        Neighbours per query, ``1 <= k <= r``.
    chunk_size
        Queries compared at once.
    key_chunk_size
        Keys compared at once; the bank is split when it is larger.
    device
        Where to compute. ``None``: the device of ``queries``/``keys`` if they are torch tensors,
        else CPU. ``"auto"`` picks a GPU when there is one.
    backend
        ``"torch"`` (exact, blocked matrix products on ``device``) or ``"faiss"`` (exact inner
        product search with FAISS's ``IndexFlatIP`` on the CPU, multi-threaded; needs
        ``pip install faiss-cpu``). Both return the same neighbours up to ties.

    Returns
    -------
    indices
        ``int64 (q, k)``, rows of ``keys``, most similar first.
    similarities
        ``float32 (q, k)``, cosine similarities, descending along each row.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.retrieval import topk_cosine
    >>> rng = np.random.default_rng(0)
    >>> keys = rng.normal(size=(100, 16))
    >>> idx, sim = topk_cosine(keys[:3], keys, k=5)
    >>> idx[:, 0]
    array([0, 1, 2])
    """
    return _topk(queries, keys, k, True, chunk_size, key_chunk_size, device, backend)


def topk_inner_product(
    queries: np.ndarray | torch.Tensor, keys: np.ndarray | torch.Tensor, k: int, **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_cosine` without the normalisation: the ``k`` largest inner products ``q·x``.

    Same blocks, memory bound and ``options`` (``chunk_size``, ``key_chunk_size``, ``device``,
    ``backend``; FAISS: ``IndexFlatIP`` of the keys as given).

    Returns
    -------
    indices
        ``int64 (q, k)``, rows of ``keys``, largest product first.
    products
        ``float32 (q, k)``, the inner products, descending along each row.
    """
    defaults = {"chunk_size": 2048, "key_chunk_size": _KEY_CHUNK, "device": None, "backend": "torch"}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"topk_inner_product: unexpected keyword argument(s) {unknown}.")
    opts = {**defaults, **options}
    return _topk(queries, keys, k, False, *opts.values())


def _topk(queries, keys, k, normalise: bool, chunk_size, key_chunk_size, device, backend):
    """The blocked top-k search of :func:`topk_cosine` (``normalise``) and :func:`topk_inner_product`."""
    q = check_tensor_matrix(queries, what="queries")
    r = check_tensor_matrix(keys, what="keys")
    if q.shape[1] != r.shape[1]:
        raise ValueError(
            f"queries have {q.shape[1]} features but keys have {r.shape[1]}; embedding dimensions must agree."
        )
    if r.shape[0] == 0:
        raise ValueError("keys is empty; need at least k reference rows.")
    k = check_k(k, r.shape[0], what="k")
    chunk_size = check_int(chunk_size, what="chunk_size")
    key_chunk = check_int(key_chunk_size, what="key_chunk_size")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
    if backend == "faiss":
        return _topk_faiss(q, r, k, chunk_size, normalise)
    dev = _default_device(device, queries, keys)

    n_q = q.shape[0]
    indices = np.empty((n_q, k), dtype=np.int64)
    sims = np.empty((n_q, k), dtype=np.float32)
    with torch.no_grad():
        keys_n = _unit(r.to(dev), normalise)
        for start in range(0, n_q, chunk_size):
            qc = _unit(q[start : start + chunk_size].to(dev), normalise)
            s, i = _topk_normalised(qc, keys_n, k, key_chunk)
            sims[start : start + len(qc)] = s.cpu().numpy()
            indices[start : start + len(qc)] = i.cpu().numpy()
    return indices, sims


def _unit(x: torch.Tensor, normalise: bool) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1) if normalise else x


def _topk_faiss(
    q: torch.Tensor, r: torch.Tensor, k: int, chunk_size: int, normalise: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k search with FAISS: an exact inner-product index of the (normalised) keys."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend='faiss' needs FAISS: `pip install faiss-cpu`.") from err
    keys = np.ascontiguousarray(_unit(r.cpu(), normalise).numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(keys)
    n_q = q.shape[0]
    indices = np.empty((n_q, k), dtype=np.int64)
    sims = np.empty((n_q, k), dtype=np.float32)
    for start in range(0, n_q, chunk_size):
        qc = _unit(q[start : start + chunk_size].cpu(), normalise).numpy()
        s, i = index.search(np.ascontiguousarray(qc, dtype=np.float32), k)
        sims[start : start + len(qc)], indices[start : start + len(qc)] = s, i
    return indices, sims


def naive_topk_cosine(
    queries: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    k: int,
    *,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense reference implementation of :func:`topk_cosine` (tests and benchmarks only).

    Builds the whole ``(q, r)`` float32 similarity matrix in memory (``4·q·r`` bytes) and takes
    its row-wise top-k; use :func:`topk_cosine` for real work.

    Parameters
    ----------
    queries
        ``(q, D)`` query embeddings.
    keys
        ``(r, D)`` reference embeddings.
    k
        Neighbours per query.
    device
        Where to build the matrix (default CPU).

    Returns
    -------
    indices
        ``int64 (q, k)``, most similar first.
    similarities
        ``float32 (q, k)``.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.retrieval import naive_topk_cosine
    >>> x = np.eye(3)
    >>> naive_topk_cosine(x, x, k=1)[0].ravel()
    array([0, 1, 2])
    """
    dev = resolve_device(device)
    q = check_tensor_matrix(queries, what="queries").to(dev)
    r = check_tensor_matrix(keys, what="keys").to(dev)
    if q.shape[1] != r.shape[1]:
        raise ValueError(
            f"queries have {q.shape[1]} features but keys have {r.shape[1]}; embedding dimensions must agree."
        )
    k = check_k(k, r.shape[0], what="k")
    with torch.no_grad():
        full = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(r, dim=1).T
        sims, idx = torch.topk(full, k, dim=1, largest=True, sorted=True)
    return idx.cpu().numpy().astype(np.int64), sims.cpu().numpy()


def _neighbour_weights(
    weighting: str,
    similarities: torch.Tensor | None,
    distances: torch.Tensor | None,
    temperature: float,
    eps: float,
) -> torch.Tensor | None:
    """(q, k) weights summing to one per row, or ``None`` for a plain mean."""
    if weighting == "mean":
        return None
    if weighting == "inverse_distance2":
        if distances is None:
            raise ValueError("weighting='inverse_distance2' needs the neighbours' distances.")
        w = 1.0 / (distances.double() ** 2 + eps)
        return (w / w.sum(dim=1, keepdim=True)).float()
    if similarities is None:
        raise ValueError("weighting='softmax' needs the neighbours' similarities.")
    return torch.softmax(similarities.double() / temperature, dim=1).float()


def aggregate(
    values: np.ndarray | torch.Tensor,
    indices: np.ndarray | torch.Tensor,
    *,
    weighting: Weighting = "mean",
    similarities: np.ndarray | torch.Tensor | None = None,
    distances: np.ndarray | torch.Tensor | None = None,
    temperature: float = 1.0,
    eps: float = 1e-8,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Combine the reference values of each query's neighbours into one prediction.

    Parameters
    ----------
    values
        ``(r, G)`` reference expression.
    indices
        ``(q, k)`` neighbour rows of ``values`` (e.g. from :func:`topk_cosine`).
    weighting
        ``"mean"``: plain average; ``"inverse_distance2"``: weights ``∝ 1 / (d² + eps)``
        (mclSTExp), needs ``distances``; ``"softmax"``: ``softmax(similarity / temperature)`` over
        the ``k`` neighbours, needs ``similarities``.
    similarities
        ``(q, k)`` similarities matching ``indices``.
    distances
        ``(q, k)`` distances matching ``indices``.
    temperature
        Softmax temperature (``> 0``).
    eps
        Added to ``d²`` so a neighbour at distance 0 gets a large but finite weight.
    device
        Where to compute (default: CPU, or the device of ``values`` if it is a tensor).

    Returns
    -------
    ``float32 (q, G)`` predictions.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.retrieval import aggregate
    >>> values = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    >>> aggregate(values, np.array([[0, 2]]))
    array([[2., 3.]], dtype=float32)
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    vals = check_tensor_matrix(values, what="values")
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if idx.ndim != 2:
        raise ValueError(f"indices must be 2-D (q, k), got shape {tuple(idx.shape)}.")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}.")
    idx = idx.to(torch.int64)
    n_ref = vals.shape[0]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_ref):
        raise ValueError(f"indices must lie in [0, {n_ref}) (values has {n_ref} rows).")
    q, k = idx.shape

    def _pairwise(x, name):
        if x is None:
            raise ValueError(f"weighting={weighting!r} needs {name}.")
        t = check_tensor_matrix(x, what=name)
        if tuple(t.shape) != (q, k):
            raise ValueError(f"{name} must have the shape of indices {(q, k)}, got {tuple(t.shape)}.")
        return t

    sims = dists = None
    if weighting == "softmax":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        sims = _pairwise(similarities, "similarities")
    elif weighting == "inverse_distance2":
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}.")
        dists = _pairwise(distances, "distances")

    dev = _default_device(device, values)
    n_genes = vals.shape[1]
    out = np.empty((q, n_genes), dtype=np.float32)
    # embedding_bag gathers and reduces without building the (queries, k, G) block
    step = max(1, _GATHER_FLOATS // max(1, n_genes))
    with torch.no_grad():
        vals_d = vals.to(dev)
        for start in range(0, q, step):
            sl = slice(start, start + step)
            w = _neighbour_weights(
                weighting,
                None if sims is None else sims[sl],
                None if dists is None else dists[sl],
                temperature,
                eps,
            )
            ii = idx[sl].to(dev)
            if w is None:
                pred = torch.nn.functional.embedding_bag(ii, vals_d, mode="mean")
            else:
                pred = torch.nn.functional.embedding_bag(ii, vals_d, mode="sum", per_sample_weights=w.to(dev))
            out[sl] = pred.cpu().numpy()
    return out


def ood_reference(similarities: np.ndarray) -> dict[str, float]:
    """Median and robust scale of the mean top-k similarity of in-distribution queries.

    Parameters
    ----------
    similarities
        ``(n, k)`` similarities of in-distribution queries (e.g. the training spots' images) to
        their neighbours.

    Returns
    -------
    ``{"median": ..., "scale": ...}`` (scale: 1.4826 × the median absolute deviation, floored).
    """
    score = np.asarray(similarities, dtype=np.float64).mean(axis=1)
    median = float(np.median(score))
    scale = float(1.4826 * np.median(np.abs(score - median)))
    return {"median": median, "scale": max(scale, 1e-3)}


def ood_score(similarities: np.ndarray, reference: dict[str, float]) -> np.ndarray:
    """How far below the in-distribution similarity a query's neighbours are, in robust z units.

    ``(reference median − mean top-k similarity) / reference scale``: about 0 for spots like the
    training spots, large for patches unlike anything in the bank (another tissue, stain, a
    scanner artefact).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.retrieval import ood_score
    >>> ood_score(np.array([[0.9, 0.8], [0.2, 0.1]]), {"median": 0.85, "scale": 0.05}).round(1)
    array([ 0., 14.])
    """
    score = np.asarray(similarities, dtype=np.float64).mean(axis=1)
    return ((reference["median"] - score) / reference["scale"]).astype(np.float32)


def _neighbour_distances(
    q: torch.Tensor, keys: torch.Tensor, idx: np.ndarray, dev: torch.device
) -> np.ndarray:
    """Euclidean distance between each query and its neighbours (un-normalised embeddings)."""
    n_q, k = idx.shape
    out = np.empty((n_q, k), dtype=np.float32)
    step = max(1, _GATHER_FLOATS // max(1, k * keys.shape[1]))
    keys_d = keys.to(dev)
    with torch.no_grad():
        for start in range(0, n_q, step):
            sl = slice(start, start + step)
            qc = q[sl].to(dev)
            ii = torch.from_numpy(idx[sl]).to(dev)
            nb = torch.index_select(keys_d, 0, ii.reshape(-1)).view(len(ii), k, -1)  # (c, k, D)
            out[sl] = torch.linalg.vector_norm(nb - qc[:, None, :], dim=2).cpu().numpy()
    return out


def retrieve(
    queries: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor,
    values: np.ndarray | torch.Tensor,
    k: int,
    *,
    weighting: Weighting = "mean",
    temperature: float = 1.0,
    chunk_size: int = 2048,
    device: str | torch.device | None = None,
    spread: bool = False,
    backend: Backend = "torch",
) -> RetrievalResult:
    """Predict each query's values from its ``k`` most cosine-similar reference rows.

    Parameters
    ----------
    queries
        ``(q, D)`` query embeddings (e.g. image embeddings of the spots to predict).
    keys
        ``(r, D)`` reference embeddings (e.g. expression embeddings of the training spots).
    values
        ``(r, G)`` reference values (e.g. normalised training expression).
    k
        Neighbours per query, ``1 <= k <= r``.
    weighting
        How neighbours are combined, see :func:`aggregate`. For ``"inverse_distance2"`` the
        distance is the Euclidean distance between the un-normalised query and key embeddings
        (mclSTExp); ``"softmax"`` uses ``softmax(cosine / temperature)``.
    temperature
        Softmax temperature.
    chunk_size
        Queries processed at once (bounds memory, see :func:`topk_cosine`).
    device
        Where to compute; ``None``: the device of ``queries`` if it is a tensor, else
        ``stp.settings.device``.
    spread
        Also return the weighted standard deviation of the neighbours' values (``spread``).
    backend
        Nearest-neighbour search: ``"torch"`` or ``"faiss"`` (see :func:`topk_cosine`).

    Returns
    -------
    A :class:`RetrievalResult` with ``prediction``, ``indices``, ``similarities``,
    ``distances`` (and ``spread``) as numpy arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.retrieval import retrieve
    >>> rng = np.random.default_rng(0)
    >>> keys, values = rng.normal(size=(50, 8)), rng.random((50, 3))
    >>> res = retrieve(rng.normal(size=(4, 8)), keys, values, k=5, weighting="softmax")
    >>> res.prediction.shape, res.indices.shape
    ((4, 3), (4, 5))
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    if weighting == "softmax" and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    q = check_tensor_matrix(queries, what="queries")
    r = check_tensor_matrix(keys, what="keys")
    vals = check_tensor_matrix(values, what="values")
    if vals.shape[0] != r.shape[0]:
        raise ValueError(
            f"values has {vals.shape[0]} rows but keys has {r.shape[0]}; each reference row needs both."
        )
    dev = _default_device(device, queries)
    indices, sims = topk_cosine(q, r, k, chunk_size=chunk_size, device=dev, backend=backend)
    dists = _neighbour_distances(q, r, indices, dev)
    kw: dict[str, Any] = {
        "weighting": weighting,
        "similarities": sims,
        "distances": dists,
        "temperature": temperature,
        "device": dev,
    }
    pred = aggregate(vals, indices, **kw)
    std = None
    if spread:  # sqrt(E_w[x²] − E_w[x]²), gathered block by block like the prediction
        second = aggregate(vals * vals, indices, **kw)
        std = np.sqrt(np.maximum(second - pred.astype(np.float64) ** 2, 0.0)).astype(np.float32)
    return RetrievalResult(prediction=pred, indices=indices, similarities=sims, distances=dists, spread=std)
