"""``--clip`` given as a file: OpenAI CLIP checkpoints and open_clip weight files, as HF folders.

Accepted files (ViT CLIP only):

* OpenAI's released ``ViT-B-16.pt``, a TorchScript archive: its weights are read with
  ``torch.jit.load`` (TorchScript, not pickle: no Python code of the file runs) and ``state_dict()``;
* a plain OpenAI-layout state dict (``.pt``/``.pth``/``.bin``, loaded with ``weights_only=True``,
  bare or under ``state_dict``), which is also what open_clip saves for OpenAI-architecture models;
* an open_clip ``.safetensors`` weights file (same key names).

The file is converted once into a Hugging Face CLIP folder in the cache (``$DSANET_CACHE/clip-files/
<sha256 prefix>``): config.json inferred from the tensor shapes as OpenAI's ``build_model`` does,
model.safetensors with the weights renamed (q/k/v split out of ``in_proj``), OpenAI's tokenizer
files, and the OpenAI preprocessing (shortest side to the input resolution, bicubic, centre crop,
CLIP mean/std). Everything downstream (extract-features, train, eval, export) then takes the exact
code path of a Hugging Face folder, so the three sources give the same embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.clip_layout import ClipGeometry, LayoutError, clip_shapes, infer_clip_geometry
from engine.errors import ClipLoadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SOT_ID, EOT_ID = 49406, 49407  # OpenAI's start/end-of-text token ids

CONVERTED_MARKER = "CONVERTED_FROM"
SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_clip_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """OpenAI-layout CLIP tensors from a TorchScript archive, a torch state dict or a safetensors file."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ClipLoadError(f"CLIP file {p} does not exist")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        except Exception as exc:  # safetensors raises its own error types
            raise ClipLoadError(f"{p}: not a readable safetensors file: {exc}") from exc
    else:
        state = None
        try:
            state = torch.jit.load(str(p), map_location="cpu").state_dict()  # OpenAI's released archives
        except (RuntimeError, ValueError):
            pass
        if state is None:
            try:
                state = torch.load(str(p), map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises many types for a bad file
                raise ClipLoadError(f"{p}: neither a TorchScript CLIP archive nor a weights-only state dict: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ClipLoadError(f"{p}: holds no CLIP state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous()


def _hf_block(src: Mapping[str, torch.Tensor], s: str, d: str, out: dict[str, torch.Tensor]) -> None:
    """One OpenAI residual block (prefix ``s``) -> one HF CLIPEncoderLayer (prefix ``d``)."""
    q, k, v = _f32(src[f"{s}attn.in_proj_weight"]).chunk(3, dim=0)
    qb, kb, vb = _f32(src[f"{s}attn.in_proj_bias"]).chunk(3, dim=0)
    for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
        out[f"{d}self_attn.{name}.weight"] = w.contiguous()
        out[f"{d}self_attn.{name}.bias"] = b.contiguous()
    pairs = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for theirs, ours in pairs:
        out[f"{d}{ours}.weight"] = _f32(src[f"{s}{theirs}.weight"])
        out[f"{d}{ours}.bias"] = _f32(src[f"{s}{theirs}.bias"])


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


def write_hf_folder(state: dict[str, Any], out: Path, source: str, digest: str = "") -> Path:
    """Write OpenAI-layout CLIP tensors as a Hugging Face CLIP folder (see the module docstring)."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig

    from engine.clip import CLIP_MEAN, CLIP_STD
    from engine.tokenizer import ClipBPETokenizer

    g = geometry_of(state, source)
    tok = ClipBPETokenizer.from_bpe_file()
    weights = {**clip_to_hf_text(state, g), **clip_to_hf_vision(state, g),
               "text_projection.weight": _f32(state["text_projection"]).t().contiguous(),
               "logit_scale": _f32(state["logit_scale"]).reshape(())}
    config = CLIPConfig(text_config=text_config(g).to_dict(), vision_config=vision_config(g).to_dict(),
                        projection_dim=g.embed_dim)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(tmp))
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer_files(tok, tmp, g.context_length)
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": g.image_resolution},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": g.image_resolution, "width": g.image_resolution},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}))
    (tmp / CONVERTED_MARKER).write_text(f"{source}\nsha256 {digest}\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def write_tokenizer_files(tok: Any, folder: Path, context_length: int = 77) -> Path:
    """OpenAI's vocabulary as Hugging Face CLIPTokenizer files (vocab.json, merges.txt, configs)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.encoder), encoding="utf-8")
    merges = sorted(tok.ranks, key=tok.ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length":
                                                              context_length, "do_lower_case": True, **special}))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


def geometry_of(state: dict[str, Any], source: str) -> ClipGeometry:
    """The ViT geometry of OpenAI-layout CLIP tensors; a one-line ``ClipLoadError`` when they are not."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    try:
        g = infer_clip_geometry(shapes)
    except LayoutError as exc:
        raise ClipLoadError(f"{source}: not an OpenAI/open_clip ViT CLIP checkpoint: {exc}") from exc
    expected = clip_shapes(g)
    missing = sorted(set(expected) - set(shapes))
    bad = sorted(k for k in set(expected) & set(shapes) if shapes[k] != expected[k])
    if missing or bad:
        what = f"missing {missing[:3]}" if missing else f"{bad[0]} has shape {shapes[bad[0]]}, expected {expected[bad[0]]}"
        raise ClipLoadError(f"{source}: incomplete OpenAI-layout CLIP checkpoint: {what}")
    return g


def convert_clip_file(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached Hugging Face folder for a CLIP weights file (converted on first use)."""
    from engine.clip import default_cache_dir

    p = Path(path)
    if not p.is_file():
        raise ClipLoadError(f"CLIP file {p} does not exist")
    digest = _sha256(p)
    out = Path(cache_dir) if cache_dir else default_cache_dir() / "clip-files" / digest[:16]
    marker = out / CONVERTED_MARKER
    if marker.is_file() and digest in marker.read_text():
        return out
    state = read_clip_file(p)
    write_hf_folder(state, out, str(p), digest)
    return out
