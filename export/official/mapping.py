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

from engine.model.config import DSANetConfig
from export.official.layout import ADAPTER_PREFIX, SGNM_PREFIX, ClipGeometry, HeadGeometry

SOT_ID, EOT_ID = 49406, 49407


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _hf_block(src: Mapping[str, torch.Tensor], s: str, d: str, out: dict[str, torch.Tensor]) -> None:
    """One OpenAI residual block (prefix ``s``) -> one HF CLIPEncoderLayer (prefix ``d``)."""
    q, k, v = _f32(src[f"{s}attn.in_proj_weight"]).chunk(3, dim=0)
    qb, kb, vb = _f32(src[f"{s}attn.in_proj_bias"]).chunk(3, dim=0)
    for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
        out[f"{d}self_attn.{name}.weight"] = w.contiguous()
        out[f"{d}self_attn.{name}.bias"] = b.contiguous()
    pairs = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for a, b in pairs:
        out[f"{d}{b}.weight"] = _f32(src[f"{s}{a}.weight"])
        out[f"{d}{b}.bias"] = _f32(src[f"{s}{a}.bias"])


def text_config(g: ClipGeometry) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=g.vocab_size, hidden_size=g.transformer_width,
                          intermediate_size=4 * g.transformer_width, num_hidden_layers=g.transformer_layers,
                          num_attention_heads=g.transformer_heads, max_position_embeddings=g.context_length,
                          hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=g.embed_dim,
                          bos_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID)


def vision_config(g: ClipGeometry) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=g.vision_width, intermediate_size=4 * g.vision_width,
                            num_hidden_layers=g.vision_layers, num_attention_heads=g.vision_heads,
                            image_size=g.image_resolution, patch_size=g.vision_patch_size,
                            projection_dim=g.embed_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def clip_to_hf_text(clip: Mapping[str, torch.Tensor], g: ClipGeometry) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (unprefixed keys) -> ``CLIPTextModel`` state dict."""
    out: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": _f32(clip["token_embedding.weight"]),
        "text_model.embeddings.position_embedding.weight": _f32(clip["positional_embedding"]),
        "text_model.final_layer_norm.weight": _f32(clip["ln_final.weight"]),
        "text_model.final_layer_norm.bias": _f32(clip["ln_final.bias"]),
    }
    for i in range(g.transformer_layers):
        _hf_block(clip, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out)
    return out


def clip_to_hf_vision(clip: Mapping[str, torch.Tensor], g: ClipGeometry) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (unprefixed keys) -> ``CLIPVisionModelWithProjection`` state dict."""
    v = "vision_model."
    out: dict[str, torch.Tensor] = {
        f"{v}embeddings.class_embedding": _f32(clip["visual.class_embedding"]),
        f"{v}embeddings.patch_embedding.weight": _f32(clip["visual.conv1.weight"]),
        f"{v}embeddings.position_embedding.weight": _f32(clip["visual.positional_embedding"]),
        f"{v}pre_layrnorm.weight": _f32(clip["visual.ln_pre.weight"]),
        f"{v}pre_layrnorm.bias": _f32(clip["visual.ln_pre.bias"]),
        f"{v}post_layernorm.weight": _f32(clip["visual.ln_post.weight"]),
        f"{v}post_layernorm.bias": _f32(clip["visual.ln_post.bias"]),
        "visual_projection.weight": _f32(clip["visual.proj"]).t().contiguous(),
    }
    for i in range(g.vision_layers):
        _hf_block(clip, f"visual.transformer.resblocks.{i}.", f"{v}encoder.layers.{i}.", out)
    return out


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load exactly ``state``; module prefixes that differ across transformers versions are reconciled."""
    own = module.state_dict()
    for prefix in ("text_model.", "vision_model."):
        if not any(k.startswith(prefix) for k in own):  # transformers 5 flattens CLIPTextModel
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"{what}: mapping left keys missing {missing[:3]} / unexpected {unexpected[:3]}")
    module.load_state_dict(state, strict=True)
    return module.eval()


def build_text_model(clip: Mapping[str, torch.Tensor], g: ClipGeometry) -> Any:
    """A frozen ``CLIPTextModel`` holding the checkpoint's text tower."""
    from transformers import CLIPTextModel

    return _load_strict(CLIPTextModel(text_config(g)), clip_to_hf_text(clip, g), "CLIP text tower")


def build_vision_model(clip: Mapping[str, torch.Tensor], g: ClipGeometry) -> Any:
    """A ``CLIPVisionModelWithProjection`` holding the checkpoint's image tower."""
    from transformers import CLIPVisionModelWithProjection

    return _load_strict(CLIPVisionModelWithProjection(vision_config(g)), clip_to_hf_vision(clip, g),
                        "CLIP image tower")


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
