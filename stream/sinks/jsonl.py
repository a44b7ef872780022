"""``jsonl`` sink: append one JSON line per event to a file.

Each line is flushed when written; when an event ends the file is fsynced too (``fsync: true``), so a
finished event is on disk before its spool entry is deleted. A crash between the write and the ack can
repeat the last line on restart; the sink checks the file's last line and skips an exact repeat.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from stream.config import JsonlSinkConfig
from stream.metrics import Metrics
from stream.sinks import register_sink
from stream.sinks.base import Result, Sink
from stream.sinks.spool import SpoolItem


def _last_line(path: Path, limit: int = 1 << 16) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            tail = f.read()
    except OSError:
        return None
    lines = tail.rstrip(b"\n").split(b"\n")
    return lines[-1] if lines and lines[-1] else None


@register_sink("jsonl")
class JsonlSink(Sink):
    def __init__(self, cfg: JsonlSinkConfig, spool_dir: str | Path | None, metrics: Metrics | None = None,
                 **kw: Any) -> None:
        kw.setdefault("backoff_initial", 0.5)
        kw.setdefault("backoff_max", 30.0)
        super().__init__(cfg, spool_dir, metrics, **kw)
        self.path = Path(os.path.expanduser(str(cfg.path)))
        self.fsync = cfg.fsync
        self._f: IO[bytes] | None = None
        self._last_key: tuple[Any, Any] | None = None

    def target(self) -> str:
        return str(self.path)

    def open(self) -> None:
        last = _last_line(self.path)
        if last:
            try:
                d = json.loads(last)
                self._last_key = (d.get("id"), d.get("seq"))
            except ValueError:
                self._last_key = None

    def _file(self) -> IO[bytes]:
        if self._f is None or self._f.closed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")
            # a torn last line (crash mid-write) must not glue onto the next record
            if self._f.tell() > 0:
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        self._f.write(b"\n")
        return self._f

    def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
        p = item.payload
        key = (p.get("id"), p.get("seq"))
        if self._last_key is not None and key == self._last_key:
            self._last_key = None
            return Result.DELIVERED, None  # written before a crash, not acked: do not write it twice
        line = json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            f = self._file()
            f.write(line)
            f.flush()
            if self.fsync and p.get("type") == "end":
                os.fsync(f.fileno())
        except OSError as exc:
            self._close_file()
            return Result.RETRY, f"cannot append to {self.path}: {exc.strerror or exc}"
        self._last_key = None
        return Result.DELIVERED, None

    def _close_file(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            try:
                self._f.flush()
                if self.fsync:
                    os.fsync(self._f.fileno())
            except OSError:
                pass
        self._close_file()
