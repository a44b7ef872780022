"""Key and shape table of the official DSANet state dict, and the geometry inference behind it.

The official checkpoint is ``DSANet.state_dict()`` of lessiYin/DSANet (``src/model.py``): the OpenAI
CLIP model under ``clipmodel.`` and, because ``CLIP_Adapter`` holds the same module, again under
``clip_adapter.clipmodel.``; the text adapters (``clip_adapter.text_adapter.{i}.fc.0.weight``, the
last one replacing CLIP's text projection); the temporal transformer, the GCN, the classifier and
both MLPs; and the SGNM branch ``video_anomaly_refiner.*``. The head hyperparameters that shapes
cannot tell (attention window, adapter weight, temperature, heads) come from the preset, as the
official ``ucf_option.py`` / ``xd_option.py`` give them; the number of temporal layers and of text
adapters differ between the two presets, which is how a checkpoint of the other preset is caught.

CLIP's geometry is inferred from the tensor shapes the way OpenAI's ``build_model`` does (width from
``conv1``, layers from counting blocks, resolution from the positional embedding, heads = width / 64),
so the small checkpoints of the tests go through the very code a real ViT-B/16 checkpoint does.
This module imports no torch: a shape is a tuple.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine.clip_layout import (
    CLIP_META_KEYS,
    VIT_B_16,
    ClipGeometry,
    LayoutError,
    Shape,
    block_shapes,
    clip_shapes,
    count_indices,
    infer_clip_geometry,
    need_shape,
)

CLIP_PREFIX = "clipmodel."
CLIP_ALIAS_PREFIX = "clip_adapter.clipmodel."
ADAPTER_PREFIX = "clip_adapter.text_adapter."
SGNM_PREFIX = "video_anomaly_refiner."

__all__ = ["ADAPTER_PREFIX", "CLIP_ALIAS_PREFIX", "CLIP_META_KEYS", "CLIP_PREFIX", "PRESET_HEADS", "SGNM_PREFIX",
           "VIT_B_16", "ClipGeometry", "HeadGeometry", "LayoutError", "Shape", "clip_shapes", "guess_preset",
           "head_shapes", "infer_clip_geometry", "infer_head_geometry", "official_shapes"]


@dataclass(frozen=True)
class HeadGeometry:
    """The shape-bearing hyperparameters of the DSANet part (official option files)."""

    visual_width: int = 512
    visual_length: int = 256
    visual_layers: int = 2
    text_adapt_until: int = 3
    num_prototypes: int = 16
    decoder_depth: int = 8


# Official option files: shape-bearing values per preset (ucf_option.py, xd_option.py).
PRESET_HEADS = {"ucf": HeadGeometry(visual_layers=2, text_adapt_until=3),
                "xd": HeadGeometry(visual_layers=1, text_adapt_until=1)}


def _linear(prefix: str, n_out: int, n_in: int, bias: bool = True) -> dict[str, Shape]:
    out: dict[str, Shape] = {f"{prefix}weight": (n_out, n_in)}
    if bias:
        out[f"{prefix}bias"] = (n_out,)
    return out


def _layer_norm(prefix: str, w: int) -> dict[str, Shape]:
    return {f"{prefix}weight": (w,), f"{prefix}bias": (w,)}


def _prototype_block(prefix: str, w: int, heads: int, decoder: bool) -> dict[str, Shape]:
    out = {**_layer_norm(f"{prefix}norm1.", w), **_layer_norm(f"{prefix}norm2.", w),
           **_linear(f"{prefix}attn.q.", w, w), **_linear(f"{prefix}attn.kv.", 2 * w, w),
           **_linear(f"{prefix}attn.proj.", w, w),
           **_linear(f"{prefix}mlp.fc1.", 4 * w, w), **_linear(f"{prefix}mlp.fc2.", w, 4 * w)}
    if decoder:
        out[f"{prefix}attn.learn_scale"] = (heads, 1, 1)
    return out


def head_shapes(h: HeadGeometry, text_width: int = 512, sgnm_heads: int = 8) -> dict[str, Shape]:
    """Every tensor of the DSANet part (everything but the CLIP copies)."""
    w, half = h.visual_width, h.visual_width // 2
    out: dict[str, Shape] = {"frame_position_embeddings.weight": (h.visual_length, w), "disAdj.sigma": (1,)}
    for i in range(h.visual_layers):
        out.update(block_shapes(f"temporal.resblocks.{i}.", w))
    out.update({"gc1.weight": (w, half), "gc1.residual.weight": (half, w, 5), "gc1.residual.bias": (half,),
                "gc2.weight": (half, half),
                "gc3.weight": (w, half), "gc3.residual.weight": (half, w, 5), "gc3.residual.bias": (half,),
                "gc4.weight": (half, half)})
    out.update(_linear("linear.", w, w))
    for name in ("mlp1", "mlp2"):
        out.update(_linear(f"{name}.c_fc.", 4 * w, w))
        out.update(_linear(f"{name}.c_proj.", w, 4 * w))
    out.update(_linear("classifier.", 1, w))
    for i in range(h.text_adapt_until):
        out[f"{ADAPTER_PREFIX}{i}.fc.0.weight"] = (text_width, text_width)
    out[f"{ADAPTER_PREFIX}{h.text_adapt_until}.fc.0.weight"] = (w, text_width)  # replaces text_projection
    s = SGNM_PREFIX
    out[f"{s}video_prototypes"] = (h.num_prototypes, w)
    out.update(_prototype_block(f"{s}dnp_extractor.0.", w, sgnm_heads, decoder=False))
    out.update(_linear(f"{s}bottleneck.c_fc.", 4 * w, w))
    out.update(_linear(f"{s}bottleneck.c_proj.", w, 4 * w))
    for j in range(h.decoder_depth):
        out.update(_prototype_block(f"{s}decoder.{j}.", w, sgnm_heads, decoder=True))
    return out


def official_shapes(clip: ClipGeometry, head: HeadGeometry) -> dict[str, Shape]:
    """The whole official DSANet state dict: head, CLIP, and CLIP again under the adapter's name."""
    return {**head_shapes(head, clip.transformer_width), **clip_shapes(clip, CLIP_PREFIX),
            **clip_shapes(clip, CLIP_ALIAS_PREFIX)}


# --- inference -----------------------------------------------------------------------------------
def infer_head_geometry(shapes: Mapping[str, Shape]) -> HeadGeometry:
    """Counts and widths of the DSANet part; raises ``LayoutError`` when a defining key is absent."""
    keys = list(shapes)
    pos = need_shape(shapes, "frame_position_embeddings.weight")
    protos = need_shape(shapes, f"{SGNM_PREFIX}video_prototypes")
    adapters = count_indices(keys, re.escape(ADAPTER_PREFIX) + r"(\d+)\.")
    if adapters < 1:
        raise LayoutError(f"missing {ADAPTER_PREFIX}*: no text adapters")
    return HeadGeometry(visual_width=int(pos[1]), visual_length=int(pos[0]),
                        visual_layers=count_indices(keys, r"temporal\.resblocks\.(\d+)\."),
                        text_adapt_until=adapters - 1, num_prototypes=int(protos[0]),
                        decoder_depth=count_indices(keys, re.escape(SGNM_PREFIX) + r"decoder\.(\d+)\."))


def guess_preset(head: HeadGeometry) -> str | None:
    """The preset whose official layout the head's layer and adapter counts match, if any."""
    for name, ref in PRESET_HEADS.items():
        if (head.visual_layers, head.text_adapt_until) == (ref.visual_layers, ref.text_adapt_until):
            return name
    return None
