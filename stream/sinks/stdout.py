"""``stdout`` sink: one readable line per event (``format: text``) or its JSON (``format: json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stream.config import StdoutSinkConfig
from stream.events import Event, EventError
from stream.metrics import Metrics
from stream.sinks import register_sink
from stream.sinks.base import Result, Sink
from stream.sinks.spool import SpoolItem


@register_sink("stdout")
class StdoutSink(Sink):
    """Prints events; the stream is looked up at each write so redirection and test capture work."""

    def __init__(self, cfg: StdoutSinkConfig, spool_dir: str | Path | None, metrics: Metrics | None = None,
                 **kw: Any) -> None:
        kw.setdefault("backoff_initial", 0.5)
        kw.setdefault("backoff_max", 5.0)
        super().__init__(cfg, spool_dir, metrics, **kw)
        self.format = cfg.format

    def target(self) -> str:
        return f"stdout ({self.format})"

    def render(self, payload: dict[str, Any]) -> str:
        if self.format == "json":
            return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        try:
            return "ALERT " + Event.from_dict(payload).short()
        except EventError:
            return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)

    def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
        try:
            out = sys.stdout
            out.write(self.render(item.payload) + "\n")
            out.flush()
        except (OSError, ValueError) as exc:  # closed or broken pipe
            return Result.RETRY, f"cannot write to stdout: {exc}"
        return Result.DELIVERED, None
