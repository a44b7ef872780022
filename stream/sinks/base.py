"""The sink interface and the worker that moves spooled events to a destination.

``submit`` only appends to the sink's durable spool and wakes the worker, so a slow or dead receiver
never blocks the pipeline. One worker thread per sink delivers the oldest spooled event, acks it on
success, and on failure waits with capped exponential backoff before trying the SAME event again, so
events arrive in order and each ``(id, seq)`` reaches the receiver at least once. Delivery is
at-least-once: a crash between a successful send and its ack sends that event again after the restart,
so receivers de-duplicate on ``(id, seq)``.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from stream.config import SinkConfigBase
from stream.events import Event
from stream.redact import redact
from stream.sinks.spool import Spool, SpoolItem

log = logging.getLogger(__name__)


class Metrics(Protocol):
    """What sinks report to (``stream.metrics`` provides it; any object with these methods works)."""

    def sink_delivered(self, sink_name: str, result: str) -> None: ...

    def spool_depth(self, sink_name: str, n: int) -> None: ...


class Result(str, enum.Enum):
    """Outcome of one delivery attempt (also the ``result`` label passed to ``metrics.sink_delivered``)."""

    DELIVERED = "delivered"
    RETRY = "failed"  # transient: keep it, back off, try again
    AUTH_FAILED = "auth_failed"  # the receiver refused our credentials (401/403): retried like RETRY, counted apart
    DEAD = "dead_letter"  # permanent: the receiver rejected it; keep it aside, never retry
    DROPPED = "dropped"  # spool overflow: the oldest event was discarded
    SPOOL_ERROR = "spool_error"  # the spool could not write the event to disk; it is held in memory


class Backoff:
    """Capped exponential backoff: initial, 2x, 4x ... up to ``maximum``; ``reset`` after a success."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0) -> None:
        self.initial = float(initial)
        self.maximum = max(float(maximum), self.initial)
        self.current = self.initial

    def next(self) -> float:
        d = self.current
        self.current = min(self.current * 2.0, self.maximum)
        return d

    def reset(self) -> None:
        self.current = self.initial


