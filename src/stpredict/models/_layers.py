"""Building blocks shared by the retrieval models (projection heads, gene tokens, attention)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ProjectionHead",
    "SNNGeneTokens",
    "CrossAttention",
    "ResidualCrossAttention",
    "FusionBlock",
    "SpotTransformerBlock",
    "feature_mask",
]


class ProjectionHead(nn.Module):
    """Map a feature vector into the shared embedding space (BLEEP / CMRCNet / mclSTExp head).

    ``Linear(in_dim → dim)`` → GELU → ``Linear(dim → dim)`` → Dropout, plus the first linear
    layer's output as a residual, then LayerNorm.

    Parameters
    ----------
    in_dim
        Width of the input features.
    dim
        Width of the embedding.
    dropout
        Dropout probability after the second linear layer.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models._layers import ProjectionHead
    >>> ProjectionHead(10, dim=4)(torch.randn(3, 10)).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, dim)
        self.act = nn.GELU()
        self.fc = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        out = self.dropout(self.fc(self.act(projected)))
        return self.norm(out + projected)


class SNNGeneTokens(nn.Module):
    """Turn an expression vector into ``n_tokens`` gene tokens (CMRCNet's "SNN" branch).

    ``Linear(n_genes → n_tokens·dim)`` → ELU (authors' code) or SELU (paper) → AlphaDropout,
    reshaped to ``[B, n_tokens, dim]``.

    Parameters
    ----------
    n_genes
        Length of the expression vector.
    n_tokens
        Number of gene tokens.
    dim
        Token width.
    activation
        ``"elu"`` (authors' code) or ``"selu"`` (paper).
    dropout
        AlphaDropout probability.
    """

    def __init__(
        self,
        n_genes: int,
        n_tokens: int = 8,
        dim: int = 256,
        activation: str = "elu",
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        acts = {"elu": nn.ELU, "selu": nn.SELU}
        if activation not in acts:
            raise ValueError(f"SNNGeneTokens: activation={activation!r}; expected one of {sorted(acts)}.")
        self.n_tokens, self.dim = n_tokens, dim
        self.fc = nn.Linear(n_genes, n_tokens * dim)
        self.act = acts[activation]()
        self.dropout = nn.AlphaDropout(dropout)

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.act(self.fc(expression)))
        return out.reshape(expression.shape[0], self.n_tokens, self.dim)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from image tokens, keys and values from gene tokens.

    Returns the attention output (no residual), ``[B, N_image, dim]``.

    Parameters
    ----------
    dim
        Token width.
    heads
        Number of attention heads (``dim`` must be divisible by it).
    """

    def __init__(self, dim: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(image_tokens, gene_tokens, gene_tokens, need_weights=False)
        return out


def _gated_linear(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))


class ResidualCrossAttention(nn.Module):
    """CMRCNet's residual cross-attention between image tokens and gene tokens.

    ``Q = Linear→ReLU→Dropout(image tokens)``, ``K`` the same kind of block on the gene tokens,
    ``V1 = Linear(Q)``, ``V2 = Linear(K)``; per head ``A = softmax(Q Kᵀ / √head_dim)`` and
    ``out = V1 + A·V2``; the result is added to the image tokens.

    Parameters
    ----------
    dim
        Token width (``heads * head_dim``).
    heads
        Number of heads.
    dropout
        Dropout inside the query/key blocks.
    """

    def __init__(self, dim: int = 256, heads: int = 8, dropout: float = 0.25) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ResidualCrossAttention: dim={dim} is not divisible by heads={heads}.")
        self.heads, self.head_dim = heads, dim // heads
        self.query = _gated_linear(dim, dropout)
        self.key = _gated_linear(dim, dropout)
        self.value_image = nn.Linear(dim, dim)
        self.value_gene = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        q = self.query(image_tokens)
        k = self.key(gene_tokens)
        v1, v2 = self._split(self.value_image(q)), self._split(self.value_gene(k))
        q, k = self._split(q), self._split(k)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        out = (v1 + attn @ v2).transpose(1, 2).reshape(image_tokens.shape)
        return image_tokens + out


class FusionBlock(nn.Module):
    """Pre-norm self-attention → pre-norm MLP → residual cross-attention (CMRCNet fusion).

    Parameters
    ----------
    dim
        Token width.
    heads
        Heads of the self-attention and of the residual cross-attention.
    mlp_ratio
        Hidden width of the MLP relative to ``dim``.
    dropout
        Dropout of the MLP.
    cross_dropout
        Dropout inside the residual cross-attention's query/key blocks.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, cross_dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )
        self.cross = ResidualCrossAttention(dim, heads=heads, dropout=cross_dropout)

    def forward(self, image_tokens: torch.Tensor, gene_tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm1(image_tokens)
        x = image_tokens + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.cross(x, gene_tokens)


class SpotTransformerBlock(nn.Module):
    """Pre-norm Transformer block over a set of spots (mclSTExp spot encoder).

    Self-attention with ``heads × head_dim`` inner width (no bias on q/k/v) and an MLP with
    hidden width ``mlp_dim``, both pre-norm with residuals, no dropout.

    Parameters
    ----------
    dim
        Token width (the number of genes in mclSTExp).
    heads
        Number of heads.
    head_dim
        Width of each head.
    mlp_dim
        Hidden width of the MLP.
    """

    def __init__(self, dim: int, heads: int = 8, head_dim: int = 64, mlp_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.out = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim)
        mlp_dim = dim if mlp_dim is None else mlp_dim
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within each set: ``x`` is ``[sets, spots, dim]``."""
        s, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(s, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        x = x + self.out((attn @ v).transpose(1, 2).reshape(s, n, -1))
        return x + self.mlp(self.norm2(x))


def feature_mask(x: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each element of ``x`` independently with probability ``ratio`` (no rescaling).

    This is CMRCNet's feature masking: single feature values are dropped, not whole tokens,
    and the kept values are not rescaled (unlike dropout).

    Parameters
    ----------
    x
        Any tensor.
    ratio
        Probability of zeroing each element, in ``[0, 1]``.
    generator
        Optional random generator (on the device of ``x``) for reproducible masks.

    Returns
    -------
    A new tensor with the masked elements set to zero.

    Examples
    --------
    >>> import torch
    >>> from stpredict.models._layers import feature_mask
    >>> g = torch.Generator().manual_seed(0)
    >>> masked = feature_mask(torch.ones(1000), 0.5, generator=g)
    >>> 0.4 < (masked == 0).float().mean().item() < 0.6
    True
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"feature_mask: ratio={ratio!r}; expected a probability in [0, 1].")
    if ratio == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= ratio
    return x * keep.to(x.dtype)
