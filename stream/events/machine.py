"""The per-camera event state machine: scores in snippet order -> start/update/end events.

Pure logic driven only by the capture times inside the scores it is fed (no wall clock, no threads),
so the live service and the offline ``dsanet score`` produce the same events for the same scores.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream.config import EventsConfig
from stream.events.errors import EventError
from stream.events.schema import REASON_BELOW_THRESHOLD, REASON_SHUTDOWN, REASON_STREAM_GAP, Event
from stream.events.settings import EventSettings
from stream.types import WindowScore

# Namespace for deterministic event ids (uuid5 of camera and start time).
_ID_NAMESPACE = uuid.UUID("6f1c2a7e-3b44-5d0a-9c1e-2f8d4b6a7c10")


class EventState(str, enum.Enum):
    """Where one camera's machine is: nothing going on, a start pending ``min_duration``, an open event."""

    IDLE = "idle"
    PENDING = "pending"
    ACTIVE = "active"


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

    IDLE, PENDING, ACTIVE = EventState.IDLE, EventState.PENDING, EventState.ACTIVE

    def __init__(
        self,
        camera: str,
        cfg_events: EventsConfig | EventSettings | Mapping[str, float] | None,
        class_names: Sequence[str],
        display_names: Sequence[str] | Mapping[str, str] | None = None,
        model_info: Mapping[str, Any] | None = None,
        clock: Callable[[], float] | None = None,
        id_factory: Callable[[str, float], str] | None = None,
    ) -> None:
        self.camera = camera
        self.settings = EventSettings.from_config(cfg_events)
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
        self.bundle: str | None = None  # the events' ``bundle`` field: set by the service, per scoring bundle
        # ``clock`` is accepted for API symmetry but never used for event logic: times come from scores.
        self._clock = clock
        self._id_factory = id_factory or default_event_id
        self._reset_all()

    # ------------------------------------------------------------------ state

    def _reset_all(self) -> None:
        self.state: EventState = self.IDLE
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

    def set_classes(self, class_names: Sequence[str], display_names: Sequence[str]) -> None:
        """Switch to another class list (categories edited at runtime), between two scores.

        Classes are matched by key (``class_names``): running sums and cooldowns of a kept class carry
        over, an added class starts from zero, a dropped one is forgotten. An open event keeps its id;
        if its category was dropped or renamed, its next update carries the new one.
        """
        if len(class_names) < 2 or len(display_names) != len(class_names):
            raise EventError(f"camera {self.camera!r}: need the normal class plus at least one anomaly class "
                             f"and one display name each, got {list(class_names)} / {list(display_names)}")
        old = {k: i for i, k in enumerate(self.class_names)}
        where = [old.get(k) for k in class_names]
        new_index = {i: j for j, i in enumerate(where) if i is not None}
        for acc in (self._pending, self._event, self._tail):
            if acc is not None:
                acc.sums = [acc.sums[i] if i is not None else 0.0 for i in where]
        renamed = {k for k, d in zip(class_names, display_names, strict=True)
                   if k in old and self.display_names[old[k]] != d}
        self._cooldown_until = {new_index[i]: t for i, t in self._cooldown_until.items() if i in new_index}
        cat_key = self.class_names[self._emitted_category] if self._emitted_category >= 0 else None
        self._category = new_index.get(self._category, 0)
        self._emitted_category = new_index.get(self._emitted_category, -1)
        if self._event is not None:
            self._category, _ = self._event.best()
            if cat_key is None or cat_key in renamed or self._emitted_category < 0:
                self._emitted_category = -1  # the next update names the category anew
                self._dirty = True
        self.class_names = list(class_names)
        self.display_names = [str(d) for d in display_names]

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
            bundle=self.bundle,
        )
        self._seq += 1
        return ev
