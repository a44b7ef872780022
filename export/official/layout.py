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

CLIP_PREFIX = "clipmodel."
CLIP_ALIAS_PREFIX = "clip_adapter.clipmodel."
ADAPTER_PREFIX = "clip_adapter.text_adapter."
SGNM_PREFIX = "video_anomaly_refiner."
# Keys OpenAI's TorchScript archives carry besides the weights (build_model drops them).
CLIP_META_KEYS = ("input_resolution", "context_length", "vocab_size")

Shape = tuple[int, ...]


class LayoutError(ValueError):
    """The tensors do not follow the official layout (the message names the key at fault)."""


@dataclass(frozen=True)
class ClipGeometry:
    """What OpenAI's ``build_model`` reads off a ViT CLIP state dict."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_layers: int = 12

    @property
    def vision_heads(self) -> int:
        return max(self.vision_width // 64, 1)

    @property
    def transformer_heads(self) -> int:
        return max(self.transformer_width // 64, 1)

    @property
    def grid(self) -> int:
        return self.image_resolution // self.vision_patch_size


VIT_B_16 = ClipGeometry()


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


def _block(prefix: str, w: int) -> dict[str, Shape]:
    """One CLIP-style residual attention block (nn.MultiheadAttention + c_fc/c_proj MLP)."""
    return {
        f"{prefix}attn.in_proj_weight": (3 * w, w), f"{prefix}attn.in_proj_bias": (3 * w,),
        f"{prefix}attn.out_proj.weight": (w, w), f"{prefix}attn.out_proj.bias": (w,),
        f"{prefix}ln_1.weight": (w,), f"{prefix}ln_1.bias": (w,),
        f"{prefix}mlp.c_fc.weight": (4 * w, w), f"{prefix}mlp.c_fc.bias": (4 * w,),
        f"{prefix}mlp.c_proj.weight": (w, 4 * w), f"{prefix}mlp.c_proj.bias": (w,),
        f"{prefix}ln_2.weight": (w,), f"{prefix}ln_2.bias": (w,),
    }


def clip_shapes(g: ClipGeometry, prefix: str = "") -> dict[str, Shape]:
    """Every tensor of an OpenAI ViT CLIP state dict, by key (with ``prefix``)."""
    tw, vw = g.transformer_width, g.vision_width
    out: dict[str, Shape] = {
        "positional_embedding": (g.context_length, tw), "text_projection": (tw, g.embed_dim), "logit_scale": (),
        "token_embedding.weight": (g.vocab_size, tw), "ln_final.weight": (tw,), "ln_final.bias": (tw,),
        "visual.class_embedding": (vw,), "visual.positional_embedding": (g.grid ** 2 + 1, vw),
        "visual.proj": (vw, g.embed_dim), "visual.conv1.weight": (vw, 3, g.vision_patch_size, g.vision_patch_size),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
    }
    for i in range(g.transformer_layers):
        out.update(_block(f"transformer.resblocks.{i}.", tw))
    for i in range(g.vision_layers):
        out.update(_block(f"visual.transformer.resblocks.{i}.", vw))
    return {prefix + k: v for k, v in out.items()}


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
        out.update(_block(f"temporal.resblocks.{i}.", w))
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
def _count(keys: list[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _need(shapes: Mapping[str, Shape], key: str) -> Shape:
    if key not in shapes:
        raise LayoutError(f"missing {key}")
    return tuple(shapes[key])


def infer_clip_geometry(shapes: Mapping[str, Shape], prefix: str = "") -> ClipGeometry:
    """OpenAI ``build_model``'s reading of a ViT CLIP state dict (``shapes``: key -> shape)."""
    keys = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    sub = {k: tuple(shapes[prefix + k]) for k in keys}
    if "visual.proj" not in sub:
        if any(k.startswith("visual.layer1.") for k in keys):
            raise LayoutError("a ResNet CLIP (visual.layer1.*): only ViT CLIP models are supported")
        raise LayoutError(f"missing {prefix}visual.proj: not an OpenAI ViT CLIP state dict")
    conv = _need(sub, "visual.conv1.weight")
    if len(conv) != 4:
        raise LayoutError(f"{prefix}visual.conv1.weight has shape {conv}, expected 4 dimensions")
    pos = _need(sub, "visual.positional_embedding")
    grid = round((pos[0] - 1) ** 0.5)
    if grid * grid + 1 != pos[0]:
        raise LayoutError(f"{prefix}visual.positional_embedding has {pos[0]} rows, not a square grid + 1")
    text_proj = _need(sub, "text_projection")
    geometry = ClipGeometry(
        embed_dim=int(text_proj[1]),
        image_resolution=int(conv[-1]) * grid,
        vision_layers=_count(keys, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$"),
        vision_width=int(conv[0]),
        vision_patch_size=int(conv[-1]),
        context_length=int(_need(sub, "positional_embedding")[0]),
        vocab_size=int(_need(sub, "token_embedding.weight")[0]),
        transformer_width=int(_need(sub, "ln_final.weight")[0]),
        transformer_layers=_count(keys, r"transformer\.resblocks\.(\d+)\."),
    )
    if geometry.vision_layers < 1 or geometry.transformer_layers < 1:
        raise LayoutError(f"no transformer blocks under {prefix}visual.transformer / {prefix}transformer")
    return geometry


def infer_head_geometry(shapes: Mapping[str, Shape]) -> HeadGeometry:
    """Counts and widths of the DSANet part; raises ``LayoutError`` when a defining key is absent."""
    keys = list(shapes)
    pos = _need(shapes, "frame_position_embeddings.weight")
    protos = _need(shapes, f"{SGNM_PREFIX}video_prototypes")
    adapters = _count(keys, re.escape(ADAPTER_PREFIX) + r"(\d+)\.")
    if adapters < 1:
        raise LayoutError(f"missing {ADAPTER_PREFIX}*: no text adapters")
    return HeadGeometry(visual_width=int(pos[1]), visual_length=int(pos[0]),
                        visual_layers=_count(keys, r"temporal\.resblocks\.(\d+)\."),
                        text_adapt_until=adapters - 1, num_prototypes=int(protos[0]),
                        decoder_depth=_count(keys, re.escape(SGNM_PREFIX) + r"decoder\.(\d+)\."))


def guess_preset(head: HeadGeometry) -> str | None:
    """The preset whose official layout the head's layer and adapter counts match, if any."""
    for name, ref in PRESET_HEADS.items():
        if (head.visual_layers, head.text_adapt_until) == (ref.visual_layers, ref.text_adapt_until):
            return name
    return None
