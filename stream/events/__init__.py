"""Alert events: the record every sink sends, the per-camera state machine, and open-event recovery.

One module per job: ``schema`` (the ``Event`` record, its JSON and end reasons), ``times`` (ISO-8601),
``settings`` (the machine's settings, derived from ``stream.config.EventsConfig``), ``machine`` (the
state machine), ``journal`` (open events on disk). The JSON form is documented in ``docs/events.md``.
"""

from stream.events.errors import EventError
from stream.events.journal import OpenEventJournal
from stream.events.machine import EventMachine, EventState, default_event_id
from stream.events.schema import (
    EVENT_TYPES,
    REASON_BELOW_THRESHOLD,
    REASON_CAMERA_DISABLED,
    REASON_CAMERA_REMOVED,
    REASON_RESTART_RECOVERY,
    REASON_SHUTDOWN,
    REASON_STREAM_GAP,
    SCHEMA_VERSION,
    Event,
)
from stream.events.settings import EventSettings
from stream.events.times import iso_utc, parse_iso_utc

__all__ = [
    "EVENT_TYPES", "REASON_BELOW_THRESHOLD", "REASON_CAMERA_DISABLED", "REASON_CAMERA_REMOVED",
    "REASON_RESTART_RECOVERY", "REASON_SHUTDOWN", "REASON_STREAM_GAP", "SCHEMA_VERSION", "Event", "EventError",
    "EventMachine", "EventSettings", "EventState", "OpenEventJournal", "default_event_id", "iso_utc",
    "parse_iso_utc",
]
