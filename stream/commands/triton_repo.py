"""``dsanet triton-repo BUNDLE OUT``: a Triton model repository serving the bundle's encoder."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "triton-repo", help="write a Triton Inference Server model repository for a bundle's encoder",
        description="Write OUT/<name>/config.pbtxt and OUT/<name>/1/ for the bundle's encoder, with input/output "
                    "names, dims, max batch and dynamic batching taken from the ONNX graph. Backends: python "
                    "(default; Triton's Python backend runs onnxruntime; workers send uint8 resized-and-cropped "
                    "frames, the server normalises), onnxruntime (Triton's onnxruntime backend; workers send "
                    "float32 normalised input), tensorrt (float32 input; build model.plan on the serving GPU "
                    "with the trtexec command written to BUILD_PLAN.txt). Exit 2 on a bad bundle or folder.")
    p.add_argument("bundle", metavar="BUNDLE", help="model bundle directory")
    p.add_argument("out", metavar="OUT", help="model repository folder (created if missing)")
    p.add_argument("--backend", choices=("python", "onnxruntime", "tensorrt"), default="python",
                   help="Triton backend (default: python)")
    p.add_argument("--name", default="dsanet_encoder", help="model name (model.encoder.model in the worker "
                                                            "config; default dsanet_encoder)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    p.add_argument("--gpu", action="store_true", help="instances on the GPU (KIND_GPU; tensorrt always is)")
    p.add_argument("--force", action="store_true", help="replace OUT/<name> if it exists")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from engine.errors import DsanetError
    from engine.triton_repo import write_repository

    try:
        model = write_repository(args.bundle, args.out, backend=args.backend, name=args.name,
                                 instances=args.instances, gpu=args.gpu, force=args.force)
    except DsanetError as exc:
        print(f"dsanet triton-repo: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {model.directory} ({model.backend} backend): input {model.input_name} {model.input_dtype} "
          f"{list(model.input_dims)}, output {model.output_name} {list(model.output_dims)}, "
          f"max_batch_size {model.max_batch_size}, wire {model.wire}")
    if model.backend == "tensorrt":
        print(f"next: build {model.directory}/1/model.plan on the Triton host ({model.directory}/BUILD_PLAN.txt)")
    return 0
