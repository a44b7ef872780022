"""``dsanet train`` and ``dsanet eval``: train DSANet on VadCLIP-layout features and score a checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from engine.demo_paths import TRAIN_PRESET_DIR

log = logging.getLogger(__name__)

PRESET_DIR = TRAIN_PRESET_DIR


def resolve_preset(spec: str) -> Path:
    """``-c FILE`` or a bundled preset name (``ucf``, ``xd``)."""
    path = Path(spec)
    if path.is_file():
        return path
    named = PRESET_DIR / f"{spec}.yaml"
    if not path.suffix and named.is_file():
        return named
    return path  # load_train_config reports the missing file


def _train(args: argparse.Namespace) -> int:
    from export.train_config import load_train_config
    from export.trainer import train

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.deterministic:
        overrides.append("deterministic=true")
    cfg = load_train_config(resolve_preset(args.config), overrides)
    result = train(cfg, args.data_root, args.clip, args.out, device=args.device, resume=args.resume,
                   progress=None if not args.no_progress else False)
    if result.best_metric is None:
        print(f"training finished ({result.epochs_run} epochs) in {result.out_dir}; no evaluation improved on 0")
    else:
        print(f"training finished ({result.epochs_run} epochs) in {result.out_dir}: best {cfg.eval.metric} "
              f"{result.best_metric:.4f} (epoch {result.best_epoch + 1}, step {result.best_step}) -> "
              f"{result.out_dir / 'best.safetensors'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from engine.clip import TINY, resolve_clip_dir
    from export.checkpoint import load_checkpoint, read_checkpoint_info
    from export.data import read_list
    from export.evaluate import format_table
    from export.gt import load_ground_truth
    from export.model_eval import evaluate_model
    from export.train_config import load_train_config

    cfg = load_train_config(resolve_preset(args.config), list(args.set or []))
    from export.official.evaluation import TRAINER, checkpoint_kind

    if checkpoint_kind(args.checkpoint) != TRAINER or args.clip is None:  # a bundle or an official .pth
        return _eval_source(args, cfg)
    info = read_checkpoint_info(args.checkpoint)
    if str(args.clip) == TINY:
        log.warning("--clip tiny: a tiny RANDOM CLIP, not a real CLIP (only checkpoints trained with it fit)")
    clip_dir = resolve_clip_dir(args.clip)
    model = load_checkpoint(info.path, clip_dir, args.device, expect_preset=cfg.preset)
    root = Path(args.data_root)
    test_list = Path(cfg.data.test_list)
    rows = read_list(test_list if test_list.is_absolute() else root / test_list, root)
    gt = load_ground_truth(cfg.preset, root, rows)
    result = evaluate_model(model, rows, gt, cfg.preset, args.device, cfg.eval.batch_size,
                            progress=not args.no_progress, novel_classes=_novel(args, cfg.preset))
    print(f"{info.path} on {len(rows)} {cfg.preset} test videos:")
    print(format_table(result))
    if args.json:
        payload: dict[str, Any] = {**result, "checkpoint": str(info.path), "clip": str(args.clip),
                                   "test_list": str(cfg.data.test_list), "data_root": str(root)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


def _novel(args: argparse.Namespace, preset: str) -> list[str] | None:
    """--novel-classes A,B as a list, checked against the preset's classes before anything is scored."""
    if not args.novel_classes:
        return None
    from export.evaluate import novel_codes

    names = [n.strip() for n in args.novel_classes.split(",") if n.strip()]
    novel_codes(names, preset)
    return names


def _eval_source(args: argparse.Namespace, cfg: Any) -> int:
    """``dsanet eval`` of a bundle or of an official DSANet checkpoint (no --clip needed)."""
    from export.data import read_list
    from export.evaluate import format_table
    from export.gt import load_ground_truth
    from export.official.evaluation import evaluate_source

    root = Path(args.data_root)
    test_list = Path(cfg.data.test_list)
    rows = read_list(test_list if test_list.is_absolute() else root / test_list, root)
    gt = load_ground_truth(cfg.preset, root, rows)
    result = evaluate_source(args.checkpoint, rows, gt, cfg.preset, args.device, cfg.eval.batch_size,
                             progress=not args.no_progress, novel_classes=_novel(args, cfg.preset))
    print(f"{args.checkpoint} on {len(rows)} {cfg.preset} test videos:")
    print(format_table(result))
    if args.json:
        payload: dict[str, Any] = {**result, "checkpoint": str(args.checkpoint), "test_list": str(cfg.data.test_list),
                                   "data_root": str(root)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train DSANet on CLIP features (VadCLIP layout)",
        description="Train the DSANet head with the official recipe of a preset (configs/train/ucf.yaml, xd.yaml) "
                    "on VadCLIP-layout features under --data-root. Writes best.safetensors, last.safetensors, "
                    "last_optim.pt, config.json and metrics.jsonl to --out.")
    p.add_argument("-c", "--config", required=True, metavar="PRESET",
                   help="training preset YAML, or a bundled preset name: ucf, xd")
    p.add_argument("--data-root", required=True, metavar="DIR", help="data set folder (holds list/ and the features)")
    p.add_argument("--clip", required=True, metavar="DIR|tiny",
                   help="local Hugging Face CLIP folder (e.g. clip-vit-base-patch16), or 'tiny' for tests")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory for checkpoints and logs")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epoch count")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    p.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    p.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set batch.normal=8 --set model.decoder_depth=2 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    e = subparsers.add_parser(
        "eval", help="evaluate a DSANet checkpoint on a test list (AUC, AP, mAP, top-1)",
        description="Score every test video as the official test scripts do (256-snippet chunks) and print frame "
                    "AUC / AP, detection mAP at IoU 0.1-0.5 and the top-1 class accuracy of the anomalous videos.")
    e.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="best.safetensors / last.safetensors (with --clip), an official DSANet .pth, or a bundle folder")
    e.add_argument("-c", "--config", required=True, metavar="PRESET", help="training preset YAML or name (ucf, xd)")
    e.add_argument("--data-root", required=True, metavar="DIR", help="data set folder (holds list/ and the features)")
    e.add_argument("--clip", default=None, metavar="DIR|FILE|tiny",
                   help="the CLIP the .safetensors checkpoint was trained with (not needed for a bundle or .pth)")
    e.add_argument("--json", default=None, metavar="OUT", help="also write the figures as JSON")
    e.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value (e.g. data.test_list)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--novel-classes", metavar="A,B,...",
                   help="also report frame AUC/AP on base and on novel classes (open-vocabulary split): the "
                        "normal test videos plus those of the classes named here (novel) or of the others (base), "
                        "and top-1 class accuracy per subset; names are the preset's class words or raw codes "
                        "(docs/categories.md)")
    e.set_defaults(func=_eval)
