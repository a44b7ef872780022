"""The Starlette application of the service's one HTTP server.

``/metrics`` is prometheus-client's own ASGI app over the service's registry (so the page stays exactly
what promtool checks), ``/healthz`` and ``/readyz`` answer from ``Metrics``, ``/api/v1`` is ``api``,
``/evidence/...`` serves files from inside the evidence folder only, and ``/`` is the operator page
(``static/``: plain HTML, CSS and JavaScript shipped in the package; no build step, no CDN).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stream.calibrator import Calibrator
from stream.console import api
from stream.console.auth import BrowserGuard, TokenAuth
from stream.console.sse import Broadcaster
from stream.console.store import ConsoleStore, score_dict
from stream.control import ScoreRecord, ServiceControl
from stream.reload import LiveConfig

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4", ".png": "image/png"}


class Console:
    """The console's state: the service it controls, the live config, recent events and the live feed.

    ``close()`` removes its listener and ends every live stream.
    """

    def __init__(self, control: ServiceControl, live: LiveConfig, metrics: Any = None, *,
                 evidence_dir: str | Path | None = None, max_events: int = 500, version: str = "",
                 model_info: dict[str, Any] | None = None, categories: list[str] | None = None,
                 calibration: Calibrator | None = None) -> None:
        self.control = control
        self.calibration = calibration
        self.live = live
        self.metrics = metrics
        self.evidence_dir = Path(evidence_dir).resolve() if evidence_dir is not None else None
        self.version = version
        self.model_info = model_info or {}
        self.categories = categories or []
        self.store = ConsoleStore(max_events=max_events)
        on_drop: Callable[[int], None] | None = None
        if metrics is not None:
            on_drop = lambda n: metrics.dropped("console_feed", "", n)  # noqa: E731
        self.feed = Broadcaster(on_drop=on_drop)
        self._unlisten = control.add_listener(self._on_record)

    def _on_record(self, rec: Any) -> None:
        if isinstance(rec, ScoreRecord):
            self.store.on_score(rec)
            self.feed.publish("score", score_dict(rec))
        elif isinstance(rec, dict):
            self.store.on_event(rec)
            self.feed.publish("event", api.with_urls(rec))

    def close(self) -> None:
        self._unlisten()
        self.feed.close()


class _AsgiApp:
    """Makes Starlette's Route hand the raw ASGI call to ``app`` (a plain function would be taken for a
    request handler), so /metrics answers without a redirect to /metrics/."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _plain(ok_detail: tuple[bool, str]) -> Response:
    ok, detail = ok_detail
    return PlainTextResponse(detail + "\n", status_code=200 if ok else 503)


def create_app(console: Console | None, metrics: Any, *, token: str | None = None,
               username: str = "dsanet", loopback: bool = True) -> Any:
    """The ASGI app. ``console=None`` serves only /metrics, /healthz and /readyz (``http.console: false``);
    ``loopback``: the server listens on loopback only (turns on the rebinding check)."""
    routes: list[Any] = [
        Route("/healthz", lambda r: _plain(metrics.health())),
        Route("/readyz", lambda r: _plain(metrics.readiness())),
        Route("/metrics", _AsgiApp(make_asgi_app(registry=metrics.registry))),
    ]
    if console is not None:
        async def evidence(request: Request) -> Response:
            root = console.evidence_dir
            rel = request.path_params["path"]
            if root is None:
                return JSONResponse({"error": "evidence is not enabled"}, status_code=404)
            target = (root / rel).resolve()
            if not target.is_relative_to(root) or not target.is_file() or target.suffix.lower() not in _MEDIA:
                return JSONResponse({"error": "no such evidence file"}, status_code=404)
            return FileResponse(target, media_type=_MEDIA[target.suffix.lower()])

        async def index(request: Request) -> Response:
            return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                                headers={"Cache-Control": "no-cache"})

        routes += api.routes(console)
        routes += [
            Route("/evidence/{path:path}", evidence, methods=["GET", "HEAD"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            Route("/", index),
        ]
    else:
        routes.append(Route("/", lambda r: PlainTextResponse("dsanet-stream: /metrics /healthz /readyz\n")))
    app: Any = Starlette(routes=routes)
    if token is not None:
        app = TokenAuth(app, token, username)
    return BrowserGuard(app, loopback)
