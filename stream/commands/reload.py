"""``dsanet reload``: make a running service re-read its deployment file and apply only the difference.

By default it asks the service's HTTP server (``POST /api/v1/reload``, address and token from the same
deployment file) and prints what was applied, what failed and what needs a restart. ``--pid`` sends
SIGHUP instead, for a service whose console is off (the result is then only in the service's log).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reload", help="re-read the deployment file of a running service and apply the difference",
        description="Ask a running `dsanet run` to re-read its deployment file: cameras added, removed, "
                    "enabled/disabled or with new thresholds are applied while the others keep streaming. "
                    "Exit code 0 when everything applied, 1 when something failed.")
    p.add_argument("-c", "--config", metavar="FILE", help="the deployment file the service runs (finds its "
                   "HTTP address and token)")
    p.add_argument("--url", metavar="URL", help="the service's HTTP address instead (e.g. http://127.0.0.1:9108)")
    p.add_argument("--pid", type=int, metavar="PID", help="send SIGHUP to this process instead of using HTTP")
    p.set_defaults(func=run)


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    from engine.errors import DsanetError
    from stream.config import load_config

    if args.url:
        return args.url.rstrip("/"), os.environ.get("DSANET_HTTP_TOKEN")
    cfg = load_config(args.config)
    if cfg.http_port == 0:
        raise DsanetError(f"{args.config}: the service picked its HTTP port at start (port 0); pass the "
                          f"address it printed with --url, or --pid")
    host = cfg.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.http_port}", os.environ.get(cfg.http.token_env)


def run(args: argparse.Namespace) -> int:
    from engine.errors import DsanetError

    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except (ProcessLookupError, PermissionError) as exc:
            print(f"dsanet reload: cannot signal process {args.pid}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"sent SIGHUP to {args.pid}; the service logs what it applied")
        return 0
    if not args.config and not args.url:
        print("dsanet reload: give the deployment file (-c FILE), the service's --url, or --pid", file=sys.stderr)
        return 2
    try:
        base, token = _target(args)
    except DsanetError as exc:
        print(f"dsanet reload: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(base + "/api/v1/reload", data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            print(f"dsanet reload: {base} answered HTTP {exc.code}", file=sys.stderr)
            return 1
        if "applied" not in body:
            print(f"dsanet reload: {base}: {body.get('error', exc.code)}", file=sys.stderr)
            return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"dsanet reload: no service answers at {base} ({reason}); is `dsanet run` running with this "
              f"file?", file=sys.stderr)
        return 1
    for line in body["applied"]:
        print(f"applied: {line}")
    for line in body["restart_needed"]:
        print(f"needs a restart (not applied): {line}")
    for line in body["errors"]:
        print(f"failed: {line}", file=sys.stderr)
    if not (body["applied"] or body["errors"]):
        print("nothing to change")
    return 1 if body["errors"] else 0
