"""Alert events: the schema every sink sends, the per-camera state machine, and open-event recovery.

The state machine is pure logic driven only by the capture times inside the scores it is fed (no wall
clock, no threads), so the live service and the offline ``dsanet score`` produce the same events for the
same scores. The JSON form is documented in ``docs/events.md``; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.errors import DsanetError
from stream.fsutil import fsync_dir as _fsync_dir
from stream.types import WindowScore

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EVENT_TYPES = ("start", "update", "end")

# End reasons (free text is allowed too; these are the ones the project emits).
REASON_BELOW_THRESHOLD = "score_below_threshold"
REASON_SHUTDOWN = "shutdown"
REASON_RESTART_RECOVERY = "restart_recovery"
REASON_STREAM_GAP = "stream_gap"

# Namespace for deterministic event ids (uuid5 of camera and start time).
_ID_NAMESPACE = uuid.UUID("6f1c2a7e-3b44-5d0a-9c1e-2f8d4b6a7c10")


class EventError(DsanetError):
    """An event record or the events configuration is invalid."""


# --------------------------------------------------------------------------------------------- times


def iso_utc(t: float | None) -> str | None:
    """UNIX seconds -> ``2026-11-29T07:01:02.345Z`` (millisecond precision, always UTC)."""
    if t is None:
        return None
    ms = int(round(t * 1000.0))
    secs, rem = divmod(ms, 1000)
    return datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem:03d}Z"


def parse_iso_utc(s: str | None) -> float | None:
    """Inverse of :func:`iso_utc` (accepts any ISO-8601 with an offset or ``Z``)."""
    if s is None:
        return None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (TypeError, ValueError) as exc:
        raise EventError(f"bad ISO-8601 time {s!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# --------------------------------------------------------------------------------------------- event


@dataclass(frozen=True)
class Event:
    """One alert message. ``id`` is shared by the start, updates and end of one anomaly; ``seq`` orders them.

    Times are UNIX seconds taken from frame capture times; :meth:`to_dict` renders them as ISO-8601 UTC.
    """

    id: str
    seq: int
    type: str  # start | update | end
    camera: str
    category: str  # display name of the anomaly class
    category_key: str  # class name as in the bundle (stable key for automations)
    category_score: float  # mean probability of that class over the event's snippets
    score: float  # anomaly score of the latest snippet
    peak_score: float
    start_time: float
    end_time: float | None
    updated_time: float
    snippets: int
    model: Mapping[str, Any] = field(default_factory=dict)  # {"name": ..., "hash": ...}
    evidence: Mapping[str, Any] | None = None
    reason: str | None = None  # set on end events

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON object (key order fixed for readable logs)."""
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "camera": self.camera,
            "category": self.category,
            "category_key": self.category_key,
            "category_score": _r(self.category_score),
            "score": _r(self.score),
            "peak_score": _r(self.peak_score),
            "start_time": iso_utc(self.start_time),
            "end_time": iso_utc(self.end_time),
            "updated_time": iso_utc(self.updated_time),
            "snippets": self.snippets,
            "model": dict(self.model),
            "evidence": dict(self.evidence) if self.evidence is not None else None,
            "reason": self.reason,
        }

    def to_json(self) -> str:
        """Compact one-line JSON (what every sink sends)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """Rebuild an event from its JSON object (spool and journal reload)."""
        try:
            typ = str(d["type"])
            if typ not in EVENT_TYPES:
                raise EventError(f"event {d.get('id')!r}: unknown type {typ!r}")
            return cls(
                id=str(d["id"]),
                seq=int(d["seq"]),
                type=typ,
                camera=str(d["camera"]),
                category=str(d["category"]),
                category_key=str(d.get("category_key", d["category"])),
                category_score=float(d["category_score"]),
                score=float(d["score"]),
                peak_score=float(d["peak_score"]),
                start_time=float(parse_iso_utc(d["start_time"])),  # type: ignore[arg-type]
                end_time=parse_iso_utc(d.get("end_time")),
                updated_time=float(parse_iso_utc(d["updated_time"])),  # type: ignore[arg-type]
                snippets=int(d["snippets"]),
                model=dict(d.get("model") or {}),
                evidence=dict(d["evidence"]) if d.get("evidence") is not None else None,
                reason=d.get("reason"),
            )
        except EventError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise EventError(f"not a valid event object ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError(f"event is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise EventError("event JSON is not an object")
        return cls.from_dict(d)

    def short(self) -> str:
        """One human-readable line (stdout sink, logs)."""
        t = iso_utc(self.updated_time)
        head = f"{t} [{self.camera}] {self.type.upper():6s} {self.category} ({self.category_score:.2f})"
        tail = f"score={self.score:.2f} peak={self.peak_score:.2f} snippets={self.snippets} id={self.id}"
        if self.type == "end":
            dur = (self.end_time or self.updated_time) - self.start_time
            tail += f" duration={dur:.1f}s reason={self.reason}"
        return f"{head} {tail}"


def _r(x: float) -> float:
    """Round for JSON: 4 decimals are plenty for probabilities and keep lines short."""
    return round(float(x), 4)


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EventSettings:
    """The timing and thresholds the machine needs; built from ``stream.config.EventsConfig`` or any
    object with the same attribute names."""

    on_threshold: float = 0.6
    off_threshold: float = 0.4
    min_duration: float = 1.0
    hold: float = 3.0
    cooldown: float = 10.0
    update_interval: float = 5.0

    @classmethod
    def from_config(cls, cfg: Any) -> EventSettings:
        if cfg is None:
            return cls()
        if isinstance(cfg, EventSettings):
            return cfg
        names = [f.name for f in dataclasses.fields(cls)]
        if isinstance(cfg, Mapping):
            vals = {n: cfg[n] for n in names if n in cfg}
        else:
            vals = {n: getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None}
        s = cls(**{k: float(v) for k, v in vals.items()})
        s.validate()
        return s

    def validate(self) -> None:
        for n in ("on_threshold", "off_threshold"):
            v = getattr(self, n)
            if not 0.0 <= v <= 1.0:
                raise EventError(f"events.{n} = {v} must be within [0, 1]")
        for n in ("min_duration", "hold", "cooldown", "update_interval"):
            v = getattr(self, n)
            if not (v >= 0.0 and math.isfinite(v)):
                raise EventError(f"events.{n} = {v} must be a finite number >= 0")
        if self.off_threshold > self.on_threshold:
            raise EventError(
                f"events.off_threshold ({self.off_threshold}) must be <= on_threshold ({self.on_threshold})")


# ------------------------------------------------------------------------------------- state machine


def default_event_id(camera: str, start_time: float) -> str:
    """Deterministic id: the same camera and start time give the same id (offline re-runs agree), and a
    restarted service never reuses one because capture times move on."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{camera}\x00{int(round(start_time * 1000))}"))


