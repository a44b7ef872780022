"""``dsanet check-config FILE``: validate a deployment file and explain what is wrong and where."""

from __future__ import annotations

import argparse


def _handle(args: argparse.Namespace) -> int:
    """Errors (``ConfigError``, exit 2) are reported by ``stream.cli.main`` like every command's."""
    from stream.config import load_config, summary

    cfg = load_config(args.file)
    print(f"{args.file}: OK")
    print(summary(cfg))
    return 0


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "check-config", help="validate a deployment YAML file",
        description="Validate a deployment YAML file. Exit 0 with a summary, or 2 listing every problem "
                    "with its YAML path and line.")
    p.add_argument("file", help="deployment YAML file")
    p.set_defaults(func=_handle)
