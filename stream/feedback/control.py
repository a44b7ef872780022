"""What a running service offers for feedback and bundle swaps (the HTTP API, ``dsanet feedback``, the
MQTT command topic), as a Protocol apart from ``stream.control.ServiceControl`` so fakes of that one need
not grow. ``parse_mark`` validates a mark's JSON body the same way for HTTP and MQTT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from stream.feedback.store import KIND_CONFIRMED, KIND_FALSE_ALARM, MARK_KINDS, FeedbackError

_ALIASES = {"false_alarm": KIND_FALSE_ALARM, "false-alarm": KIND_FALSE_ALARM, "confirmed": KIND_CONFIRMED,
            "confirm": KIND_CONFIRMED}


@runtime_checkable
class FeedbackControl(Protocol):
    def mark_event(self, event_id: str, kind: str, category: str | None = None) -> dict[str, Any]:
        """Store a mark (last mark wins); ``FeedbackError`` (status 404/422) names the problem."""

    def feedback_status(self) -> dict[str, Any]:
        """The site-data folder's counts and bytes, or ``{"enabled": false}``."""

    def swap_bundle(self, path: str) -> dict[str, Any]:
        """Load, try and switch to another bundle; ``SwapError`` leaves the running one scoring."""


@runtime_checkable
class FeedbackCommandSink(Protocol):
    """A sink that takes feedback commands (the MQTT sink's ``<prefix>/feedback/set``)."""

    def set_feedback_handler(self, handler: Callable[[bytes], dict[str, Any]]) -> None: ...


def command_handler(control: FeedbackControl) -> Callable[[bytes], dict[str, Any]]:
    """A JSON command (bytes) -> the stored mark with ``ok: true``, or ``{"ok": false, "error", "status"}``."""
    import json

    def handle(payload: bytes) -> dict[str, Any]:
        event_id = None
        try:
            body = json.loads(payload)
            if isinstance(body, dict) and isinstance(body.get("event_id"), str):
                event_id = body["event_id"]
            eid, kind, category = parse_mark(body)
            return {"ok": True, **control.mark_event(eid, kind, category)}
        except FeedbackError as exc:
            return {"ok": False, "event_id": event_id, "error": str(exc), "status": exc.status}
        except ValueError as exc:
            return {"ok": False, "event_id": None, "error": f"the message is not JSON: {exc}", "status": 400}

    return handle


def parse_mark(body: Any, event_id: str | None = None) -> tuple[str, str, str | None]:
    """``{"mark": "false_alarm"|"confirmed", "category": C?, "event_id": ID?}`` -> (event id, kind, category)."""
    if not isinstance(body, dict):
        raise FeedbackError("expected a JSON object with mark (false_alarm or confirmed) and, for a "
                            "confirmation, an optional category", status=400)
    allowed = {"mark", "category"} | ({"event_id"} if event_id is None else set())
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise FeedbackError(f"unknown key(s) {', '.join(unknown)}: a mark takes {', '.join(sorted(allowed))}",
                            status=400)
    eid = event_id if event_id is not None else body.get("event_id")
    if not isinstance(eid, str) or not eid:
        raise FeedbackError("event_id: a non-empty string is required", status=400)
    kind = _ALIASES.get(str(body.get("mark")))
    if kind is None:
        raise FeedbackError(f"mark {body.get('mark')!r}: expected one of {', '.join(MARK_KINDS)}", status=400)
    cat = body.get("category")
    if cat is not None and (not isinstance(cat, str) or not cat.strip()):
        raise FeedbackError(f"category {cat!r}: must be a non-empty string", status=400)
    return eid, kind, cat
