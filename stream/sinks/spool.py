"""A bounded, durable FIFO of events waiting for delivery: one file per event in a directory.

Why one file per event: a crash can only ever damage the one file being written (and a temp file is never
mistaken for an entry, because entries appear by atomic rename after fsync), acking is a plain unlink,
and the order is the file name (a zero-padded sequence number that keeps growing across restarts).

- ``put`` writes ``<seq>.json`` via ``.tmp`` + fsync + rename + directory fsync: once ``put`` returns the
  event survives SIGKILL and power loss.
- ``peek`` returns the oldest entry; ``ack`` deletes it (directory fsynced, so an acked event is never sent
  again after a restart).
- Bounded by ``max_events`` and ``max_bytes``: when full the OLDEST entry is dropped and counted.
- Corrupt or partial files found at start are moved to ``corrupt/`` and counted, never fatal.
- If the directory cannot be created or written (read-only mount, disk full), the spool logs one clear
  error naming the path, counts the failure and keeps entries in memory (same bound) so the service keeps
  running; it goes back to disk as soon as a write succeeds again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write, fsync_dir

log = logging.getLogger(__name__)

_ENTRY = re.compile(r"^(\d{16})\.json$")
DEAD_LETTER_FILE = "dead-letter.jsonl"


@dataclass
class SpoolItem:
    """One spooled event: ``key`` orders and identifies it, ``payload`` is the event's JSON object."""

    key: int
    payload: dict[str, Any]
    size: int
    path: Path | None  # None for memory-only entries