class _Acc:
    """Running sums of class probabilities over a run of snippets."""

    __slots__ = ("n", "sums", "peak", "first_start", "last_end")

    def __init__(self, width: int) -> None:
        self.n = 0
        self.sums = [0.0] * width
        self.peak = 0.0
        self.first_start: float | None = None
        self.last_end: float | None = None

    def add(self, ws: WindowScore) -> None:
        self.n += 1
        for i, p in enumerate(ws.class_probs):
            self.sums[i] += float(p)
        self.peak = max(self.peak, float(ws.score))
        if self.first_start is None:
            self.first_start = ws.start_time
        self.last_end = ws.end_time

    def merge(self, other: _Acc) -> None:
        self.n += other.n
        for i, v in enumerate(other.sums):
            self.sums[i] += v
        self.peak = max(self.peak, other.peak)
        if other.last_end is not None:
            self.last_end = other.last_end

    def best(self) -> tuple[int, float]:
        """(class index, mean probability) of the most likely anomaly class; column 0 (normal) excluded."""
        if self.n == 0 or len(self.sums) < 2:
            return (1 if len(self.sums) > 1 else 0), 0.0
        idx = max(range(1, len(self.sums)), key=lambda i: (self.sums[i], -i))
        return idx, self.sums[idx] / self.n


