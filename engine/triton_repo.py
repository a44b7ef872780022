"""A Triton Inference Server model repository for a bundle's encoder (``dsanet triton-repo``). No torch.

Only the encoder goes to Triton: it is the expensive network and batches well across cameras and
workers (Triton's dynamic batcher); the head stays in the worker, because a window is 512 KB and
shipping one per snippet would cost far more bandwidth than the frame it scores.

Backends, and where preprocessing happens (stated in ``config.pbtxt``'s ``parameters`` too):

- ``python`` (default): Triton's Python backend runs ``encoder.onnx`` with onnxruntime (``model.py``
  written here). Input ``frames`` is uint8 [B,S,S,3]: the worker resizes and centre-crops (cheap, and it
  keeps a frame at S*S*3 bytes, 150 KB at S=224, instead of 600 KB of float32); the server rescales,
  normalises and transposes with the bundle's mean/std, the same arithmetic as ``engine.preprocess``.
- ``onnxruntime``: Triton's onnxruntime backend runs ``encoder.onnx`` as it is; the worker sends the
  fully preprocessed float32 [B,3,S,S] input.
- ``tensorrt``: the same float32 interface for a ``model.plan`` that must be built ON the serving GPU
  (a TensorRT engine is specific to GPU and TensorRT version); the repository holds ``encoder.onnx``
  and the ``trtexec`` command in ``BUILD_PLAN.txt``, and the server will not load the model until
  ``model.plan`` exists.

The dims, names, data types and ``max_batch_size`` come from the ONNX graph and bundle.json, checked
against each other, so a repository never disagrees with the model it serves.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.bundle import Bundle, load_bundle, onnx_io
from engine.errors import BundleError, DsanetError

BACKENDS = ("python", "onnxruntime", "tensorrt")
DEFAULT_MODEL_NAME = "dsanet_encoder"
FRAMES_INPUT = "frames"  # the uint8 input of the python backend
WIRE_UINT8 = "uint8_nhwc_cropped"  # the worker resizes and crops; the server normalises
WIRE_FLOAT32 = "float32_nchw_normalised"  # the worker does all preprocessing
MAX_QUEUE_DELAY_US = 2000


class TritonRepoError(DsanetError):
    """A model repository cannot be written (bad output folder, bundle graph unsuitable, ...)."""


@dataclass(frozen=True)
class RepoModel:
    """What a written repository serves (also what the test checks ``config.pbtxt`` against)."""

    name: str
    backend: str
    directory: Path
    input_name: str
    input_dtype: str  # Triton data type, e.g. TYPE_UINT8
    input_dims: tuple[int, ...]  # without the batch dimension
    output_name: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    wire: str


def _static_dims(shape: tuple[int | str | None, ...], what: str, path: Path) -> tuple[int, ...]:
    if not shape:
        raise TritonRepoError(f"{path}: {what} has no dimensions")
    batch, rest = shape[0], shape[1:]
    if isinstance(batch, int) and batch > 0:
        raise TritonRepoError(f"{path}: {what} has a fixed batch dimension {batch}; Triton's batching needs a "
                              "dynamic first dimension (re-export the bundle)")
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise TritonRepoError(f"{path}: {what} has dynamic non-batch dims {list(shape)}; only the batch may vary")
    return tuple(int(d) for d in rest)  # type: ignore[arg-type]


def plan(bundle: Bundle, backend: str = "python", name: str = DEFAULT_MODEL_NAME) -> RepoModel:
    """The model a repository for ``bundle`` would serve, read from its ONNX graph (nothing written)."""
    if backend not in BACKENDS:
        raise TritonRepoError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    path = bundle.encoder_path
    ins, outs = onnx_io(path)
    enc = bundle.encoder
    if enc.input not in ins or enc.output not in outs:
        raise BundleError(f"{path}: graph has inputs {sorted(ins)} / outputs {sorted(outs)}, bundle.json names "
                          f"{enc.input!r} / {enc.output!r}")
    in_dims = _static_dims(ins[enc.input], f"input {enc.input!r}", path)
    out_dims = _static_dims(outs[enc.output], f"output {enc.output!r}", path)
    s = bundle.preprocessing.size
    if in_dims != (3, s, s):
        raise TritonRepoError(f"{path}: input {enc.input!r} is {list(in_dims)}, bundle.json preprocessing says "
                              f"[3,{s},{s}]")
    if out_dims != (bundle.embedding_width,):
        raise TritonRepoError(f"{path}: output {enc.output!r} is {list(out_dims)}, bundle.json embedding_width "
                              f"is {bundle.embedding_width}")
    if backend == "python":
        return RepoModel(name, backend, Path(name), FRAMES_INPUT, "TYPE_UINT8", (s, s, 3), enc.output, out_dims,
                         enc.max_batch, WIRE_UINT8)
    return RepoModel(name, backend, Path(name), enc.input, "TYPE_FP32", in_dims, enc.output, out_dims,
                     enc.max_batch, WIRE_FLOAT32)


def _dims(d: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(x) for x in d) + " ]"


def config_pbtxt(bundle: Bundle, model: RepoModel, instances: int = 1, gpu: bool = False) -> str:
    """``config.pbtxt`` text (Triton's ModelConfig protobuf in text format)."""
    preferred = sorted({b for b in (4, 8, 16, 32, model.max_batch_size) if b <= model.max_batch_size})
    lines = [f'name: "{model.name}"']
    if model.backend == "python":
        lines.append('backend: "python"')
    elif model.backend == "onnxruntime":
        lines.append('platform: "onnxruntime_onnx"')
    else:
        lines.append('platform: "tensorrt_plan"')
    lines += [
        f"max_batch_size: {model.max_batch_size}",
        "input [",
        "  {",
        f'    name: "{model.input_name}"',
        f"    data_type: {model.input_dtype}",
        f"    dims: {_dims(model.input_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{model.output_name}"',
        "    data_type: TYPE_FP32",
        f"    dims: {_dims(model.output_dims)}",
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(tuple(preferred))}",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {int(instances)}",
        f"    kind: {'KIND_GPU' if gpu or model.backend == 'tensorrt' else 'KIND_CPU'}",
        "  }",
        "]",
    ]
    p = bundle.preprocessing
    params = {
        "dsanet_bundle": bundle.name,
        "dsanet_bundle_hash": bundle.content_hash[:16],
        "dsanet_wire": model.wire,
        "dsanet_preprocessing": ("worker: resize short side + centre crop (uint8); server: rescale, "
                                 "normalise, NHWC->NCHW" if model.wire == WIRE_UINT8 else
                                 "worker: resize, crop, rescale, normalise (float32 NCHW)"),
        "mean": json.dumps(list(p.mean)),
        "std": json.dumps(list(p.std)),
        "rescale": repr(float(p.rescale)),
        "onnx_input": bundle.encoder.input,
    }
    for k, v in params.items():
        lines += ["parameters {", f'  key: "{k}"', f"  value: {{ string_value: {json.dumps(v)} }}", "}"]
    return "\n".join(lines) + "\n"


