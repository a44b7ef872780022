"""Puts the one HTTP server in front of a running service (``dsanet run``): the console app over the
service's ``ServiceControl`` and metrics registry, the live config for API changes and reloads, and a
SIGHUP handler that reloads the deployment file in a thread (never inside the signal handler).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from stream.calibrator import Calibrator
from stream.config import DeploymentConfig
from stream.console.app import Console, create_app
from stream.console.auth import is_loopback, token_for
from stream.console.server import HttpServer
from stream.control import ServiceControl
from stream.reload import LiveConfig

log = logging.getLogger(__name__)


def reload_on_sighup(live: LiveConfig) -> Any:
    """Make SIGHUP reload ``live`` in a thread; returns the previous handler (None where signals cannot be
    installed: not the main thread, or no SIGHUP on this platform)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return None

    def on_hup(signum: int, frame: Any) -> None:  # noqa: ARG001
        threading.Thread(target=live.reload, name="reload", daemon=True).start()

    return signal.signal(signal.SIGHUP, on_hup)


class ConsoleHandle:
    """What :func:`start_console` started; ``close()`` stops it (the service calls it at its last step)."""

    def __init__(self, server: HttpServer, console: Console | None, live: LiveConfig | None) -> None:
        self.server, self.console, self.live = server, console, live
        self.url = server.url
        self.port = server.port
        self._previous_hup: Any = None

    def install_sighup(self) -> bool:
        """SIGHUP re-reads the deployment file (main thread only; False where that is not possible)."""
        if self.live is None:
            return False
        self._previous_hup = reload_on_sighup(self.live)
        return self._previous_hup is not None

    def close(self) -> None:
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        self.server.close()


def start_console(control: ServiceControl, metrics: Any, cfg: DeploymentConfig, config_path: str | Path | None,
                  *, version: str = "", model_info: dict[str, Any] | None = None,
                  categories: list[str] | None = None, calibration: Calibrator | None = None) -> ConsoleHandle:
    """Start the HTTP server where the config says (``http``/``metrics`` sections); raises ``DsanetError``
    with a one-line reason when it cannot listen or needs a token it does not have."""
    host, port = cfg.http_host, cfg.http_port
    token = token_for(host, cfg.http.token_env)
    console = None
    live = LiveConfig(cfg, control, config_path)  # reloads work with the console off too (SIGHUP)
    if cfg.http.console:
        console = Console(control, live, metrics, evidence_dir=cfg.evidence.directory if cfg.evidence.enabled else None,
                          max_events=cfg.http.event_history, version=version, model_info=model_info,
                          categories=categories, calibration=calibration)
    app = create_app(console, metrics, token=token, username=cfg.http.username, loopback=is_loopback(host))
    server = HttpServer(app, host, port, on_close=console.close if console is not None else None)
    log.info("http on %s: /metrics /healthz /readyz%s%s", server.url, " /api/v1 and the console at /"
             if console is not None else "", " (token required)" if token else "")
    return ConsoleHandle(server, console, live)
