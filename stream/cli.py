"""The ``dsanet`` console script.

Subcommands are contributed by the capabilities that implement them: every package that offers
commands declares a ``dsanet.commands`` entry point whose target registers its subparsers. This keeps
``stream`` free of any import of ``export`` (the dependency points the other way) while one script
serves both the live service and the offline tools.

Exit status is decided here, once, for every command (:func:`exit_code`): handlers return 0 or raise,
and ``main`` turns what they raise into one line on stderr and a code. Handlers never print their own
errors, so every command reports the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from importlib.metadata import entry_points

from engine.errors import DsanetError, RuntimeFailure
from stream import __version__

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and failed (exporter, parity, training diverged, unexpected error)
EXIT_BAD_INPUT = 2  # bad input or config: a file, key, option or camera the user can fix (and argparse)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_EPILOG = """\
exit status (every command):
  0    success
  1    runtime failure: the command ran and failed (export parity, training diverged, an internal
       error; set DSANET_DEBUG=1 for its traceback)
  2    bad input or config: a file, config key, option, bundle or camera the message names
  130  interrupted (Ctrl-C)"""


def exit_code(exc: BaseException) -> int:
    """The exit status for an exception a command raised (see ``EXIT_EPILOG``)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, RuntimeFailure):
        return EXIT_FAILURE
    if isinstance(exc, DsanetError):  # ConfigError, BundleError, DataError, CheckpointError, ...
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsanet",
        description="dsanet-stream: real-time video anomaly detection with a DSANet head over CLIP embeddings.",
        epilog=EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one place an error becomes a message and an exit status
        return report(args.command, exc)


def report(command: str, exc: BaseException) -> int:
    """Print ``dsanet COMMAND: message`` (one line, no traceback unless DSANET_DEBUG=1); return the code."""
    from stream.redact import redact

    if isinstance(exc, DsanetError):
        message = str(exc)
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
    if os.environ.get("DSANET_DEBUG") and not isinstance(exc, DsanetError):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"dsanet {command}: {redact(message)}", file=sys.stderr)
    return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
