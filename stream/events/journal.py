"""Open events on disk, so a service killed with SIGKILL ends them with ``restart_recovery`` next start."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

from engine.atomic import atomic_write, fsync_dir
from stream.events.errors import EventError
from stream.events.schema import REASON_RESTART_RECOVERY, Event

log = logging.getLogger("stream.events")


class OpenEventJournal:
    """Remembers the events that are open, on disk, so that a service killed with SIGKILL can close them
    with ``reason: restart_recovery`` when it comes back (receivers would otherwise wait for ever).

    Use: ``observe(event)`` after submitting every event (records starts/updates, clears ends); at startup
    ``for e in recover(): submit(e); observe(e)``. Files are written with ``engine.atomic.atomic_write``; if
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
        try:
            atomic_write(self._path(event.id), event.to_json())
            return True
        except OSError as exc:
            self._fail("write", exc)
            return False

    def clear(self, event_id: str) -> None:
        """Forget an event (it ended and its end was handed to the sinks)."""
        try:
            self._path(event_id).unlink(missing_ok=True)
            fsync_dir(self.directory)
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
