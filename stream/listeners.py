"""Runtime listeners (``ServiceControl.add_listener``): every score record and event payload, off the pipeline.

The head worker only ``put``s a record on a bounded queue (drop oldest, counted as
``dsanet_dropped_total{stage="listener"}``); one listener thread calls the listeners. A slow or failing
listener therefore never delays scoring, events or another camera; it loses its oldest records instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stream.control import Listener
from stream.redact import redact
from stream.scoring import DropOldestQueue
from stream.types import ScoreRecord

if TYPE_CHECKING:
    from stream.metrics import Metrics

log = logging.getLogger(__name__)

LISTENER_QUEUE = 4096  # records waiting for the listener thread


def _camera_of(record: ScoreRecord | dict[str, Any]) -> str:
    return record.camera if isinstance(record, ScoreRecord) else str(record.get("camera", ""))


class ListenerHub:
    """Holds the listeners and the thread that feeds them. Safe to use from any thread."""

    def __init__(self, metrics: Metrics, maxsize: int = LISTENER_QUEUE) -> None:
        self._listeners: tuple[Listener, ...] = ()  # replaced, never mutated: readers need no lock
        self._lock = threading.Lock()
        self._queue: DropOldestQueue[ScoreRecord | dict[str, Any]] = DropOldestQueue(
            maxsize, on_drop=lambda r: metrics.dropped("listener", _camera_of(r)), name="listeners")
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def add(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners = (*self._listeners, listener)
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._run, name="listeners", daemon=True)
                self._thread.start()

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    @property
    def active(self) -> bool:
        return bool(self._listeners)

    def publish(self, record: ScoreRecord | dict[str, Any]) -> None:
        """Never blocks; a no-op while nobody listens."""
        if self._listeners:
            self._queue.put(record)

    def _run(self) -> None:
        while not (self._stopped.is_set() and len(self._queue) == 0):
            for record in self._queue.get_batch(64, 0.0, timeout=0.25):
                for listener in self._listeners:
                    try:
                        listener(record)
                    except Exception as exc:  # a listener must never take the others down
                        log.warning("listener %r failed: %s", listener, redact(exc))

    def stop(self, timeout: float = 1.0) -> None:
        """Deliver what is queued (within ``timeout``), then end the thread."""
        self._stopped.set()
        self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
