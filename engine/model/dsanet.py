"""The full DSANet model: VadCLIP backbone + adapted CLIP text branch + SGNM + DCSA.

``DSANet.forward`` returns every tensor the training losses need (``DSANetOutput``);
``DSANet.infer`` and ``DSANet.inference_head()`` give the inference path only (anomaly probability
and the hierarchical class probabilities), which is what gets exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.backbone import VadClipBackbone, valid_mask
from engine.model.config import DSANetConfig
from engine.model.sgnm import SGNM

if TYPE_CHECKING:
    from engine.model.head import DSANetHead

FROZEN_PREFIX = "text.clip."  # state-dict keys of the frozen CLIP text tower (never saved)


@dataclass
class DSANetOutput:
    """Everything one training forward produces (B videos, L = visual_length, C classes, D width)."""

    text_features: torch.Tensor  # [C, D] adapted class text features, unit norm
    logits: torch.Tensor  # [B, L] anomaly logit s (C-branch)
    align_logits: torch.Tensor  # [B, L, C] snippet-class alignment (A-branch, "logits2")
    event_logits: torch.Tensor  # [B, C] DCSA event feature vs text ("logits3")
    background_logits: torch.Tensor  # [B, C] DCSA background feature vs text ("logits4")
    features: torch.Tensor  # [B, L, D] visual features X after the GCN
    reconstructed: torch.Tensor | None  # [B, L, D] SGNM reconstruction of X (None without SGNM)
    gather_loss: torch.Tensor | None  # scalar SGNM compactness loss (None without SGNM)


def hierarchical_probs(logits: torch.Tensor, align_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Class probabilities [..., C]: column 0 = 1 - sigmoid(s/tau); columns 1.. share sigmoid(s/tau)
    in proportion to softmax(align/tau) restricted to the anomaly classes. Rows sum to 1.
    """
    q = torch.sigmoid(logits / tau).unsqueeze(-1)
    p = torch.softmax(align_logits / tau, dim=-1)[..., 1:]
    p = p / (p.sum(dim=-1, keepdim=True) + 1e-12)
    return torch.cat((1.0 - q, q * p), dim=-1)


def dcsa_weights(prob: torch.Tensor, scale: float, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Event / background pooling weights [B, L] from probabilities p: (exp(k p) - 1) and
    (exp(k (1 - p)) - 1), each L1-normalised over time (padding included unless ``valid`` is given).
    """
    evt = torch.exp(scale * prob) - 1.0
    bkg = torch.exp(scale * (1.0 - prob)) - 1.0
    if valid is not None:
        evt = evt * valid.to(evt.dtype)
        bkg = bkg * valid.to(bkg.dtype)
    return F.normalize(evt, p=1, dim=1), F.normalize(bkg, p=1, dim=1)


class DSANet(nn.Module):
    """DSANet over pre-extracted CLIP image embeddings. ``text_encoder`` maps () -> [C, D] class features
    (normally ``engine.model.text.AdaptedCLIPText``)."""

    def __init__(self, config: DSANetConfig, text_encoder: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = VadClipBackbone(config)
        self.text = text_encoder
        self.sgnm = (SGNM(config.visual_width, config.num_prototypes, config.sgnm_heads, config.decoder_depth,
                          config.normal_selection_ratio) if config.use_sgnm else None)
        self._text_cache: torch.Tensor | None = None

    # --- text features ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DSANet:
        """Switching mode drops the cached text features (the official code keeps a stale cache)."""
        super().train(mode)
        self._text_cache = None
        return self

    def class_text_features(self) -> torch.Tensor:
        """[C, D] class features: recomputed on every call in training, computed once in eval mode."""
        if self.training:
            return self.text()
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = self.text().detach()
        return self._text_cache

    # --- weights ---------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Learnt weights only: the frozen CLIP text tower is left out (it is loaded from --clip)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN_PREFIX)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``trainable_state_dict`` output; missing or unexpected learnt keys raise KeyError."""
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            k = bad[0]
            raise KeyError(f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)
        self._text_cache = None

    def main_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside SGNM (optimised with AdamW)."""
        sgnm_ids = {id(p) for p in self.sgnm.parameters()} if self.sgnm is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in sgnm_ids]

    def sgnm_parameters(self) -> list[nn.Parameter]:
        """SGNM parameters (optimised with StableAdamW)."""
        return [p for p in self.sgnm.parameters() if p.requires_grad] if self.sgnm is not None else []

    # --- forward ---------------------------------------------------------------------------------
    def _valid(self, lengths: torch.Tensor, length: int) -> torch.Tensor | None:
        return valid_mask(lengths, length) if self.config.mask_padding else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, with_sgnm: bool | None = None) -> DSANetOutput:
        """x [B, L, D] zero-padded embeddings (L = visual_length), lengths [B] valid snippets per row."""
        cfg = self.config
        lengths = lengths.to(x.device).long().clamp(min=1)
        valid = self._valid(lengths, x.shape[1])
        feats = self.backbone.encode_video(x, lengths)
        logits = self.backbone.classify(feats)
        text = self.class_text_features()
        align = self.backbone.align(feats, logits, text, valid)

        # DCSA: pool event and background features with weights from the anomaly probability.
        evt_w, bkg_w = dcsa_weights(torch.sigmoid(logits), cfg.dcsa_scale, valid)
        evt = (evt_w.unsqueeze(1) @ feats).squeeze(1)
        bkg = (bkg_w.unsqueeze(1) @ feats).squeeze(1)
        text_n = text / text.norm(dim=-1, keepdim=True)
        evt_logits = (evt / evt.norm(dim=-1, keepdim=True)) @ text_n.t() / cfg.align_temperature
        bkg_logits = (bkg / bkg.norm(dim=-1, keepdim=True)) @ text_n.t() / cfg.align_temperature

        recon = g_loss = None
        run_sgnm = self.sgnm is not None and (self.training if with_sgnm is None else with_sgnm)
        if run_sgnm:
            recon, g_loss = self.sgnm(feats, logits, valid)
        return DSANetOutput(text, logits, align, evt_logits, bkg_logits, feats, recon, g_loss)

    def infer(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference path on padded input [B, L, D]: (sigmoid(s) [B, L], hierarchical class probs [B, L, C])."""
        lengths = lengths.to(x.device).long().clamp(min=1)
        feats = self.backbone.encode_video(x, lengths)
        logits = self.backbone.classify(feats)
        align = self.backbone.align(feats, logits, self.class_text_features(), self._valid(lengths, x.shape[1]))
        return torch.sigmoid(logits), hierarchical_probs(logits, align, self.config.tau)

    def inference_head(self) -> DSANetHead:
        """A standalone inference module with the current class text features baked in."""
        from engine.model.head import DSANetHead

        was_training = self.training
        self.eval()
        text = self.class_text_features().detach().clone()
        head = DSANetHead(self.config, self.backbone, text)
        self.train(was_training)
        return head.eval()