class EventMachine:
    """Turns one camera's stream of :class:`WindowScore` (in snippet order) into start/update/end events.

    - start: the score stays >= ``on_threshold`` for ``min_duration`` seconds of capture time (a dip below
      ``on_threshold`` while pending resets it, so short blips never fire);
    - update: the category or the peak changed, at most once per ``update_interval`` seconds;
    - end: the score stays < ``off_threshold`` for ``hold`` seconds; ``end_time`` is the end of the last
      snippet at or above ``off_threshold`` and the trailing quiet snippets do not count toward the event;
    - cooldown: for ``cooldown`` seconds after an end, the same category does not start again (the run stays
      pending and fires once the cooldown is over if it is still going on); another category may start;
    - a gap in capture time larger than ``max(hold, 2 x snippet)`` ends an open event (``stream_gap``) and
      resets a pending start, so a camera outage is not mistaken for a continuous anomaly.

    The category is the anomaly class (column 0, normal, excluded) with the highest mean probability over
    the event's snippets; ``category_score`` is that mean.
    """

    IDLE, PENDING, ACTIVE = "idle", "pending", "active"

    def __init__(
        self,
        camera: str,
        cfg_events: Any,
        class_names: Sequence[str],
        display_names: Sequence[str] | Mapping[str, str] | None = None,
        model_info: Mapping[str, Any] | None = None,
        clock: Callable[[], float] | None = None,
        id_factory: Callable[[str, float], str] | None = None,
    ) -> None:
        self.camera = camera
        self.settings = EventSettings.from_config(cfg_events)
        self.settings.validate()
        if len(class_names) < 2:
            raise EventError(f"camera {camera!r}: need the normal class plus at least one anomaly class, "
                             f"got {list(class_names)}")
        self.class_names = list(class_names)
        if display_names is None:
            self.display_names = list(class_names)
        elif isinstance(display_names, Mapping):
            self.display_names = [str(display_names.get(n, n)) for n in class_names]
        else:
            if len(display_names) != len(class_names):
                raise EventError(f"camera {camera!r}: {len(display_names)} display names for "
                                 f"{len(class_names)} classes")
            self.display_names = [str(d) for d in display_names]
        info = dict(model_info or {})
        self.model_info = {"name": info.get("name"), "hash": info.get("hash"), **info}
        # ``clock`` is accepted for API symmetry but never used for event logic: times come from scores.
        self._clock = clock
        self._id_factory = id_factory or default_event_id
        self._reset_all()

    # ------------------------------------------------------------------ state

    def _reset_all(self) -> None:
        self.state = self.IDLE
        self._pending: _Acc | None = None
        self._event: _Acc | None = None
        self._tail: _Acc | None = None  # snippets below off_threshold awaiting the hold verdict
        self._below_since: float | None = None
        self._id: str | None = None
        self._seq = 0
        self._category = 0
        self._emitted_category = 0
        self._emitted_peak = 0.0
        self._last_emit_time = 0.0
        self._dirty = False
        self._last_ws: WindowScore | None = None
        self._last_index: int | None = None
        self._cooldown_until: dict[int, float] = {}

    @property
    def open_event_id(self) -> str | None:
        return self._id if self.state == self.ACTIVE else None

    # ------------------------------------------------------------------ input

    def push(self, ws: WindowScore) -> list[Event]:
        """Feed one score; return the events it causes (usually none)."""
        if ws.camera != self.camera:
            raise EventError(f"camera {self.camera!r}: got a score for camera {ws.camera!r}")
        if len(ws.class_probs) != len(self.class_names):
            raise EventError(f"camera {self.camera!r}: score has {len(ws.class_probs)} class probabilities, "
                             f"the model has {len(self.class_names)} classes")
        if self._last_index is not None and ws.index <= self._last_index:
            return []  # duplicate or out of order: the window re-scored an old snippet; ignore
        out: list[Event] = []
        prev = self._last_ws
        if prev is not None:
            gap = ws.start_time - prev.end_time
            snippet = max(prev.end_time - prev.start_time, 1e-6)
            if gap > max(self.settings.hold, 2.0 * snippet):
                out.extend(self._on_gap(prev))
        self._last_index = ws.index
        self._last_ws = ws
        s = self.settings
        score = float(ws.score)
        if self.state == self.IDLE:
            if score >= s.on_threshold:
                self._pending = _Acc(len(self.class_names))
                self._pending.add(ws)
                self.state = self.PENDING
                out.extend(self._maybe_start(ws))
        elif self.state == self.PENDING:
            if score >= s.on_threshold:
                assert self._pending is not None
                self._pending.add(ws)
                out.extend(self._maybe_start(ws))
            else:
                self._pending = None
                self.state = self.IDLE
        else:
            out.extend(self._active(ws))
        return out

    def push_many(self, scores: Sequence[WindowScore]) -> list[Event]:
        out: list[Event] = []
        for ws in scores:
            out.extend(self.push(ws))
        return out

    def close(self, reason: str = REASON_SHUTDOWN) -> Event | None:
        """End the open event, if any (shutdown, camera removed); a pending start is dropped."""
        ev: Event | None = None
        if self.state == self.ACTIVE and self._last_ws is not None:
            ev = self._end(self._last_ws, reason)
        else:
            self.state = self.IDLE
            self._pending = None
        return ev

    # ------------------------------------------------------------------ transitions

    def _maybe_start(self, ws: WindowScore) -> list[Event]:
        acc = self._pending
        assert acc is not None and acc.first_start is not None
        if ws.end_time - acc.first_start < self.settings.min_duration - 1e-9:
            return []
        cat, _ = acc.best()
        if ws.end_time < self._cooldown_until.get(cat, -math.inf):
            return []  # same category ended recently: keep pending until the cooldown is over
        self.state = self.ACTIVE
        self._event, self._pending = acc, None
        self._tail, self._below_since = None, None
        self._id = self._id_factory(self.camera, acc.first_start)
        self._seq = 0
        self._category = cat
        self._emitted_category, self._emitted_peak = cat, acc.peak
        self._last_emit_time = ws.end_time
        self._dirty = False
        return [self._make("start", ws)]

    def _active(self, ws: WindowScore) -> list[Event]:
        s = self.settings
        acc = self._event
        assert acc is not None
        if float(ws.score) >= s.off_threshold:
            if self._tail is not None:
                acc.merge(self._tail)  # a short dip inside the event belongs to it
                self._tail, self._below_since = None, None
            acc.add(ws)
            self._category, _ = acc.best()
            if self._category != self._emitted_category or acc.peak > self._emitted_peak:
                self._dirty = True
            if self._dirty and ws.end_time - self._last_emit_time >= s.update_interval - 1e-9:
                self._emitted_category, self._emitted_peak = self._category, acc.peak
                self._last_emit_time = ws.end_time
                self._dirty = False
                return [self._make("update", ws)]
            return []
        if self._tail is None:
            self._tail = _Acc(len(self.class_names))
            self._below_since = ws.start_time
        self._tail.add(ws)
        assert self._below_since is not None
        if ws.end_time - self._below_since >= s.hold - 1e-9:
            return [self._end(ws, REASON_BELOW_THRESHOLD)]
        return []

    def _on_gap(self, prev: WindowScore) -> list[Event]:
        if self.state == self.ACTIVE:
            return [self._end(prev, REASON_STREAM_GAP)]
        self.state, self._pending = self.IDLE, None
        return []

    def _end(self, ws: WindowScore, reason: str) -> Event:
        acc = self._event
        assert acc is not None
        ev = self._make("end", ws, end_time=acc.last_end, reason=reason)
        self._cooldown_until[self._category] = (acc.last_end or ws.end_time) + self.settings.cooldown
        self.state = self.IDLE
        self._event, self._tail, self._below_since, self._id = None, None, None, None
        return ev

    def _make(self, typ: str, ws: WindowScore, end_time: float | None = None, reason: str | None = None) -> Event:
        acc = self._event
        assert acc is not None and acc.first_start is not None and self._id is not None
        cat, mean = acc.best()
        ev = Event(
            id=self._id,
            seq=self._seq,
            type=typ,
            camera=self.camera,
            category=self.display_names[cat],
            category_key=self.class_names[cat],
            category_score=mean,
            score=float(ws.score),
            peak_score=acc.peak,
            start_time=acc.first_start,
            end_time=end_time,
            updated_time=ws.end_time,
            snippets=acc.n,
            model=dict(self.model_info),
            evidence=None,
            reason=reason,
        )
        self._seq += 1
        return ev


