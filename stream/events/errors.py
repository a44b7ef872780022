"""The error every events module raises for a bad event record or bad event settings."""

from __future__ import annotations

from engine.errors import DsanetError


class EventError(DsanetError):
    """An event record or the events configuration is invalid."""
