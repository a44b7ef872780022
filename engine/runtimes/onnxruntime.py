"""ONNX Runtime runner: the CPU default and the CUDA/TensorRT execution-provider path. Never imports torch.

ONNX Runtime quietly falls back to the CPU provider when a GPU provider cannot load (missing CUDA
libraries, wrong driver) while still *listing* the GPU provider as available, so a "GPU" deployment
can silently run at CPU speed. After the session is built we compare ``get_providers()`` with what was
asked and, by default, refuse to continue (``strict_providers=False`` only warns, loudly).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engine.errors import RuntimeUnavailable
from engine.runtime import Runner, cuda_device, nvidia_gpu_present, register_runtime

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
GPU_EPS = (CUDA_EP, TRT_EP, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider",
           "CoreMLExecutionProvider", "OpenVINOExecutionProvider")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailable("onnxruntime is not installed: pip install 'dsanet-stream[cpu]' "
                                 "(or 'dsanet-stream[gpu]' for CUDA)") from exc
    return ort


def _provider_name(p: str | tuple[str, dict[str, Any]]) -> str:
    return p if isinstance(p, str) else p[0]


@register_runtime("onnxruntime")
class OrtRunner(Runner):
    """Runs a bundle's ONNX graph in an ``InferenceSession``.

    It runs the bundle's graphs as they are: precision ``int8`` selects nothing by itself (the
    encoder.onnx of a bundle exported with ``--encoder-int8`` is quantised; the head is fp32 unless the
    bundle has an INT8 head, see below) and
    warns when the bundle has no INT8 encoder; ``describe()`` reports what the files hold.
    A head bundle exported with ``--head-int8`` runs its gated ``head.int8.onnx`` unless the option
    ``head_int8`` is False (config ``model.head_int8``).
    Options: ``providers`` (ORT provider list, overriding the one derived from ``device``),
    ``strict_providers`` (default True: fail when a requested GPU provider is not active),
    ``inter_threads``; ``threads`` sets intra-op threads (None = ORT default, one per core).
    """

    precisions = ("fp32", "int8")

    @classmethod
    def probe(cls, device: str) -> str | None:
        try:
            ort = _import_ort()
        except RuntimeUnavailable as exc:
            return str(exc)
        if cuda_device(device):
            if CUDA_EP not in ort.get_available_providers():
                return (f"onnxruntime {ort.__version__} has no {CUDA_EP} (install onnxruntime-gpu instead "
                        "of onnxruntime: pip install 'dsanet-stream[gpu]')")
            if not nvidia_gpu_present():
                return "no NVIDIA GPU driver found (/proc/driver/nvidia/version is absent)"
        return None

    def _requested_providers(self) -> list[Any]:
        explicit = self.options.get("providers")
        if explicit:
            return list(explicit)
        if cuda_device(self.device):
            idx = int(self.device.split(":")[1]) if ":" in self.device else 0
            return [(CUDA_EP, {"device_id": idx}), CPU_EP]
        return [CPU_EP]

    def _build(self) -> None:
        ort = _import_ort()
        self._ort_version = ort.__version__
        path = self.part.onnx_path
        int8_head = self.part.bundle.head.int8_file if self.part.kind == "head" else None
        if int8_head and self.options.get("head_int8", True):
            path = self.part.bundle.path(int8_head)  # gated at export (bundle.json parity.head_int8)
        self._path = path
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # our own check below reports provider fallbacks clearly
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        # Spinning worker threads burn a core while waiting between small calls; a service making one call
        # per snippet per camera measured 0.177 vs 0.078 CPU s per camera-second with it (BENCHMARKS.md).
        if not self.options.get("allow_spinning", False):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.options.get("inter_threads"):
            opts.inter_op_num_threads = int(self.options["inter_threads"])
        self.requested = self._requested_providers()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.requested)
        except Exception as exc:  # ORT raises Fail/InvalidGraph/... for a bad model or provider
            raise RuntimeUnavailable(f"onnxruntime cannot load {path}: {type(exc).__name__}: {exc}") from exc
        self.active = list(self.session.get_providers())
        missing = [_provider_name(p) for p in self.requested
                   if _provider_name(p) in GPU_EPS and _provider_name(p) not in self.active]
        if missing:
            msg = (f"{self.part.label}: onnxruntime was asked for {missing} but runs on {self.active}: the GPU "
                   "provider failed to load (CUDA/cuDNN libraries missing or mismatched?) and it fell back to CPU")
            if self.options.get("strict_providers", True):
                raise RuntimeUnavailable(msg)
            log.warning("!!! %s !!!", msg)
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._inputs = {i.name for i in self.session.get_inputs()}
        expected = set(self.part.input_names)
        if self._inputs != expected:
            raise RuntimeUnavailable(f"{path}: graph inputs {sorted(self._inputs)} != bundle.json {sorted(expected)}")
        self._run_options = ort.RunOptions()
        if self.precision == "int8" and self.part.kind == "encoder" and not self._quantization():
            log.warning("%s: precision int8 asked for but the bundle's encoder.onnx is fp32 (export with "
                        "--encoder-int8 for the faster CPU encoder); running fp32", self.part.label)

    def _quantization(self) -> str | None:
        if self.part.kind == "encoder":
            return self.part.bundle.encoder.quantization
        return "int8-dynamic" if self._path.name == self.part.bundle.head.int8_file else None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, {k: inputs[k] for k in self._inputs}, self._run_options)
        return dict(zip(self._outputs, values, strict=True))

    def describe(self) -> dict[str, Any]:
        on_gpu = any(p in GPU_EPS for p in self.active)
        quant = self._quantization()
        return {
            "runtime": self.name,
            "model": self.part.kind,
            "file": self._path.name,
            "device": self.device if on_gpu else "cpu",
            "providers": self.active,
            "requested_providers": [_provider_name(p) for p in self.requested],
            "precision": quant or "fp32",
            "intra_op_threads": self.session.get_session_options().intra_op_num_threads or "default",
            "version": self._ort_version,
        }