class Spool:
    """Thread-safe bounded FIFO persisted in ``directory`` (or memory when ``directory`` is None/unusable)."""

    def __init__(self, directory: str | os.PathLike[str] | None, max_events: int = 10000,
                 max_bytes: int | None = None, name: str = "spool", fsync: bool = True) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self.name = name
        self.directory = Path(directory) if directory is not None else None
        self.max_events = int(max_events)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.dropped = 0  # entries discarded because the spool was full
        self.corrupt = 0  # unreadable entries found (moved aside)
        self.write_errors = 0  # failed disk writes (entry kept in memory instead)
        self.dead_letters = 0
        self._entries: deque[SpoolItem] = deque()
        self._bytes = 0
        self._next = 1
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._disk_ok = False
        self._error_logged = False
        if self.directory is not None:
            self._open_dir()

    # ------------------------------------------------------------------ setup

    @property
    def durable(self) -> bool:
        """True while new entries go to disk."""
        return self._disk_ok

    def _open_dir(self) -> None:
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            with open(probe, "wb") as f:
                f.write(b"ok")
            probe.unlink()
        except OSError as exc:
            self._disk_error("is not writable", exc)
            return
        self._disk_ok = True
        self._load()

    def _load(self) -> None:
        assert self.directory is not None
        found: list[tuple[int, Path]] = []
        for p in self.directory.iterdir():
            m = _ENTRY.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
            elif p.name.endswith(".tmp"):
                _unlink(p)  # an interrupted put: the event was never acknowledged to the caller
        found.sort()
        for key, p in found:
            try:
                raw = p.read_bytes()
                payload = json.loads(raw)
                if not isinstance(payload, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._quarantine(p, exc)
                continue
            self._entries.append(SpoolItem(key, payload, len(raw), p))
            self._bytes += len(raw)
        if found:
            self._next = found[-1][0] + 1
        if self._entries:
            log.info("sink %s: %d undelivered event(s) recovered from %s", self.name, len(self._entries),
                     self.directory)
        self._enforce_bounds()

    def _quarantine(self, path: Path, exc: Exception) -> None:
        self.corrupt += 1
        log.warning("sink %s: spool entry %s is unreadable (%s); moved to corrupt/", self.name, path, exc)
        try:
            dest = path.parent / "corrupt"
            dest.mkdir(exist_ok=True)
            os.replace(path, dest / path.name)
        except OSError:
            _unlink(path)

    def _disk_error(self, what: str, exc: OSError) -> None:
        self.write_errors += 1
        self._disk_ok = False
        if not self._error_logged:
            self._error_logged = True
            log.error("sink %s: spool directory %s %s (%s); undelivered events are kept in memory only "
                      "(bounded to %d) and are lost on restart", self.name, self.directory, what,
                      exc.strerror or exc, self.max_events)

    # ------------------------------------------------------------------ queue operations

    def put(self, payload: Mapping[str, Any]) -> SpoolItem:
        """Append an event (its JSON object). Never raises for disk trouble; returns the stored item."""
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        with self._cond:
            key = self._next
            self._next += 1
            path = self._write(key, data) if self.directory is not None else None
            item = SpoolItem(key, dict(payload), len(data), path)
            self._entries.append(item)
            self._bytes += item.size
            self._enforce_bounds()
            self._cond.notify_all()
            return item

    def _write(self, key: int, data: bytes) -> Path | None:
        assert self.directory is not None
        final = self.directory / f"{key:016d}.json"
        try:
            if not self._disk_ok:
                self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(final, data, fsync=self.fsync)  # removes its temp file when it fails
        except OSError as exc:
            self._disk_error("cannot be written", exc)
            return None
        if not self._disk_ok:
            self._disk_ok = True
            if self._error_logged:
                log.warning("sink %s: spool directory %s is writable again", self.name, self.directory)
                self._error_logged = False
        return final

    def _enforce_bounds(self) -> None:
        while self._entries and (len(self._entries) > self.max_events
                                 or (self.max_bytes is not None and self._bytes > self.max_bytes
                                     and len(self._entries) > 1)):
            old = self._entries.popleft()
            self._bytes -= old.size
            self.dropped += 1
            if old.path is not None:
                _unlink(old.path)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("sink %s: spool full (%d events); dropped the oldest event (%d dropped so far)",
                            self.name, self.max_events, self.dropped)

    def peek(self) -> SpoolItem | None:
        """The oldest undelivered entry, or None."""
        with self._lock:
            return self._entries[0] if self._entries else None

    def wait(self, timeout: float) -> bool:
        """Block until the spool has an entry or ``timeout`` passes; True if non-empty."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._entries:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def notify(self) -> None:
        """Wake threads blocked in :meth:`wait` (used on stop)."""
        with self._cond:
            self._cond.notify_all()

    def ack(self, item: SpoolItem) -> None:
        """Remove a delivered entry for good (the removal is made durable before returning)."""
        with self._lock:
            try:
                self._entries.remove(item)
            except ValueError:
                return  # already dropped because the spool overflowed
            self._bytes -= item.size
        if item.path is not None:
            try:
                item.path.unlink()
                if self.fsync and self.directory is not None:
                    fsync_dir(self.directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("sink %s: cannot delete delivered spool entry %s (%s); it may be sent again "
                            "after a restart (receivers dedupe by id and seq)", self.name, item.path, exc)

    def dead_letter(self, item: SpoolItem, reason: str) -> None:
        """Move an undeliverable entry to ``dead-letter.jsonl`` (kept for a person to look at) and ack it."""
        self.dead_letters += 1
        line = json.dumps({"reason": reason, "time": time.time(), "event": item.payload},
                          separators=(",", ":"), ensure_ascii=False)
        if self.directory is not None:
            try:
                with open(self.directory / DEAD_LETTER_FILE, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    if self.fsync:
                        os.fsync(f.fileno())
            except OSError as exc:
                log.error("sink %s: cannot write the dead-letter file in %s (%s): %s", self.name,
                          self.directory, exc, line)
        else:
            log.error("sink %s: dead letter: %s", self.name, line)
        self.ack(item)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def memory_only_count(self) -> int:
        """Entries that exist only in memory (lost if the process stops now)."""
        with self._lock:
            return sum(1 for e in self._entries if e.path is None)

    def describe(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory) if self.directory is not None else None,
            "durable": self._disk_ok,
            "depth": len(self),
            "bytes": self._bytes,
            "max_events": self.max_events,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
            "write_errors": self.write_errors,
            "dead_letters": self.dead_letters,
        }


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass

