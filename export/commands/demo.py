"""``dsanet prepare-demo``: build (once) the synthetic demo model and camera used by ``make demo``."""

from __future__ import annotations

import argparse


def _handle(args: argparse.Namespace) -> int:
    from export.demo import build_demo

    build_demo(args.dir, force=args.force)  # errors: reported by stream.cli.main
    return 0


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "prepare-demo", help="build the synthetic demo model and camera clip (cached)",
        description="Build, with the real trainer and exporter, a demo bundle from a tiny random CLIP and "
                    "synthetic weakly labelled clips, plus a demo camera clip. Cached: a second run reuses it.")
    p.add_argument("--dir", default=None, help="demo folder (default $DSANET_DEMO_DIR or .cache/demo)")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached demo exists")
    p.set_defaults(func=_handle)
