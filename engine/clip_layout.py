"""Key and shape table of an OpenAI ViT CLIP state dict, and its geometry read off the shapes.

The geometry is inferred the way OpenAI's ``build_model`` does it: widths from ``conv1`` and
``ln_final``, layer counts by counting blocks, the input resolution from the positional embedding's
grid, heads = width / 64. Used for OpenAI/open_clip weight files given as ``--clip`` and, by
``export.official``, for the CLIP inside the official DSANet checkpoints. Imports no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

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


def block_shapes(prefix: str, w: int) -> dict[str, Shape]:
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
        out.update(block_shapes(f"transformer.resblocks.{i}.", tw))
    for i in range(g.vision_layers):
        out.update(block_shapes(f"visual.transformer.resblocks.{i}.", vw))
    return {prefix + k: v for k, v in out.items()}


def count_indices(keys: list[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def need_shape(shapes: Mapping[str, Shape], key: str) -> Shape:
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
    conv = need_shape(sub, "visual.conv1.weight")
    if len(conv) != 4:
        raise LayoutError(f"{prefix}visual.conv1.weight has shape {conv}, expected 4 dimensions")
    pos = need_shape(sub, "visual.positional_embedding")
    grid = round((pos[0] - 1) ** 0.5)
    if grid * grid + 1 != pos[0]:
        raise LayoutError(f"{prefix}visual.positional_embedding has {pos[0]} rows, not a square grid + 1")
    text_proj = need_shape(sub, "text_projection")
    geometry = ClipGeometry(
        embed_dim=int(text_proj[1]),
        image_resolution=int(conv[-1]) * grid,
        vision_layers=count_indices(keys, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$"),
        vision_width=int(conv[0]),
        vision_patch_size=int(conv[-1]),
        context_length=int(need_shape(sub, "positional_embedding")[0]),
        vocab_size=int(need_shape(sub, "token_embedding.weight")[0]),
        transformer_width=int(need_shape(sub, "ln_final.weight")[0]),
        transformer_layers=count_indices(keys, r"transformer\.resblocks\.(\d+)\."),
    )
    if geometry.vision_layers < 1 or geometry.transformer_layers < 1:
        raise LayoutError(f"no transformer blocks under {prefix}visual.transformer / {prefix}transformer")
    return geometry
