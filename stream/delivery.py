"""The last stage of the event path: every event that leaves the pipeline goes through ``EventDelivery``.

Order per event: the bounded record of recent events (``Service.events``), the events metric, the
camera's status line, each sink's ``submit`` (its own spool and worker) and the open-event journal, the
runtime listeners, and the ``ALERT`` echo on the console when no stdout sink prints it.
Called from the head worker (starts, updates, ends without evidence), the evidence worker (held ends)
and the control thread (ends of removed cameras); sinks and the journal are safe for that.

The sink submits and the journal write fsync files; they run on the :class:`stream.event_writer.EventWriter`
thread once :meth:`EventDelivery.start` has run, so a slow disk never stalls the head worker (scoring).
Before ``start`` (and after ``stop``) they run inline.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from stream.camera import CameraRegistry
from stream.event_writer import EventWriter
from stream.events import Event, OpenEventJournal
from stream.listeners import ListenerHub
from stream.metrics import Metrics
from stream.sinks.base import Sink

log = logging.getLogger(__name__)

RECENT_EVENTS = 10000  # events kept in ``Service.events`` (status, tests); older ones fall off


class EventDelivery:
    def __init__(self, sinks: Sequence[Sink], journal: OpenEventJournal, metrics: Metrics,
                 cameras: CameraRegistry, listeners: ListenerHub, echo: Callable[[str], None] | None) -> None:
        self.sinks = list(sinks)
        self.journal = journal
        self.metrics = metrics
        self.cameras = cameras
        self.listeners = listeners
        self.echo = echo
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._lock = threading.Lock()
        self.writer = EventWriter(self.sinks, journal,
                                  on_drop=lambda ev: metrics.dropped("event_writer", ev.camera))
        self._writing = False

    def start(self) -> None:
        """Move sink submits and journal writes onto the writer thread."""
        self.writer.start()
        self._writing = True

    def stop(self, timeout: float) -> bool:
        """Write what is queued (within ``timeout``); later events are written inline."""
        self._writing = False
        return self.writer.stop(timeout)

    def submit(self, ev: Event) -> None:
        with self._lock:
            self.recent.append(ev)
        if ev.type == "start":
            self.metrics.event(ev.camera, ev.category)
        cam = self.cameras.get(ev.camera)
        if cam is not None:
            cam.note_event(ev)
        if self._writing:
            self.writer.put(ev)  # never blocks: the fsyncs happen on the writer thread
        else:
            self.writer.write(ev)
        if self.listeners.active:
            self.listeners.publish(ev.to_dict())
        if self.echo is not None:
            self.echo("ALERT " + ev.short())
