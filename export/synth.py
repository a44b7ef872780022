"""``dsanet synth-features``: a synthetic data set in exactly VadCLIP's layout.

Why: the real benchmark features (VadCLIP's released CLIP features for UCF-Crime / XD-Violence) are
large and supplied by the user; the trainer, evaluation and export must still be exercised end to end
without them. The synthetic set uses the same files, names and quirks, so every code path that reads real
data reads this too:

```
DIR/snippets.json                        snippet timing (16 frames at 30 fps UCF, 24 fps XD)
                                         (the demo preset: UCF's layout with the demo's 4 classes)
DIR/list/ucf_CLIP_rgb.csv                train: 10 crops __0..__9 per video, anomalous by class, then Normal
DIR/list/ucf_CLIP_rgbtest.csv            test: crop __5 only (XD: xd_CLIP_rgb*.csv, crop __0 only)
DIR/list/Temporal_Anomaly_Annotation.txt (XD: annotations.txt and annotations_multiclasses.txt)
DIR/list/gt_ucf.npy, gt_segment_ucf.npy, gt_label_ucf.npy   (XD: gt.npy, gt_segment.npy, gt_label.npy)
DIR/features/<Class>/<video>__<k>.npy    [T, 512] float32 (XD: DIR/features/<video>__<k>.npy)
```

List paths are relative to DIR (``features/...``), so ``read_list(csv)`` (or ``data_root=DIR``) finds
them wherever DIR is moved.

Feature model: normal snippets are a base vector plus a per-video offset plus temporally smooth noise;
an anomalous video has one or two segments where the snippets are shifted along a shared "anomaly"
direction and a distinct direction per class, so both "is anomalous" and "which class" are learnable.
Lengths vary (some above 256, one test video of exactly 256) to exercise pooling and chunking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import DataError
from export.data import (
    FEATURE_DIM,
    LIST_FILES,
    MAX_LEN,
    NORMAL_LABEL,
    SNIPPET_FRAMES,
    TEST_CROP,
    ListRow,
    check_preset,
    layout,
    raw_classes,
    write_list,
    write_snippet_info,
)
from export.gt import (
    XD_ANNOTATIONS,
    XD_MULTICLASS_ANNOTATIONS,
    build_ground_truth,
    save_ground_truth,
    write_ucf_annotations,
    write_xd_annotations,
)

SNIPPET_FPS = {"ucf": 30.0, "xd": 24.0, "demo": 30.0}
CROPS = 10
NOISE = 0.03  # per-dimension noise of a snippet
VIDEO_OFFSET = 0.05
CROP_NOISE = 0.01
ANOMALY_SHIFT = 0.5  # along the shared anomaly direction
CLASS_SHIFT = 0.6  # along the class's own direction


@dataclass
class SynthVideo:
    name: str
    folder: str  # sub-folder under features/ ('' for XD)
    label: str  # raw list label
    length: int
    segments: list[tuple[str, int, int]] = field(default_factory=list)  # (class code, start snippet, end snippet)
    split: str = "train"


@dataclass
class SynthSummary:
    out: Path
    preset: str
    train_csv: Path
    test_csv: Path
    videos: list[SynthVideo]

    def describe(self) -> str:
        train = [v for v in self.videos if v.split == "train"]
        test = [v for v in self.videos if v.split == "test"]
        normal = NORMAL_LABEL[self.preset]
        n = lambda vs, norm: sum((v.label == normal) == norm for v in vs)  # noqa: E731
        return (f"{self.preset}: {len(train)} train videos ({n(train, False)} anomalous, {n(train, True)} normal), "
                f"{len(test)} test videos ({n(test, False)} anomalous, {n(test, True)} normal) in {self.out}")


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim)
    return v / np.linalg.norm(v)


def _smooth_noise(rng: np.random.Generator, t: int, dim: int, scale: float) -> np.ndarray:
    """AR(1) noise along time (correlation 0.8), stationary variance scale**2: looks like video features."""
    eps = rng.normal(scale=scale, size=(t, dim)).astype(np.float32)
    a, b = np.float32(0.8), np.float32(np.sqrt(1 - 0.8**2))
    out = np.empty_like(eps)
    out[0] = eps[0]
    for i in range(1, t):
        out[i] = a * out[i - 1] + b * eps[i]
    return out


def _length(rng: np.random.Generator) -> int:
    if rng.random() < 0.08:
        return int(rng.integers(MAX_LEN + 1, 321))
    return int(rng.integers(24, 129))


def _segments(rng: np.random.Generator, t: int, codes: list[str]) -> list[tuple[str, int, int]]:
    """One segment per code (at most two), non-overlapping, each 1/8..1/3 of the video (>= 2 snippets)."""
    n = len(codes)
    span = t // n
    out = []
    for k, code in enumerate(codes):
        lo, hi = k * span, (k + 1) * span if k < n - 1 else t
        seg_len = int(rng.integers(max(2, (hi - lo) // 4), max(3, (hi - lo) * 2 // 3)))
        seg_len = min(seg_len, hi - lo)
        start = int(rng.integers(lo, hi - seg_len + 1))
        out.append((code, start, start + seg_len))
    return out


def _plan(preset: str, n_videos: int, rng: np.random.Generator, test_fraction: float) -> list[SynthVideo]:
    """Names, labels, lengths, anomaly segments and splits of every video (no features yet)."""
    if n_videos < 4:
        raise DataError(f"--videos must be at least 4 (normal and anomalous videos in both train and test), got {n_videos}")
    classes = raw_classes(preset)[1:]
    n_normal = n_videos // 2
    n_abnormal = n_videos - n_normal
    n_test_norm = min(n_normal - 1, max(1, round(n_normal * test_fraction)))
    n_test_abn = min(n_abnormal - 1, max(1, round(n_abnormal * test_fraction)))
    videos: list[SynthVideo] = []
    codes_of: dict[str, list[str]] = {}  # event classes of each anomalous video, one segment each
    for i in range(n_abnormal):
        if layout(preset) == "ucf":
            cls = classes[i % len(classes)]
            codes = [cls] * (2 if rng.random() < 0.3 else 1)
            name, folder, label = f"{cls}{i // len(classes) + 1:03d}_x264", cls, cls
        else:
            first = classes[i % len(classes)]
            codes = [first]
            if rng.random() < 0.3:
                codes.append(classes[(i + 1 + int(rng.integers(0, len(classes) - 1))) % len(classes)])
            label = "-".join(codes + ["0"] * (3 - len(codes)))
            name, folder = f"synth_v{i:04d}_label_{label}", ""
        videos.append(SynthVideo(name=name, folder=folder, label=label, length=_length(rng)))
        codes_of[name] = codes
    for i in range(n_normal):
        if layout(preset) == "ucf":
            name, folder = f"Normal_Videos{i + 1:03d}_x264", "Normal_Videos"
        else:
            name, folder = f"synth_n{i:04d}_label_A", ""
        videos.append(SynthVideo(name=name, folder=folder, label=NORMAL_LABEL[preset], length=_length(rng)))
    abnormal, normal = videos[:n_abnormal], videos[n_abnormal:]
    # test: every k-th video so that classes spread over both splits
    for group, n_test in ((abnormal, n_test_abn), (normal, n_test_norm)):
        picks = np.linspace(0, len(group) - 1, n_test).round().astype(int) if n_test > 1 else [len(group) // 2]
        for p in picks:
            group[int(p)].split = "test"
    # lengths that exercise pooling (train > 256) and chunking (test > 256, test == 256 quirk)
    first_train_abn = next(v for v in abnormal if v.split == "train")
    first_train_abn.length = max(first_train_abn.length, 280)
    test_abn = [v for v in abnormal if v.split == "test"]
    test_abn[0].length = max(test_abn[0].length, 300)
    test_norm = [v for v in normal if v.split == "test"]
    test_norm[0].length = MAX_LEN
    for v in abnormal:
        v.segments = _segments(rng, v.length, codes_of[v.name])
    if layout(preset) == "ucf":
        for v in normal:  # official layout: separate train/test folders, test names with an underscore
            if v.split == "test":
                v.folder, v.name = "Testing_Normal_Videos_Anomaly", v.name.replace("Videos", "Videos_")
            else:
                v.folder = "Training_Normal_Videos_Anomaly"
    return videos


def synth_features(out: str | os.PathLike[str], preset: str = "ucf", videos: int = 120, seed: int = 0,
                   test_fraction: float = 0.25, crops: int = CROPS) -> SynthSummary:
    """Write a synthetic VadCLIP-layout data set to ``out`` (see the module docstring). Deterministic per seed."""
    check_preset(preset)
    if not 1 <= crops <= CROPS:
        raise DataError(f"--crops must be 1..{CROPS}, got {crops}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    plan = _plan(preset, videos, rng, test_fraction)
    classes = raw_classes(preset)
    base = _unit(rng, FEATURE_DIM)
    anomaly_dir = _unit(rng, FEATURE_DIM)
    class_dirs = {c: _unit(rng, FEATURE_DIM) for c in classes[1:]}
    test_crop = TEST_CROP[preset]
    feat_root = out / "features"
    train_rows: list[tuple[str, str]] = []
    test_rows: list[tuple[str, str]] = []
    for v in plan:
        x = (base + VIDEO_OFFSET * _unit(rng, FEATURE_DIM)).astype(np.float32)[None] \
            + _smooth_noise(rng, v.length, FEATURE_DIM, NOISE)
        for code, s, e in v.segments:
            x[s:e] += (ANOMALY_SHIFT * anomaly_dir + CLASS_SHIFT * class_dirs[code]).astype(np.float32)
        folder = feat_root / v.folder if v.folder else feat_root
        folder.mkdir(parents=True, exist_ok=True)
        ks = [test_crop] if v.split == "test" else list(range(crops))
        for k in ks:
            crop = x + rng.normal(scale=CROP_NOISE, size=x.shape).astype(np.float32)
            path = folder / f"{v.name}__{k}.npy"
            np.save(path, crop.astype(np.float32))
            rel = path.relative_to(out).as_posix()
            (test_rows if v.split == "test" else train_rows).append((rel, v.label))
    # official order: anomalous videos grouped by class, then normal (stable within a group)
    order = {c: i for i, c in enumerate(classes[1:] + [classes[0]])}

    def key(row: tuple[str, str]) -> int:
        first = row[1].split("-")[0]
        return order.get(first, len(order)) if row[1] != NORMAL_LABEL[preset] else len(order)

    train_rows.sort(key=key)
    test_rows.sort(key=key)
    list_dir = out / "list"
    train_name, test_name = LIST_FILES[preset]
    train_csv = write_list(list_dir / train_name, train_rows)
    test_csv = write_list(list_dir / test_name, test_rows)

    by_name = {v.name: v for v in plan}
    test_videos = [by_name[Path(p).name.rsplit("__", 1)[0]] for p, _ in test_rows]
    if layout(preset) == "ucf":
        ann = write_ucf_annotations(list_dir / "Temporal_Anomaly_Annotation.txt", [
            (v.name, v.label if v.segments else "Normal",
             [(s * SNIPPET_FRAMES, e * SNIPPET_FRAMES) for _, s, e in v.segments]) for v in test_videos])
        multi = None
    else:
        entries = [(v.name, [(c, s * SNIPPET_FRAMES, e * SNIPPET_FRAMES) for c, s, e in v.segments])
                   for v in test_videos if v.segments]
        ann = write_xd_annotations(list_dir / XD_ANNOTATIONS, entries, multiclass=False)
        multi = write_xd_annotations(list_dir / XD_MULTICLASS_ANNOTATIONS, entries, multiclass=True)
    rows = [ListRow(path=out / p, label=lab) for p, lab in test_rows]
    gt = build_ground_truth(preset, rows, ann, [v.length for v in test_videos], multi)
    save_ground_truth(gt, list_dir, preset)
    fps = SNIPPET_FPS[preset]
    write_snippet_info(out, SNIPPET_FRAMES, fps, SNIPPET_FRAMES / fps, source="synth-features", preset=preset,
                       seed=seed, videos=videos, crops=crops, frame_rule="synthetic (no video)")
    return SynthSummary(out=out, preset=preset, train_csv=train_csv, test_csv=test_csv, videos=plan)
