"""Official DSANet weights onto our model: CLIP towers as Hugging Face modules, head, adapters, SGNM.

OpenAI's CLIP blocks keep attention as one fused ``in_proj`` (q, k, v stacked) in
``nn.MultiheadAttention``; Hugging Face's ``CLIPTextModel`` / ``CLIPVisionModelWithProjection`` keep
separate q/k/v projections, name the norms and MLP differently, and store the image projection
transposed. ``clip_to_hf`` does that renaming and splitting; everything is cast to fp32 (the released
files hold fp16 CLIP tensors; the official code runs them in fp32 on a CPU, as ``clip.load`` does).
The head and SGNM keys map one to one onto ``engine.model`` (``DistanceAdj.sigma`` is dropped: the
official code never reads it). The preset supplies what shapes cannot tell (window, adapter weight,
tau, heads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.clip_formats import build_text_model, build_vision_model
from engine.model.config import DSANetConfig
from export.official.layout import ADAPTER_PREFIX, SGNM_PREFIX, ClipGeometry, HeadGeometry

__all__ = ["build_dsanet", "build_text_model", "build_vision_model", "head_state", "model_config"]


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def head_state(state: Mapping[str, torch.Tensor], h: HeadGeometry) -> dict[str, torch.Tensor]:
    """Official head/adapter/SGNM keys -> ``DSANet.trainable_state_dict`` keys (fp32)."""
    out: dict[str, torch.Tensor] = {"backbone.frame_position_embeddings.weight": _f32(state["frame_position_embeddings.weight"])}
    for i in range(h.visual_layers):
        s, d = f"temporal.resblocks.{i}.", f"backbone.temporal.{i}."
        out[f"{d}attn.in_proj.weight"] = _f32(state[f"{s}attn.in_proj_weight"])
        out[f"{d}attn.in_proj.bias"] = _f32(state[f"{s}attn.in_proj_bias"])
        for a, b in (("attn.out_proj", "attn.out_proj"), ("ln_1", "ln_1"), ("ln_2", "ln_2"),
                     ("mlp.c_fc", "mlp.0"), ("mlp.c_proj", "mlp.2")):
            out[f"{d}{b}.weight"] = _f32(state[f"{s}{a}.weight"])
            out[f"{d}{b}.bias"] = _f32(state[f"{s}{a}.bias"])
    for gc in ("gc1", "gc2", "gc3", "gc4"):
        out[f"backbone.{gc}.weight"] = _f32(state[f"{gc}.weight"])
        for leaf in ("weight", "bias"):
            key = f"{gc}.residual.{leaf}"
            if key in state:
                out[f"backbone.{key}"] = _f32(state[key])
    for a, b in (("linear", "linear"), ("classifier", "classifier"), ("mlp1.c_fc", "mlp1.0"),
                 ("mlp1.c_proj", "mlp1.2"), ("mlp2.c_fc", "mlp2.0"), ("mlp2.c_proj", "mlp2.2")):
        out[f"backbone.{b}.weight"] = _f32(state[f"{a}.weight"])
        out[f"backbone.{b}.bias"] = _f32(state[f"{a}.bias"])
    for i in range(h.text_adapt_until):
        out[f"text.adapters.{i}.0.weight"] = _f32(state[f"{ADAPTER_PREFIX}{i}.fc.0.weight"])
    out["text.proj.0.weight"] = _f32(state[f"{ADAPTER_PREFIX}{h.text_adapt_until}.fc.0.weight"])
    s = SGNM_PREFIX
    out["sgnm.prototypes"] = _f32(state[f"{s}video_prototypes"])
    for key, value in state.items():
        if key.startswith(f"{s}dnp_extractor.0."):
            out["sgnm.aggregator." + key[len(f"{s}dnp_extractor.0."):]] = _f32(value)
        elif key.startswith(f"{s}decoder."):
            out["sgnm.decoder." + key[len(f"{s}decoder."):]] = _f32(value)
    for a, b in (("c_fc", "0"), ("c_proj", "2")):
        out[f"sgnm.bottleneck.{b}.weight"] = _f32(state[f"{s}bottleneck.{a}.weight"])
        out[f"sgnm.bottleneck.{b}.bias"] = _f32(state[f"{s}bottleneck.{a}.bias"])
    return out


def model_config(preset: str, clip: ClipGeometry, head: HeadGeometry, snippet_fps: float | None = None) -> DSANetConfig:
    """Our config for an official checkpoint: the preset's official hyperparameters, shapes from the file."""
    return DSANetConfig.for_preset(preset, embed_dim=head.visual_width, visual_width=head.visual_width,
                                   visual_length=head.visual_length, visual_layers=head.visual_layers,
                                   text_adapt_until=head.text_adapt_until, num_prototypes=head.num_prototypes,
                                   decoder_depth=head.decoder_depth, text_width=clip.transformer_width,
                                   snippet_fps=snippet_fps)


def build_dsanet(state: Mapping[str, torch.Tensor], clip: Mapping[str, torch.Tensor], preset: str,
                 clip_geometry: ClipGeometry, head_geometry: HeadGeometry, snippet_fps: float | None = None) -> Any:
    """Our ``DSANet`` (eval mode) carrying every learnt weight of the official checkpoint."""
    from engine.model.dsanet import DSANet
    from engine.model.text import AdaptedCLIPText
    from engine.tokenizer import ClipBPETokenizer

    config = model_config(preset, clip_geometry, head_geometry, snippet_fps)
    text = AdaptedCLIPText(build_text_model(clip, clip_geometry), ClipBPETokenizer.from_bpe_file(),
                           config.class_prompts, config.text_adapt_until, config.text_adapter_weight,
                           out_dim=config.embed_dim)
    model = DSANet(config, text)
    model.load_trainable_state_dict(head_state(state, head_geometry))
    return model.eval()
