"""The site-data folder: feedback marks, event captures waiting for a mark, and calm-window samples.

Layout (docs/feedback.md; ``dsanet finetune`` and ``export.data.read_list``/``load_features`` read it)::

    DIR/list.csv                           path,label   (one row per example; path relative to DIR)
    DIR/features/<camera>/<example_id>.npy float32 [T, D] snippet embeddings
    DIR/snippets.json                      snippet_frames, snippet_fps, snippet_seconds
    DIR/examples.jsonl                     one object per example (id, camera, kind, label, event_id,
                                           start, end, bundle, marked_at, ...)
    DIR/pending/<event_id>.npy|.json       an ended event's embeddings (with context), waiting for a mark
    DIR/pending/<event_id>.mark.json       a mark given while its event was still open

Every file goes through ``engine.atomic.atomic_write``; the index files are rewritten whole after each
change (feature file first, so a crash leaves at worst an orphan file, removed at the next start). The
whole folder is bounded by ``max_bytes``: beyond it the oldest normal samples are evicted first, then the
oldest unmarked captures, marks last. Thread-safe: one lock around every change.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write
from engine.errors import DsanetError
from stream.evidence.paths import camera_slug

log = logging.getLogger(__name__)

LIST_CSV = "list.csv"
EXAMPLES = "examples.jsonl"
SNIPPETS = "snippets.json"
FEATURES = "features"
PENDING = "pending"

KIND_FALSE_ALARM = "false_alarm"
KIND_CONFIRMED = "confirmed"
KIND_NORMAL = "normal_sample"
MARK_KINDS = (KIND_FALSE_ALARM, KIND_CONFIRMED)


class FeedbackError(DsanetError):
    """A mark was refused; ``status`` is the HTTP code (404 unknown event, 422 bad category)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Capture:
    """What the model saw around one ended event: its rows plus context, and where the event lies in them."""

    event_id: str
    camera: str
    features: np.ndarray = field(repr=False)  # [T, D] float32
    start: float  # wall clock of the first row's start
    end: float  # wall clock of the last row's end
    bundle: str | None  # sha256 of the head file of the bundle that scored the event
    predicted: str  # the event's category key
    event_rows: tuple[int, int]  # first and last row of the event itself inside ``features``
    truncated: bool = False  # the ring no longer held the event's first rows
    partial: bool = False  # cut while the event was still open (a mark waits): replaced by the end's capture


@dataclass(frozen=True)
class Example:
    """One row of the list (and of examples.jsonl)."""

    id: str
    camera: str
    kind: str
    label: str
    event_id: str | None
    start: float
    end: float
    bundle: str | None
    marked_at: float
    path: str  # relative to DIR
    bytes: int
    snippets: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "camera": self.camera, "kind": self.kind, "label": self.label,
                "event_id": self.event_id, "start": round(self.start, 3), "end": round(self.end, 3),
                "bundle": self.bundle, "marked_at": round(self.marked_at, 3), "path": self.path,
                "snippets": self.snippets, **self.extra}

    @classmethod
    def from_json(cls, d: dict[str, Any], size: int) -> Example:
        known = {"id", "camera", "kind", "label", "event_id", "start", "end", "bundle", "marked_at", "path",
                 "snippets"}
        return cls(id=str(d["id"]), camera=str(d["camera"]), kind=str(d["kind"]), label=str(d["label"]),
                   event_id=None if d.get("event_id") is None else str(d["event_id"]), start=float(d["start"]),
                   end=float(d["end"]), bundle=d.get("bundle"), marked_at=float(d["marked_at"]),
                   path=str(d["path"]), bytes=size, snippets=int(d.get("snippets", 0)),
                   extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class Pending:
    """An ended event's capture on disk (``pending/<id>.npy`` + ``.json``)."""

    event_id: str
    camera: str
    start: float
    end: float
    bundle: str | None
    predicted: str
    event_rows: tuple[int, int]
    truncated: bool
    snippets: int
    stored_at: float
    bytes: int
    partial: bool = False  # the rows up to a mark given while the event was open

    def meta(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "camera": self.camera, "start": self.start, "end": self.end,
                "bundle": self.bundle, "predicted": self.predicted, "event_rows": list(self.event_rows),
                "truncated": self.truncated, "snippets": self.snippets, "stored_at": self.stored_at,
                "partial": self.partial}


@dataclass(frozen=True)
class MarkResult:
    event_id: str
    kind: str
    label: str
    state: str  # "stored" | "waiting" (the event is still open: applied when it ends)
    replaced: dict[str, str] | None = None  # the previous mark (last mark wins)
    example: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "kind": self.kind, "label": self.label, "state": self.state,
                "replaced": self.replaced, "example": self.example}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


