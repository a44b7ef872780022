"""The event machine's settings as a frozen record, derived field by field from ``stream.config.EventsConfig``.

The fields, their defaults and their bounds are declared once, on ``EventsConfig``; this record is
generated from it (so it cannot drift) and validated by it on construction, so an ``EventSettings``
that exists is valid. It is a dataclass so callers may ``dataclasses.replace`` single fields
(``dsanet score`` options over the config) and pass it across threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from stream.config import EventsConfig
from stream.events.errors import EventError


class _Settings:
    """Behaviour of :data:`EventSettings` (the fields come from ``EventsConfig``)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`EventError` naming the first bad field (``EventsConfig``'s rules)."""
        try:
            EventsConfig.model_validate(dataclasses.asdict(self))  # type: ignore[call-overload]
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            raise EventError(f"events.{loc}: {msg}" if loc else f"events: {msg}") from None

    @classmethod
    def from_config(cls, cfg: EventsConfig | Mapping[str, Any] | _Settings | None) -> Any:
        """Settings from an ``EventsConfig`` (or any record of its fields), a mapping, or None (defaults)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        names = list(EventsConfig.model_fields)
        if isinstance(cfg, Mapping):
            vals = {n: cfg[n] for n in names if n in cfg}
        elif isinstance(cfg, EventsConfig):
            vals = cfg.model_dump()
        else:
            vals = {n: getattr(cfg, n) for n in names}
        try:
            return cls(**{k: float(v) for k, v in vals.items()})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, EventError):
                raise
            raise EventError(f"events: {exc}") from None


EventSettings: Any = dataclasses.make_dataclass(
    "EventSettings",
    [(name, float, dataclasses.field(default=float(info.default)))
     for name, info in EventsConfig.model_fields.items()],
    bases=(_Settings,), frozen=True)
EventSettings.__module__ = __name__
EventSettings.__doc__ = "The timing and thresholds the event machine runs on (fields of ``EventsConfig``)."
