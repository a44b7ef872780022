"""A small but complete bundle for tests, benchmarks and demos: tiny random CLIP, real DSANet head layout.

Scores mean nothing; shapes, names, the exporter, the parity checks and every code path of the
service are the real ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.preprocess import Preprocessing
from export.bundle_writer import ExportOptions, load_checkpoint_model, write_bundle


def build_tiny_bundle(out_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
                      clip_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                      encoder_int8: bool = False, force: bool = True) -> Path:
    """A complete bundle on the tiny random CLIP: DSANet (UCF layout, random init or ``checkpoint``).

    ``clip_dir`` defaults to the shared tiny CLIP (``resolve_clip_dir('tiny')``). Scores mean nothing;
    shapes, names and every code path are the real ones.
    """
    import torch

    from engine.clip import build_tiny_clip, load_vision_model, resolve_clip_dir
    from engine.model import DSANetConfig, build_model, text_width_of

    if clip_dir is None:
        clip = resolve_clip_dir("tiny")
    else:
        clip = Path(clip_dir)
        if not (clip / "config.json").exists():
            build_tiny_clip(clip)
    opts = ExportOptions(encoder_int8=encoder_int8, clip="tiny", tiny_clip=True, snippet_fps=30.0)
    if checkpoint is not None:
        model, source = load_checkpoint_model(checkpoint, clip)
        opts.source = source
        opts.evaluation = source.get("evaluation")
    else:
        torch.manual_seed(seed)
        model = build_model(DSANetConfig(text_width=text_width_of(clip)), clip)
        opts.source = {"preset": "ucf"}
    opts.name = f"tiny-{Path(out_dir).name}"
    write_bundle(model.eval().inference_head(), load_vision_model(clip), out_dir, Preprocessing.from_clip_dir(clip),
                 opts, force=force)
    return Path(out_dir)
