"""``dsanet import-official``: the authors' released DSANet checkpoint -> a model bundle."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    """Errors are reported by ``stream.cli.main``: 2 for a bad file or option, 1 when export or parity fails."""
    from engine.errors import DsanetError
    from export.official.importer import import_official

    if args.max_batch < 1:
        raise DsanetError("--max-batch must be >= 1")
    bundle = import_official(args.checkpoint, args.preset, args.out, encoder_int8=args.encoder_int8,
                             force=args.force, name=args.name, snippet_fps=args.snippet_fps,
                             max_batch=args.max_batch, torch_weights=not args.no_torch_weights)
    print(bundle.describe())
    return 0


def register(subparsers) -> None:  # noqa: ANN001 - argparse's private action type
    p = subparsers.add_parser(
        "import-official", help="turn the DSANet authors' released .pth checkpoint into a model bundle",
        description="Load an official DSANet checkpoint (the whole DSANet state dict the authors release for "
                    "UCF-Crime and XD-Violence: OpenAI CLIP, text adapters, temporal head, SGNM) with "
                    "weights_only=True, check every key and shape against the official layout of --preset, map "
                    "it onto this project's model and write a bundle: encoder.onnx from the checkpoint's own CLIP "
                    "image tower, head.onnx with the class text features computed as the official test does. "
                    "Parity-checked like `dsanet export` (head <= 1e-4, encoder cosine >= 0.9999, INT8 >= 0.995).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="official .pth file (e.g. model_ucf.pth, model_xd.pth)")
    p.add_argument("--preset", required=True, choices=("ucf", "xd"), help="which released model the file is")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--encoder-int8", action="store_true",
                   help="ship a dynamically quantised INT8 encoder (faster on CPU, cosine >= 0.995 to fp32)")
    p.add_argument("--name", help="bundle name (default dsanet-official-PRESET)")
    p.add_argument("--snippet-fps", type=float,
                   help="frame rate the features were made at (default 30 for UCF-Crime, 24 for XD-Violence)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the service may send (default 64)")
    p.add_argument("--no-torch-weights", action="store_true",
                   help="leave out head.safetensors and encoder_torch/ (ONNX Runtime only; smaller bundle)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=_run)
