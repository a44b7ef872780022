"""DSANet's training losses, one small function each (every one checkable by hand on tiny tensors).

Notation: B videos, L padded length, C classes (index 0 = normal), n_b valid snippets of video b,
labels [B, C] one-hot (UCF) or multi-hot (XD). The MIL pooling takes, per video, the mean of the
top k_b = floor(n_b / 16) + 1 valid values, as VadCLIP does.

Total (official, with SGNM):
    L = L_bce + lambda * L_align + L_sep + L_event + L_background + L_consistency + L_gather
(lambda = 1.1 UCF, 5.0 XD). Without SGNM the official code drops lambda (uses 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.model.sgnm import gather_loss

__all__ = ["LossWeights", "background_loss", "background_target", "consistency_loss", "dsanet_loss",
           "event_loss", "gather_loss", "mil_align_loss", "mil_bce_loss", "mil_k", "separation_loss", "topk_mean"]


def mil_k(lengths: torch.Tensor) -> torch.Tensor:
    """Top-k size per video: floor(n / 16) + 1."""
    return torch.div(lengths.long(), 16, rounding_mode="floor") + 1


def topk_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of the top k_b values among the first n_b positions of each row.

    values [B, L] or [B, L, C] (pooled over dim 1, per class). Vectorised with one sort instead of a
    Python loop over videos; gradients flow to the selected entries as with ``torch.topk``.
    """
    b, length = values.shape[:2]
    pos = torch.arange(length, device=values.device)
    valid = pos[None, :] < lengths.to(values.device)[:, None]  # [B, L]
    k = mil_k(lengths).to(values.device)
    if values.dim() == 3:
        valid = valid.unsqueeze(-1)
    ranked = values.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True).values
    take = pos[None, :] < k[:, None]
    if values.dim() == 3:
        take = take.unsqueeze(-1)
    picked = torch.where(take, ranked, torch.zeros((), dtype=values.dtype, device=values.device))
    shape = (b,) + (1,) * (values.dim() - 2)
    return picked.sum(dim=1) / k.to(values.dtype).reshape(shape)


def mil_bce_loss(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """L_bce: BCE between the top-k mean of sigmoid(s) and y = 1 - label[normal]."""
    video = topk_mean(torch.sigmoid(logits), lengths)
    target = 1.0 - labels[:, 0].to(video.dtype)
    return F.binary_cross_entropy(video, target)


def mil_align_loss(align_logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """L_align (MIL-Align): per class top-k mean of the alignment logits, then soft-target
    cross-entropy with target label / sum(label)."""
    video = topk_mean(align_logits, lengths)  # [B, C]
    target = labels / labels.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(video, dim=1)).sum(dim=1).mean()


def separation_loss(text_features: torch.Tensor) -> torch.Tensor:
    """L_sep: sum over anomaly classes of |cos(t_normal, t_c)|, divided by C - 1."""
    t = text_features / text_features.norm(dim=-1, keepdim=True)
    return (t[1:] @ t[0]).abs().sum() / (t.shape[0] - 1)


def smoothed_target(labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(1 - eps) * label / sum(label) + eps / C."""
    c = labels.shape[1]
    return (1.0 - epsilon) * labels / labels.sum(dim=1, keepdim=True).clamp(min=1e-6) + epsilon / c


def event_loss(event_logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """L_event: the event-pooled feature should match the video's class(es); label-smoothed CE."""
    target = smoothed_target(labels.to(event_logits.dtype), epsilon)
    return -(target * F.log_softmax(event_logits, dim=1)).sum(dim=1).mean()


def background_target(num_classes: int, epsilon: float = 0.1, other: float = 0.01) -> torch.Tensor:
    """Fixed background target: [1, other, ..., other] normalised, then label-smoothed.

    UCF (C=14): normal 0.8036, others 0.0151; XD (C=7): 0.8633 / 0.0228.
    """
    u = torch.full((1, num_classes), other)
    u[0, 0] = 1.0
    return smoothed_target(u, epsilon)[0]


def background_loss(background_logits: torch.Tensor, epsilon: float = 0.1, other: float = 0.01) -> torch.Tensor:
    """L_background: every video's background-pooled feature should read as "normal"."""
    target = background_target(background_logits.shape[1], epsilon, other).to(background_logits)
    return -(target * F.log_softmax(background_logits, dim=1)).sum(dim=1).mean()


def consistency_loss(logits: torch.Tensor, features: torch.Tensor, reconstructed: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    """L_cons: MSE over valid snippets between sigmoid(s) and the SGNM reconstruction error
    (1 - cos(X, X_hat)) / 2. No stop-gradient on either side (as the official code)."""
    err = (1.0 - F.cosine_similarity(features, reconstructed, dim=-1)) / 2.0
    prob = torch.sigmoid(logits)
    valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths.to(logits.device)[:, None]
    return F.mse_loss(prob[valid], err[valid])


@dataclass
class LossWeights:
    """Weights of the loss terms (official: align 1.1 UCF / 5.0 XD, everything else 1)."""

    align: float = 1.1
    separation: float = 1.0
    event: float = 1.0
    background: float = 1.0
    consistency: float = 1.0
    gather: float = 1.0
    label_smoothing: float = 0.1
    background_other: float = 0.01


def dsanet_loss(out, labels: torch.Tensor, lengths: torch.Tensor,  # noqa: ANN001 - DSANetOutput
                weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss from a ``DSANetOutput`` and the per-term values (floats, for logging)."""
    lengths = lengths.to(out.logits.device)
    labels = labels.to(out.logits)
    terms = {
        "bce": mil_bce_loss(out.logits, labels, lengths),
        "align": mil_align_loss(out.align_logits, labels, lengths),
        "separation": separation_loss(out.text_features),
        "event": event_loss(out.event_logits, labels, weights.label_smoothing),
        "background": background_loss(out.background_logits, weights.label_smoothing, weights.background_other),
    }
    sgnm = out.reconstructed is not None
    total = (terms["bce"] + (weights.align if sgnm else 1.0) * terms["align"]
             + weights.separation * terms["separation"] + weights.event * terms["event"]
             + weights.background * terms["background"])
    if sgnm:
        terms["consistency"] = consistency_loss(out.logits, out.features, out.reconstructed, lengths)
        terms["gather"] = out.gather_loss
        total = total + weights.consistency * terms["consistency"] + weights.gather * terms["gather"]
    logged = {k: float(v.detach()) for k, v in terms.items()}
    logged["total"] = float(total.detach())
    return total, logged
