"""``import_official``: an official DSANet checkpoint -> an ordinary, parity-checked model bundle.

The bundle is written by the same ``write_bundle`` as ``dsanet export``: ``encoder.onnx`` from the
checkpoint's own ``clipmodel.visual`` weights (so no separate CLIP download is needed), ``head.onnx``
with the class text features baked in (computed like the official test: its class descriptions, the
adapted text tower, OpenAI's tokenizer), the same parity checks (head within 1e-4 of the torch model
built from the file, encoder cosine >= 0.9999, INT8 >= 0.995), and ``bundle.json`` recording the
source file's name and sha256, the preset and the class names. The adapted text tower goes in as well
(``text.onnx``, ``tokenizer/tokenizer.json`` converted from OpenAI's BPE vocabulary, ``head_open.onnx``),
so an imported bundle's categories can be edited at deployment like an exported one's. Preprocessing is OpenAI CLIP's:
shortest side to the model's input resolution (bicubic, antialiased), centre crop, CLIP mean/std.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.bundle import Bundle
from engine.clip_formats import write_tokenizer_files
from engine.errors import DsanetError
from engine.preprocess import Preprocessing
from engine.tokenizer import ClipBPETokenizer
from export.official.load import OfficialCheckpoint, load_official, sha256_of

log = logging.getLogger(__name__)

DEFAULT_FPS = {"ucf": 30.0, "xd": 24.0}  # frame rates of the benchmark videos the features came from (as export)


class ImportTargetError(DsanetError):
    """The output directory or the options of an import are unusable."""


def official_model(ck: OfficialCheckpoint, snippet_fps: float | None = None) -> Any:
    """Our torch ``DSANet`` (eval mode) for a validated official checkpoint."""
    from export.official.mapping import build_dsanet

    return build_dsanet(ck.state, ck.clip, ck.preset, ck.clip_geometry, ck.head_geometry,
                        snippet_fps or DEFAULT_FPS[ck.preset])


def load_official_model(path: str | os.PathLike[str], preset: str) -> Any:
    """Read, validate and map an official checkpoint: our torch ``DSANet`` in eval mode."""
    return official_model(load_official(path, preset))


def import_official(checkpoint: str | os.PathLike[str], preset: str, out_dir: str | os.PathLike[str],
                    encoder_int8: bool = False, force: bool = False, name: str | None = None,
                    snippet_fps: float | None = None, max_batch: int = 64, torch_weights: bool = True) -> Bundle:
    """The ``dsanet import-official`` pipeline; returns the loaded, validated bundle."""
    from export.bundle_writer import ExportOptions, write_bundle
    from export.official.mapping import build_vision_model

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ImportTargetError(f"{out} exists and is not empty (use --force to replace it)")
    path = Path(checkpoint)
    ck = load_official(path, preset)
    for note in ck.notes:
        log.warning("%s: %s", path, note)
    g = ck.clip_geometry
    log.info("official %s checkpoint %s: CLIP ViT %dx%d/%d (%d+%d layers, %s), head %d layers, %d adapters",
             preset, path.name, g.image_resolution, g.image_resolution, g.vision_patch_size, g.vision_layers,
             g.transformer_layers, ck.clip_dtype, ck.head_geometry.visual_layers, ck.head_geometry.text_adapt_until)
    fps = float(snippet_fps or DEFAULT_FPS[preset])
    model = official_model(ck, fps)
    head = model.inference_head()
    text = model.text  # the adapted text tower (OpenAI BPE tokenizer): text.onnx, tokenizer/, head_open.onnx
    vision = build_vision_model(ck.clip, g)
    del model
    opts = ExportOptions(name=name or f"dsanet-official-{preset}", encoder_int8=encoder_int8,
                         torch_weights=torch_weights, max_batch=max_batch, snippet_fps=fps,
                         source={"checkpoint": path.name, "checkpoint_sha256": sha256_of(path), "preset": preset},
                         clip=f"official:{path.name}:clipmodel.visual", tiny_clip=False)
    with tempfile.TemporaryDirectory(prefix="dsanet-official-tok-") as tok_dir:
        # OpenAI's BPE as Hugging Face CLIP tokenizer files; the bundle gets their tokenizer.json, and the
        # text parity check runs the official tokenizer (torch side) against it (ONNX side)
        write_tokenizer_files(ClipBPETokenizer.from_bpe_file(), Path(tok_dir))
        return write_bundle(head, vision, out, Preprocessing(size=g.image_resolution), opts, force=force,
                            text=text, clip_dir=tok_dir)
