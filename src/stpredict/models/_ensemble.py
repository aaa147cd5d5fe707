"""Several trained modules of one method and config that retrieve together (``fit(n_members=...)``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._base import RetrievalModule

__all__ = ["Ensemble", "members_of"]


class _FromLead:
    """A read-only attribute that an :class:`Ensemble` takes from its first member."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, ensemble: Any, owner: type | None = None) -> Any:
        return self if ensemble is None else getattr(ensemble.lead, self.name)


class Ensemble(nn.Module):
    """Modules of one method and config (e.g. trained with different seeds) used as one.

    An embedding is the concatenation of the members' unit embeddings divided by
    ``sqrt(n_members)``, so the cosine between two ensemble embeddings is the *mean* of the
    members' cosines: one top-k search over the joined keys retrieves for the whole ensemble.
    Everything else (genes, config, preset, image input) is the members' common one.

    Parameters
    ----------
    members
        At least two modules of the same class, built with the same ``n_genes`` and config.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models import CMRCNet, Ensemble
    >>> config = CMRCNet.default_config("tiny")
    >>> ensemble = Ensemble([CMRCNet(20, **config), CMRCNet(20, **config)]).eval()
    >>> ensemble.encode_expression(torch.rand(3, 20)).shape
    torch.Size([3, 64])
    """

    def __init__(self, members: Sequence[RetrievalModule]) -> None:
        super().__init__()
        members = list(members)
        _require_alike(members)
        self.members = nn.ModuleList(members)

    @property
    def lead(self) -> RetrievalModule:
        """The first member: what the members share is read from it."""
        return self.members[0]  # type: ignore[return-value]

    @property
    def n_members(self) -> int:
        return len(self.members)

    # what the members share, read from the first one
    n_genes = _FromLead()
    config = _FromLead()
    preset = _FromLead()
    training_defaults = _FromLead()
    eval_set_size = _FromLead()
    image_encoder = _FromLead()

    @property
    def takes_features(self) -> bool:
        return bool(getattr(self.lead, "takes_features", False))

    @property
    def embedding_dim(self) -> int:
        return sum(m.embedding_dim for m in self.members)  # type: ignore[misc]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """The members' unit image embeddings, joined (see the class)."""
        return _joined([m.encode_image(image) for m in self.members])  # type: ignore[operator]

    def encode_expression(self, expression: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """The members' unit expression embeddings, joined (see the class)."""
        return _joined([m.encode_expression(expression, coords) for m in self.members])  # type: ignore[operator]

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}"


def _require_alike(members: list[Any]) -> None:
    if len(members) < 2:
        raise ValueError(f"Ensemble: {len(members)} member(s) given; expected at least 2.")
    lead = members[0]
    if not isinstance(lead, RetrievalModule):
        raise TypeError(f"Ensemble: member 0 is a {type(lead).__name__}; expected a RetrievalModule.")
    for j, member in enumerate(members[1:], start=1):
        if type(member) is not type(lead):
            raise TypeError(
                f"Ensemble: member {j} is a {type(member).__name__}; "
                f"expected {type(lead).__name__} like member 0."
            )
        if member.n_genes != lead.n_genes or member.config != lead.config:
            raise ValueError(f"Ensemble: member {j} was built with other genes or config than member 0.")


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    unit = [nn.functional.normalize(p.float(), dim=1) for p in parts]
    return torch.cat(unit, dim=1) / math.sqrt(len(unit))


def members_of(module: nn.Module) -> list[nn.Module]:
    """The modules inside ``module``: an :class:`Ensemble`'s members, else ``[module]``."""
    return list(module.members) if isinstance(module, Ensemble) else [module]