# The Python-backend model: numpy + onnxruntime inside Triton's stub. Written out as a file, so it
# imports nothing from this project (the server's venv does not have it).
MODEL_PY = '''\
"""dsanet encoder for Triton's Python backend (written by `dsanet triton-repo`; edit the bundle, not this).

Input "frames": uint8 [B,S,S,3] RGB, already resized and centre-cropped by the worker. Here: rescale,
normalise with the bundle's mean/std (the parameters in config.pbtxt), NHWC->NCHW, then encoder.onnx
through onnxruntime. Every request of a dynamic batch is run in one onnxruntime call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.mean = np.asarray(json.loads(params["mean"]), dtype=np.float32)
        self.std = np.asarray(json.loads(params["std"]), dtype=np.float32)
        self.rescale = np.float32(float(params["rescale"]))
        self.onnx_input = params["onnx_input"]
        self.input_name = cfg["input"][0]["name"]
        self.output_name = cfg["output"][0]["name"]
        here = os.path.join(args["model_repository"], args["model_version"])
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads = int(os.environ.get("DSANET_TRITON_THREADS", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(here, "encoder.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        frames = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [f.shape[0] for f in frames]
        x = np.concatenate(frames, axis=0).astype(np.float32) * self.rescale
        x = np.ascontiguousarray(((x - self.mean) / self.std).transpose(0, 3, 1, 2), dtype=np.float32)
        emb = self.session.run(None, {self.onnx_input: x})[0].astype(np.float32)
        out, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor(self.output_name, emb[start:start + n])
            out.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return out
'''


def write_repository(bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str], backend: str = "python",
                     name: str = DEFAULT_MODEL_NAME, instances: int = 1, gpu: bool = False,
                     force: bool = False) -> RepoModel:
    """Write ``out/<name>/{config.pbtxt, 1/...}`` for the bundle's encoder; returns what it serves."""
    bundle = load_bundle(bundle_dir)
    model = plan(bundle, backend, name)
    out = Path(out)
    target = out / name
    if target.exists() and not force:
        raise TritonRepoError(f"{target} already exists (pass --force to replace it)")
    if instances < 1:
        raise TritonRepoError(f"--instances must be >= 1, got {instances}")
    try:
        if target.exists():
            shutil.rmtree(target)
        version = target / "1"
        version.mkdir(parents=True)
        if backend == "python":
            shutil.copyfile(bundle.encoder_path, version / "encoder.onnx")
            (version / "model.py").write_text(MODEL_PY, encoding="utf-8")
        elif backend == "onnxruntime":
            shutil.copyfile(bundle.encoder_path, version / "model.onnx")
        else:
            shutil.copyfile(bundle.encoder_path, version / "encoder.onnx")
            s = bundle.preprocessing.size
            mb = model.max_batch_size
            (target / "BUILD_PLAN.txt").write_text(
                "A TensorRT engine is specific to the GPU and TensorRT version that serve it: build it on the "
                "Triton host (in the tritonserver image), then restart or reload the model:\n\n"
                f"  trtexec --onnx=1/encoder.onnx --saveEngine=1/model.plan --fp16 \\\n"
                f"    --minShapes={bundle.encoder.input}:1x3x{s}x{s} "
                f"--optShapes={bundle.encoder.input}:{min(16, mb)}x3x{s}x{s} "
                f"--maxShapes={bundle.encoder.input}:{mb}x3x{s}x{s}\n", encoding="utf-8")
        (target / "config.pbtxt").write_text(config_pbtxt(bundle, model, instances, gpu), encoding="utf-8")
    except OSError as exc:
        raise TritonRepoError(f"cannot write the model repository under {out}: {exc}") from exc
    return RepoModel(model.name, model.backend, target, model.input_name, model.input_dtype, model.input_dims,
                     model.output_name, model.output_dims, model.max_batch_size, model.wire)
