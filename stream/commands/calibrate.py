"""``dsanet calibrate CAMERA``: show or re-learn a running camera's calibrated thresholds (docs/calibration.md).

Talks to the service's HTTP API (``/api/v1/cameras/NAME/calibration``; address and token from the
deployment file, as ``dsanet reload`` does). ``--now`` learns at once from the scores the camera has
collected; without it a fresh calibration period starts; ``--show`` only prints the state.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate", help="show or re-learn a running camera's calibrated thresholds",
        description="Per-camera calibration of a running `dsanet run`: without options a fresh calibration "
                    "period starts (the thresholds stay until it is complete); --now learns at once from the "
                    "scores collected; --show prints the state. Exit 0 on success, 1 when the service "
                    "refused, 2 for bad arguments.")
    p.add_argument("camera", help="camera name")
    p.add_argument("-c", "--config", metavar="FILE", help="the deployment file the service runs (finds its "
                   "HTTP address and token)")
    p.add_argument("--url", metavar="URL", help="the service's HTTP address instead (e.g. http://127.0.0.1:9108)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--now", action="store_true", help="learn now from the scores collected so far")
    mode.add_argument("--show", action="store_true", help="only print the camera's calibration state")
    p.set_defaults(func=run)


def _print(desc: dict[str, Any]) -> None:
    c = desc.get("calibration") or {}
    print(f"camera {desc.get('camera')}: calibration {c.get('state')}")
    for key in ("on_threshold", "off_threshold", "expected_per_day", "samples", "progress", "collected_scores",
                "period", "target_per_day", "floor", "learned_at", "error"):
        if c.get(key) is not None:
            print(f"  {key}: {c[key]}")


def run(args: argparse.Namespace) -> int:
    from engine.errors import DsanetError
    from stream.commands.reload import _target

    if not args.config and not args.url:
        print("dsanet calibrate: give the deployment file (-c FILE) or the service's --url", file=sys.stderr)
        return 2
    try:
        base, token = _target(args)
    except DsanetError as exc:
        print(f"dsanet calibrate: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{base}/api/v1/cameras/{urllib.parse.quote(args.camera, safe='')}/calibration"
    if args.show:
        req = urllib.request.Request(url, method="GET", headers=headers)
    else:
        data = json.dumps({"now": bool(args.now)}).encode()
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("error", "")
        except ValueError:
            msg = ""
        print(f"dsanet calibrate: {base} answered HTTP {exc.code}: {msg}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"dsanet calibrate: cannot reach {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    _print(body)
    return 0
