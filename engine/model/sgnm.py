"""Self-Guided Normality Modelling (SGNM): DSANet's coarse-level branch.

The snippets the classifier finds least anomalous are taken as normal; a set of learnable
prototypes attends to them (one aggregation block) to give video-specific "dynamic normal
prototypes"; a decoder then rebuilds every snippet's feature from those prototypes only. Snippets
that the normal prototypes cannot rebuild are likely anomalous, and the consistency loss ties that
reconstruction error to the classifier's probability. SGNM is a training-time regulariser: its
outputs are never used at inference.

Design points taken from the official code (INP-Former style), which the paper summary words
differently: the decoder attention is ReLU(cos(q, k) * learnt per-head scale) with no softmax, and
there is no residual around the attention in any decoder layer (the MLP residual is kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.backbone import QuickGELU


def gather_loss(queries: torch.Tensor, prototypes: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Compactness loss: mean over queries of min_k (1 - cos(query, prototype_k)).

    queries [B, N, D], prototypes [B, K, D]; optional ``weights`` [B, N] (0/1) averages over the
    selected queries only (used by the opt-in padding mask).
    """
    dist = 1.0 - F.cosine_similarity(queries.unsqueeze(2), prototypes.unsqueeze(1), dim=-1)  # [B, N, K]
    nearest = dist.min(dim=2).values
    if weights is None:
        return nearest.mean()
    return (nearest * weights).sum() / weights.sum().clamp(min=1.0)


class Mlp(nn.Module):
    """dim -> hidden -> dim with exact GELU (the transformer MLP of the prototype blocks)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AggregationAttention(nn.Module):
    """Softmax cross-attention: prototypes (queries) read the selected normal snippets."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        n = y.shape[1]
        hd = d // self.heads
        q = self.q(x).reshape(b, t, self.heads, hd).transpose(1, 2)
        k, v = self.kv(y).reshape(b, n, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * self.scale
        if key_valid is not None:
            att = att.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class AggregationBlock(nn.Module):
    """P' = P + Attn(LN(P), LN(F)); P'' = P' + MLP(LN(P')). The same LayerNorm serves P and F."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = AggregationAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.norm1(y), key_valid)
        return x + self.mlp(self.norm2(x))


class PrototypeAttention(nn.Module):
    """Snippets (queries) read the prototypes: ReLU(cos(q, k) * scale_h) @ V, no softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.learn_scale = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        k_num = prototypes.shape[1]
        hd = d // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(prototypes).reshape(b, k_num, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        att = F.relu((q @ k.transpose(-2, -1)) * self.learn_scale)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class PrototypeBlock(nn.Module):
    """Decoder layer: Z' = Attn(LN(Z), LN(P)) with no residual; Z = Z' + MLP(LN(Z'))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = PrototypeAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), self.norm1(prototypes))
        return x + self.mlp(self.norm2(x))


class SGNM(nn.Module):
    """Normal-snippet selection, dynamic normal prototypes, prototype decoder and the gather loss."""

    def __init__(self, dim: int = 512, num_prototypes: int = 16, heads: int = 8, decoder_depth: int = 8,
                 normal_selection_ratio: float = 0.8) -> None:
        super().__init__()
        self.normal_selection_ratio = normal_selection_ratio
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))  # N(0, 1), kept as drawn
        self.aggregator = AggregationBlock(dim, heads)
        self.bottleneck = nn.Sequential(nn.Linear(dim, dim * 4), QuickGELU(), nn.Linear(dim * 4, dim))
        self.decoder = nn.ModuleList(PrototypeBlock(dim, heads) for _ in range(decoder_depth))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: every Linear truncated-normal(std 0.01, [-0.03, 0.03]) with zero bias; LN 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def select_normal(self, features: torch.Tensor, logits: torch.Tensor,
                      valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The M = int(L * ratio) snippets with the lowest anomaly probability, as constants.

        Faithful default: M counts the padded length and padded snippets are candidates. With
        ``valid`` (opt-in padding mask) padded snippets rank last and a per-video weight keeps only
        the first max(1, int(n_b * ratio)) selected snippets.
        """
        b, n, d = features.shape
        m = int(n * self.normal_selection_ratio)
        with torch.no_grad():
            prob = torch.sigmoid(logits)
            if valid is not None:
                prob = prob.masked_fill(~valid, 2.0)
            order = torch.argsort(prob, dim=1)[:, :m]
            selected = torch.gather(features, 1, order.unsqueeze(-1).expand(-1, -1, d)).detach()
            weights = None
            if valid is not None:
                keep = (valid.sum(dim=1).float() * self.normal_selection_ratio).floor().clamp(min=1.0)
                weights = (torch.arange(m, device=features.device)[None, :] < keep[:, None]).to(features.dtype)
        return selected, weights

    def forward(self, features: torch.Tensor, logits: torch.Tensor,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """features X [B, L, D] (not detached), logits s [B, L] -> (reconstruction [B, L, D], gather loss)."""
        selected, weights = self.select_normal(features, logits, valid)
        protos = self.prototypes.unsqueeze(0).expand(features.shape[0], -1, -1)
        protos = self.aggregator(protos, selected, None if weights is None else weights > 0)
        g_loss = gather_loss(selected, protos, weights)
        z = self.bottleneck(features)
        for block in self.decoder:
            z = block(z, protos)
        return z, g_loss
