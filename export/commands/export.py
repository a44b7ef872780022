"""``dsanet export`` (checkpoint -> model bundle, with parity checks) and ``dsanet bundle-info``."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:  # noqa: ANN001 - argparse's private action type
    p = subparsers.add_parser(
        "export", help="export a trained checkpoint and the CLIP image tower to a model bundle (ONNX)",
        description="Export the DSANet head and the CLIP image tower to ONNX, check both against torch "
                    "(head max |diff| <= 1e-4, encoder cosine >= 0.9999; >= 0.995 for --encoder-int8) and "
                    "write a bundle directory the live service loads. Exits 1 with the measured figures "
                    "when a parity check fails, 2 when an input (checkpoint, CLIP folder, --out) is unusable.")
    p.add_argument("--checkpoint", required=True, help="trainer checkpoint (RUN_DIR/best.safetensors)")
    p.add_argument("--clip", required=True, help="local Hugging Face CLIP folder, or 'tiny' for the random test CLIP")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--encoder-int8", action="store_true",
                   help="ship a dynamically quantised INT8 encoder (faster on CPU, cosine >= 0.995 to fp32)")
    p.add_argument("--head-int8", action="store_true",
                   help="also ship a dynamically quantised INT8 head (head.int8.onnx, ~2x faster on CPU), gated on "
                        "the checkpoint's test features: scores within 0.05 and frame AUC within 0.005 of fp32, "
                        "or the export refuses (exit 2)")
    p.add_argument("--data-root", metavar="DIR",
                   help="data folder of the test features for --head-int8 (default: the one the checkpoint was "
                        "trained on)")
    p.add_argument("--name", help="bundle name (default: the output folder's name)")
    p.add_argument("--snippet-fps", type=float,
                   help="frame rate of the training videos (default: from the checkpoint, else 30 for UCF, 24 for XD)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the service may send (default 64)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--evaluation", help="JSON file of evaluation figures to record (default: RUN_DIR/evaluation.json if present)")
    p.add_argument("--no-torch-weights", action="store_true",
                   help="leave out head.safetensors and encoder_torch/ (ONNX Runtime only; smaller bundle)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=run_export)

    q = subparsers.add_parser("bundle-info", help="show what a model bundle holds, including its parity figures")
    q.add_argument("bundle", metavar="BUNDLE_DIR")
    q.add_argument("--json", action="store_true", help="print bundle.json as validated")
    q.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the files")
    q.set_defaults(func=run_bundle_info)


def run_export(args: argparse.Namespace) -> int:
    """Errors are reported by ``stream.cli.main``: 2 for bad input, 1 when the export or parity fails."""
    from engine.errors import DsanetError
    from export.bundle_writer import ExportOptions, export_checkpoint

    evaluation = None
    if args.evaluation:
        try:
            with open(args.evaluation) as f:
                evaluation = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise DsanetError(f"--evaluation {args.evaluation}: {exc}") from None
    if args.max_batch < 1:
        raise DsanetError("--max-batch must be >= 1")
    opts = ExportOptions(name=args.name, encoder_int8=args.encoder_int8, torch_weights=not args.no_torch_weights,
                         max_batch=args.max_batch, snippet_fps=args.snippet_fps, opset=args.opset,
                         evaluation=evaluation, head_int8=args.head_int8, head_int8_data_root=args.data_root)
    if args.data_root and not args.head_int8:
        raise DsanetError("--data-root is only used with --head-int8")
    bundle = export_checkpoint(args.checkpoint, args.clip, args.out, opts, force=args.force)
    print(bundle.describe())
    return 0


def run_bundle_info(args: argparse.Namespace) -> int:
    from engine.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify_hashes=not args.no_verify)  # BundleError: exit 2
    if args.json:
        print(json.dumps(bundle.to_json_dict(), indent=2))
        return 0
    print(bundle.describe())
    return 0
