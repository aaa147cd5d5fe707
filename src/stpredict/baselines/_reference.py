"""Reference baselines of a fitted model's bank: random retrieval (the floor) and the oracle (the ceiling)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict._constants import Weighting
from stpredict._validation import check_k, check_matrix

if TYPE_CHECKING:  # pragma: no cover
    from stpredict.models import STPredictModel

__all__ = ["oracle_retrieval", "random_retrieval"]


def random_retrieval(
    bank_expression: Any,
    n_queries: int,
    *,
    k: int = 50,
    seed: int | None = 0,
    return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict every query as the mean of ``k`` random reference spots.

    The floor for any retrieval method: the prediction does not depend on the query, so its
    per-gene Pearson r across spots is about 0.

    Parameters
    ----------
    bank_expression
        Normalised expression of the reference spots, shape ``(r, n_genes)``.
    n_queries
        Number of spots to predict.
    k
        Reference spots averaged per query (drawn without replacement).
    seed
        Seed of the random generator (``None``: not reproducible).
    return_indices
        Also return the ``(n_queries, k)`` indices of the chosen reference spots.

    Returns
    -------
    Predicted expression ``(n_queries, n_genes)`` float32 (and the indices when asked).

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.baselines import random_retrieval
    >>> bank = np.random.default_rng(0).poisson(2.0, size=(100, 5)).astype("float32")
    >>> random_retrieval(bank, 3, k=10).shape
    (3, 5)
    """
    bank = check_matrix(bank_expression, what="bank_expression")
    if not isinstance(n_queries, int | np.integer) or isinstance(n_queries, bool) or n_queries < 0:
        raise ValueError(f"`n_queries` must be a non-negative integer, got {n_queries!r}.")
    r = bank.shape[0]
    k = check_k(k, r)
    rng = np.random.default_rng(seed)
    # k distinct rows per query: the first k of a random permutation, drawn in chunks
    indices = np.empty((int(n_queries), k), dtype=np.int64)
    chunk = max(1, 2**22 // r)
    for start in range(0, int(n_queries), chunk):
        stop = min(start + chunk, int(n_queries))
        keys = rng.random((stop - start, r))
        indices[start:stop] = (
            np.argpartition(keys, k - 1, axis=1)[:, :k] if k < r else np.argsort(keys, axis=1)
        )
    pred = bank[indices].mean(axis=1, dtype=np.float64).astype(np.float32)
    return (pred, indices) if return_indices else pred


def _bank_arrays(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(expression, embeddings) of a fitted model's reference bank."""
    bank = getattr(model, "bank", None)
    if bank is None:
        raise TypeError(
            f"`model` must be a fitted STPredictModel with a reference bank, got {type(model).__name__}."
        )
    try:
        expression, embeddings = bank["expression"], bank["embeddings"]
    except (KeyError, TypeError) as err:
        raise KeyError(
            "`model.bank` must hold 'expression' and 'embeddings' arrays; "
            f"found {list(bank) if hasattr(bank, 'keys') else type(bank).__name__}."
        ) from err
    return check_matrix(expression, what="model.bank['expression']"), check_matrix(
        embeddings, what="model.bank['embeddings']"
    )


def oracle_retrieval(
    model: STPredictModel,
    truth_expression: Any,
    *,
    k: int = 50,
    weighting: Weighting = "mean",
    coords: Any = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Retrieve with the embedding of the *true* expression: the ceiling of retrieval.

    The true (normalised) expression of each test spot is embedded with the model's expression
    encoder and used as the query against the expression embeddings of the reference bank (cosine
    top-``k``); the prediction aggregates those reference spots' expression like the model does.
    No image-based query can retrieve better neighbours in that embedding, so this is an upper
    bound for the method with that bank and ``k`` (it is not an upper bound for every predictor:
    averaging ``k`` neighbours still smooths the expression).

    Parameters
    ----------
    model
        Fitted :class:`~stpredict.models.STPredictModel` (anything with ``bank`` = dict with
        ``"expression"`` and ``"embeddings"``, and ``embed_expression(expression, coords=None)``).
    truth_expression
        True expression of the test spots, normalised like the bank (``pp.normalize_matrix`` with
        the model's ``target_sum``), shape ``(n, n_genes)`` in the model's gene order.
    k
        Reference spots retrieved per query.
    weighting
        Aggregation of the ``k`` spots: ``"mean"``, ``"inverse_distance2"`` or ``"softmax"``
        (see :func:`stpredict.retrieval.retrieve`).
    coords
        Integer grid coordinates ``(n, 2)`` of the test spots (needed by methods whose
        expression encoder uses positions, e.g. mclSTExp).
    batch_size, device
        Passed to ``model.embed_expression`` when it accepts them.

    Returns
    -------
    Predicted expression ``(n, n_genes)`` float32.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.baselines import oracle_retrieval
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=40)
    >>> model = stp.tl.fit(adata, preset="tiny", epochs=1)  # doctest: +SKIP
    >>> truth = stp.pp.normalize_matrix(adata[:, model.genes].X)  # doctest: +SKIP
    >>> oracle_retrieval(model, truth, k=10).shape  # doctest: +SKIP
    (128, 40)
    """
    bank_expr, bank_emb = _bank_arrays(model)
    truth = check_matrix(truth_expression, what="truth_expression")
    if truth.shape[1] != bank_expr.shape[1]:
        raise ValueError(
            f"`truth_expression` has {truth.shape[1]} genes but the model's bank has "
            f"{bank_expr.shape[1]}; pass the truth for the model's genes in the model's order."
        )
    if coords is not None:
        coords = np.asarray(coords)
        if coords.shape != (truth.shape[0], 2):
            raise ValueError(
                f"`coords` must have shape ({truth.shape[0]}, 2) like `truth_expression`, got {coords.shape}."
            )
    k = check_k(k, bank_expr.shape[0])
    embed = getattr(model, "embed_expression", None)
    if not callable(embed):
        raise TypeError(f"`model` ({type(model).__name__}) has no `embed_expression` method.")
    import inspect

    options = {"batch_size": batch_size, "device": device}
    params = inspect.signature(embed).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {key: v for key, v in options.items() if key in params}  # e.g. a stub without them
    queries = embed(truth, coords=coords, **options)
    queries = check_matrix(queries, what="model.embed_expression(...)")
    if queries.shape[1] != bank_emb.shape[1]:
        raise ValueError(
            f"Expression embeddings have {queries.shape[1]} dimensions but the bank embeddings have "
            f"{bank_emb.shape[1]}."
        )
    from stpredict.retrieval import retrieve

    result = retrieve(queries, bank_emb, bank_expr, k, weighting=weighting)
    return np.asarray(result.prediction, dtype=np.float32)
