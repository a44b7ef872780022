"""Frame-level and segment-level ground truth in VadCLIP's format (our own make_gt / make_gt_mAP).

Two kinds of ground truth serve the paper's metrics, both **in test-CSV order**:

* frame GT (``gt_ucf.npy`` / ``gt.npy``): one float vector over all test videos, 16 entries per
  snippet. Per video, ``(T + 1) * 16`` zeros get every annotated ``[start, end)`` frame interval set to
  1, then the last 16 entries are dropped, leaving ``16 * T``.
* segment GT (``gt_segment_ucf.npy`` + ``gt_label_ucf.npy`` / ``gt_segment.npy`` + ``gt_label.npy``):
  per video a list of ``[start_frame, end_frame]`` and one class code per segment. A normal video is
  one segment ``[0, 16 * T]`` labelled ``A`` (also for UCF-Crime, whose class list says ``Normal``:
  that mismatch is why the UCF normal class scores AP 0 in VadCLIP's mAP, reproduced in
  :mod:`export.metrics`).

Annotation files: UCF-Crime ``Temporal_Anomaly_Annotation.txt`` (``name class s1 e1 s2 e2``, ``-1``
for an absent second interval); XD-Violence ``annotations.txt`` (``name s1 e1 s2 e2 ...``) and, for
per-segment classes, ``annotations_multiclasses.txt`` (``name L1 s1 e1 L2 s2 e2 ...``). Without the
multi-class file, XD segment labels come from the video name's label when it names one class.

Differences from the official scripts (which are fixed here, not reproduced): they keep only rows
containing ``__0.npy`` while the UCF test list holds ``__5`` crops, so we use whatever crop is listed
(every crop has the same T); the XD script saved ``gt_xd.npy`` while the options expect ``gt.npy``;
names are matched exactly instead of by substring; an anomalous test video missing from the
annotations is an error instead of silently all-normal.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError
from export.data import (
    NORMAL_LABEL,
    SNIPPET_FRAMES,
    ListRow,
    check_preset,
    feature_length,
    layout,
    raw_classes,
)

log = logging.getLogger(__name__)

GT_FILES = {
    "ucf": ("gt_ucf.npy", "gt_segment_ucf.npy", "gt_label_ucf.npy"),
    "xd": ("gt.npy", "gt_segment.npy", "gt_label.npy"),
    "demo": ("gt_ucf.npy", "gt_segment_ucf.npy", "gt_label_ucf.npy"),
}
UCF_ANNOTATIONS = "Temporal_Anomaly_Annotation.txt"
XD_ANNOTATIONS = "annotations.txt"
XD_MULTICLASS_ANNOTATIONS = "annotations_multiclasses.txt"
SEGMENT_NORMAL_LABEL = "A"

Segment = tuple[int, int]


@dataclass
class GroundTruth:
    """Ground truth of a test list: ``frame_gt`` [16 * sum(T)], per-video segments and their labels."""

    frame_gt: np.ndarray
    segments: list[list[Segment]]
    labels: list[list[str]]
    lengths: list[int] = field(default_factory=list)  # T per video, test-CSV order
    videos: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.segments) != len(self.labels):
            raise DataError(f"ground truth has {len(self.segments)} segment lists but {len(self.labels)} label lists")
        for i, (s, lab) in enumerate(zip(self.segments, self.labels, strict=True)):
            if len(s) != len(lab):
                raise DataError(f"ground truth video {i}: {len(s)} segments but {len(lab)} labels")


# ---------------------------------------------------------------------------------------------------
# annotation files


def _read_lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}") from exc
    return [line.split() for line in text.splitlines() if line.strip()]


_VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts")


def _video_key(name: str) -> str:
    """Annotation names sometimes carry the video's extension (XD: ``...label_B2-G-0.mp4``): drop it."""
    low = name.lower()
    for suffix in _VIDEO_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _int(tok: str, path: Path, line_no: int) -> int:
    try:
        return int(tok)
    except ValueError as exc:
        raise DataError(f"annotation file {path} line {line_no}: {tok!r} is not a frame number") from exc