# ------------------------------------------------------------------------------ open-event journal


class OpenEventJournal:
    """Remembers the events that are open, on disk, so that a service killed with SIGKILL can close them
    with ``reason: restart_recovery`` when it comes back (receivers would otherwise wait for ever).

    Use: ``observe(event)`` after submitting every event (records starts/updates, clears ends); at startup
    ``for e in recover(): submit(e); observe(e)``. Files are written atomically (temp + fsync + rename); if
    the directory is not writable the journal logs once and becomes a no-op (events still flow).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.available = True
        self.errors = 0
        self._warned = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail("create", exc)

    def _path(self, event_id: str) -> Path:
        return self.directory / (hashlib.sha1(event_id.encode("utf-8")).hexdigest()[:24] + ".json")

    def _fail(self, what: str, exc: OSError) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            log.error("open-event journal: cannot %s in %s (%s); events still flow but open events will not be "
                      "closed after a crash", what, self.directory, exc.strerror or exc)

    def record(self, event: Event) -> bool:
        """Persist the latest state of an open event (start or update)."""
        path = self._path(event.id)
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(event.to_json().encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.directory)
            return True
        except OSError as exc:
            self._fail("write", exc)
            return False

    def clear(self, event_id: str) -> None:
        """Forget an event (it ended and its end was handed to the sinks)."""
        try:
            self._path(event_id).unlink(missing_ok=True)
            _fsync_dir(self.directory)
        except OSError as exc:
            self._fail("delete", exc)

    def observe(self, event: Event) -> None:
        if event.type == "end":
            self.clear(event.id)
        else:
            self.record(event)

    def open_events(self) -> list[Event]:
        """The recorded open events (unreadable files are skipped with a warning and removed)."""
        out: list[Event] = []
        if not self.directory.is_dir():
            return out
        for p in sorted(self.directory.glob("*.json")):
            try:
                out.append(Event.from_json(p.read_bytes()))
            except (OSError, EventError) as exc:
                log.warning("open-event journal: skipping unreadable %s (%s)", p, exc)
                try:
                    p.unlink()
                except OSError:
                    pass
        for p in self.directory.glob("*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass
        return sorted(out, key=lambda e: (e.start_time, e.camera))

    def recover(self, now: float | None = None) -> list[Event]:
        """End events for everything left open by a previous run. ``end_time`` is the last time the event
        was known to be active; ``updated_time`` is ``now`` (capture-clock seconds) when given. The files
        stay until :meth:`observe`/:meth:`clear` is called with each returned event after submitting it."""
        out: list[Event] = []
        for e in self.open_events():
            out.append(dataclasses.replace(
                e, seq=e.seq + 1, type="end", end_time=e.updated_time,
                updated_time=now if now is not None else e.updated_time, reason=REASON_RESTART_RECOVERY))
        return out

