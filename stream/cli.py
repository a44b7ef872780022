"""The ``dsanet`` console script.

Subcommands are contributed by the capabilities that implement them: every package that offers
commands declares a ``dsanet.commands`` entry point whose target registers its subparsers. This keeps
``stream`` free of any import of ``export`` (the dependency points the other way) while one script
serves both the live service and the offline tools.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from stream import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsanet",
        description="dsanet-stream: real-time video anomaly detection with a DSANet head over CLIP embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"dsanet-stream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="dsanet.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stream.redact import install_output_redaction

    install_output_redaction()  # every line the CLI prints (errors, tracebacks, logs) is redacted
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
