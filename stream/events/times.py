"""Event times: UNIX seconds <-> ISO-8601 UTC with milliseconds, as every sink renders them."""

from __future__ import annotations

from datetime import datetime, timezone

from stream.events.errors import EventError


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
