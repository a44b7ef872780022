"""``webhook`` sink: POST each event as JSON.

- 2xx: delivered. 408, 425, 429 and 5xx, timeouts and connection errors: retried with capped exponential
  backoff (``backoff_initial`` .. ``backoff_max``), the same event again until it goes through, so events
  arrive in order. 401 and 403 (an expired token, a rotated secret): also retried with the same backoff,
  because the operator can fix them without losing events; each such attempt counts in
  ``dsanet_sink_deliveries_total{result="auth_failed"}`` and is logged at ERROR. Other 4xx (and 3xx) mean
  "bad request": the receiver refuses this event for good; it goes to the spool's ``dead-letter.jsonl``,
  is counted and logged, and delivery moves on.
- Delivery is at-least-once: an event whose 2xx answer was lost (a timeout, a crash before the ack) is
  sent again. Receivers de-duplicate on ``(id, seq)`` (also in ``webhook-id``).
- Headers: ``Content-Type: application/json``, ``X-Dsanet-Event-Id``, ``X-Dsanet-Event-Seq``,
  ``X-Dsanet-Event-Type``, and in the Standard Webhooks style ``webhook-id`` (``<id>:<seq>``, the same on
  every retry), ``webhook-timestamp`` (UNIX seconds of this attempt; also ``X-Dsanet-Timestamp``). With
  ``hmac_secret``: ``webhook-signature: v1,<base64 HMAC-SHA256>`` and ``X-Dsanet-Signature:
  sha256=<hex of the same HMAC>``, both over ``<webhook-id>.<webhook-timestamp>.<raw body>``, so neither
  the timestamp nor the id can be changed without breaking the signature (receivers reject stale
  timestamps to stop replays). With ``bearer_token``: ``Authorization: Bearer <token>``; plus any
  configured ``headers``.
Standard library only (http.client); one connection per attempt keeps failure handling simple.
"""

from __future__ import annotations

import base64
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
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
USER_AGENT = "dsanet-stream/0.1"
RETRY_STATUSES = frozenset({408, 425, 429})
AUTH_STATUSES = frozenset({401, 403})


def message_id(payload: dict[str, Any]) -> str:
    """The ``webhook-id`` of an event: ``<id>:<seq>``, stable across retries (the de-duplication key)."""
    return f"{payload.get('id', '')}:{payload.get('seq', '')}"


def _mac(secret: str | bytes, msg_id: str, timestamp: str | int, body: bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str | bytes, msg_id: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-Dsanet-Signature`` value: ``sha256=<hex HMAC-SHA256 of msg_id.timestamp.body>``."""
    return "sha256=" + _mac(secret, msg_id, timestamp, body).hex()


def sign_standard(secret: str | bytes, msg_id: str, timestamp: str | int, body: bytes) -> str:
    """The ``webhook-signature`` value (Standard Webhooks): ``v1,<base64 of the same HMAC>``."""
    return "v1," + base64.b64encode(_mac(secret, msg_id, timestamp, body)).decode("ascii")


def verify(secret: str | bytes, msg_id: str | None, timestamp: str | None, body: bytes,
           header: str | None) -> bool:
    """Receiver-side check of either signature header (constant-time). ``header`` may be the
    ``X-Dsanet-Signature`` value or a space-separated ``webhook-signature`` list (``v1,...``)."""
    if header is None or msg_id is None or timestamp is None:
        return False
    hex_sig = sign(secret, msg_id, timestamp, body)
    std_sig = sign_standard(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(hex_sig, h) or hmac.compare_digest(std_sig, h) for h in header.split())


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
    if status in AUTH_STATUSES:
        return Result.AUTH_FAILED
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
        }
        msg_id, ts = message_id(payload), str(int(time.time()))
        h[WEBHOOK_ID] = msg_id
        h[WEBHOOK_TIMESTAMP] = h[TIMESTAMP_HEADER] = ts
        if self._basic:
            h["Authorization"] = self._basic
        if self._bearer:
            h["Authorization"] = f"Bearer {self._bearer}"
        if self._hmac:
            h[SIGNATURE_HEADER] = sign(self._hmac, msg_id, ts, body)
            h[WEBHOOK_SIGNATURE] = sign_standard(self._hmac, msg_id, ts, body)
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
        if result is Result.AUTH_FAILED:
            return result, (f"HTTP {status}: the receiver refuses our credentials (check bearer_token, "
                            "hmac_secret or the URL's user); retrying, nothing is dropped")
        return result, f"HTTP {status}"
