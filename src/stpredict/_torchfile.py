"""Reading torch files without executing pickled code."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["load_weights_only"]


def load_weights_only(path: str | os.PathLike, *, what: str, hint: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a ``ValueError`` naming ``what`` otherwise.

    ``weights_only`` refuses any pickled object but tensors and plain containers, so a file
    crafted to run code on load is an error, not an attack.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(
            f"{what} could not be read with torch.load(weights_only=True) "
            f"({type(err).__name__}: {first}). {hint}"
        ) from err
