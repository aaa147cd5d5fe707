"""Losses of the retrieval models: BLEEP's soft-target CLIP loss, InfoNCE, reconstruction."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["soft_clip_loss", "info_nce_loss", "reconstruction_loss", "cmrcnet_total_loss"]

Reduction = Literal["none", "mean"]


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def soft_clip_loss(
    expr_emb: torch.Tensor, img_emb: torch.Tensor, temperature: float = 1.0, reduction: Reduction = "none"
) -> torch.Tensor:
    """BLEEP's soft-target contrastive loss (also CMRCNet's contrastive term).

    With ``E_g`` the expression and ``E_i`` the image embeddings of a batch (no L2
    normalisation), ``logits = E_g E_iᵀ / τ`` and the targets are
    ``softmax((E_i E_iᵀ + E_g E_gᵀ) / 2 · τ)`` row-wise. The soft cross-entropy is taken over
    rows (expression → image) and over columns (image → expression) and the two are averaged.

    Parameters
    ----------
    expr_emb, img_emb
        Expression and image embeddings ``[B, D]``.
    temperature, reduction
        τ; ``"none"`` (one loss per sample ``[B]``) or ``"mean"`` (a scalar).

    Returns
    -------
    The loss per sample or its mean.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import soft_clip_loss
    >>> soft_clip_loss(torch.eye(2), torch.eye(2)).shape
    torch.Size([2])
    """
    _check_pair(expr_emb, img_emb, "soft_clip_loss")
    logits = expr_emb @ img_emb.T / temperature
    similarity = (img_emb @ img_emb.T + expr_emb @ expr_emb.T) / 2
    targets = torch.softmax(similarity * temperature, dim=-1)
    expr_loss = _soft_cross_entropy(logits, targets)
    img_loss = _soft_cross_entropy(logits.T, targets.T)
    loss = (expr_loss + img_loss) / 2
    return _reduce(loss, reduction)


def info_nce_loss(
    img_emb: torch.Tensor, expr_emb: torch.Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Symmetric InfoNCE (mclSTExp): cross-entropy against the identity in both directions.

    ``logits = E_i E_gᵀ / τ`` (no L2 normalisation); the loss averages the cross-entropy of
    the rows and of the columns with the matching pair as the target.

    Parameters
    ----------
    img_emb
        Image embeddings ``[B, D]``.
    expr_emb
        Expression embeddings ``[B, D]``.
    temperature
        τ.
    reduction
        ``"mean"`` (scalar) or ``"none"`` (per sample ``[B]``).

    Returns
    -------
    The loss.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import info_nce_loss
    >>> float(info_nce_loss(torch.eye(3) * 50, torch.eye(3))) < 1e-6
    True
    """
    _check_pair(img_emb, expr_emb, "info_nce_loss")
    logits = img_emb @ expr_emb.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = (
        F.cross_entropy(logits, labels, reduction="none")
        + F.cross_entropy(logits.T, labels, reduction="none")
    ) / 2
    return _reduce(loss, reduction)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: Literal["mse", "cosine"] = "mse"
) -> torch.Tensor:
    """Reconstruction loss of CMRCNet's masked branch.

    Parameters
    ----------
    pred
        Reconstructed features ``[B, D]``.
    target
        Target features ``[B, D]`` (the image embedding; gradients flow into it).
    kind
        ``"mse"``: mean squared error over all elements; ``"cosine"``: mean of ``1 - cos``
        over samples.

    Returns
    -------
    A scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"reconstruction_loss: pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}."
        )
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    raise ValueError(f"reconstruction_loss: kind={kind!r}; expected 'mse' or 'cosine'.")


def cmrcnet_total_loss(contrastive: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """CMRCNet's total loss ``mean(log(1 + L_c)) + log(1 + L_r)``.

    Parameters
    ----------
    contrastive
        Per-sample contrastive loss ``[B]``.
    reconstruction
        Scalar reconstruction loss.
    """
    return torch.log1p(contrastive).mean() + torch.log1p(reconstruction)


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name}: expected two embeddings of the same shape [B, D]; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction={reduction!r}; expected 'none' or 'mean'.")
