"""What the console remembers: recent events (one entry per event id, the latest message wins) and a short
score history per camera, both bounded, both in memory (the sinks are the durable record).

Fed by the service listener from the head worker's thread and read by request handlers, so every method
takes one lock and does O(1) work on the write side. Each event also keeps its own score curve: the
camera's scores from ``CURVE_PRE_SECONDS`` before its start until ``CURVE_POST_SECONDS`` after its end,
so the page can draw it after the live history has moved on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.control import ScoreRecord
from stream.events import parse_iso_utc

CURVE_PRE_SECONDS = 10.0
CURVE_POST_SECONDS = 5.0


def score_dict(r: ScoreRecord) -> dict[str, Any]:
    return {"camera": r.camera, "index": r.index, "time": round(r.end_time, 3), "score": round(r.score, 4),
            "category": r.category,
            "category_score": None if r.category_score is None else round(r.category_score, 4)}


@dataclass
class _Entry:
    ordinal: int
    payload: dict[str, Any]
    start: float
    curve: deque[tuple[float, float]]
    open: bool = True
    end: float | None = None


@dataclass
class EventPage:
    events: list[dict[str, Any]]
    next_cursor: int | None
    total: int = 0


@dataclass
class ConsoleStore:
    max_events: int = 500
    history_points: int = 900  # ~8 minutes at 0.53 s snippets
    curve_points: int = 2000
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _events: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _history: dict[str, deque[ScoreRecord]] = field(default_factory=dict)
    _tracking: dict[str, list[_Entry]] = field(default_factory=dict)  # camera -> events collecting a curve
    _next: int = 0

    # ----------------------------------------------------------------------------------- writers
    def on_score(self, r: ScoreRecord) -> None:
        with self._lock:
            h = self._history.get(r.camera)
            if h is None:
                h = self._history[r.camera] = deque(maxlen=self.history_points)
            h.append(r)
            entries = self._tracking.get(r.camera)
            if entries:
                keep = []
                for e in entries:
                    if e.end is not None and r.end_time > e.end + CURVE_POST_SECONDS:
                        continue
                    e.curve.append((r.end_time, r.score))
                    keep.append(e)
                self._tracking[r.camera] = keep

    def on_event(self, payload: Mapping[str, Any]) -> None:
        ev = dict(payload)
        eid = str(ev.get("id"))
        camera = str(ev.get("camera"))
        start = parse_iso_utc(ev.get("start_time")) or 0.0
        with self._lock:
            entry = self._events.get(eid)
            if entry is None:
                curve: deque[tuple[float, float]] = deque(maxlen=self.curve_points)
                for r in self._history.get(camera, ()):
                    if r.end_time >= start - CURVE_PRE_SECONDS:
                        curve.append((r.end_time, r.score))
                entry = _Entry(self._next, ev, start, curve)
                self._next += 1
                self._events[eid] = entry
                self._tracking.setdefault(camera, []).append(entry)
                while len(self._events) > self.max_events:
                    _, old = self._events.popitem(last=False)
                    for cam_entries in self._tracking.values():
                        if old in cam_entries:
                            cam_entries.remove(old)
            elif int(ev.get("seq", 0)) < int(entry.payload.get("seq", 0)):
                return  # a late duplicate (at-least-once delivery upstream): keep the newer message
            entry.payload = ev
            if ev.get("type") == "end":
                entry.open = False
                entry.end = parse_iso_utc(ev.get("end_time")) or parse_iso_utc(ev.get("updated_time"))

    def forget_camera(self, camera: str) -> None:
        """A removed camera's live history goes; its events stay listed."""
        with self._lock:
            self._history.pop(camera, None)

    # ----------------------------------------------------------------------------------- readers
    def history(self, camera: str, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self._history.get(camera, ()))
        return [score_dict(r) for r in rows if since is None or r.end_time > since]

    def latest(self, camera: str) -> ScoreRecord | None:
        with self._lock:
            h = self._history.get(camera)
            return h[-1] if h else None

    def events(self, camera: str | None = None, category: str | None = None, since: float | None = None,
               until: float | None = None, limit: int = 50, cursor: int | None = None) -> EventPage:
        """Newest first. ``cursor`` is the ``next_cursor`` of the previous page; time filters apply to the
        event's start; ``category`` matches the display name or the class key, case-insensitively."""
        cat = category.lower() if category else None
        with self._lock:
            entries = list(self._events.values())
        matched = []
        for e in reversed(entries):
            p = e.payload
            if camera is not None and p.get("camera") != camera:
                continue
            if cat is not None and cat not in (str(p.get("category", "")).lower(),
                                               str(p.get("category_key", "")).lower()):
                continue
            if since is not None and e.start < since:
                continue
            if until is not None and e.start > until:
                continue
            matched.append(e)
        page_from = [e for e in matched if cursor is None or e.ordinal < cursor]
        page = page_from[:limit]
        more = len(page_from) > limit
        return EventPage([dict(e.payload) for e in page], page[-1].ordinal if more and page else None,
                         total=len(matched))

    def event(self, event_id: str) -> tuple[dict[str, Any], list[tuple[float, float]]] | None:
        with self._lock:
            e = self._events.get(event_id)
            if e is None:
                return None
            return dict(e.payload), list(e.curve)
