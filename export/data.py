"""VadCLIP data format: list CSVs, label maps, feature files and length handling (torch-free).

The offline trainer reads exactly the files VadCLIP and DSANet were trained on, so that released
features, lists and ground truth work unchanged and our numbers are comparable with the papers:

* list CSV: header ``path,label``, one row per crop file ``<video>__<k>.npy`` (UCF train: 10 crops,
  anomalous videos grouped by class then ``Normal``; UCF test: crop ``__5`` only; XD test: ``__0``).
  Labels are ``Normal``/``Abuse``/... for UCF-Crime and raw multi-label strings such as ``B2-G-0`` or
  ``A`` for XD-Violence.
* feature file: ``[T, 512]`` CLIP image embeddings, one row per 16-frame snippet.
* length handling: training pools long videos to 256 rows by uniform averaging and zero-pads short
  ones (VadCLIP ``tools.process_feat``); testing cuts long videos into 256-row chunks
  (``tools.process_split``) and builds per-chunk lengths the way the official test loop does,
  including its quirk for T a multiple of 256 (see :func:`process_split`).

Listed paths are usually absolute paths on the machine that made the list; :func:`read_list`
re-roots them under a ``data_root`` so a downloaded feature folder works without editing the CSV.

Snippet timing (``snippet_info``) lives in ``DIR/snippets.json``, written by ``dsanet synth-features``
and ``dsanet extract-features``: ``snippet_frames``, ``snippet_fps``, ``snippet_seconds`` (plus
provenance keys). ``DIR/list/snippets.json`` is also accepted.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write
from engine.bundle import DEFAULT_MAX_WINDOW
from engine.errors import DataError
from engine.snippet_contract import DEFAULT_SNIPPET_FRAMES

FEATURE_DIM = 512
MAX_LEN = DEFAULT_MAX_WINDOW  # training sequence length: the head's largest window
SNIPPET_FRAMES = DEFAULT_SNIPPET_FRAMES
SNIPPET_INFO_FILE = "snippets.json"

PRESETS = ("ucf", "xd", "demo")

# Raw label -> prompt word, in class order (index 0 = normal). VadCLIP/DSANet training label maps.
LABEL_MAPS: dict[str, dict[str, str]] = {
    "ucf": {
        "Normal": "normal", "Abuse": "abuse", "Arrest": "arrest", "Arson": "arson", "Assault": "assault",
        "Burglary": "burglary", "Explosion": "explosion", "Fighting": "fighting",
        "RoadAccidents": "roadAccidents", "Robbery": "robbery", "Shooting": "shooting",
        "Shoplifting": "shoplifting", "Stealing": "stealing", "Vandalism": "vandalism",
    },
    "xd": {
        "A": "normal", "B1": "fighting", "B2": "shooting", "B4": "riot", "B5": "abuse", "B6": "car accident",
        "G": "explosion",
    },
    # The embedded demo (`dsanet prepare-demo`): normal plus the three classes its camera scripts, in the
    # UCF-Crime layout (single-label lists, crop 5 for test, Temporal_Anomaly_Annotation.txt).
    "demo": {"Normal": "normal", "Explosion": "explosion", "Fighting": "fighting", "RoadAccidents": "roadAccidents"},
}
# Which benchmark's file layout (labels, lists, ground truth) each preset follows.
LAYOUT = {"ucf": "ucf", "xd": "xd", "demo": "ucf"}
# The raw label that marks a normal video in each data set.
NORMAL_LABEL = {"ucf": "Normal", "xd": "A", "demo": "Normal"}
# The crop the official test lists use.
TEST_CROP = {"ucf": 5, "xd": 0, "demo": 5}
# File names of the official lists (under DIR/list/).
LIST_FILES = {"ucf": ("ucf_CLIP_rgb.csv", "ucf_CLIP_rgbtest.csv"), "xd": ("xd_CLIP_rgb.csv", "xd_CLIP_rgbtest.csv"),
              "demo": ("ucf_CLIP_rgb.csv", "ucf_CLIP_rgbtest.csv")}


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise DataError(f"unknown data preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return preset


def layout(preset: str) -> str:
    """The benchmark layout a preset's data follows: ``ucf`` (single-label) or ``xd`` (multi-label codes)."""
    return LAYOUT[check_preset(preset)]


