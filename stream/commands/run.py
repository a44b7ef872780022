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
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="watch only the cameras that rendezvous hashing gives worker I of N (default: "
                        "SHARD_INDEX/SHARD_COUNT, a StatefulSet ordinal, the config's shard section, or all)")
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
    from stream.remote import watch_remote_encoder
    from stream.service import Service
    from stream.shard import apply_shard

    cfg, shard = apply_shard(cfg, args.shard)
    if shard.count > 1:
        logging.getLogger("stream.shard").info("shard %s (%s): cameras %s", shard, shard.source,
                                               ", ".join(c.name for c in cfg.enabled_cameras))
    # the console's one HTTP server serves /metrics, /healthz, /readyz too: the service starts none
    service = Service(cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"enabled": False})}),
                      status_interval=args.status_interval)
    watch_remote_encoder(service.metrics, service.models.encoder)
    if cfg.metrics.enabled:
        from stream import __version__
        from stream.console.wiring import start_console

        b = service.models.bundle
        handle = start_console(service, service.metrics, cfg, path, version=__version__,
                               model_info=service.model_info,
                               categories=list(b.display_names or b.class_names)[1:],
                               calibration=service.calibrator)
        service.server = handle  # type: ignore[assignment]  # closed as the shutdown's last step
        handle.install_sighup()
        print(f"console: {handle.url}/", flush=True)
    else:  # no HTTP server: SIGHUP still reloads (instead of ending the process)
        from stream.console.wiring import reload_on_sighup
        from stream.reload import LiveConfig

        reload_on_sighup(LiveConfig(cfg, service, path))
    return service.run(duration=args.duration)
