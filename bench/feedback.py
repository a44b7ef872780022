"""Fewer false alarms per site: base model vs calibration vs fine-tuning from 1, 5 and 20 feedback marks.

A synthetic site built through the real pipeline, end to end:

1. **Base model.** Short weakly labelled training clips (calm scenes; Explosion / Fighting / RoadAccidents
   clips from ``export.demo.video``), features from the real extractor (``export.extract``, tiny random
   CLIP), the real trainer (UCF preset, 32-snippet window; 12 epochs quick, 20 full) and the real
   exporter (ONNX, parity-checked).
2. **The site.** One camera the base model was not trained for: the same kind of calm scene, plus a
   recurring benign pattern (6 s every 30 s; ``--benign``, default a flickering magenta advertising
   screen) plus scripted true events (one every 60 s, cycling through the three classes). Its features
   come from the same extractor. The benign pattern is chosen with ``--probe``, which prints, for every
   candidate, the base model's live score during it and the cosine of its embedding to each true class:
   a pattern must be one the base model flags (else there is nothing to cut) and should be one the tiny
   random CLIP embeds apart from the true events (the nearer it embeds, the more fine-tuning costs the
   true events' scores: with the orange ``flare``, cosine 0.93 to the explosions, they fall from 0.97
   to 0.73 after one mark in the quick run). The first half of the timeline is the
   **history** (what the operator sees and marks, and the calibration period); the second half is the
   **evaluation** period.
3. **Scores and events** through the live code: ``stream.window.EmbeddingWindow`` + the ONNX head
   (``stream.offline.window_scores``) and ``stream.events.EventMachine`` (``stream.offline.run_events``).
   A start event that overlaps no scripted event is a false alarm; a scripted event is recalled when an
   event overlaps it.
4. **Calibration**: ``stream.calibration.learn_thresholds`` on the history's scores (target 1 alert per
   hour, floor 0.5), then the evaluation period with the learned thresholds.
5. **Feedback marks**, kept the way the service's feedback store keeps them (site-data contract:
   ``list.csv``, ``features/<camera>/<id>.npy``, ``snippets.json``, ``examples.jsonl``, with the
   ``stream.config.FeedbackConfig`` defaults): each of the base model's history events in time order
   becomes one mark, a false alarm (label Normal) or a confirmed event (its scripted class), holding the
   event's rows plus 64 rows of context before and after (cut at the end of the history) and its
   ``event_rows``; calm samples (64 rows all below the off-threshold, one per 900 s) are added when the
   history has them. ``export.finetune.finetune`` (what ``dsanet finetune`` runs, with its defaults and
   replay of the base training features) adapts the head from the first 1, 5 and 20 marks and writes a
   bundle through the real exporter; each is scored on the evaluation period. One mark holds no
   held-out true event, so that one runs with ``allow_unchecked``; from 5 marks on the held-out check
   must pass, and a refusal keeps the base model (the row says so).
6. **Anti-forgetting**: frame AUC on the base model's own test features before and after fine-tuning on
   the 20-mark training split with no guard, the L2 anchor only, replay only, and both (quick: none and
   both).

Prints the tables (per-class recall, mean live scores, the held-out check, the site data's bytes on
disk), writes ``docs/img/feedback.png`` and ends with
``RESULT fa_base=X fa_calibrated=X fa_ft1=X fa_ft5=X fa_ft20=X recall_base=X recall_ft20=X``
(false alarms per hour of the evaluation period, recall as a fraction). ``--quick``: a smaller model and
site (same keys; its history holds fewer than 20 marks, and "ft20" uses all of them). Artefacts are
cached under ``.cache/bench/feedback-<mode>`` (``--fresh`` rebuilds them).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cache_dir, print_header, result_line, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("Explosion", "Fighting", "RoadAccidents")
TRAIN_FPS = 30
SITE_FPS = 15
SIZE = (256, 144)
BEACON_EVERY, BEACON_FIRST, BEACON_LEN = 30.0, 10.0, 6.0
EVENT_EVERY, EVENT_FIRST, EVENT_LEN = 60.0, 25.0, 6.0  # 9 s of calm between an event and the benign pattern
MARK_COUNTS = (1, 5, 20)
DEFAULT_BENIGN = "magenta"


@dataclass(frozen=True)
class Mode:
    name: str
    train_normal: int
    train_per_class: int
    test_normal: int
    test_per_class: int
    clip_seconds: float
    crops: int
    epochs: int
    site_seconds: float


QUICK = Mode("quick", 4, 2, 2, 1, 8.0, 10, 12, 600.0)
FULL = Mode("full", 8, 4, 3, 1, 12.0, 10, 20, 1800.0)


# --- rendering --------------------------------------------------------------------------------------------
def _spans(total: float, first: float, every: float, length: float) -> list[tuple[float, float]]:
    out, t = [], first
    while t + length < total:
        out.append((t, t + length))
        t += every
    return out


def site_timeline(seconds: float) -> tuple[list[tuple[float, float]], list[tuple[str, float, float]]]:
    beacons = _spans(seconds, BEACON_FIRST, BEACON_EVERY, BEACON_LEN)
    events = [(CLASSES[i % len(CLASSES)], a, b) for i, (a, b) in enumerate(_spans(seconds, EVENT_FIRST, EVENT_EVERY,
                                                                                   EVENT_LEN))]
    return beacons, events


class Benign:
    """The site's recurring benign pattern, drawn over a calm frame (float RGB in [0, 1]).

    Candidates, each a common thing on a real camera that covers a large share of the frame (the tiny
    random CLIP responds to colour and coverage, so a small pattern would embed like a calm frame):

    - ``flare``: a pulsing orange warning flare at a fixed spot (the colour of the base model's explosions);
    - ``headlights``: a car's two headlights sweeping across, white glare on a darkened scene;
    - ``green``: a green floodlight / neon sign that pulses on, the scene washed green;
    - ``magenta``: a flickering magenta advertising screen filling most of the frame;
    - ``white``: a white floodlight switching on (the scene washed out, camera exposure lagging).

    ``--probe`` prints how the base model scores each and how far each embeds from the true events.
    """

    NAMES = ("flare", "headlights", "green", "magenta", "white")

    def __init__(self, name: str, size: tuple[int, int], seed: int) -> None:
        if name not in self.NAMES:
            raise ValueError(f"unknown benign pattern {name!r}; expected one of {', '.join(self.NAMES)}")
        self.name = name
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.xx, self.yy = xx / w, yy / h
        self.rng = np.random.default_rng(seed)

    def draw(self, img: np.ndarray, t: float, u: float) -> np.ndarray:
        """``img`` with the pattern at ``t`` seconds, ``u`` in [0, 1) through the current occurrence."""
        xx, yy, rng = self.xx, self.yy, self.rng
        f = np.float32
        if self.name == "flare":
            d = np.sqrt((xx - 0.45) ** 2 + ((yy - 0.55) * 0.75) ** 2)
            r = 0.46 + 0.06 * math.sin(2 * math.pi * 1.5 * t)
            glow = np.clip(1.0 - d / r, 0, 1) ** 0.5 * (0.75 + 0.25 * rng.random())
            noise = rng.random(d.shape).astype(f) * 0.35
            col = np.stack([np.ones_like(d), 0.55 + 0.3 * np.clip(1 - d / r, 0, 1), 0.1 * np.ones_like(d)], axis=-1)
            a = np.clip(glow + noise * glow, 0, 1)[..., None]
            return img * (1 - a) + col * a
        if self.name == "headlights":
            out = img * f(0.55)
            cx = -0.2 + 1.4 * u
            for dy in (-0.08, 0.08):
                d = np.sqrt(((xx - cx) * 1.0) ** 2 + ((yy - 0.6 - dy) * 1.6) ** 2)
                glare = np.clip(1.0 - d / 0.32, 0, 1) ** 0.7
                out = out * (1 - glare[..., None]) + np.array([1.0, 0.97, 0.85], f) * glare[..., None]
            return out
        if self.name == "green":
            level = 0.65 + 0.25 * math.sin(2 * math.pi * 0.8 * t)
            d = np.sqrt((xx - 0.55) ** 2 + ((yy - 0.45) * 0.8) ** 2)
            glow = np.clip(1.1 - d / 0.6, 0, 1) * level
            col = np.array([0.1, 0.95, 0.25], f)
            out = img * np.array([0.35, 1.0, 0.45], f)
            return out * (1 - glow[..., None]) + col * glow[..., None]
        if self.name == "magenta":
            on = 0.8 + 0.2 * float(rng.random())
            box = ((np.abs(xx - 0.5) < 0.38) & (np.abs(yy - 0.45) < 0.34)).astype(f) * on
            stripes = 0.85 + 0.15 * np.sin(2 * math.pi * (yy * 18 + 3 * t)).astype(f)
            col = np.stack([0.95 * stripes, 0.1 * stripes, 0.85 * stripes], axis=-1)
            return img * (1 - box[..., None]) + col * box[..., None]
        level = min(1.0, 3.0 * u) * (0.9 - 0.25 * u)  # white: exposure jumps, then the camera adapts a little
        return img * (1 - level) + f(level) * np.array([1.0, 1.0, 0.98], f)


def render_clip(path: Path, seconds: float, events: list[tuple[str, float, float]],
                benign: list[tuple[str, float, float]], seed: int) -> Path:
    """A site-like clip: the demo's calm scene + scripted events (``export.demo.video``) + benign patterns
    ``(name, start, end)`` drawn over it; H.264 at the site's frame rate."""
    import av

    from export.demo.video import EventSpan, SceneRenderer

    scene = SceneRenderer(*SIZE, SITE_FPS, [EventSpan(c, a, b) for c, a, b in events], seed=seed)
    painters = {name: Benign(name, SIZE, seed + 7) for name in {b[0] for b in benign}}
    w, h = SIZE
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=SITE_FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(SITE_FPS)}
        for i in range(int(round(seconds * SITE_FPS))):
            t = i / SITE_FPS
            img = scene.frame(i)
            for name, a, b in benign:
                if a <= t < b:
                    x = painters[name].draw(img.astype(np.float32) / 255.0, t, (t - a) / (b - a))
                    img = (np.clip(x, 0, 1) * 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def render_site(path: Path, seconds: float, benign: str, seed: int = 5) -> Path:
    """The site camera: demo calm scene + the recurring benign pattern + scripted events."""
    beacons, events = site_timeline(seconds)
    return render_clip(path, seconds, events, [(benign, a, b) for a, b in beacons], seed)


# --- base model -----------------------------------------------------------------------------------------
def build_base(work: Path, mode: Mode, say: Any) -> tuple[Path, Path, Path]:
    """(CLIP folder, base data root, base bundle), cached."""
    from engine.clip import build_tiny_clip
    from export.bundle_writer import ExportOptions, export_checkpoint
    from export.demo.video import EventSpan, write_video
    from export.extract import extract_features
    from export.gt import write_ucf_annotations
    from export.train_config import load_train_config
    from export.trainer import train

    clip, data, bundle = work / "clip", work / "data", work / "base-bundle"
    if (bundle / "bundle.json").is_file():
        return clip, data, bundle
    for p in (clip, data, work / "videos", work / "run"):
        shutil.rmtree(p, ignore_errors=True)
    build_tiny_clip(clip, seed=0)
    rng = np.random.default_rng(3)
    w, h = SIZE
    for split, n_norm, per_class, seed, list_name in (
            ("train", mode.train_normal, mode.train_per_class, 1, "ucf_CLIP_rgb.csv"),
            ("test", mode.test_normal, mode.test_per_class, 2, "ucf_CLIP_rgbtest.csv")):
        groups: dict[str, list[tuple[Path, list[Any]]]] = {}
        for c, label in enumerate(CLASSES):
            groups[label] = []
            for i in range(per_class):
                length = float(rng.uniform(3.0, 5.0))
                start = float(rng.uniform(1.0, mode.clip_seconds - length - 1.0))
                ev = [EventSpan(label, start, start + length)]
                p = write_video(work / "videos" / split / f"{label}_{split}{i:03d}.mp4", mode.clip_seconds, ev, w, h,
                                TRAIN_FPS, seed=seed * 1000 + 100 * (c + 1) + i)
                groups[label].append((p, ev))
        groups["Normal"] = [(write_video(work / "videos" / split / f"Normal_{split}{i:03d}.mp4", mode.clip_seconds, (),
                                         w, h, TRAIN_FPS, seed=seed * 1000 + i), []) for i in range(n_norm)]
        for label in [*CLASSES, "Normal"]:
            extract_features([p for p, _ in groups[label]], str(clip), data, crops=mode.crops if split == "train" else 1,
                             label=label, list_name=list_name, show_progress=False)
        if split == "test":
            entries = [(p.name, label, [(int(e.start * TRAIN_FPS), int(e.end * TRAIN_FPS)) for e in evs])
                       for label, items in groups.items() for p, evs in items]
            write_ucf_annotations(data / "list" / "Temporal_Anomaly_Annotation.txt", entries)
    say(f"base: features ready; training ({mode.epochs} epochs)")
    cfg = load_train_config(REPO / "configs" / "train" / "ucf.yaml", [
        f"epochs={mode.epochs}", "batch.normal=8", "batch.abnormal=8", "eval.every_steps=5", "model.visual_length=32",
        "model.decoder_depth=2", "optim.main.lr=1e-4", "optim.sgnm.lr=1e-4", "optim.sgnm.warmup_iters=5",
        f"optim.main.cosine_t_max={mode.epochs}", "optim.sgnm.planned_iterations=null"])
    result = train(cfg, data, str(clip), work / "run", device="cpu", progress=False)
    say(f"base: best test AUC {result.best_metric}; exporting")
    export_checkpoint(work / "run" / "best.safetensors", str(clip), bundle, ExportOptions(name="feedback-base"),
                      force=True)
    return clip, data, bundle


def site_features(work: Path, clip: Path, mode: Mode, snippet_seconds: float, benign: str) -> np.ndarray:
    from export.extract import extract_features

    raw = work / f"site-data-raw-{benign}"
    feat = raw / "features" / f"site-{benign}__0.npy"
    if not feat.is_file():
        video = render_site(work / f"site-{benign}.mp4", mode.site_seconds, benign)
        extract_features([video], str(clip), raw, crops=1, snippet_seconds=snippet_seconds,
                         label="Normal", list_name="site.csv", show_progress=False)
        video.unlink()
    return np.load(feat)


# --- scoring and events ----------------------------------------------------------------------------------
def score_snippets(bundle_dir: Path, feats: np.ndarray, seconds: float, origin: float) -> tuple[list[Any], Any]:
    """Live window + ONNX head over the site's embeddings: (WindowScore per snippet, bundle)."""
    from engine.runtime import load_models
    from stream.config import WindowConfig
    from stream.offline import window_scores
    from stream.types import SnippetEmbedding

    bundle, _enc, head = load_models(bundle_dir, runtime="onnxruntime")
    length = min(WindowConfig().length, bundle.max_window)
    lookahead = min(WindowConfig().lookahead, length - 1)
    embs = [SnippetEmbedding("site", i, origin + i * seconds, origin + (i + 1) * seconds, feats[i])
            for i in range(len(feats))]
    return window_scores(embs, head.score, length, lookahead, max_window=bundle.max_window, camera="site"), bundle


def run_machine(scores: list[Any], bundle: Any, on: float, off: float) -> list[tuple[float, float]]:
    """Event (start, end) spans from the live event machine."""
    from stream.config import EventsConfig
    from stream.events import EventMachine
    from stream.offline import run_events

    cfg = EventsConfig().model_copy(update={"on_threshold": on, "off_threshold": off})
    machine = EventMachine("site", cfg, list(bundle.class_names), list(bundle.display_names))
    evs = run_events(scores, machine)
    starts = {e.id: e.start_time for e in evs if e.type == "start"}
    ends = {e.id: (e.end_time if e.end_time is not None else e.updated_time) for e in evs if e.type == "end"}
    return sorted((s, ends.get(i, s)) for i, s in starts.items())


def _overlaps(a: tuple[float, float], b: tuple[float, float], slack: float = 1.0) -> bool:
    return a[0] < b[1] + slack and b[0] < a[1] + slack


def tally(spans: list[tuple[float, float]], truth: list[tuple[str, float, float]], window: tuple[float, float],
          origin: float) -> dict[str, Any]:
    """False alarms (events overlapping no scripted event) and recall, overall and per class, in ``window``."""
    lo, hi = window
    inside = [s for s in spans if lo <= s[0] - origin < hi]
    truth_in = [(c, a + origin, b + origin) for c, a, b in truth if lo <= a < hi]
    false = [s for s in inside if not any(_overlaps(s, (a, b)) for _, a, b in truth_in)]
    recalled = [t for t in truth_in if any(_overlaps(s, (t[1], t[2])) for s in spans)]
    hours = (hi - lo) / 3600.0
    per_class = {c: (sum(t[0] == c for t in recalled), sum(t[0] == c for t in truth_in)) for c in CLASSES}
    return {"fa": len(false), "fa_per_hour": len(false) / hours, "events": len(truth_in), "recalled": len(recalled),
            "recall": len(recalled) / len(truth_in) if truth_in else float("nan"), "per_class": per_class}


# --- the probe: which benign pattern does the base model flag, and is it apart from the true events? ----
def probe(work: Path, clip: Path, base_dir: Path, snippet_seconds: float, say: Any) -> list[tuple[Any, ...]]:
    """Per candidate pattern: the base model's mean live score during it and on the calm scene around it,
    the share of its snippets at or above the default on-threshold, and the cosine of its mean embedding
    (minus the calm mean) to each true class's (minus the calm mean): near 1 means the tiny CLIP embeds
    the pattern like that class, and no head can tell them apart."""
    from export.extract import extract_features
    from stream.config import EventsConfig

    on = EventsConfig().on_threshold
    root = work / "probe"
    occ = [(8.0, 14.0), (30.0, 36.0)]  # two occurrences of 6 s in a 44 s clip
    seconds = 44.0
    clips = {name: render_clip(work / "probe-videos" / f"probe-{name}.mp4", seconds, [],
                               [(name, a, b) for a, b in occ], seed=11) for name in Benign.NAMES}
    ev_spans = [(c, 8.0 + 14.0 * k, 14.0 + 14.0 * k) for k, c in enumerate(CLASSES)]
    clips["events"] = render_clip(work / "probe-videos" / "probe-events.mp4", 54.0, ev_spans, [], seed=11)
    shutil.rmtree(root, ignore_errors=True)
    extract_features(list(clips.values()), str(clip), root, crops=1, snippet_seconds=snippet_seconds,
                     label="Normal", list_name="probe.csv", show_progress=False)
    shutil.rmtree(work / "probe-videos", ignore_errors=True)

    def mask(n: int, spans: list[tuple[float, float]], pad: float = 0.0) -> np.ndarray:
        t = (np.arange(n) + 0.5) * snippet_seconds
        return np.any([(t >= a - pad) & (t < b + pad) for a, b in spans], axis=0)

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        f = np.load(root / "features" / f"probe-{name}__0.npy")
        sc, _ = score_snippets(base_dir, f, snippet_seconds, 0.0)
        return f, np.asarray([w.score for w in sc])

    ev_f, ev_s = load("events")
    calm_m = ~mask(len(ev_f), [(a, b) for _, a, b in ev_spans], pad=2.0)
    mu_calm = ev_f[calm_m].mean(axis=0)
    cls_dir = {}
    rows = [("(true events)", float(ev_s[~calm_m].mean()), float(ev_s[calm_m].mean()),
             float((ev_s[mask(len(ev_f), [(a, b) for _, a, b in ev_spans])] >= on).mean()), "", "")]
    for c, a, b in ev_spans:
        cls_dir[c] = ev_f[mask(len(ev_f), [(a, b)])].mean(axis=0) - mu_calm

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))

    for name in Benign.NAMES:
        f, sc = load(name)
        m = mask(len(f), occ)
        calm = ~mask(len(f), occ, pad=2.0)
        d = f[m].mean(axis=0) - mu_calm
        sims = {c: cos(d, v) for c, v in cls_dir.items()}
        raw = max(cos(f[m].mean(axis=0), ev_f[mask(len(ev_f), [(a, b)])].mean(axis=0)) for _, a, b in ev_spans)
        rows.append((name, float(sc[m].mean()), float(sc[calm].mean()), float((sc[m] >= on).mean()),
                     " ".join(f"{c[:4]} {v:+.2f}" for c, v in sims.items()), f"{raw:.3f}"))
    say("probe done")
    return rows


