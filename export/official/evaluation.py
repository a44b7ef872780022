"""What ``dsanet eval --checkpoint`` may be: a trainer checkpoint, an official ``.pth``, or a bundle.

An official checkpoint is imported in memory (``export.official.importer``) and scored by the same
``evaluate_model`` as a trainer checkpoint, so the authors' weights reproduce the paper's table on
the VadCLIP features in one command. A bundle is scored through its ``head.onnx`` with ONNX Runtime,
chunked exactly like the official test (``process_split``: 256-snippet chunks with per-chunk lengths,
the first T rows kept), which checks what the live service will run, not only the torch model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CheckpointError

TRAINER, OFFICIAL, BUNDLE = "trainer", "official", "bundle"


def checkpoint_kind(path: str | os.PathLike[str]) -> str:
    """``bundle`` (a folder with bundle.json), ``trainer`` (.safetensors) or ``official`` (any other file)."""
    p = Path(path)
    if p.is_dir():
        if (p / "bundle.json").is_file():
            return BUNDLE
        raise CheckpointError(f"{p}: a folder without bundle.json (give a bundle, a .safetensors checkpoint or an "
                              "official .pth)")
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint or bundle")
    return TRAINER if p.suffix == ".safetensors" else OFFICIAL


def score_bundle(bundle_dir: str | os.PathLike[str], rows: Sequence[Any], preset: str, progress: bool = False,
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per test video (scores [T], class probabilities [T, C]) from the bundle's head, official chunking."""
    from tqdm import tqdm

    from engine.bundle import load_bundle
    from engine.runtime import HEAD, HeadModel, ModelPart, create_runner
    from export.data import class_names, load_features, process_split

    bundle = load_bundle(bundle_dir)
    if list(bundle.class_names) != class_names(preset):
        raise CheckpointError(f"{bundle_dir}: the bundle's classes {list(bundle.class_names)} are not the {preset} "
                              "test classes (wrong -c preset?)")
    head = HeadModel(bundle, create_runner("onnxruntime", ModelPart(bundle, HEAD)))
    scores: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for row in tqdm(rows, desc="eval", leave=False, disable=not progress):
        feat = load_features(row.path, bundle.embedding_width)
        chunks, lens = process_split(feat, bundle.max_window)
        lengths = np.clip(np.asarray(lens, dtype=np.int64), 1, bundle.max_window)
        got_s, got_p = [], []
        for i in range(0, len(chunks), head.max_batch):
            s, p = head.score(chunks[i:i + head.max_batch], lengths[i:i + head.max_batch])
            got_s.append(s.reshape(-1))
            got_p.append(p.reshape(-1, p.shape[-1]))
        t = int(feat.shape[0])
        scores.append(np.concatenate(got_s)[:t])
        probs.append(np.concatenate(got_p)[:t])
    return scores, probs


def evaluate_source(path: str | os.PathLike[str], rows: Sequence[Any], gt: Any, preset: str, device: str = "cpu",
                    batch_size: int = 32, progress: bool = False,
                    novel_classes: Sequence[str] | None = None) -> dict[str, Any]:
    """AUC / AP / mAP of an official checkpoint or a bundle on the test list (``evaluate_outputs``)."""
    from export.evaluate import evaluate_outputs

    kind = checkpoint_kind(path)
    if kind == BUNDLE:
        scores, probs = score_bundle(path, rows, preset, progress)
        return evaluate_outputs(scores, probs, gt, preset, novel_classes)
    if kind == OFFICIAL:
        from export.model_eval import evaluate_model
        from export.official.importer import load_official_model

        model = load_official_model(path, preset).to(device)
        return evaluate_model(model, rows, gt, preset, device, batch_size, progress=progress,
                              novel_classes=novel_classes)
    raise CheckpointError(f"{path}: a trainer checkpoint needs --clip (the CLIP folder it was trained with)")
