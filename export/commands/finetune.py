"""``dsanet finetune``: adapt a bundle's head to a site from operator feedback (site-data folder)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001 - argparse's private action type
    from export.finetune import FinetuneOptions

    d = FinetuneOptions()
    p = subparsers.add_parser(
        "finetune", help="adapt a bundle's head to one site from its feedback marks (site-data folder)",
        description="Fine-tune the bundle's head with the DSANet losses on a site-data folder (list.csv, "
                    "features/, snippets.json, examples.jsonl), guarded against forgetting by an L2 anchor "
                    "toward the parent weights (and replay of the original training features with --replay). "
                    "The latest --holdout fraction of each kind of example (by start time) is held out and scored "
                    "as the service scores (live window, lookahead, start rule); the new "
                    "bundle is written only when the held-out true events are not worse (exit 1 otherwise), "
                    "and its bundle.json records the parent's hash and the counts per label learned from.")
    p.add_argument("--bundle", required=True, help="the bundle to start from (needs head.safetensors)")
    p.add_argument("--site-data", required=True, help="site-data folder (written by the service's feedback store)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--holdout", type=float, default=d.holdout, help=f"latest fraction held out per kind (default {d.holdout})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimisation steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr:g})")
    p.add_argument("--anchor", type=float, default=d.anchor,
                   help=f"weight of the L2 penalty toward the parent weights, 0 = off (default {d.anchor:g})")
    p.add_argument("--replay", help="data root of the original training features (VadCLIP layout) to replay")
    p.add_argument("--replay-rows", type=int, default=d.replay_rows, help=f"replay rows per step (default {d.replay_rows})")
    p.add_argument("--train-context", default=str(d.train_context), metavar="N|all",
                   help="rows of stored context around a mark's event that train with it; 'all' = the whole "
                        f"capture (default {d.train_context}; the rest of the context serves the held-out check)")
    p.add_argument("--on-threshold", type=float, default=d.on_threshold,
                   help=f"the held-out check's events.on_threshold (default {d.on_threshold})")
    p.add_argument("--min-duration", type=float, default=d.min_duration,
                   help=f"the held-out check's events.min_duration in seconds (default {d.min_duration:g})")
    p.add_argument("--window", type=int, default=d.window,
                   help="the held-out check's window.length (default: the service's, capped by the bundle)")
    p.add_argument("--lookahead", type=int, default=d.lookahead,
                   help=f"the held-out check's window.lookahead (default {d.lookahead})")
    p.add_argument("--max-event-drop", type=float, default=d.max_event_drop,
                   help="largest allowed fall of the held-out true events' mean peak live score "
                        f"(default {d.max_event_drop})")
    p.add_argument("--allow-unchecked", action="store_true",
                   help="write the bundle even when no held-out true event exists to check it against")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="torch device for training (default cpu)")
    p.add_argument("--name", help="bundle name (default: the output folder's name)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=run_finetune)


def _train_context(raw: str) -> int | None:
    from engine.errors import DsanetError

    if raw.strip().lower() in ("all", "none"):
        return None
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise DsanetError(f"--train-context {raw!r}: expected a number of rows >= 0 or 'all'")
    return n


def run_finetune(args: argparse.Namespace) -> int:
    """Errors are reported by ``stream.cli.main``: 2 for bad input, 1 when the result is refused."""
    from export.finetune import FinetuneOptions, finetune

    opts = FinetuneOptions(holdout=args.holdout, steps=args.steps, lr=args.lr, anchor=args.anchor, replay=args.replay,
                           replay_rows=args.replay_rows, on_threshold=args.on_threshold,
                           min_duration=args.min_duration, window=args.window, lookahead=args.lookahead,
                           train_context=_train_context(args.train_context),
                           max_event_drop=args.max_event_drop, allow_unchecked=args.allow_unchecked, seed=args.seed,
                           device=args.device)
    bundle, report = finetune(args.bundle, args.site_data, args.out, opts, force=args.force, name=args.name)
    lineage = bundle.extra["finetune"]
    check = lineage["check"]
    print(f"held-out check as the service scores: window {check['window']}, lookahead {check['lookahead']}, "
          f"on {check['on_threshold']:g} for {check['min_snippets']} snippet(s)")
    print(report.table())
    print(f"learned from {sum(report.train_counts.values())} examples "
          + ", ".join(f"{k} {v}" for k, v in sorted(report.train_counts.items()))
          + f"; held out {sum(report.held_out_counts.values())}"
          + ("" if report.checked else " (no held-out true event: unchecked)"))
    print(f"parent {lineage['parent']['name']} head sha256 {str(lineage['parent']['head_sha256'])[:16]} -> {bundle.root}")
    return 0
