"""VadCLIP's visual backbone as DSANet uses it (the "LGT-adapter" plus the two GCN branches).

Input CLIP image embeddings [B, T, D] (T = visual_length, zero padded) pass through a learnable
frame position embedding, a CLIP-style pre-LN transformer whose attention is restricted to
non-overlapping windows (block-diagonal mask), and two graph convolutions: one over a thresholded
cosine-similarity graph restricted to each video's valid length, one over a fixed temporal-distance
graph. The C-branch classifier, the visual prompt and the alignment logits live here too because
the inference head needs exactly these parts and nothing else.

Differences from the official code, on purpose:
* every mask and adjacency is built from ``torch.arange`` comparisons, on the input's device (the
  official ``DistanceAdj`` hard-codes CUDA, ``adj4`` loops over the batch in Python); the values are
  the same, and the graph exports to ONNX with dynamic batch size.
* attention is written out instead of ``nn.MultiheadAttention`` (same parameters and initialisation)
  so that the exported graph has no fused fast-path ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import DSANetConfig


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU, used throughout VadCLIP's backbone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def linear_rows(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed on x flattened to [rows, in]: the same values, but the exported graph gets a
    2-D MatMul + bias Add that ONNX Runtime fuses into one Gemm (a 3-D MatMul keeps a separate Add)."""
    y = F.linear(x.reshape(-1, x.shape[-1]), layer.weight, layer.bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def mlp4(width: int) -> nn.Sequential:
    """width -> 4*width -> width with QuickGELU (CLIP block MLP; VadCLIP's MLP1/MLP2)."""
    return Mlp4(width)


def window_mask(length: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """Additive [L, L] mask: 0 inside each non-overlapping window of ``window`` tokens, -inf elsewhere.

    Equal to the official builder whenever ``window`` divides ``length`` (every official setting). The
    official loop leaves a shorter tail fully masked (rows of -inf, NaN after softmax); here the tail
    joins the last full window instead.
    """
    idx = torch.arange(length, device=device)
    last = max(length // window - 1, 0)
    block = torch.clamp(idx // window, max=last)
    same = block[:, None] == block[None, :]
    zero = torch.zeros((), device=device)
    return torch.where(same, zero, torch.full((), float("-inf"), device=device))


def distance_adjacency(length: int, device: torch.device | None = None) -> torch.Tensor:
    """[L, L] temporal-distance graph exp(-|i-j| / e), unnormalised (VadCLIP's ``DistanceAdj``)."""
    idx = torch.arange(length, device=device, dtype=torch.float32)
    return torch.exp(-(idx[:, None] - idx[None, :]).abs() / math.e)


def valid_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[B, L] bool, True for the first ``lengths[b]`` positions of each row."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def similarity_adjacency(x: torch.Tensor, lengths: torch.Tensor, threshold: float) -> torch.Tensor:
    """VadCLIP's ``adj4``: per video, cosine similarity over the valid block, values <= threshold set
    to 0 (not -inf), row softmax over the valid columns; zeros outside the valid block.
    """
    sim = x @ x.transpose(1, 2)
    norm = x.norm(p=2, dim=2, keepdim=True)
    sim = sim / (norm @ norm.transpose(1, 2) + 1e-20)
    sim = F.threshold(sim, threshold, 0.0)
    valid = valid_mask(lengths, x.shape[1])  # [B, T]
    sim = sim.masked_fill(~valid[:, None, :], float("-inf"))
    adj = torch.softmax(sim, dim=-1)
    return adj * valid[:, :, None].to(adj.dtype)


def window_blocks(length: int, window: int) -> tuple[int, int]:
    """(number of full-size leading windows, size of the last window) of ``window_mask``'s partition:
    ``length // window`` windows, the last one absorbing the ``length % window`` tail rows."""
    n = max(length // window, 1)
    return n - 1, length - (n - 1) * window


def _block_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) v over the last two axes (q already scaled)."""
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v


class WindowAttention(nn.Module):
    """Multi-head self-attention restricted to the windows of ``window_mask`` (parameters laid out as
    nn.MultiheadAttention).

    Computed block by block: the sequence is cut into its windows ([B, n, heads, w, hd]) and each window
    attends to itself only, which is exactly the masked full product (``exp(-inf) = 0`` removes every
    out-of-window term from the softmax) with ``window / length`` of its multiply-adds and softmax work.
    The partition is static (the head always pads to ``visual_length``), so the graph exports as plain
    Reshape/Transpose/MatMul with no mask constant.
    """

    def __init__(self, width: int, heads: int, length: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.length = length
        self.window = window
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, hd, w = self.heads, d // self.heads, self.window
        full, tail = window_blocks(self.length, w)
        if tail == w:  # w divides the length: every window is full-size, one batched product
            full, tail = full + 1, 0
        qkv = linear_rows(self.in_proj, x)  # [B, T, 3D]
        # [B, T, 3D] -> [3, B, T, heads, hd]; q scaled before the product (one pass over B*T*D)
        qkv = qkv.reshape(b, self.length, 3, h, hd).permute(2, 0, 1, 3, 4)
        q, k, v = qkv[0] * (hd ** -0.5), qkv[1], qkv[2]

        def attend(start: int, n: int, size: int) -> torch.Tensor:
            # rows start .. start + n*size as n windows of `size`: [B*n, heads, size, hd] (4-D products)
            def blocks(z: torch.Tensor) -> torch.Tensor:
                return z[:, start: start + n * size].reshape(b * n, size, h, hd).transpose(1, 2)

            out = _block_softmax_attention(blocks(q), blocks(k), blocks(v))
            return out.transpose(1, 2).reshape(b, n * size, d)

        parts = ([attend(0, full, w)] if full else []) + ([attend(full * w, 1, tail)] if tail else [])
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return linear_rows(self.out_proj, out)

    def dense_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same attention as one masked [T, T] product (the official formulation), for tests."""
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q = q.reshape(b, t, self.heads, hd).transpose(1, 2)
        k = k.reshape(b, t, self.heads, hd).transpose(1, 2)
        v = v.reshape(b, t, self.heads, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (hd ** -0.5) + mask
        out = torch.softmax(att, dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp4(nn.Sequential):
    """width -> 4*width -> width with QuickGELU (CLIP block MLP; VadCLIP's MLP1/MLP2); state-dict keys
    ``0.*`` and ``2.*`` as the plain ``nn.Sequential`` it replaces. Linears run on [rows, width]."""

    def __init__(self, width: int) -> None:
        super().__init__(nn.Linear(width, width * 4), QuickGELU(), nn.Linear(width * 4, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc, act, proj = self[0], self[1], self[2]
        assert isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear)
        return linear_rows(proj, act(linear_rows(fc, x)))


class ResidualAttentionBlock(nn.Module):
    """CLIP pre-LN block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, length: int, window: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = WindowAttention(width, heads, length, window)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = mlp4(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GraphConvolution(nn.Module):
    """out = A (X W) + R(X); R = Conv1d(k=5) over time when widths differ, identity otherwise."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        nn.init.xavier_uniform_(self.weight)
        self.residual = (nn.Conv1d(in_features, out_features, kernel_size=5, padding=2)
                         if in_features != out_features else None)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out = adj @ (x @ self.weight)
        if self.residual is None:
            return out + x
        return out + self.residual(x.transpose(1, 2)).transpose(1, 2)


class VadClipBackbone(nn.Module):
    """Position embedding, local transformer, GCN, classifier (MLP2), visual prompt (MLP1), alignment."""

    def __init__(self, config: DSANetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.visual_width
        self.frame_position_embeddings = nn.Embedding(config.visual_length, w)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.01)
        self.temporal = nn.ModuleList(ResidualAttentionBlock(w, config.visual_heads, config.visual_length,
                                                             config.attn_window)
                                      for _ in range(config.visual_layers))
        half = w // 2
        self.gc1 = GraphConvolution(w, half)
        self.gc2 = GraphConvolution(half, half)
        self.gc3 = GraphConvolution(w, half)
        self.gc4 = GraphConvolution(half, half)
        self.linear = nn.Linear(w, w)
        self.gelu = QuickGELU()
        self.mlp1 = mlp4(w)  # visual prompt refinement
        self.mlp2 = mlp4(w)  # classifier input refinement
        self.classifier = nn.Linear(w, 1)
        # Constant graphs; not persistent so checkpoints hold learnt weights only.
        self.register_buffer("dist_adj", distance_adjacency(config.visual_length), persistent=False)

    def encode_video(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, L, D] padded embeddings -> visual features X [B, L, D] (L = visual_length)."""
        x = x.float() + self.frame_position_embeddings.weight[None, : x.shape[1]]
        for block in self.temporal:
            x = block(x)
        adj = similarity_adjacency(x, lengths, self.config.gcn_threshold)
        dis = self.dist_adj
        x1 = self.gelu(self.gc2(self.gelu(self.gc1(x, adj)), adj))
        x2 = self.gelu(self.gc4(self.gelu(self.gc3(x, dis)), dis))
        return linear_rows(self.linear, torch.cat((x1, x2), dim=2))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly logit s [B, L] (C-branch)."""
        return linear_rows(self.classifier, features + self.mlp2(features)).squeeze(-1)

    def align(self, features: torch.Tensor, logits: torch.Tensor, text: torch.Tensor,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        """Alignment logits [B, L, C]: cos(X_t, t''_c) / 0.07 with the visual prompt added to the text.

        The prompt weights are the raw logits over every position (padding included, as the official
        code does) unless ``valid`` is given (the opt-in ``mask_padding``).
        """
        weights = logits if valid is None else logits * valid.to(logits.dtype)
        prompt = weights.unsqueeze(1) @ features  # [B, 1, D]
        prompt = prompt / prompt.norm(dim=-1, keepdim=True)
        prompted = text.unsqueeze(0) + prompt  # [B, C, D]
        prompted = prompted + self.mlp1(prompted)
        feats = features / features.norm(dim=-1, keepdim=True)
        prompted = prompted / prompted.norm(dim=-1, keepdim=True)
        return feats @ prompted.transpose(1, 2) / self.config.align_temperature
