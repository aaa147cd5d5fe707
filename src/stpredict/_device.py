"""The one device resolver: ``None`` and ``"auto"`` mean ``stp.settings.device`` everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    Parameters
    ----------
    device
        A torch device or its name. ``None`` and ``"auto"`` take ``stp.settings.device``; an
        ``"auto"`` there picks CUDA, then Apple MPS, then the CPU.

    Returns
    -------
    The torch device.

    Examples
    --------
    >>> from stpredict.retrieval import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    from ._settings import settings

    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        device = settings.device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(device).__name__}.")
    if device == "auto":
        return _best_available(torch)
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"device {device!r} is not a valid torch device (e.g. 'cpu', 'cuda', 'auto')."
        ) from err


def _best_available(torch: Any) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