# --- marks (site data in the feedback contract) -----------------------------------------------------------
def make_marks(feats: np.ndarray, seconds: float, origin: float, spans: list[tuple[float, float]],
               truth: list[tuple[str, float, float]], history_end: float, scores: np.ndarray, off: float
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(marks in time order, calm normal samples) from the base model's history events, kept the way the
    service's feedback store keeps them (``stream.config.FeedbackConfig`` defaults): a mark holds the
    event's rows plus ``context_snippets`` rows before and after (fewer at the edges of the history) and
    records ``event_rows``; a calm sample is ``normal_sample_snippets`` rows all scored below the
    off-threshold, taken every ``normal_sample_interval`` seconds."""
    from stream.config import FeedbackConfig

    fb = FeedbackConfig()
    ctx = fb.context_snippets
    limit = int(history_end / seconds)  # rows of the history: nothing of the evaluation half is stored
    marks = []
    for s, e in spans:
        if s - origin >= history_end:
            continue
        hit = [c for c, a, b in truth if _overlaps((s, e), (a + origin, b + origin))]
        first = int(round((s - origin) / seconds))
        last = min(limit - 1, max(first, int(math.ceil((e - origin) / seconds)) - 1))
        i0, i1 = max(0, first - ctx), min(limit, last + 1 + ctx)
        marks.append({"kind": "confirmed" if hit else "false_alarm", "label": hit[0] if hit else "Normal",
                      "start": origin + i0 * seconds, "end": origin + i1 * seconds, "i0": i0, "i1": i1,
                      "event_rows": [first - i0, last - i0]})
    calm = []
    n = fb.normal_sample_snippets
    every = max(1, int(round(fb.normal_sample_interval / seconds)))
    busy = np.zeros(limit, bool)
    for s, e in spans:
        busy[max(0, int((s - origin) / seconds)):min(limit, int(math.ceil((e - origin) / seconds)))] = True
    for i1 in range(every, limit + 1, every):
        i0 = i1 - n
        if i0 >= 0 and scores[i0:i1].max() < off and not busy[i0:i1].any():
            calm.append({"kind": "normal_sample", "label": "Normal", "start": origin + i0 * seconds,
                         "end": origin + i1 * seconds, "i0": i0, "i1": i1, "event_rows": None})
    return marks, calm


def write_site_data(root: Path, feats: np.ndarray, items: list[dict[str, Any]], bundle: Any) -> Path:
    from export.data import write_list, write_snippet_info

    shutil.rmtree(root, ignore_errors=True)
    head_sha = bundle.files[bundle.head.file].sha256
    rows, lines = [], []
    for k, it in enumerate(sorted(items, key=lambda x: x["start"])):
        ex_id = f"site-{k:04d}"
        rel = f"features/site/{ex_id}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, feats[it["i0"]:it["i1"]].astype(np.float32))
        rows.append((rel, it["label"]))
        rec = {"id": ex_id, "camera": "site", "kind": it["kind"], "label": it["label"],
               "event_id": None if it["kind"] == "normal_sample" else f"ev-{k}",
               "start": it["start"], "end": it["end"], "bundle": head_sha, "marked_at": it["end"] + 60.0}
        if it["event_rows"] is not None:
            rec["event_rows"] = it["event_rows"]
        lines.append(json.dumps(rec))
    write_list(root / "list.csv", rows)
    write_snippet_info(root, bundle.snippet_frames, bundle.snippet_fps, bundle.snippet_seconds)
    (root / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def frame_auc(model: Any, data: Path) -> float:
    from export.data import default_lists, read_list
    from export.gt import load_ground_truth
    from export.model_eval import evaluate_model

    _, test_csv = default_lists("ucf", data)
    rows = read_list(test_csv, data)
    return float(evaluate_model(model, rows, load_ground_truth("ucf", data, rows), "ucf")["auc"])


def plot(path: Path, rows: list[tuple[str, float, float, float, float]], title: str) -> Path | None:
    """Two panels per model: false alarms per hour (bars) with true-event recall (line), and the mean live
    score during the benign pattern and during true events (what moves the alarms)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    names = [r[0] for r in rows]
    fa = [r[1] for r in rows]
    rec = [100 * r[2] for r in rows]
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(rows))
    ax1.bar(x, fa, color="#d9822b", width=0.55, label="false alarms / hour")
    ax1.set_ylabel("false alarms per hour")
    ax1.set_ylim(0, max(max(fa), 1.0) * 1.18)
    ax1.set_xticks(x, names)
    ax2 = ax1.twinx()
    ax2.plot(x, rec, "o-", color="#2b6cd9", label="true-event recall")
    ax2.set_ylim(0, 118)
    ax2.set_ylabel("true-event recall (%)")
    for i, v in enumerate(fa):
        ax1.annotate(f"{v:.0f}", (i, v), ha="center", va="bottom", fontsize=8)
    ax1.set_title(title, fontsize=9)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax3.plot(x, [r[3] for r in rows], "s-", color="#c0399a", label="during the benign pattern")
    ax3.plot(x, [r[4] for r in rows], "o-", color="#2b6cd9", label="during true events")
    ax3.axhline(0.6, color="grey", lw=0.8, ls="--", label="on-threshold 0.6")
    ax3.set_ylim(0, 1.05)
    ax3.set_xticks(x, names)
    ax3.set_ylabel("mean live score (evaluation half)")
    ax3.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _recall_cell(r: dict[str, Any]) -> str:
    per = " ".join(f"{c[0]} {h}/{n}" for c, (h, n) in r["per_class"].items())
    return f"{r['recalled']}/{r['events']} ({per})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller base model and site (a few minutes)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the cached base model and site")
    ap.add_argument("--benign", default=DEFAULT_BENIGN, choices=Benign.NAMES,
                    help=f"the site's recurring benign pattern (default {DEFAULT_BENIGN}; see --probe)")
    ap.add_argument("--probe", action="store_true",
                    help="print how the base model scores each candidate benign pattern, and how close each embeds "
                         "to the true events, then stop")
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "feedback.png"), help="PNG to write ('' = none)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("export", "engine", "stream"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mode = QUICK if args.quick else FULL
    print_header(f"feedback: false alarms per hour and recall on an untuned synthetic site ({mode.name})")
    work = cache_dir(f"feedback-{mode.name}")
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {msg}", flush=True)

    from engine.bundle import load_bundle
    from export.finetune import (
        FinetuneOptions,
        FinetuneRefused,
        adapt,
        finetune,
        model_from_head,
        read_site_data,
        split_by_time,
    )
    from stream.calibration import learn_thresholds
    from stream.config import EventsConfig

    clip, data, base_dir = build_base(work, mode, say)
    base = load_bundle(base_dir)
    sec = base.snippet_seconds
    if args.probe:
        rows = probe(work, clip, base_dir, sec, say)
        print()
        print("base model's live scores: mean during each candidate pattern and on the calm scene around it; share of "
              f"its snippets >= {EventsConfig().on_threshold}; cosine of (pattern mean - calm mean) to (class mean - "
              "calm mean) per true class; largest raw cosine of the mean embeddings")
        print(table(["pattern", "mean score in it", "calm around", "share flagged", "centred cosine to E/F/R",
                     "raw cosine"], rows))
        return 0
    feats = site_features(work, clip, mode, sec, args.benign)
    say(f"site: {len(feats)} snippets of {sec:.3f} s ({len(feats) * sec / 60:.1f} min), benign pattern {args.benign}")
    beacons, truth = site_timeline(mode.site_seconds)
    origin = 1_780_000_000.0  # wall clock of the first snippet
    history_end = mode.site_seconds / 2
    evaluation = (history_end, mode.site_seconds)
    ev_cfg = EventsConfig()
    on0, off0 = ev_cfg.on_threshold, ev_cfg.off_threshold

    base_scores, bundle = score_snippets(base_dir, feats, sec, origin)
    s_arr = np.asarray([w.score for w in base_scores])
    spans = run_machine(base_scores, bundle, on0, off0)
    results: dict[str, dict[str, Any]] = {"base": tally(spans, truth, evaluation, origin)}
    beacon_mask = np.zeros(len(feats), bool)
    event_mask = np.zeros(len(feats), bool)
    for a, b in beacons:
        beacon_mask[int(a / sec):int(b / sec)] = True
    for _, a, b in truth:
        event_mask[int(a / sec):int(b / sec)] = True
    late = np.arange(len(feats)) * sec >= history_end

    def mean_scores(arr: np.ndarray) -> dict[str, float]:
        """Mean live score of the evaluation half during the benign pattern and during true events."""
        return {"s_benign": float(arr[beacon_mask & late].mean()), "s_events": float(arr[event_mask & late].mean())}

    results["base"].update(mean_scores(s_arr))
    say(f"base: mean live score calm {s_arr[~beacon_mask & ~event_mask].mean():.3f}, during the benign pattern "
        f"{s_arr[beacon_mask].mean():.3f}, during true events {s_arr[event_mask].mean():.3f}")

    hist_n = int(history_end / sec)
    cal = learn_thresholds([float(x) for x in s_arr[:hist_n]], sec, ev_cfg, target_per_day=24.0, floor=0.5)
    say(f"calibration on the history: on {cal.on:.3f} off {cal.off:.3f} (expected {cal.expected_per_day:.1f}/day)")
    results["calibrated"] = tally(run_machine(base_scores, bundle, cal.on, cal.off), truth, evaluation, origin)
    results["calibrated"].update(mean_scores(s_arr), on=cal.on)

    marks, calm = make_marks(feats, sec, origin, spans, truth, history_end, s_arr, off0)
    say(f"history: {len(marks)} base-model events ({sum(m['kind'] == 'false_alarm' for m in marks)} false alarms), "
        f"{len(calm)} calm samples")
    ft_rows = []
    replay = str(data)
    defaults = FinetuneOptions()
    site_bytes: dict[int, tuple[int, int]] = {}
    for n in MARK_COUNTS:
        used = marks[:n]
        site = write_site_data(work / f"site-data-{n}", feats, used + calm, bundle)
        site_bytes[n] = (folder_bytes(site), sum(m["i1"] - m["i0"] for m in used + calm))
        out = work / f"ft-bundle-{n}"
        # one mark holds no held-out true event: the check cannot run, and dsanet finetune then needs
        # --allow-unchecked; from 5 marks on the check must pass (a refusal keeps the base model)
        opts = replace(defaults, replay=replay, allow_unchecked=n == 1)
        kinds = {k: sum(m["kind"] == k for m in used) for k in ("false_alarm", "confirmed")}
        try:
            _, report = finetune(base_dir, site, out, opts, force=True, name=f"feedback-ft{n}")
        except FinetuneRefused as exc:
            say(f"ft{n}: refused: {str(exc).splitlines()[0]}")
            results[f"ft{n}"] = {**results["base"], "marks": len(used), "refused": True}
            ft_rows.append((n, len(used), kinds["false_alarm"], kinds["confirmed"], "refused (base kept)", "-"))
            continue
        sc, b2 = score_snippets(out, feats, sec, origin)
        results[f"ft{n}"] = tally(run_machine(sc, b2, on0, off0), truth, evaluation, origin)
        results[f"ft{n}"].update(mean_scores(np.asarray([w.score for w in sc])), marks=len(used))
        check = (f"{report.before.events_detected}/{report.before.events} -> "
                 f"{report.after.events_detected}/{report.after.events}, false flagged "
                 f"{report.before.false_flagged}/{report.before.false} -> "
                 f"{report.after.false_flagged}/{report.after.false}") if report.checked else "unchecked (no held-out event)"
        ft_rows.append((n, len(used), kinds["false_alarm"], kinds["confirmed"], check,
                        json.dumps(report.train_counts, sort_keys=True).replace(" ", "")))
        say(f"ft{n}: {len(used)} marks -> {results[f'ft{n}']['fa_per_hour']:.1f} FA/h, recall "
            f"{results[f'ft{n}']['recall']:.2f}")

    # anti-forgetting: the base model's own test features, 20 marks, each guard on/off
    from engine.runtimes.torch import load_head_module

    head = load_head_module(base_dir / "head.safetensors")
    auc_base = frame_auc(model_from_head(head).eval(), data)
    ex = read_site_data(work / f"site-data-{MARK_COUNTS[-1]}", "ucf", base.embedding_width).examples
    train_ex, _ = split_by_time(ex, defaults.holdout)
    guards = [("none", 0.0, None), (f"anchor {defaults.anchor:g}", defaults.anchor, None), ("replay", 0.0, replay),
              (f"anchor {defaults.anchor:g} + replay", defaults.anchor, replay)]
    if mode is QUICK:
        guards = [guards[0], guards[3]]
    forget = []
    for name, anchor, rep in guards:
        model, _ = adapt(head, train_ex, "ucf", replace(defaults, anchor=anchor, replay=rep))
        forget.append((name, auc_base, frame_auc(model, data)))
    say("anti-forgetting measured")

    print()
    print(f"site: {mode.site_seconds / 60:.0f} min, benign pattern '{args.benign}' {BEACON_LEN:.0f} s every "
          f"{BEACON_EVERY:.0f} s, a true event every {EVENT_EVERY:.0f} s (E/F/R in turn); history = the first half "
          f"({len(marks)} base-model events); evaluation = the second half "
          f"({(evaluation[1] - evaluation[0]) / 60:.0f} min, {results['base']['events']} true events)")
    print(f"fine-tuning: dsanet finetune defaults (steps {defaults.steps}, lr {defaults.lr:g}, anchor "
          f"{defaults.anchor:g}, train_context {defaults.train_context}, holdout {defaults.holdout:g}) + replay of "
          f"the base training features")
    names = ["base", "calibrated"] + [f"ft{n}" for n in MARK_COUNTS]
    print(f"(mean live score in the evaluation half during the benign pattern / during true events; on-threshold "
          f"{on0:g}, calibrated {cal.on:.3f})")
    print(table(["model", "marks", "false alarms", "FA / hour", "recall (per class)", "ratio FA/h vs base",
                 "score benign", "score events"],
                [(k + (" (refused)" if results[k].get("refused") else ""), results[k].get("marks", 0),
                  results[k]["fa"], results[k]["fa_per_hour"], _recall_cell(results[k]),
                  results[k]["fa_per_hour"] / results["base"]["fa_per_hour"] if results["base"]["fa_per_hour"] else
                  float("nan"), results[k]["s_benign"], results[k]["s_events"]) for k in names]))
    print()
    print(table(["fine-tune", "marks used", "false alarms", "confirmed", "held-out check (true events; false)",
                 "learned from"], ft_rows))
    print()
    print(table(["site data", "bytes", "rows stored"],
                [(f"{n} marks + {len(calm)} calm samples", b, r) for n, (b, r) in site_bytes.items()]))
    print()
    print(table([f"guard ({len(train_ex)} training examples)", "base test frame AUC", "after fine-tune", "change"],
                [(g, a, b, b - a) for g, a, b in forget]))
    if args.plot:
        p = plot(Path(args.plot), [(k, results[k]["fa_per_hour"], results[k]["recall"], results[k]["s_benign"],
                                    results[k]["s_events"]) for k in names],
                 f"synthetic site ({mode.name}, benign '{args.benign}'): false alarms and recall, evaluation half")
        if p is not None:
            print(f"plot: {p}")
    print(f"wall time {time.monotonic() - t0:.0f} s")
    r = results
    print(result_line(fa_base=float(r["base"]["fa_per_hour"]), fa_calibrated=float(r["calibrated"]["fa_per_hour"]),
                      fa_ft1=float(r["ft1"]["fa_per_hour"]), fa_ft5=float(r["ft5"]["fa_per_hour"]),
                      fa_ft20=float(r["ft20"]["fa_per_hour"]), recall_base=float(r["base"]["recall"]),
                      recall_ft20=float(r["ft20"]["recall"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
