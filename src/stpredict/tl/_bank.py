"""Adding reference slides to a fitted model's bank without retraining."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stpredict._logging import logger
from stpredict._validation import check_new_reference

if TYPE_CHECKING:  # pragma: no cover
    from stpredict.models import STPredictModel

__all__ = ["extend_bank"]


def _reference_expression(model: STPredictModel, sd: Any) -> np.ndarray:
    """The new spots' counts of the model's genes, normalised as the bank was."""
    from ._fit import model_expression

    expression, missing = model_expression(model, sd)
    if expression is None:
        raise KeyError(
            f"extend_bank: the data lacks {len(missing)} of the model's {len(model.genes)} genes, "
            f"e.g. {missing[:5]}; a reference slide needs every gene the model predicts."
        )
    return expression


def extend_bank(
    model: STPredictModel,
    data: Any,
    *,
    library_key: str = "library_id",
    table_key: str | None = None,
    layer: str | None = None,
    device: str = "auto",
) -> STPredictModel:
    """Add the spots of more sequenced slides to ``model``'s reference bank (no retraining).

    The new spots' expression is normalised as the bank's (the model's target sum, ``log1p``)
    and embedded with the trained expression encoder; predictions then retrieve from the
    old and the new spots alike. The model is changed in place and returned.

    Parameters
    ----------
    model
        A fitted model with a bank.
    data
        AnnData or SpatialData with raw counts of every model gene (images are not needed by the
        bank but are read to place the spots, as in :func:`stpredict.tl.fit`).
    library_key, table_key, layer
        As in :func:`stpredict.tl.fit`.
    device
        Where to embed.

    Returns
    -------
    ``model``, with the larger bank.
    """
    from stpredict.data import SpotData

    from ._fit import resolve_device

    if model.bank is None:
        raise ValueError("extend_bank: the model has no bank yet; fit it (or call model.set_bank) first.")
    sd = SpotData.from_object(
        data, library_key=library_key, table_key=table_key, layer=layer, require_expression=True
    )
    check_new_reference(
        model.bank.library_id, model.bank.obs_names, sd.libraries, sd.obs_names, what="extend_bank"
    )
    expression = _reference_expression(model, sd)
    old = model.bank
    coords = np.asarray(sd.grid_coords, dtype=np.int64)
    embeddings = model.embed_expression(expression, coords, device=resolve_device(device))
    model.set_bank(
        np.concatenate([old.expression, expression]),
        np.concatenate([old.embeddings, embeddings]),
        library_id=np.concatenate([old.library_id, np.asarray(sd.library_ids).astype(str)]),
        obs_names=np.concatenate([old.obs_names, np.asarray(sd.obs_names).astype(str)]),
        coords=None if old.coords is None else np.concatenate([old.coords, coords]),
    )
    model.training["bank_libraries"] = sorted(np.unique(model.bank.library_id).tolist())
    logger.info(
        f"extend_bank: added {len(expression)} spots of {len(sd.libraries)} slide(s) {sd.libraries}; "
        f"the bank holds {len(model.bank.expression)} spots"
    )
    return model
