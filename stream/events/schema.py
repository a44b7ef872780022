"""The alert event record every sink sends, its JSON form (``docs/events.md``) and the end reasons."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.events.errors import EventError
from stream.events.times import iso_utc, parse_iso_utc

SCHEMA_VERSION = 1
EVENT_TYPES = ("start", "update", "end")

# End reasons (free text is allowed too; these are the ones the project emits).
REASON_BELOW_THRESHOLD = "score_below_threshold"
REASON_SHUTDOWN = "shutdown"
REASON_RESTART_RECOVERY = "restart_recovery"
REASON_STREAM_GAP = "stream_gap"
REASON_CAMERA_REMOVED = "camera_removed"
REASON_CAMERA_DISABLED = "camera_disabled"


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
    bundle: str | None = None  # the bundle that scored it: first 12 hex digits of its head file's sha256

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
            "bundle": self.bundle,
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
                bundle=None if d.get("bundle") is None else str(d["bundle"]),
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