def parse_ucf_annotations(path: str | os.PathLike[str]) -> dict[str, tuple[str, list[Segment]]]:
    """``Temporal_Anomaly_Annotation.txt`` -> {video: (class, [(start, end), ...])} (``-1`` pairs dropped)."""
    path = Path(path)
    out: dict[str, tuple[str, list[Segment]]] = {}
    for line_no, tok in enumerate(_read_lines(path), start=1):
        if len(tok) < 4 or (len(tok) - 2) % 2:
            raise DataError(f"annotation file {path} line {line_no}: expected 'name class start end [start end]'")
        frames = [_int(t, path, line_no) for t in tok[2:]]
        segs = [(frames[i], frames[i + 1]) for i in range(0, len(frames), 2) if frames[i] != -1 and frames[i + 1] != -1]
        out[_video_key(tok[0])] = (tok[1], segs)
    return out


def parse_xd_annotations(path: str | os.PathLike[str]) -> dict[str, list[tuple[str | None, int, int]]]:
    """XD ``annotations.txt`` (pairs) or ``annotations_multiclasses.txt`` (label triplets), detected per line.

    Returns {video: [(label or None, start, end), ...]}; ``None`` when the file gives no class.
    """
    path = Path(path)
    out: dict[str, list[tuple[str | None, int, int]]] = {}
    for line_no, tok in enumerate(_read_lines(path), start=1):
        rest = tok[1:]
        if not rest:
            raise DataError(f"annotation file {path} line {line_no}: no intervals for {tok[0]}")
        segs: list[tuple[str | None, int, int]] = []
        if rest[0].lstrip("-").isdigit():
            if len(rest) % 2:
                raise DataError(f"annotation file {path} line {line_no}: odd number of frame numbers")
            for i in range(0, len(rest), 2):
                segs.append((None, _int(rest[i], path, line_no), _int(rest[i + 1], path, line_no)))
        else:
            if len(rest) % 3:
                raise DataError(f"annotation file {path} line {line_no}: expected 'name label start end ...'")
            for i in range(0, len(rest), 3):
                segs.append((rest[i], _int(rest[i + 1], path, line_no), _int(rest[i + 2], path, line_no)))
        out[_video_key(tok[0])] = segs
    return out


def write_ucf_annotations(path: str | os.PathLike[str], entries: Sequence[tuple[str, str, Sequence[Segment]]]) -> Path:
    """Write ``Temporal_Anomaly_Annotation.txt`` (double-space separated, as the original)."""
    lines = []
    for name, label, segs in entries:
        if len(segs) > 2:
            raise DataError(f"UCF annotations hold at most two intervals per video, {name} has {len(segs)}")
        vals = [str(v) for s in segs for v in s] + ["-1"] * (4 - 2 * len(segs))
        lines.append("  ".join([name, label, *vals]) + "  ")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_xd_annotations(path: str | os.PathLike[str], entries: Sequence[tuple[str, Sequence[tuple[str, int, int]]]],
                         multiclass: bool) -> Path:
    """Write XD ``annotations.txt`` (``multiclass=False``) or ``annotations_multiclasses.txt``."""
    lines = []
    for name, segs in entries:
        vals = [name]
        for label, s, e in segs:
            vals += ([label] if multiclass else []) + [str(s), str(e)]
        lines.append(" ".join(vals))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# building


def _find(data_root: Path, name: str) -> Path | None:
    for cand in (data_root / "list" / name, data_root / name):
        if cand.is_file():
            return cand
    return None


def _video_labels_xd(raw: str) -> list[str]:
    return [t for t in raw.split("-") if t != "0"]