def safe_name(name: str) -> str:
    """A sink name usable as a directory name."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "sink"
    return s[:64]


DEFAULT_BACKOFF_INITIAL = 1.0  # seconds before the first retry of a failed delivery
DEFAULT_BACKOFF_MAX = 60.0


class Sink:
    """Base class: durable spool + one delivery worker. Subclasses implement :meth:`deliver` and may
    override :meth:`open`, :meth:`close`, :meth:`publish_score` and :meth:`ready`."""

    type_name: ClassVar[str] = "base"
    #: seconds the worker sleeps between checks while :meth:`ready` is False (e.g. broker not connected)
    not_ready_poll: ClassVar[float] = 0.05

    def __init__(self, cfg: SinkConfigBase, spool_dir: str | Path | None, metrics: Metrics | None = None, *,
                 backoff_initial: float = DEFAULT_BACKOFF_INITIAL, backoff_max: float = DEFAULT_BACKOFF_MAX) -> None:
        self.cfg = cfg
        self.name: str = cfg.name or cfg.type or self.type_name
        self.metrics = metrics
        directory = Path(spool_dir) / safe_name(self.name) if spool_dir is not None else None
        self.spool = Spool(directory, max_events=cfg.spool_max_events, name=self.name)
        self._reported_drops = 0
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.delivered = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._report_drops()  # entries dropped while reloading an over-full spool
        if not self.spool.durable and directory is not None:
            self._count(Result.SPOOL_ERROR)
        self._report_depth()

    # ------------------------------------------------------------------ public API

    def submit(self, event: Event) -> None:
        """Queue an event for delivery. Never blocks on the receiver; never raises for delivery trouble."""
        errors = self.spool.write_errors
        self.spool.put(event.to_dict())
        if self.spool.write_errors != errors:
            self._count(Result.SPOOL_ERROR)  # kept in memory only: lost if the process stops
        self._report_drops()
        self._report_depth()

    def publish_score(self, camera: str, score: float, category: str | None = None,
                      time_s: float | None = None) -> None:
        """Best-effort live score (not spooled). Default: ignored."""

    def start(self) -> None:
        """Open the destination and start the delivery worker (idempotent)."""
        if self._started:
            return
        self._started = True
        self._stop.clear()
        self.open()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop; the rest stays spooled."""
        if not self._started:
            self.close()
            return
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        self.spool.notify()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout) + 0.5)
            if self._thread.is_alive():
                log.warning("sink %s: delivery still in progress at shutdown; %d event(s) stay spooled",
                            self.name, len(self.spool))
        self.close()
        self._started = False
        left = len(self.spool)
        lost = self.spool.memory_only_count()
        if left:
            log.info("sink %s: stopped with %d undelivered event(s) in the spool%s", self.name, left,
                     f" ({lost} in memory only, lost now)" if lost else "")
        self._report_depth()

    def describe(self) -> dict[str, Any]:
        """What this sink is and how it is doing (no secrets)."""
        return {
            "name": self.name,
            "type": self.type_name,
            "target": self.target(),
            "running": bool(self._thread and self._thread.is_alive()),
            "ready": self.ready(),
            "delivered": self.delivered,
            "failures": self.failures,
            "last_error": self.last_error,
            "spool": self.spool.describe(),
        }

    # ------------------------------------------------------------------ subclass hooks

    def target(self) -> str:
        """Where events go, safe to print."""
        return ""

    def open(self) -> None:
        """Connect/open the destination; must not block for long or raise for a receiver that is down."""

    def close(self) -> None:
        """Release the destination."""

    def ready(self) -> bool:
        """False while deliveries cannot be attempted (the worker waits without counting failures)."""
        return True

    def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
        """Try to deliver one event; return the result and, on failure, a short reason."""
        raise NotImplementedError

    def idle(self) -> None:
        """Called by the worker about every 50 ms when it has time (e.g. to flush rate-limited scores)."""

    # ------------------------------------------------------------------ worker

    def _stopping_expired(self) -> bool:
        return self._stop.is_set() and (self._deadline is None or time.monotonic() >= self._deadline)

    def _sleep(self, seconds: float) -> None:
        """Interruptible wait that also respects the stop deadline."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            limit = end
            if self._stop.is_set() and self._deadline is not None:
                limit = min(limit, self._deadline)
            if now >= limit:
                return
            time.sleep(min(0.05, limit - now))

    def _run(self) -> None:
        while True:
            if self._stopping_expired():
                return
            self.idle()
            item = self.spool.peek()
            if item is None:
                if self._stop.is_set():
                    return  # everything delivered
                self.spool.wait(0.05)
                continue
            if not self.ready():
                if self._stop.is_set() and self._deadline is not None and time.monotonic() >= self._deadline:
                    return
                self._sleep(self.not_ready_poll)
                continue
            try:
                result, reason = self.deliver(item)
            except Exception as exc:  # a bug in one sink must not kill its worker
                log.exception("sink %s: unexpected error while delivering", self.name)
                result, reason = Result.RETRY, f"{type(exc).__name__}: {exc}"
            self._count(result)
            if result is Result.DELIVERED:
                self.spool.ack(item)
                self.delivered += 1
                self.backoff.reset()
                if self.last_error is not None:
                    log.info("sink %s: delivering to %s again (%d queued)", self.name, self.target(),
                             len(self.spool))
                self.last_error = None
            elif result is Result.DEAD:
                log.error("sink %s: event %s seq %s rejected permanently (%s); kept in %s", self.name,
                          item.payload.get("id"), item.payload.get("seq"), redact(reason or "?"),
                          self.spool.directory or "the log")
                self.spool.dead_letter(item, redact(reason or "rejected"))
                self.last_error = redact(reason or "rejected")
            else:
                self.failures += 1
                delay = self.backoff.next()
                if self.failures == 1 or redact(reason or "") != self.last_error:
                    level = logging.ERROR if result is Result.AUTH_FAILED else logging.WARNING
                    log.log(level, "sink %s: delivery to %s failed (%s); retrying in %.1fs (%d queued)", self.name,
                            self.target(), redact(reason or "?"), delay, len(self.spool))
                self.last_error = redact(reason) if reason else None
                if self._stop.is_set():
                    return  # shutting down: no backoff, the rest stays spooled
                self._sleep(delay)
            self._report_depth()

    # ------------------------------------------------------------------ metrics

    def _count(self, result: Result) -> None:
        if self.metrics is not None:
            try:
                self.metrics.sink_delivered(self.name, result.value)
            except Exception:  # metrics must never break delivery
                log.debug("metrics.sink_delivered failed", exc_info=True)

    def _report_drops(self) -> None:
        n = self.spool.dropped - self._reported_drops
        if n > 0:
            self._reported_drops = self.spool.dropped
            for _ in range(n):
                self._count(Result.DROPPED)

    def _report_depth(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.spool_depth(self.name, len(self.spool))
            except Exception:
                log.debug("metrics.spool_depth failed", exc_info=True)
