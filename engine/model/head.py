"""``DSANetHead``: the inference-only DSANet graph that ``head.onnx`` holds and the torch runtime runs.

Inputs ``features`` [B, T, 512] float32 (T in 1..visual_length) and ``lengths`` [B] int64. The window
is zero-padded to ``visual_length`` exactly as the official test code pads a short video, so a
window of T snippets scores as the official evaluation scores a video of T snippets. Outputs
``scores`` [B, T] = sigmoid(anomaly logit) and ``class_probs`` [B, T, C] (hierarchical refinement with
tau: column 0 = normal, rows sum to 1). The class text features are a constant buffer, so no text
tower is needed at inference. Every mask is built from aranges and there is no data-dependent
Python control flow, so the module exports with ``torch.onnx.export(..., dynamo=True)`` with dynamic
B and T.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError
from engine.model.backbone import VadClipBackbone, valid_mask
from engine.model.config import DSANetConfig
from engine.model.dsanet import hierarchical_probs


class DSANetHead(nn.Module):
    """Backbone + fixed class text features -> (scores, class_probs)."""

    def __init__(self, config: DSANetConfig, backbone: VadClipBackbone, text_features: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.visual_length = config.visual_length
        self.tau = float(config.tau)
        self.mask_padding = bool(config.mask_padding)
        self.backbone = copy.deepcopy(backbone)  # a snapshot: later training does not change the head
        self.register_buffer("text_features", text_features.detach().clone().float())
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = features.shape[1]
        if t > self.visual_length:  # static under export (T is bounded by visual_length there)
            raise InputError(f"window of {t} snippets exceeds the head's maximum of {self.visual_length}")
        x = F.pad(features.float(), (0, 0, 0, self.visual_length - t))
        lengths = torch.clamp(lengths.long(), min=1, max=t)
        bb = self.backbone
        feats = bb.encode_video(x, lengths)
        logits = bb.classify(feats)
        valid = valid_mask(lengths, self.visual_length) if self.mask_padding else None
        align = bb.align(feats, logits, self.text_features, valid)
        logits = logits[:, :t]
        align = align[:, :t]
        return torch.sigmoid(logits), hierarchical_probs(logits, align, self.tau)


class DSANetOpenHead(DSANetHead):
    """``DSANetHead`` with the class text features as a third input: what ``head_open.onnx`` holds.

    ``forward(features [B,T,D], lengths [B], text_features [C,D]) -> (scores [B,T], class_probs [B,T,C])``
    with C dynamic (>= 2, column 0 = normal), so the class list can change at deployment without
    re-export. Given the baked-in buffer it computes exactly what ``DSANetHead`` computes.
    """

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,  # type: ignore[override]
                text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = features.shape[1]
        if t > self.visual_length:
            raise InputError(f"window of {t} snippets exceeds the head's maximum of {self.visual_length}")
        x = F.pad(features.float(), (0, 0, 0, self.visual_length - t))
        lengths = torch.clamp(lengths.long(), min=1, max=t)
        bb = self.backbone
        feats = bb.encode_video(x, lengths)
        logits = bb.classify(feats)
        valid = valid_mask(lengths, self.visual_length) if self.mask_padding else None
        align = bb.align(feats, logits, text_features.float(), valid)
        logits = logits[:, :t]
        align = align[:, :t]
        return torch.sigmoid(logits), hierarchical_probs(logits, align, self.tau)
