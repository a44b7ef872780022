"""``webhook`` sink: POST each event as JSON.

- 2xx: delivered. 408, 429 and 5xx, timeouts and connection errors: retried with capped exponential
  backoff (``backoff_initial`` .. ``backoff_max``), the same event again until it goes through, so events
  arrive in order. Other 4xx (and 3xx): the receiver refuses it for good; the event goes to the spool's
  ``dead-letter.jsonl``, is counted and logged, and delivery moves on.
- Headers: ``Content-Type: application/json``, ``X-Dsanet-Event-Id``, ``X-Dsanet-Event-Seq``,
  ``X-Dsanet-Timestamp`` (UNIX seconds of the attempt), with ``hmac_secret``
  ``X-Dsanet-Signature: sha256=<hex HMAC-SHA256 of the raw body>``, with ``bearer_token``
  ``Authorization: Bearer <token>``, plus any configured ``headers``.
Standard library only (http.client); one connection per attempt keeps failure handling simple.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stream.config import WebhookSinkConfig
from stream.metrics import Metrics
from stream.redact import redact_url
from stream.sinks import SinkError, register_sink
from stream.sinks.base import Result, Sink
from stream.sinks.spool import SpoolItem

SIGNATURE_HEADER = "X-Dsanet-Signature"
TIMESTAMP_HEADER = "X-Dsanet-Timestamp"
USER_AGENT = "dsanet-stream/0.1"
RETRY_STATUSES = frozenset({408, 425, 429})


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Dsanet-Signature`` value for ``body``: ``sha256=<hex>``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Receiver-side check of a signature header (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header.strip())


def _secret(v: Any) -> str | None:
    if v is None:
        return None
    get = getattr(v, "get_secret_value", None)
    s = get() if callable(get) else str(v)
    return s or None


def classify(status: int) -> Result:
    """HTTP status -> delivery result."""
    if 200 <= status < 300:
        return Result.DELIVERED
    if status in RETRY_STATUSES or status >= 500:
        return Result.RETRY
    return Result.DEAD


@register_sink("webhook")
class WebhookSink(Sink):
    def __init__(self, cfg: WebhookSinkConfig, spool_dir: str | Path | None, metrics: Metrics | None = None,
                 **kw: Any) -> None:
        kw.setdefault("backoff_initial", cfg.backoff_initial)
        kw.setdefault("backoff_max", cfg.backoff_max)
        super().__init__(cfg, spool_dir, metrics, **kw)
        self.url = str(cfg.url)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkError(f"sink {self.name}: webhook URL {redact_url(self.url)!r} must be http(s)://host/...")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = cfg.timeout
        self._extra = {str(k): str(v) for k, v in cfg.headers.items()}
        self._bearer = _secret(cfg.bearer_token)
        self._hmac = _secret(cfg.hmac_secret)
        auth = None
        if parts.username is not None:  # credentials in the URL: send as basic auth, never log them
            import base64

            raw = f"{parts.username}:{parts.password or ''}".encode()
            auth = "Basic " + base64.b64encode(raw).decode("ascii")
        self._basic = auth

    def target(self) -> str:
        return redact_url(self.url)

    def headers_for(self, body: bytes, payload: dict[str, Any]) -> dict[str, str]:
        h = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Dsanet-Event-Id": str(payload.get("id", "")),
            "X-Dsanet-Event-Seq": str(payload.get("seq", "")),
            "X-Dsanet-Event-Type": str(payload.get("type", "")),
            TIMESTAMP_HEADER: str(int(time.time())),
        }
        if self._basic:
            h["Authorization"] = self._basic
        if self._bearer:
            h["Authorization"] = f"Bearer {self._bearer}"
        if self._hmac:
            h[SIGNATURE_HEADER] = sign(self._hmac, body)
        h.update(self._extra)
        return h

    def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
        body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = self.headers_for(body, item.payload)
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            status = resp.status
            resp.read(65536)
        except TimeoutError:
            return Result.RETRY, f"timed out after {self.timeout:g}s"
        except (OSError, http.client.HTTPException) as exc:
            return Result.RETRY, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        result = classify(status)
        if result is Result.DELIVERED:
            return result, None
        return result, f"HTTP {status}"
