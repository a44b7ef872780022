"""The event writer: durable writes of emitted events, off the scoring thread.

Why: handing an event to the sinks writes it to each sink's spool (file fsync + directory fsync) and the
open-event journal does the same; on a slow or saturated disk that is hundreds of milliseconds per event,
and the scoring thread must never wait for a disk (``docs/architecture.md``: live loops never block). The
scoring thread only appends the event to this writer's queue; one thread, in emission order, then calls
every sink's ``submit`` and the journal's ``observe``. Order is kept (one queue, one thread), so each
sink still sees a camera's events in order.

The queue is bounded (``max_pending``): if the disk is so slow that it fills, the newest event is refused,
counted in ``dsanet_dropped_total{stage="persist"}`` and logged; it never blocks. An event still in the
queue when the process is killed is lost (it was in memory only, milliseconds on a healthy disk): this
is the window the at-least-once guarantee does not cover, documented in docs/events.md.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from stream.redact import redact

log = logging.getLogger(__name__)


class EventWriter:
    """One thread that submits events to the sinks and the journal, in order."""

    def __init__(self, sinks: Sequence[Any], journal: Any, on_drop: Callable[[Any], None] | None = None,
                 max_pending: int = 100_000) -> None:
        self.sinks = list(sinks)
        self.journal = journal
        self.on_drop = on_drop
        self.max_pending = max_pending
        self._queue: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self.dropped = 0
        self.written = 0
        self.last_progress = time.monotonic()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
            self._thread.start()

    def put(self, event: Any) -> bool:
        """Queue an event; never blocks. False (and counted) when the queue is full."""
        with self._cond:
            if len(self._queue) >= self.max_pending:
                self.dropped += 1
                full = True
            else:
                self._queue.append(event)
                self._cond.notify()
                full = False
        if full:
            log.error("event writer: %d events waiting for the disk; event %s of camera %s dropped",
                      self.max_pending, getattr(event, "id", "?"), getattr(event, "camera", "?"))
            if self.on_drop is not None:
                self.on_drop(event)
        return not full

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def write(self, event: Any) -> None:
        """Submit one event to every sink and the journal (the writer thread's step; also used directly
        when the writer is not running, e.g. before start)."""
        for sink in self.sinks:
            try:
                sink.submit(event)
            except Exception as exc:  # a sink must never take the pipeline down
                log.error("sink %s: could not queue event %s: %s", getattr(sink, "name", "?"),
                          getattr(event, "id", "?"), redact(exc))
        try:
            self.journal.observe(event)
        except Exception as exc:
            log.error("open-event journal: could not record event %s: %s", getattr(event, "id", "?"), redact(exc))
        self.written += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(0.5)
                    self.last_progress = time.monotonic()
                if not self._queue and self._stop:
                    return
                event = self._queue.popleft()
                self._busy = True
            try:
                self.write(event)
            finally:
                with self._cond:
                    self._busy = False
                    self.last_progress = time.monotonic()
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self, timeout: float) -> bool:
        """Write what is queued (within ``timeout``), then end the thread. True when nothing was left."""
        done = self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.1, timeout))
            self._thread = None
        if not done:
            with self._cond:
                left = len(self._queue)
            log.error("event writer: %d event(s) not written at shutdown (disk too slow)", left)
        return done