def build_ground_truth(preset: str, test_rows: Sequence[ListRow], annotation_file: str | os.PathLike[str],
                       lengths: Sequence[int] | None = None,
                       multiclass_file: str | os.PathLike[str] | None = None) -> GroundTruth:
    """Build frame and segment GT for ``test_rows`` (test-CSV order) from an annotation file.

    ``lengths``: T per row (read from the feature files when omitted). Normal rows (label ``Normal`` /
    ``A``) need no annotation. For XD, ``multiclass_file`` (``annotations_multiclasses.txt``) gives
    per-segment classes; otherwise the video's label must name a single class.
    """
    check_preset(preset)
    ann_path = Path(annotation_file)
    if lengths is None:
        lengths = [feature_length(r.path) for r in test_rows]
    if len(lengths) != len(test_rows):
        raise DataError(f"{len(lengths)} lengths for {len(test_rows)} test rows")
    if layout(preset) == "ucf":
        ucf = parse_ucf_annotations(ann_path)
    else:
        xd = parse_xd_annotations(ann_path)
        xd_multi = parse_xd_annotations(multiclass_file) if multiclass_file else None
    known = set(raw_classes(preset))
    normal = NORMAL_LABEL[preset]
    frames: list[np.ndarray] = []
    segments: list[list[Segment]] = []
    labels: list[list[str]] = []
    for row, t in zip(test_rows, lengths, strict=True):
        name = row.video
        vec = np.zeros((t + 1) * SNIPPET_FRAMES, dtype=np.float32)
        if row.label == normal:
            segments.append([(0, t * SNIPPET_FRAMES)])
            labels.append([SEGMENT_NORMAL_LABEL])
            frames.append(vec[:-SNIPPET_FRAMES])
            continue
        if layout(preset) == "ucf":
            if name not in ucf:
                raise DataError(f"test video {name} ({row.path}) has no line in annotation file {ann_path}")
            cls, segs = ucf[name]
            if cls not in known or cls == normal:
                raise DataError(f"annotation file {ann_path}: video {name} has unknown class {cls!r}")
            seg_labels = [cls] * len(segs)
        else:
            if name not in xd:
                raise DataError(f"test video {name} ({row.path}) has no line in annotation file {ann_path}")
            plain = xd[name]
            segs = [(s, e) for _, s, e in plain]
            if xd_multi is not None and name in xd_multi:
                triples = xd_multi[name]
                segs = [(s, e) for _, s, e in triples]
                seg_labels = [lab or "" for lab, _, _ in triples]
            elif all(lab is not None for lab, _, _ in plain):
                seg_labels = [str(lab) for lab, _, _ in plain]
            else:
                vid = _video_labels_xd(row.label)
                if len(vid) != 1:
                    raise DataError(
                        f"test video {name} has several classes ({row.label}) but {ann_path} gives no class per "
                        f"interval: put {XD_MULTICLASS_ANNOTATIONS} (VadCLIP's list/) beside it")
                seg_labels = vid * len(segs)
            bad = [lab for lab in seg_labels if lab not in known]
            if bad:
                raise DataError(f"XD annotations for {name}: unknown class codes {bad}")
        for s, e in segs:
            vec[s:e] = 1.0  # numpy clips intervals that run past the video
        frames.append(vec[:-SNIPPET_FRAMES])
        segments.append([(int(s), int(e)) for s, e in segs])
        labels.append(seg_labels)
    frame_gt = np.concatenate(frames) if frames else np.zeros(0, np.float32)
    return GroundTruth(frame_gt=frame_gt, segments=segments, labels=labels, lengths=list(lengths),
                       videos=[r.video for r in test_rows])


