"""Loading CLIP towers from a local Hugging Face directory, and the tiny random CLIP for tests.

Nothing is ever downloaded: real weights are a directory the user gives (the layout of
``openai/clip-vit-base-patch16``: ``config.json``, weights, tokenizer and preprocessor files). The tiny
CLIP is a randomly initialised model saved in that same layout, so tests and demos exercise the exact
code path that loads real weights. torch and transformers are imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from engine.errors import ClipLoadError

log = logging.getLogger(__name__)

TINY = "tiny"
TINY_WARNING = "using the tiny random CLIP: NOT a real CLIP, scores mean nothing outside tests and demos"
TINY_VERSION = 2  # bump when the tiny CLIP recipe changes: cached copies are rebuilt
# A random ViT's image embeddings are dominated by one shared direction with a norm of ~24; scaled down,
# they sit at the scale of our synthetic features, where the head trains stably at the demo's learning rate.
TINY_IMAGE_EMBED_SCALE = 0.05

# Small enough to embed ~2k images/s on a CPU core, same interfaces and 512-d projection as ViT-B/16.
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
             "max_position_embeddings": 77}
TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 224, "patch_size": 32}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (printable stand-ins for every byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _write_tiny_tokenizer(out: Path) -> int:
    """A character-level CLIP BPE vocabulary (no merges): every word splits into its bytes."""
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    return len(vocab)


def build_tiny_clip(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a randomly initialised CLIP (vision + text, 512-d projection) in Hugging Face layout."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tiny_tokenizer(out)
    text = dict(TINY_TEXT, vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                pad_token_id=vocab_size - 1)
    config = CLIPConfig(text_config=text, vision_config=dict(TINY_VISION), projection_dim=512)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.visual_projection.weight.mul_(TINY_IMAGE_EMBED_SCALE)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}))
    (out / "TINY_RANDOM_CLIP").write_text(f"{TINY_WARNING}\nversion {TINY_VERSION}\n")
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("DSANET_CACHE", Path.home() / ".cache" / "dsanet"))


def resolve_clip_dir(spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Turn ``--clip DIR|tiny`` into a checked directory. ``tiny`` builds (once) the random tiny CLIP."""
    if str(spec) == TINY:
        target = Path(cache_dir) if cache_dir else default_cache_dir() / "tiny-clip"
        if not _tiny_is_current(target):
            _build_tiny_clip_atomically(target)
        log.warning(TINY_WARNING)
        return target
    path = Path(spec)
    if path.is_file():  # an OpenAI CLIP checkpoint or open_clip weights file: converted once, cached
        from engine.clip_formats import convert_clip_file

        return convert_clip_file(path)
    if not path.is_dir():
        raise ClipLoadError(f"CLIP directory {path} does not exist (give a local Hugging Face CLIP folder, an "
                            "OpenAI/open_clip CLIP weights file, or 'tiny')")
    if not (path / "config.json").exists():
        raise ClipLoadError(f"CLIP directory {path} has no config.json: not a Hugging Face CLIP folder")
    if not any((path / n).exists() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise ClipLoadError(f"CLIP directory {path} has no weights (model.safetensors or pytorch_model.bin)")
    return path


def _tiny_is_current(target: Path) -> bool:
    marker = target / "TINY_RANDOM_CLIP"
    try:
        return (target / "config.json").exists() and f"version {TINY_VERSION}" in marker.read_text()
    except OSError:
        return False


def _build_tiny_clip_atomically(target: Path) -> None:
    """Build the cached tiny CLIP in a private folder and move it into place in one rename.

    Several processes may resolve ``tiny`` at once (parallel test workers, two ``dsanet`` commands): none
    of them may load a half-written folder, so the folder appears complete or not at all.
    """
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_clip(work)
        if target.exists() and not _tiny_is_current(target):  # an older recipe: replaced
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            try:
                os.replace(target, stale / "old")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(work, target)
        except OSError:  # another process put a complete one in place first
            if not _tiny_is_current(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def is_tiny(clip_dir: str | os.PathLike[str]) -> bool:
    return (Path(clip_dir) / "TINY_RANDOM_CLIP").exists()


def _load(cls: Any, clip_dir: Path, what: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the towers load from a full CLIP file: unused keys are expected
    hf_logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(str(clip_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad folder
        raise ClipLoadError(f"cannot load the CLIP {what} from {clip_dir}: {exc}") from exc
    return model.eval()


def load_text_model(clip_dir: str | os.PathLike[str]):  # -> transformers.CLIPTextModel
    """The frozen CLIP text transformer (no projection: DSANet replaces it with its own head)."""
    from transformers import CLIPTextModel

    return _load(CLIPTextModel, Path(clip_dir), "text tower")


def load_vision_model(clip_dir: str | os.PathLike[str]):  # -> transformers.CLIPVisionModelWithProjection
    """The CLIP image tower with its projection: one 512-d embedding per preprocessed image."""
    from transformers import CLIPVisionModelWithProjection

    return _load(CLIPVisionModelWithProjection, Path(clip_dir), "image tower")


def load_tokenizer(clip_dir: str | os.PathLike[str]):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
    except Exception as exc:
        raise ClipLoadError(f"cannot load the CLIP tokenizer from {clip_dir}: {exc}") from exc


def load_fast_tokenizer(clip_dir: str | os.PathLike[str]):  # -> transformers.CLIPTokenizerFast
    """The CLIP tokenizer as a ``tokenizers`` pipeline (converted from vocab/merges when the folder has no
    tokenizer.json): what a bundle saves so the live side tokenizes without transformers or torch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPTokenizerFast  # type: ignore[attr-defined]  # lazily exported

    try:
        return CLIPTokenizerFast.from_pretrained(str(clip_dir), local_files_only=True)
    except Exception as exc:
        raise ClipLoadError(f"cannot load the CLIP tokenizer (fast) from {clip_dir}: {exc}") from exc
