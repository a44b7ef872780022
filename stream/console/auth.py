"""Access control of the HTTP server.

On loopback nothing is asked unless a token is set; bound anywhere else the server refuses to start
without one. A request then carries ``Authorization: Bearer <token>`` (scripts, Prometheus) or Basic auth
with the configured user and the token as password (browsers ask for it themselves, EventSource and
<video> reuse it). ``/healthz`` and ``/readyz`` stay open for orchestrator probes; they name no secret.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import DsanetError

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, token_env: str) -> str | None:
    """The token the server requires, or None; raises when bound off loopback without one."""
    token = os.environ.get(token_env) or None
    if token is None and not is_loopback(host):
        raise DsanetError(f"http: listening on {host} needs an access token: set the environment variable "
                          f"{token_env} (http.token_env), or bind to 127.0.0.1")
    return token


def _authorized(header: str, username: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), username.encode())
        ok_pw = hmac.compare_digest(password.encode(), token.encode())
        return ok_user and ok_pw
    return False


class TokenAuth:
    """ASGI middleware: 401 with a Basic challenge unless the request carries the token."""

    def __init__(self, app: ASGIApp, token: str, username: str) -> None:
        self.app, self.token, self.username = app, token, username

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = ""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                header = v.decode("latin-1")
                break
        if header and _authorized(header, self.username, self.token):
            await self.app(scope, receive, send)
            return
        body = b'{"error":"authentication required"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Basic realm="dsanet", charset="UTF-8"')]})
        await send({"type": "http.response.body", "body": body})


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def _hostname(netloc: str) -> str:
    host = netloc.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0]


class BrowserGuard:
    """Keeps other web pages out of the API, which on loopback has no token to protect it.

    * A request whose ``Host`` is not a loopback name while the server listens on loopback is refused
      (DNS rebinding: a hostile name that resolves to 127.0.0.1).
    * A state-changing request (POST, PATCH, DELETE) carrying an ``Origin`` other than the server's own
      is refused (cross-site requests; browsers always send ``Origin`` on those).
    """

    def __init__(self, app: ASGIApp, loopback: bool) -> None:
        self.app, self.loopback = app, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host") or ""
            problem = None
            if self.loopback and host and _hostname(host).lower() not in LOOPBACK_NAMES:
                problem = f"host {host!r} is not this loopback server"
            elif scope.get("method") in UNSAFE_METHODS:
                origin = _header(scope, b"origin")
                if origin is not None and (origin == "null" or origin.split("://", 1)[-1] != host):
                    problem = "cross-origin changes are refused"
            if problem is not None:
                body = json.dumps({"error": problem}).encode()
                await send({"type": "http.response.start", "status": 403, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
