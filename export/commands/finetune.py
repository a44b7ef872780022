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
                    "The latest --holdout fraction of each kind of example (by start time) is held out; the new "
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
    p.add_argument("--on-threshold", type=float, default=d.on_threshold,
                   help=f"score at which a held-out true event counts as detected (default {d.on_threshold})")
    p.add_argument("--max-event-drop", type=float, default=d.max_event_drop,
                   help=f"largest allowed fall of the held-out true events' mean score (default {d.max_event_drop})")
    p.add_argument("--allow-unchecked", action="store_true",
                   help="write the bundle even when no held-out true event exists to check it against")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="torch device for training (default cpu)")
    p.add_argument("--name", help="bundle name (default: the output folder's name)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    """Errors are reported by ``stream.cli.main``: 2 for bad input, 1 when the result is refused."""
    from export.finetune import FinetuneOptions, finetune

    opts = FinetuneOptions(holdout=args.holdout, steps=args.steps, lr=args.lr, anchor=args.anchor, replay=args.replay,
                           replay_rows=args.replay_rows, on_threshold=args.on_threshold,
                           max_event_drop=args.max_event_drop, allow_unchecked=args.allow_unchecked, seed=args.seed,
                           device=args.device)
    bundle, report = finetune(args.bundle, args.site_data, args.out, opts, force=args.force, name=args.name)
    lineage = bundle.extra["finetune"]
    print(report.table())
    print(f"learned from {sum(report.train_counts.values())} examples "
          + ", ".join(f"{k} {v}" for k, v in sorted(report.train_counts.items()))
          + f"; held out {sum(report.held_out_counts.values())}"
          + ("" if report.checked else " (no held-out true event: unchecked)"))
    print(f"parent {lineage['parent']['name']} head sha256 {str(lineage['parent']['head_sha256'])[:16]} -> {bundle.root}")
    return 0
