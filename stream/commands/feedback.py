"""``dsanet feedback EVENT_ID --false-alarm | --confirm [--category C]``: mark an event of a running
service (``POST /api/v1/events/{id}/feedback``; address and token from the deployment file like
``dsanet reload``, or ``--url`` and ``$DSANET_HTTP_TOKEN``). Exit 0 stored, 2 refused (unknown event or
category, bad arguments), 1 when no service answers."""

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
        "feedback", help="mark an event of a running service as confirmed or a false alarm",
        description="Store an operator's mark of an event with what the model saw (its snippet embeddings "
                    "with context) in the service's site-data folder, for `dsanet finetune`. A false alarm is "
                    "stored as the normal class, a confirmation as the event's category or --category. "
                    "Marking an event again replaces the earlier mark (last mark wins).")
    p.add_argument("event_id", metavar="EVENT_ID", help="the event's id (the `id` field of its messages)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--false-alarm", action="store_true", help="the event was not an anomaly")
    kind.add_argument("--confirm", action="store_true", help="the event was real")
    p.add_argument("--category", metavar="C", help="with --confirm: the right category (class name or display "
                   "name), when the event's own was wrong")
    p.add_argument("-c", "--config", metavar="FILE", help="the deployment file the service runs (finds its HTTP "
                   "address and token)")
    p.add_argument("--url", metavar="URL", help="the service's HTTP address instead (e.g. http://127.0.0.1:9108)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import DsanetError
    from stream.commands.reload import _target

    if args.category is not None and not args.confirm:
        print("dsanet feedback: --category goes with --confirm (a false alarm is stored as the normal class)",
              file=sys.stderr)
        return 2
    if not args.config and not args.url:
        print("dsanet feedback: give the deployment file (-c FILE) or the service's --url", file=sys.stderr)
        return 2
    try:
        base, token = _target(args)
    except DsanetError as exc:
        print(f"dsanet feedback: {exc}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"mark": "confirmed" if args.confirm else "false_alarm"}
    if args.category is not None:
        body["category"] = args.category
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{base}/api/v1/events/{urllib.parse.quote(args.event_id, safe='')}/feedback"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            res = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("error", f"HTTP {exc.code}")
        except ValueError:
            msg = f"HTTP {exc.code}"
        print(f"dsanet feedback: {msg}", file=sys.stderr)
        return 2 if exc.code in (400, 404, 409, 422) else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"dsanet feedback: no service answers at {base} ({getattr(exc, 'reason', exc)}); is `dsanet run` "
              f"running with this file?", file=sys.stderr)
        return 1
    what = "false alarm" if res["kind"] == "false_alarm" else f"confirmed ({res['label']})"
    line = f"event {res['event_id']}: {what}, stored as label {res['label']}"
    if res["state"] == "waiting":
        line = f"event {res['event_id']}: {what}; the event is still open, the mark is stored when it ends"
    print(line)
    if res.get("replaced"):
        print(f"replaces the earlier mark ({res['replaced']['kind']}, {res['replaced']['label']}): last mark wins")
    return 0
