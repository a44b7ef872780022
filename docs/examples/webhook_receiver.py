"""Example webhook receiver for dsanet-stream: verify the signature, reject replays, de-duplicate.

Delivery is at-least-once: after a crash between a send and its acknowledgement, or a timeout that hid
a 2xx answer, the same event arrives again. Handle each ``(id, seq)`` once, and answer 2xx to a
duplicate so the sender moves on. The signature (HMAC-SHA256 with the sink's ``hmac_secret``) covers
``<webhook-id>.<webhook-timestamp>.<raw body>``, so a captured request cannot be given a new timestamp;
a timestamp more than ``tolerance`` seconds away from our clock is refused as a replay.

Run it::

    DSANET_WEBHOOK_SECRET=... python docs/examples/webhook_receiver.py --port 8080

and point a ``webhook`` sink at ``http://127.0.0.1:8080/hook`` with ``hmac_secret: ${DSANET_WEBHOOK_SECRET}``.
Standard library only; keep ``seen`` in a database if duplicates must be caught across restarts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Checks one request at a time; ``handled`` holds each event once, in arrival order."""

    def __init__(self, secret: str | bytes, tolerance: float = 300.0, remember: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = secret.encode() if isinstance(secret, str) else secret
        self.tolerance = tolerance
        self.remember = remember
        self.clock = clock
        self.seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.handled: list[dict[str, Any]] = []
        self.duplicates = 0
        self.rejected: list[str] = []
        self._lock = threading.Lock()

    def _signature_ok(self, msg_id: str, ts: str, body: bytes, header: str) -> bool:
        mac = hmac.new(self.key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        want = "v1," + base64.b64encode(mac).decode()
        return any(hmac.compare_digest(want, sig) for sig in header.split())

    def check(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """(HTTP status, reason) for one request; handles the event when it is new."""
        h = {k.lower(): v for k, v in headers.items()}
        msg_id, ts, sig = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
        if not (msg_id and ts and sig):
            return self._reject(400, "missing webhook-id, webhook-timestamp or webhook-signature")
        if not self._signature_ok(msg_id, ts, body, sig):
            return self._reject(401, "bad signature")
        try:
            age = abs(self.clock() - int(ts))
        except ValueError:
            return self._reject(400, "timestamp is not an integer")
        if age > self.tolerance:
            return self._reject(400, f"timestamp {age:.0f}s away from now: replay refused")
        event = json.loads(body)
        key = (str(event["id"]), int(event["seq"]))
        with self._lock:
            if key in self.seen:
                self.duplicates += 1
                return 200, "duplicate (already handled)"
            self.seen[key] = None
            if len(self.seen) > self.remember:
                self.seen.popitem(last=False)
            self.handled.append(event)
        return 200, "ok"

    def _reject(self, status: int, reason: str) -> tuple[int, str]:
        with self._lock:
            self.rejected.append(reason)
        return status, reason


def serve(receiver: Receiver, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """An HTTP server answering POSTs with ``receiver.check`` (call ``serve_forever`` on it)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reason = receiver.check(dict(self.headers.items()), body)
            reply = json.dumps({"status": reason}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--tolerance", type=float, default=300.0, help="seconds a timestamp may be off")
    args = ap.parse_args()
    secret = os.environ.get("DSANET_WEBHOOK_SECRET")
    if not secret:
        raise SystemExit("set DSANET_WEBHOOK_SECRET to the sink's hmac_secret")
    receiver = Receiver(secret, tolerance=args.tolerance)
    server = serve(receiver, args.host, args.port)
    print(f"listening on http://{args.host}:{args.port}/hook")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
