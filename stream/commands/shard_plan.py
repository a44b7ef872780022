"""``dsanet shard-plan -c FILE --workers N``: which worker watches which camera, and what a scale-out moves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "shard-plan", help="print the camera -> worker assignment for N workers (rendezvous hashing)",
        description="Print which of N workers watches each enabled camera of the deployment file (the same "
                    "rendezvous hash every `dsanet run --shard I/N` worker computes), the cameras per worker, "
                    "and how many cameras would move to another worker going from N to N+1 workers "
                    "(rendezvous hashing, next to what `hash mod N` would move). Exit 2 on a bad file.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="deployment YAML file")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="number of workers (>= 1)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=handle)


def plan(cameras: list[str], workers: int) -> dict[str, Any]:
    """The assignment for ``workers`` and the moves to ``workers + 1`` (rendezvous and mod-N)."""
    from stream.shard import assign, mod_owner, moved

    now, nxt = assign(cameras, workers), assign(cameras, workers + 1)
    mod_now = {c: mod_owner(c, workers) for c in cameras}
    mod_next = {c: mod_owner(c, workers + 1) for c in cameras}
    per = {str(i): sorted(c for c, w in now.items() if w == i) for i in range(workers)}
    move = moved(now, nxt)
    n = len(cameras)
    return {
        "workers": workers,
        "cameras": n,
        "assignment": now,
        "per_worker": per,
        "scale_out": {
            "to_workers": workers + 1,
            "moved": len(move),
            "moved_fraction": round(len(move) / n, 4) if n else 0.0,
            "ideal_fraction": round(1 / (workers + 1), 4),
            "moved_cameras": move,
            "mod_n_moved": len(moved(mod_now, mod_next)),
            "mod_n_fraction": round(len(moved(mod_now, mod_next)) / n, 4) if n else 0.0,
        },
    }


def handle(args: argparse.Namespace) -> int:
    from stream.config import ConfigError, load_config

    if args.workers < 1:
        print(f"dsanet shard-plan: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    cameras = [c.name for c in cfg.enabled_cameras]
    result = plan(cameras, args.workers)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    width = max((len(c) for c in cameras), default=6)
    print(f"{len(cameras)} enabled camera(s) on {args.workers} worker(s) (rendezvous hashing):")
    for cam in cameras:
        print(f"  {cam:<{width}}  -> worker {result['assignment'][cam]}")
    for w, cams in result["per_worker"].items():
        print(f"worker {w}: {len(cams)} camera(s)")
    so = result["scale_out"]
    print(f"going to {so['to_workers']} workers moves {so['moved']} of {len(cameras)} camera(s) "
          f"({so['moved_fraction']:.1%}; ideal 1/{so['to_workers']} = {so['ideal_fraction']:.1%}; "
          f"hash mod N would move {so['mod_n_moved']}, {so['mod_n_fraction']:.1%})")
    return 0
