"""``dsanet check-config FILE``: validate a deployment file and explain what is wrong and where."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.config import DeploymentConfig


def _handle(args: argparse.Namespace) -> int:
    """Errors (``ConfigError``, exit 2) are reported by ``stream.cli.main`` like every command's."""
    from stream.config import load_config, summary

    cfg = load_config(args.file)
    lines = category_lines(cfg)  # an edit that cannot apply to the bundle is an error before "OK"
    print(f"{args.file}: OK")
    print(summary(cfg))
    print("\n".join(lines))
    return 0


def category_lines(cfg: DeploymentConfig) -> list[str]:
    """The deployment's class list (bundle classes after ``model.categories``), when the bundle is readable."""
    from engine.bundle import load_bundle
    from engine.categories import CategoryEdit, resolve
    from engine.errors import BundleError

    try:
        bundle = load_bundle(cfg.model.bundle, verify_hashes=False, inspect_graphs=False)
    except BundleError as exc:
        return [f"categories: not shown (bundle not readable here: {exc})"]
    edit = cfg.model.categories.to_edit() if cfg.model.categories else CategoryEdit()
    cats = resolve(bundle, edit)  # CategoryError (exit 2) names the config key
    lines = [f"categories ({len(cats)}){' [edited]' if not edit.empty else ''}:"]
    for i, (key, name, added) in enumerate(zip(cats.keys, cats.names, cats.added, strict=True)):
        note = " (added)" if added else (f" (key {key})" if key != name else "")
        lines.append(f"  {i}: {name}{note}")
    return lines


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "check-config", help="validate a deployment YAML file",
        description="Validate a deployment YAML file. Exit 0 with a summary, or 2 listing every problem "
                    "with its YAML path and line.")
    p.add_argument("file", help="deployment YAML file")
    p.set_defaults(func=_handle)