def class_names(preset: str) -> list[str]:
    """Prompt words in class order (index 0 is normal)."""
    return list(LABEL_MAPS[check_preset(preset)].values())


def raw_classes(preset: str) -> list[str]:
    """Raw label codes in class order (``Normal``, ``Abuse``, ... or ``A``, ``B1``, ...)."""
    return list(LABEL_MAPS[check_preset(preset)])


def default_lists(preset: str, data_root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(train CSV, test CSV) of a data set folder in VadCLIP layout: ``DIR/list/<official names>``."""
    train, test = LIST_FILES[check_preset(preset)]
    root = Path(data_root)
    return root / "list" / train, root / "list" / test


@dataclass(frozen=True)
class ListRow:
    """One row of a list CSV: a crop feature file and its raw label."""

    path: Path
    label: str

    @property
    def video(self) -> str:
        """Video name: the file name without ``__<crop>.npy``."""
        return video_name(self.path)

    @property
    def crop(self) -> int | None:
        stem = self.path.name[:-4] if self.path.name.endswith(".npy") else self.path.name
        head, sep, tail = stem.rpartition("__")
        return int(tail) if sep and tail.isdigit() else None


def video_name(path: str | os.PathLike[str]) -> str:
    """``.../Abuse028_x264__5.npy`` -> ``Abuse028_x264`` (any crop index, not only one digit)."""
    name = Path(path).name
    if name.endswith(".npy"):
        name = name[:-4]
    head, sep, tail = name.rpartition("__")
    return head if sep and tail.isdigit() else name


def _candidates(listed: str, csv_path: Path, data_root: Path | None) -> list[Path]:
    """Where a listed path may live, in the order tried (see :func:`read_list`)."""
    p = Path(listed)
    rel = Path(*p.parts[1:]) if p.is_absolute() else p
    out = [p] if p.is_absolute() else []
    # relative paths are relative to the data set folder (the parent of list/), else the CSV's folder
    roots = [data_root] if data_root is not None else [csv_path.parent.parent, csv_path.parent]
    for root in roots:
        out.append(root / rel)
        if len(p.parts) >= 2:
            out.append(root / Path(*p.parts[-2:]))
        out.append(root / p.name)
    if not p.is_absolute() and data_root is None:
        out.append(p)  # relative to the working directory, last
    seen: list[Path] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen


def read_list(csv_path: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None,
              check_exists: bool = True) -> list[ListRow]:
    """Read a VadCLIP list CSV (``path,label``), resolving every listed file.

    An absolute listed path is used as written when it exists. Otherwise it is tried under a root as
    ``root/<path>`` (leading ``/`` dropped), ``root/<last two components>`` (the official
    ``Class/video__k.npy`` layout) and ``root/<basename>``, where root is ``data_root`` when given, else
    the data set folder (the CSV's grandparent, since lists live in ``DIR/list/``) and then the CSV's
    own folder; a relative path without ``data_root`` is finally tried from the working directory.
    The first missing file raises an error naming the CSV line and the listed path.
    """
    csv_path = Path(csv_path)
    root = Path(data_root) if data_root is not None else None
    if not csv_path.is_file():
        raise DataError(f"list file {csv_path} does not exist")
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            records = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read list file {csv_path}: {exc}") from exc
    records = [r for r in records if any(c.strip() for c in r)]
    if not records or [c.strip() for c in records[0]][:2] != ["path", "label"]:
        raise DataError(f"list file {csv_path}: first line must be the header 'path,label'")
    rows: list[ListRow] = []
    for line_no, rec in enumerate(records[1:], start=2):
        if len(rec) < 2 or not rec[0].strip() or not rec[1].strip():
            raise DataError(f"list file {csv_path} line {line_no}: expected 'path,label', got {','.join(rec)!r}")
        listed, label = rec[0].strip(), rec[1].strip()
        path = Path(listed)
        if check_exists:
            for cand in _candidates(listed, csv_path, root):
                if cand.is_file():
                    path = cand
                    break
            else:
                where = f" (also looked under data root {root})" if root else " (pass --data-root to re-root it)"
                raise DataError(f"list file {csv_path} line {line_no}: feature file {listed} does not exist{where}")
        rows.append(ListRow(path=path, label=label))
    if not rows:
        raise DataError(f"list file {csv_path} has no rows (only a header)")
    return rows


def write_list(csv_path: str | os.PathLike[str], rows: Iterable[tuple[str, str]]) -> Path:
    """Write a list CSV with header ``path,label`` (paths as given, e.g. relative to the data set folder)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for path, label in rows:
        writer.writerow([str(path), label])
    return atomic_write(csv_path, buf.getvalue())  # re-runs merge into the list: never leave it half-written


def load_features(path: str | os.PathLike[str], width: int = FEATURE_DIM) -> np.ndarray:
    """Load one feature file as float32 ``[T, width]``; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file {path} does not exist")
    try:
        feat = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"feature file {path} is not a readable .npy array: {exc}") from exc
    if not isinstance(feat, np.ndarray):
        raise DataError(f"feature file {path} does not hold a single array")
    if feat.ndim != 2:
        raise DataError(f"feature file {path} has shape {feat.shape}: expected [T, {width}] (2 dimensions)")
    if feat.shape[1] != width:
        raise DataError(f"feature file {path} has width {feat.shape[1]}: expected {width} (CLIP ViT-B/16 embeddings)")
    if feat.shape[0] == 0:
        raise DataError(f"feature file {path} is empty (0 snippets)")
    if not np.issubdtype(feat.dtype, np.number):
        raise DataError(f"feature file {path} has non-numeric dtype {feat.dtype}")
    return np.asarray(feat, dtype=np.float32)


def feature_length(path: str | os.PathLike[str]) -> int:
    """T of a feature file without reading its data (memory-mapped header)."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"feature file {path} does not exist") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"feature file {path} is not a readable .npy array: {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DataError(f"feature file {path} has shape {arr.shape}: expected [T, {FEATURE_DIM}] with T > 0")
    return int(arr.shape[0])


def uniform_pool(feat: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Average ``feat`` [T, D] into ``max_len`` bins with edges ``int(linspace(0, T, max_len + 1))``.

    An empty bin (only possible when T < max_len) copies the row at its left edge, as VadCLIP does.
    """
    edges = np.linspace(0, len(feat), max_len + 1, dtype=np.int32)
    out = np.zeros((max_len, feat.shape[1]), dtype=np.float32)
    for i in range(max_len):
        lo, hi = edges[i], edges[i + 1]
        out[i] = feat[lo:hi].mean(axis=0) if hi != lo else feat[lo]
    return out


def _pad(feat: np.ndarray, max_len: int) -> np.ndarray:
    return np.pad(feat, ((0, max_len - feat.shape[0]), (0, 0))).astype(np.float32, copy=False)


def process_feat(feat: np.ndarray, max_len: int = MAX_LEN) -> tuple[np.ndarray, int]:
    """Training view of one video: ``([max_len, D] float32, valid length)``.

    Longer videos are uniformly average-pooled to ``max_len`` rows (length ``max_len``); shorter ones
    are zero-padded (length T).
    """
    feat = np.asarray(feat, dtype=np.float32)
    if feat.shape[0] > max_len:
        return uniform_pool(feat, max_len), max_len
    return _pad(feat, max_len), int(feat.shape[0])


def chunk_lengths(length: int, max_len: int = MAX_LEN) -> list[int]:
    """Per-chunk valid lengths exactly as the official UCF/XD test loops build them.

    ``int(T / max_len) + 1`` entries; every full chunk gets ``max_len`` and the last the remainder. When
    T is a multiple of ``max_len`` the loop never subtracts the last full chunk, so the trailing
    all-zero chunk is given length ``max_len`` too (e.g. T=256 -> [256, 256], T=512 -> [256, 256, 256]);
    its outputs are cut away afterwards (only the first T rows are kept), so scores are unaffected.
    """
    n = int(length / max_len) + 1
    out = [0] * n
    rest = length
    for j in range(n):
        if j == 0 and rest < max_len:
            out[j] = rest
        elif rest > max_len:
            out[j] = max_len
            rest -= max_len
        else:
            out[j] = rest
    return out


def process_split(feat: np.ndarray, max_len: int = MAX_LEN) -> tuple[np.ndarray, list[int]]:
    """Test view of one video: ``([n, max_len, D] float32, per-chunk lengths)``.

    T < max_len: one zero-padded chunk. Otherwise ``int(T / max_len) + 1`` chunks of ``max_len`` rows,
    the last zero-padded (all zeros when T is a multiple of ``max_len``). Lengths follow
    :func:`chunk_lengths`. The model's outputs over the chunks, concatenated, keep their first T rows.
    """
    feat = np.asarray(feat, dtype=np.float32)
    t = int(feat.shape[0])
    if t < max_len:
        return _pad(feat, max_len)[None], [t]
    n = t // max_len + 1
    chunks = np.zeros((n, max_len, feat.shape[1]), dtype=np.float32)
    for i in range(n):
        part = feat[i * max_len:(i + 1) * max_len]
        chunks[i, : len(part)] = part
    return chunks, chunk_lengths(t, max_len)


def batch_labels(labels: Sequence[str], preset: str) -> np.ndarray:
    """Targets ``[B, C]`` float32: one-hot for UCF-Crime, multi-hot from ``label.split('-')`` for XD.

    XD tokens ``0`` are padding and ignored (``B2-G-0`` -> shooting + explosion). Unknown labels raise.
    """
    lmap = LABEL_MAPS[check_preset(preset)]
    index = {raw: i for i, raw in enumerate(lmap)}
    out = np.zeros((len(labels), len(lmap)), dtype=np.float32)
    single = layout(preset) == "ucf"
    for b, label in enumerate(labels):
        if single:
            if label not in index:
                raise DataError(f"unknown {preset} label {label!r}: expected one of {', '.join(lmap)}")
            out[b, index[label]] = 1.0
        else:
            tokens = [t for t in label.split("-") if t != "0"]
            if not tokens:
                raise DataError(f"XD-Violence label {label!r} names no class")
            for tok in tokens:
                if tok not in index:
                    raise DataError(f"unknown XD-Violence label {tok!r} in {label!r}: expected codes {', '.join(lmap)}")
                out[b, index[tok]] = 1.0
    return out


def is_normal(label: str, preset: str) -> bool:
    return label == NORMAL_LABEL[check_preset(preset)]


def split_normal(rows: Sequence[ListRow], preset: str) -> tuple[list[ListRow], list[ListRow]]:
    """(normal rows, abnormal rows): the two training pools VadCLIP samples in equal numbers."""
    normal = [r for r in rows if is_normal(r.label, preset)]
    abnormal = [r for r in rows if not is_normal(r.label, preset)]
    return normal, abnormal


class FeatureDataset:
    """Indexable list of feature files with VadCLIP length handling (no torch needed).

    Train mode: ``(features [max_len, D], label, length)``; test mode:
    ``(features [n, max_len, D], label, per-chunk lengths)``.
    """

    def __init__(self, rows: Sequence[ListRow], max_len: int = MAX_LEN, test_mode: bool = False) -> None:
        self.rows = list(rows)
        self.max_len = max_len
        self.test_mode = test_mode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str, Any]:
        row = self.rows[index]
        feat = load_features(row.path)
        if self.test_mode:
            chunks, lengths = process_split(feat, self.max_len)
            return chunks, row.label, lengths
        pooled, length = process_feat(feat, self.max_len)
        return pooled, row.label, length


def write_snippet_info(data_root: str | os.PathLike[str], snippet_frames: int, snippet_fps: float,
                       snippet_seconds: float | None = None, **extra: Any) -> Path:
    """Record how snippets were cut (``DIR/snippets.json``); the bundle and the live service reuse it."""
    if snippet_seconds is None:
        snippet_seconds = snippet_frames / snippet_fps
    info = {"snippet_frames": int(snippet_frames), "snippet_fps": float(snippet_fps),
            "snippet_seconds": float(snippet_seconds), **extra}
    path = Path(data_root) / SNIPPET_INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps(info, indent=2, sort_keys=True) + "\n")


def snippet_info(data_root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Snippet timing recorded with a data set (``DIR/snippets.json`` or ``DIR/list/snippets.json``), or None."""
    root = Path(data_root)
    for cand in (root / SNIPPET_INFO_FILE, root / "list" / SNIPPET_INFO_FILE):
        if cand.is_file():
            try:
                info = json.loads(cand.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read snippet info {cand}: {exc}") from exc
            missing = [k for k in ("snippet_frames", "snippet_fps", "snippet_seconds") if k not in info]
            if not isinstance(info, dict) or missing:
                raise DataError(f"snippet info {cand} lacks keys {missing}")
            return info
    return None