def _object_array(items: Sequence[list]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr


def save_ground_truth(gt: GroundTruth, out_dir: str | os.PathLike[str], preset: str) -> list[Path]:
    """Save under VadCLIP's file names (object arrays of lists, like the official files)."""
    frame_name, seg_name, label_name = GT_FILES[check_preset(preset)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / frame_name, np.asarray(gt.frame_gt, dtype=np.float32))
    np.save(out / seg_name, _object_array([[[int(s), int(e)] for s, e in v] for v in gt.segments]), allow_pickle=True)
    np.save(out / label_name, _object_array([list(v) for v in gt.labels]), allow_pickle=True)
    return [out / frame_name, out / seg_name, out / label_name]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy object arrays of plain Python values and nothing else (no code can run)."""

    _ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a numpy object array")


def _load_object(path: Path) -> list:
    """Load VadCLIP's object-array ``.npy`` (pickled lists) without trusting the pickle."""
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(fh)
            if not dtype.hasobject:
                fh.seek(0)
                return list(np.load(fh, allow_pickle=False))
            arr = _NumpyOnlyUnpickler(fh).load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read ground truth file {path}: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise DataError(f"ground truth file {path} does not hold an array")
    return list(arr)


def load_ground_truth(preset: str, data_root: str | os.PathLike[str], test_rows: Sequence[ListRow]) -> GroundTruth:
    """Ground truth for ``test_rows``: the saved VadCLIP files when present, else built from annotations.

    Files are looked up in ``DATA_ROOT/list/`` then ``DATA_ROOT/``. Saved files must match the features:
    the frame GT must have 16 entries per snippet of the listed features, the segment lists one entry
    per test row, and a normal video's segment must span its 16 * T frames; otherwise the error says
    what differs (usually a stale GT file for another list or feature set).

    Note: the official ``gt_segment*.npy`` / ``gt_label*.npy`` are pickled object arrays, so they are
    loaded with ``allow_pickle=True``: only load ground truth you trust.
    """
    check_preset(preset)
    root = Path(data_root)
    frame_name, seg_name, label_name = GT_FILES[preset]
    lengths = [feature_length(r.path) for r in test_rows]
    frame_file, seg_file, label_file = (_find(root, n) for n in (frame_name, seg_name, label_name))

    built: GroundTruth | None = None

    def build() -> GroundTruth:
        nonlocal built
        if built is None:
            ann_name = UCF_ANNOTATIONS if layout(preset) == "ucf" else XD_ANNOTATIONS
            ann = _find(root, ann_name)
            multi = _find(root, XD_MULTICLASS_ANNOTATIONS) if layout(preset) == "xd" else None
            if ann is None and multi is not None:
                ann = multi
            if ann is None:
                raise DataError(f"no ground truth for the {preset} test list: neither {frame_name} nor {ann_name} "
                                f"found in {root / 'list'} or {root}")
            built = build_ground_truth(preset, test_rows, ann, lengths, multi)
        return built

    if frame_file is not None:
        try:
            frame_gt = np.asarray(np.load(frame_file, allow_pickle=False), dtype=np.float32).reshape(-1)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"cannot read ground truth file {frame_file}: {exc}") from exc
        expected = SNIPPET_FRAMES * sum(lengths)
        if frame_gt.size != expected:
            raise DataError(f"ground truth {frame_file} has {frame_gt.size} frames but the {len(test_rows)} listed test "
                            f"features have {sum(lengths)} snippets = {expected} frames: the GT belongs to another "
                            f"list or feature set (delete it to rebuild from the annotations)")
    else:
        frame_gt = build().frame_gt
    if seg_file is not None and label_file is not None:
        segs_raw, labels_raw = _load_object(seg_file), _load_object(label_file)
        if len(segs_raw) != len(test_rows) or len(labels_raw) != len(test_rows):
            raise DataError(f"ground truth {seg_file} / {label_file} have {len(segs_raw)} / {len(labels_raw)} videos but "
                            f"the test list has {len(test_rows)}")
        segments = [[(int(s[0]), int(s[1])) for s in v] for v in segs_raw]
        labels = [[str(x) for x in v] for v in labels_raw]
        for i, (row, t) in enumerate(zip(test_rows, lengths, strict=True)):
            if (row.label == NORMAL_LABEL[preset]) != (labels[i] == [SEGMENT_NORMAL_LABEL]):
                raise DataError(f"ground truth {label_file}: video {i} ({row.video}) is labelled {row.label!r} in the "
                                f"test list but {labels[i]} in the ground truth: the GT is for another list or order")
            if row.label == NORMAL_LABEL[preset] and segments[i] != [(0, SNIPPET_FRAMES * t)]:
                raise DataError(f"ground truth {seg_file}: normal video {i} ({row.video}) spans {segments[i]} but its "
                                f"features have {t} snippets = {SNIPPET_FRAMES * t} frames")
    else:
        segments, labels = build().segments, build().labels
    return GroundTruth(frame_gt=frame_gt, segments=segments, labels=labels, lengths=lengths,
                       videos=[r.video for r in test_rows])