class SiteData:
    """The site-data folder of one service (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int, pending_events: int,
                 normal_per_camera: int, snippet_frames: int, snippet_fps: float, snippet_seconds: float,
                 labels: Callable[[], tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]],
                 clock: Callable[[], float] = time.time) -> None:
        """``labels()`` -> (class keys, display names, raw labels) of the bundle now scoring."""
        self.root = Path(directory)
        self.max_bytes = int(max_bytes)
        self.pending_events = int(pending_events)
        self.normal_per_camera = int(normal_per_camera)
        self._labels = labels
        self._clock = clock
        self._lock = threading.RLock()
        self.examples: dict[str, Example] = {}
        self.pending: dict[str, Pending] = {}
        self.waiting: dict[str, dict[str, Any]] = {}  # event id -> mark given while it was open
        self.open: dict[str, tuple[str, str]] = {}  # event id -> (camera, category key): open or being captured
        self.evicted = {KIND_NORMAL: 0, "pending": 0, "mark": 0}
        self.refused = 0
        self._index_bytes = 0
        try:
            (self.root / FEATURES).mkdir(parents=True, exist_ok=True)
            (self.root / PENDING).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DsanetError(f"feedback.directory {str(self.root)!r}: cannot create it ({exc.strerror or exc})") \
                from None
        if not os.access(self.root, os.W_OK):
            raise DsanetError(f"feedback.directory {str(self.root)!r}: not writable")
        self._write_snippets(snippet_frames, snippet_fps, snippet_seconds)
        self._load()

    # ------------------------------------------------------------------------------------ loading
    def _write_snippets(self, frames: int, fps: float, seconds: float) -> None:
        info = {"snippet_frames": int(frames), "snippet_fps": float(fps), "snippet_seconds": float(seconds)}
        path = self.root / SNIPPETS
        try:
            old = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old and any(old.get(k) != v for k, v in info.items()):
            log.warning("feedback: %s says %s but the bundle cuts %s; the examples already stored were cut "
                        "the old way", path, old, info)
            return  # keep what describes the examples on disk
        atomic_write(path, json.dumps(info, indent=2, sort_keys=True) + "\n")

    def _load(self) -> None:
        """Rebuild the index from examples.jsonl and pending/; drop rows without files, remove orphans."""
        ex_path = self.root / EXAMPLES
        bad = 0
        if ex_path.is_file():
            for line in ex_path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    f = self.root / str(d["path"])
                    ex = Example.from_json(d, f.stat().st_size)
                except (ValueError, KeyError, TypeError, OSError):
                    bad += 1
                    continue
                self.examples[ex.id] = ex
        for meta in sorted((self.root / PENDING).glob("*.json")):
            if meta.name.endswith(".mark.json"):
                try:
                    self.waiting[meta.name[:-len(".mark.json")]] = json.loads(meta.read_text())
                except (OSError, ValueError):
                    meta.unlink(missing_ok=True)
                continue
            npy = meta.with_suffix(".npy")
            try:
                d = json.loads(meta.read_text())
                p = Pending(event_id=str(d["event_id"]), camera=str(d["camera"]), start=float(d["start"]),
                            end=float(d["end"]), bundle=d.get("bundle"), predicted=str(d["predicted"]),
                            event_rows=(int(d["event_rows"][0]), int(d["event_rows"][1])),
                            truncated=bool(d.get("truncated")), snippets=int(d["snippets"]),
                            stored_at=float(d["stored_at"]), bytes=npy.stat().st_size + meta.stat().st_size,
                            partial=bool(d.get("partial")))
            except (ValueError, KeyError, TypeError, IndexError, OSError):
                meta.unlink(missing_ok=True)
                npy.unlink(missing_ok=True)
                continue
            self.pending[p.event_id] = p
        keep = {self.root / e.path for e in self.examples.values()}
        keep |= {self.root / PENDING / f"{i}.npy" for i in self.pending}
        orphans = 0
        for f in list((self.root / FEATURES).rglob("*")) + list((self.root / PENDING).glob("*.npy")) \
                + list((self.root / PENDING).glob("*.tmp")):
            if f.is_file() and f not in keep:
                f.unlink(missing_ok=True)
                orphans += 1
        for wid in [w for w in self.waiting if w not in self.pending]:  # its event was lost with a crash
            self._drop_waiting(wid)
        # a mark given while its event was open, whose capture was saved up to the mark: the previous run
        # ended before the event did (a crash; the journal ends such events at start), so apply it now
        for wid, w in list(self.waiting.items()):
            self._apply(wid, str(w["kind"]), str(w["label"]), float(w["marked_at"]))
            self._drop_waiting(wid)
            log.info("feedback: the mark of event %s, given while it was open, applied after a restart (from its "
                     "rows up to the mark)", wid)
        if bad or orphans:
            log.warning("feedback: %s: skipped %d unreadable index line(s), removed %d orphan file(s)", self.root,
                        bad, orphans)
        self._write_index()
        self._enforce()
        if self.examples or self.pending:
            log.info("feedback: %s holds %d example(s), %d event capture(s) waiting for a mark (%.1f MiB)",
                     self.root, len(self.examples), len(self.pending), self.total_bytes / 2**20)

    # ------------------------------------------------------------------------------------ accounting
    @property
    def total_bytes(self) -> int:
        with self._lock:
            return (sum(e.bytes for e in self.examples.values()) + sum(p.bytes for p in self.pending.values())
                    + self._index_bytes)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            kinds: dict[str, int] = {}
            labels: dict[str, int] = {}
            for e in self.examples.values():
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
                labels[e.label] = labels.get(e.label, 0) + 1
            return {"directory": str(self.root), "bytes": self.total_bytes, "max_bytes": self.max_bytes,
                    "examples": kinds, "labels": labels, "pending_events": len(self.pending),
                    "waiting_marks": len(self.waiting), "evicted": dict(self.evicted), "refused": self.refused}

    def _write_index(self) -> None:
        rows = sorted(self.examples.values(), key=lambda e: (e.start, e.id))
        csv = "path,label\n" + "".join(f"{e.path},{e.label}\n" for e in rows)
        jsonl = "".join(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n" for e in rows)
        atomic_write(self.root / EXAMPLES, jsonl)
        atomic_write(self.root / LIST_CSV, csv)
        self._index_bytes = len(csv.encode()) + len(jsonl.encode())

    def _enforce(self, keep: str | None = None) -> None:
        """Evict until under ``max_bytes``: oldest normal samples, then oldest captures, marks last."""
        while self.total_bytes > self.max_bytes:
            normals = sorted((e for e in self.examples.values() if e.kind == KIND_NORMAL and e.id != keep),
                             key=lambda e: e.start)
            if normals:
                self._remove_example(normals[0].id)
                self.evicted[KIND_NORMAL] += 1
                continue
            pend = sorted((p for p in self.pending.values() if p.event_id != keep), key=lambda p: p.stored_at)
            if pend:
                self._remove_pending(pend[0].event_id)
                self.evicted["pending"] += 1
                continue
            marks = sorted((e for e in self.examples.values() if e.id != keep), key=lambda e: e.marked_at)
            if not marks:
                break
            log.warning("feedback: %s is over feedback.max_bytes with marks alone; evicting the oldest mark %s",
                        self.root, marks[0].id)
            self._remove_example(marks[0].id)
            self.evicted["mark"] += 1
        self._write_index()

    def _remove_example(self, ex_id: str) -> None:
        ex = self.examples.pop(ex_id)
        (self.root / ex.path).unlink(missing_ok=True)

    def _remove_pending(self, event_id: str) -> None:
        self.pending.pop(event_id, None)
        (self.root / PENDING / f"{event_id}.npy").unlink(missing_ok=True)
        (self.root / PENDING / f"{event_id}.json").unlink(missing_ok=True)

    def _drop_waiting(self, event_id: str) -> None:
        self.waiting.pop(event_id, None)
        (self.root / PENDING / f"{event_id}.mark.json").unlink(missing_ok=True)

    def _fits(self, size: int, what: str) -> bool:
        if size > self.max_bytes // 2:
            self.refused += 1
            log.warning("feedback: %s (%d bytes) is larger than half of feedback.max_bytes; not stored", what, size)
            return False
        return True

    # ------------------------------------------------------------------------------------ writes
    def _feature_path(self, camera: str, ex_id: str) -> tuple[Path, str]:
        rel = f"{FEATURES}/{camera_slug(camera)}/{ex_id}.npy"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, rel

    def add_normal(self, camera: str, features: np.ndarray, start: float, end: float, bundle: str | None) -> str | None:
        """A calm-window sample; the camera's oldest sample goes beyond ``normal_per_camera``."""
        if self.normal_per_camera <= 0:
            return None
        data = _npy_bytes(features)
        ex_id = f"normal-{camera_slug(camera)}-{int(round(start * 1000))}"
        if not self._fits(len(data), f"normal sample {ex_id}"):
            return None
        with self._lock:
            path, rel = self._feature_path(camera, ex_id)
            atomic_write(path, data)
            normal = self._labels()[2][0]
            self.examples[ex_id] = Example(ex_id, camera, KIND_NORMAL, normal, None, start, end, bundle,
                                           self._clock(), rel, len(data), int(features.shape[0]))
            mine = sorted((e for e in self.examples.values() if e.kind == KIND_NORMAL and e.camera == camera),
                          key=lambda e: e.start)
            for e in mine[:max(0, len(mine) - self.normal_per_camera)]:
                self._remove_example(e.id)
                self.evicted[KIND_NORMAL] += 1
            self._enforce(keep=ex_id)
        return ex_id

    def note_open(self, event_id: str, camera: str, category_key: str) -> None:
        with self._lock:
            self.open[event_id] = (camera, category_key)

    def add_capture(self, cap: Capture) -> str:
        """An ended event's capture: becomes an example at once when a mark waits for it, else pending.

        A ``partial`` capture (the rows up to a mark on an open event) is only kept on disk next to the
        waiting mark, so that the mark survives a crash before the event ends; the end's capture replaces
        it. Without a waiting mark (it was applied already) a partial capture is ignored."""
        data = _npy_bytes(cap.features)
        if cap.partial:
            return self._add_partial(cap, data)
        with self._lock:
            self.open.pop(cap.event_id, None)
            if not self._fits(len(data), f"capture of event {cap.event_id}"):
                self._drop_waiting(cap.event_id)
                return "refused"
            npy = self.root / PENDING / f"{cap.event_id}.npy"
            atomic_write(npy, data)
            p = Pending(cap.event_id, cap.camera, cap.start, cap.end, cap.bundle, cap.predicted, cap.event_rows,
                        cap.truncated, int(cap.features.shape[0]), self._clock(), 0)
            meta = json.dumps(p.meta(), separators=(",", ":")) + "\n"
            atomic_write(self.root / PENDING / f"{cap.event_id}.json", meta)
            self.pending[cap.event_id] = replace(p, bytes=len(data) + len(meta))
            wait = self.waiting.get(cap.event_id)
            if wait is not None:
                self._apply(cap.event_id, str(wait["kind"]), str(wait["label"]), float(wait["marked_at"]))
                self._drop_waiting(cap.event_id)
                return "marked"
            over = sorted(self.pending.values(), key=lambda q: q.stored_at)
            for q in over[:max(0, len(over) - self.pending_events)]:
                self._remove_pending(q.event_id)
                self.evicted["pending"] += 1
            self._enforce(keep=cap.event_id)
            return "pending"

    def _add_partial(self, cap: Capture, data: bytes) -> str:
        with self._lock:
            if cap.event_id not in self.waiting or cap.event_id not in self.open:
                return "ignored"
            if not self._fits(len(data), f"capture of open event {cap.event_id}"):
                return "refused"
            atomic_write(self.root / PENDING / f"{cap.event_id}.npy", data)
            p = Pending(cap.event_id, cap.camera, cap.start, cap.end, cap.bundle, cap.predicted, cap.event_rows,
                        cap.truncated, int(cap.features.shape[0]), self._clock(), 0, partial=True)
            meta = json.dumps(p.meta(), separators=(",", ":")) + "\n"
            atomic_write(self.root / PENDING / f"{cap.event_id}.json", meta)
            self.pending[cap.event_id] = replace(p, bytes=len(data) + len(meta))
            self._enforce(keep=cap.event_id)
            return "partial"

    def forget_open(self, event_id: str) -> None:
        """The capture of an ended event was lost (queue full, ring overrun): marks for it now 404."""
        with self._lock:
            self.open.pop(event_id, None)
            self._drop_waiting(event_id)

    # ------------------------------------------------------------------------------------ marks
    def resolve_label(self, kind: str, category: str | None, predicted: str | None) -> str:
        keys, names, raws = self._labels()
        if kind not in MARK_KINDS:
            raise FeedbackError(f"mark {kind!r}: expected one of {', '.join(MARK_KINDS)}")
        if kind == KIND_FALSE_ALARM:
            if category is not None:
                raise FeedbackError("a false alarm takes no category (it is stored as the normal class "
                                    f"{raws[0]!r})")
            return raws[0]
        want = category if category is not None else predicted
        if want is None:
            raise FeedbackError("confirm needs a category: the event's own is not known")
        w = want.strip().lower()
        for i, (k, n, r) in enumerate(zip(keys, names, raws, strict=False)):
            if w in (k.lower(), n.lower(), r.lower()):
                if i == 0:
                    raise FeedbackError(f"category {want!r} is the normal class: mark the event as a false alarm")
                return r
        choices = ", ".join(raws[1:])
        if category is None:
            raise FeedbackError(f"the event's category {want!r} is not a class of the bundle (added at deployment?): "
                                f"confirm with a category, one of {choices}")
        raise FeedbackError(f"unknown category {want!r}: expected one of {choices}")

    def mark(self, event_id: str, kind: str, category: str | None = None) -> MarkResult:
        """Mark an event (last mark wins). Raises ``FeedbackError`` (404 unknown event, 422 bad category)."""
        with self._lock:
            ex_id = f"event-{event_id}"
            ex = self.examples.get(ex_id)
            p = self.pending.get(event_id)
            opened = self.open.get(event_id)
            if p is not None and p.partial and opened is not None:
                p = None  # rows up to an earlier mark: the event is still open, so this mark waits too
            if ex is None and p is None and opened is None:
                raise FeedbackError(f"event {event_id!r} is not known here: no embeddings kept for it (not an event "
                                    f"of this service, or older than the last feedback.pending_events events)",
                                    status=404)
            predicted = (str(ex.extra.get("predicted")) if ex is not None and ex.extra.get("predicted") is not None
                         else p.predicted if p is not None else opened[1] if opened is not None else None)
            label = self.resolve_label(kind, category, predicted)
            now = self._clock()
            if ex is not None:
                prev = {"kind": ex.kind, "label": ex.label}
                self.examples[ex_id] = replace(ex, kind=kind, label=label, marked_at=now)
                self._write_index()
                return MarkResult(event_id, kind, label, "stored", prev, ex_id)
            if p is not None:
                self._apply(event_id, kind, label, now)
                return MarkResult(event_id, kind, label, "stored", None, ex_id)
            prev_wait = self.waiting.get(event_id)
            rec = {"kind": kind, "label": label, "marked_at": now}
            atomic_write(self.root / PENDING / f"{event_id}.mark.json", json.dumps(rec) + "\n")
            self.waiting[event_id] = rec
            before = {"kind": str(prev_wait["kind"]), "label": str(prev_wait["label"])} if prev_wait else None
            return MarkResult(event_id, kind, label, "waiting", before, ex_id)

    def _apply(self, event_id: str, kind: str, label: str, marked_at: float) -> None:
        """A pending capture becomes the example ``event-<id>`` (its file moved, not copied)."""
        p = self.pending.pop(event_id)
        ex_id = f"event-{event_id}"
        path, rel = self._feature_path(p.camera, ex_id)
        src = self.root / PENDING / f"{event_id}.npy"
        os.replace(src, path)
        (self.root / PENDING / f"{event_id}.json").unlink(missing_ok=True)
        size = path.stat().st_size
        extra: dict[str, Any] = {"predicted": p.predicted, "event_rows": list(p.event_rows),
                                 "truncated": p.truncated or p.partial}
        if p.partial:
            extra["partial"] = True  # the event's rows after the mark were lost with the previous run
        self.examples[ex_id] = Example(ex_id, p.camera, kind, label, event_id, p.start, p.end, p.bundle, marked_at,
                                       rel, size, p.snippets, extra)
        self._enforce(keep=ex_id)

    def known_events(self) -> Sequence[str]:
        with self._lock:
            return [*self.open, *self.pending, *(e.event_id for e in self.examples.values() if e.event_id)]
