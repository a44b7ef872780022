"""``dsanet run``: the live service."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="watch cameras and send alert events (the live service)",
        description="Read every enabled camera of the deployment config, score sliding windows of CLIP "
                    "embeddings with the DSANet head, and send alert events to the configured sinks. "
                    "Prints a status line per camera every few seconds and every alert as it happens. "
                    "Stops cleanly on Ctrl-C / SIGTERM (open events end with reason 'shutdown'). "
                    "Delivery is at-least-once: after a crash or a lost acknowledgement an event can arrive "
                    "twice, so receivers de-duplicate on (id, seq) (see docs/events.md).")
    p.add_argument("-c", "--config", default=None, metavar="FILE",
                   help="deployment YAML (default: configs/demo.yaml, the embedded demo)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this many seconds (default: run until stopped)")
    p.add_argument("--status-interval", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between status lines (0: none)")
    p.set_defaults(func=run)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``logging.format: json``)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:  # exc_text: the traceback already redacted by stream.redact.RedactingFilter
            obj["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    from stream.redact import install_log_redaction

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in root.handlers:
        h.setFormatter(formatter)
    install_log_redaction(root)
    logging.getLogger("libav").setLevel(logging.ERROR)  # FFmpeg chatter (PyAV logger), when enabled


def run(args: argparse.Namespace) -> int:
    from engine.demo_paths import resolve_run_config
    from engine.errors import DsanetError
    from stream.config import load_config

    if args.duration is not None and args.duration <= 0:
        raise DsanetError("--duration must be > 0")
    path, banner = resolve_run_config(args.config)  # no -c: the default config (the embedded demo)
    if banner:
        print(banner, flush=True)
    cfg = load_config(path)
    configure_logging(cfg.logging.level, cfg.logging.format)
    from stream.service import Service

    service = Service(cfg, status_interval=args.status_interval)
    return service.run(duration=args.duration)
