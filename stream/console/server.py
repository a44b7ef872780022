"""The HTTP server thread: uvicorn serving the console app on a socket bound before the thread starts,
so a port in use is a clear error at start-up and port 0 reports the port it got.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from engine.errors import DsanetError

log = logging.getLogger(__name__)


class HttpServer:
    """uvicorn in a daemon thread; :meth:`close` stops it (open live streams end first)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, on_close: Any = None) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise DsanetError(f"http: cannot listen on {host}:{port} ({exc.strerror or exc}); change http.port "
                              f"(or metrics.port), or set metrics.enabled: false") from None
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        self.host = host
        self.port = int(sock.getsockname()[1])
        self._on_close = on_close
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, ws="none")
        self.server = uvicorn.Server(config)  # in a non-main thread uvicorn leaves signals to the service
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except Exception:  # the service goes on without its console; say why once
            log.exception("http: the server on %s stopped", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def close(self, timeout: float = 5.0) -> None:
        if self._on_close is not None:
            self._on_close()  # end live streams so uvicorn need not wait for them
        self.server.should_exit = True
        self._thread.join(timeout=timeout)
        try:
            self.sock.close()
        except OSError:
            pass
