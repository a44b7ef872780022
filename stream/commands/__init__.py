"""Subcommands of the live side. Each module here defines ``register(subparsers)``."""

from __future__ import annotations

import importlib
import pkgutil


def register_all(subparsers) -> None:  # noqa: ANN001 - argparse's private action type
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
