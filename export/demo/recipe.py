"""The demo recipe: a synthetic model and a synthetic camera, built reproducibly and cached.

``dsanet prepare-demo`` (run by ``make demo`` before ``dsanet run``) makes, under the demo folder
(``engine.demo_paths``: ``$DSANET_DEMO_DIR``, default ``.cache/demo`` in the repository):

1. ``clip/``: the tiny random CLIP (NOT a real CLIP);
2. ``videos/``: short weakly labelled training and test clips (calm scenes; anomalous clips hold one
   event of a known class somewhere inside, and only the video-level label is given to the trainer);
3. ``data/``: their features, extracted by the real ``extract-features`` code, in VadCLIP's layout
   with annotations for the test list;
4. ``run/``: a DSANet head trained by the real trainer on the ``demo`` preset (``configs/train/demo.yaml``:
   normal + the camera's three classes, UCF layout, small batches, few epochs);
5. ``bundle/``: the ONNX bundle written by the real exporter, parity-checked;
6. ``camera.mp4``: the demo camera, calm stretches and three clearly abnormal events, played by the
   service as a looping, real-time file source.

Everything is seeded, so a rebuild gives the same bundle; ``recipe.json`` records the recipe and a
changed recipe rebuilds.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write
from engine.demo_paths import TRAIN_PRESET_DIR, DemoLayout, demo_dir
from export.demo.video import EVENT_CLASSES, EventSpan, SceneRenderer, write_video

log = logging.getLogger(__name__)

RECIPE_VERSION = 2
FPS = 30
TRAIN_SIZE = (256, 144)  # same 16:9 view as the camera after CLIP's resize + centre crop
CAMERA_SIZE = (640, 360)
CAMERA_SECONDS = 90.0
CAMERA_EVENTS = (EventSpan("Explosion", 14.0, 21.0), EventSpan("Fighting", 40.0, 47.0),
                 EventSpan("RoadAccidents", 66.0, 73.0))
CLIP_SECONDS = 8.0  # 15 snippets: one training sequence of the 16-snippet head, no pooling
TRAIN_NORMAL, TRAIN_PER_CLASS, TEST_NORMAL, TEST_PER_CLASS = 8, 4, 3, 1
TRAIN_CROPS = 10  # VadCLIP's ten crops per training clip: more independent samples per rendered video
# The demo's training preset (configs/train/demo.yaml says why each setting differs from UCF-Crime's).
TRAIN_PRESET = "demo.yaml"
OVERRIDES: list[str] = []


def _recipe() -> dict[str, object]:
    return {"version": RECIPE_VERSION, "fps": FPS, "train_size": TRAIN_SIZE, "camera_size": CAMERA_SIZE,
            "camera_events": [e.__dict__ for e in CAMERA_EVENTS], "overrides": OVERRIDES,
            "counts": [TRAIN_NORMAL, TRAIN_PER_CLASS, TEST_NORMAL, TEST_PER_CLASS, TRAIN_CROPS], "clip_seconds": CLIP_SECONDS,
            # a changed training preset or scene renderer rebuilds the demo
            "train_preset": hashlib.sha256((TRAIN_PRESET_DIR / TRAIN_PRESET).read_bytes()).hexdigest(),
            "scenes": hashlib.sha256(inspect.getsource(SceneRenderer).encode()).hexdigest()}


def _videos(out: Path, split: str, n_normal: int, per_class: int, seed: int) -> dict[str, list[tuple[Path, list[EventSpan]]]]:
    """Render one split; returns label -> [(video, events)]."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[tuple[Path, list[EventSpan]]]] = {"Normal": []}
    w, h = TRAIN_SIZE
    for i in range(n_normal):
        p = write_video(out / f"Normal_{split}{i:03d}.mp4", CLIP_SECONDS, (), w, h, FPS, seed=seed * 1000 + i)
        groups["Normal"].append((p, []))
    for c, label in enumerate(EVENT_CLASSES):
        groups[label] = []
        for i in range(per_class):
            length = float(rng.uniform(3.0, 4.5))
            start = float(rng.uniform(1.0, CLIP_SECONDS - length - 1.0))
            ev = [EventSpan(label, start, start + length)]
            p = write_video(out / f"{label}_{split}{i:03d}.mp4", CLIP_SECONDS, ev, w, h, FPS,
                            seed=seed * 1000 + 100 * (c + 1) + i)
            groups[label].append((p, ev))
    return groups


def build_demo(folder: str | os.PathLike[str] | None = None, force: bool = False,
               say: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the demo bundle and camera clip; returns the demo folder."""
    from engine.clip import build_tiny_clip
    from export.bundle_writer import ExportOptions, export_checkpoint
    from export.extract import extract_features
    from export.gt import write_ucf_annotations
    from export.train_config import load_train_config
    from export.trainer import train

    layout = DemoLayout(Path(folder) if folder else demo_dir())
    root = layout.root
    recipe = _recipe()
    if not force and layout.recipe.is_file() and layout.is_built():
        try:
            if json.loads(layout.recipe.read_text()) == json.loads(json.dumps(recipe)):
                say(f"demo: using the cached demo model in {root}")
                return root
        except (OSError, json.JSONDecodeError):
            pass
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    say(f"demo: building the synthetic demo model in {root} (first run only, a few minutes)")
    clip_dir = build_tiny_clip(layout.clip, seed=0)

    data = layout.data
    for split, (n_norm, per_class, seed, list_name) in {
        "train": (TRAIN_NORMAL, TRAIN_PER_CLASS, 1, "ucf_CLIP_rgb.csv"),
        "test": (TEST_NORMAL, TEST_PER_CLASS, 2, "ucf_CLIP_rgbtest.csv"),
    }.items():
        groups = _videos(layout.videos / split, split, n_norm, per_class, seed)
        crops = TRAIN_CROPS if split == "train" else 1
        # anomalous classes first, then Normal, as VadCLIP's lists
        for label in [*EVENT_CLASSES, "Normal"]:
            extract_features([p for p, _ in groups[label]], str(clip_dir), data, crops=crops, label=label,
                             list_name=list_name, show_progress=False)
        if split == "test":
            entries = []
            for label, items in groups.items():
                for p, evs in items:
                    segs = [(int(e.start * FPS), int(e.end * FPS)) for e in evs]
                    entries.append((p.name, label, segs))
            write_ucf_annotations(data / "list" / "Temporal_Anomaly_Annotation.txt", entries)
    say(f"demo: features ready ({time.monotonic() - t0:.0f} s); training the head")

    cfg = load_train_config(TRAIN_PRESET_DIR / TRAIN_PRESET, list(OVERRIDES))
    result = train(cfg, data, str(clip_dir), layout.run, device="cpu", progress=False)
    say(f"demo: trained ({time.monotonic() - t0:.0f} s), best AUC {result.best_metric}; exporting the bundle")
    export_checkpoint(layout.run / "best.safetensors", str(clip_dir), layout.bundle,
                      ExportOptions(name="dsanet-demo (synthetic)"), force=True)

    write_video(layout.camera, CAMERA_SECONDS, CAMERA_EVENTS, *CAMERA_SIZE, fps=FPS, seed=7, scale=2)
    atomic_write(layout.recipe, json.dumps(recipe, indent=2))  # written last: it marks the demo complete
    say(f"demo: ready in {time.monotonic() - t0:.0f} s")
    return root
