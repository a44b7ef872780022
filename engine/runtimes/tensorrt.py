"""TensorRT runner through torch-tensorrt (GPU only, default fp16 for the serving deployments that use it).

The torch modules of the bundle (see ``engine.runtimes.torch``) are compiled with
``torch_tensorrt.compile(ir="dynamo")`` for the bundle's dynamic shape ranges (batch 1..max_batch,
window 1..max_window). Building an engine takes minutes, so it is cached on disk under
``$DSANET_CACHE/tensorrt`` (or the ``cache_dir`` option), keyed by the bundle's content hash, the GPU
name, the TensorRT version, the part and the precision: a new bundle, another GPU model or a
TensorRT upgrade rebuilds, anything else reloads in seconds.

torch-tensorrt needs NVIDIA's TensorRT libraries; when they are missing the import fails and this
runtime raises ``RuntimeUnavailable`` naming the extra to install, and ``auto`` moves on to the next
runtime. (It cannot run in CI: TensorRT wheels come from NVIDIA's index only.)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import RuntimeUnavailable
from engine.runtime import ENCODER, Runner, cuda_device, nvidia_gpu_present, register_runtime
from engine.runtimes.torch import import_torch, load_module, torch_dtype

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'dsanet-stream[tensorrt]' (needs an NVIDIA GPU with CUDA and TensorRT libraries)"


def import_torch_tensorrt() -> Any:
    """Import torch_tensorrt or raise ``RuntimeUnavailable`` with the install hint (the import guard)."""
    try:
        import torch_tensorrt
    except (ImportError, OSError) as exc:  # OSError: libnvinfer.so missing behind an installed wheel
        raise RuntimeUnavailable(f"the TensorRT runtime is unavailable: torch-tensorrt cannot be imported "
                                 f"({type(exc).__name__}: {exc}); {INSTALL_HINT}") from exc
    return torch_tensorrt


def tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except (ImportError, OSError):
        return "unknown"


def default_cache_dir() -> Path:
    from engine.clip import default_cache_dir as base

    return base() / "tensorrt"


def engine_cache_path(cache_dir: Path, bundle_hash: str, gpu_name: str, trt_version: str, kind: str,
                      precision: str) -> Path:
    """Cache file name for one compiled part (stable and filesystem-safe)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    trt = re.sub(r"[^0-9A-Za-z.]+", "-", trt_version)
    return cache_dir / f"{bundle_hash[:16]}-{kind}-{precision}-{gpu}-trt{trt}.ep"


@register_runtime("tensorrt")
class TensorRTRunner(Runner):
    """Options: ``cache_dir`` (engine cache), ``opt_batch`` / ``opt_window`` (shapes TensorRT tunes for)."""

    precisions = ("fp16", "fp32", "bf16")

    @classmethod
    def probe(cls, device: str) -> str | None:
        if importlib.util.find_spec("torch_tensorrt") is None:
            return f"torch-tensorrt is not installed: {INSTALL_HINT}"
        if not cuda_device(device):
            return "TensorRT runs on a CUDA device only"
        if not nvidia_gpu_present():
            return "no NVIDIA GPU driver found (/proc/driver/nvidia/version is absent)"
        return None

    def _build(self) -> None:
        trt = import_torch_tensorrt()
        torch = import_torch()
        self._torch = torch
        if not cuda_device(self.device) or not torch.cuda.is_available():
            raise RuntimeUnavailable("the TensorRT runtime needs a CUDA device (torch.cuda.is_available() is False)")
        self._device = torch.device(self.device)
        self.gpu_name = torch.cuda.get_device_name(self._device)
        self.trt_version = tensorrt_version()
        bundle = self.part.bundle
        cache_dir = Path(self.options.get("cache_dir") or os.environ.get("DSANET_TRT_CACHE") or default_cache_dir())
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_path = engine_cache_path(cache_dir, bundle.content_hash, self.gpu_name, self.trt_version,
                                            self.part.kind, self.precision)
        self._inputs = self.part.input_names
        self._outputs = self.part.output_names
        self.cache_hit = self.cache_path.exists()
        if self.cache_hit:
            try:
                self.module = torch.export.load(str(self.cache_path)).module()
                log.info("TensorRT %s: loaded cached engine %s", self.part.label, self.cache_path)
                return
            except Exception as exc:  # a stale or partial cache file: rebuild it
                log.warning("TensorRT %s: cached engine %s unusable (%s); rebuilding", self.part.label,
                            self.cache_path, exc)
                self.cache_hit = False
        module = load_module(self.part).to(self._device)
        inputs, examples = self._input_specs(trt, torch)
        log.info("TensorRT %s: building the %s engine (minutes, once per bundle/GPU/TensorRT version)",
                 self.part.label, self.precision)
        try:
            compiled = trt.compile(module, ir="dynamo", inputs=inputs,
                                   enabled_precisions={torch_dtype(self.precision)}, truncate_double=True,
                                   min_block_size=1)
        except Exception as exc:  # TensorRT build failures surface as many exception types
            raise RuntimeUnavailable(f"TensorRT could not build {self.part.label}: {type(exc).__name__}: {exc}") from exc
        tmp = self.cache_path.with_suffix(".tmp")
        try:
            trt.save(compiled, str(tmp), output_format="exported_program", inputs=examples)
            os.replace(tmp, self.cache_path)
        except Exception as exc:  # caching is an optimisation: serve from the compiled module anyway
            log.warning("TensorRT %s: could not cache the engine in %s: %s", self.part.label, self.cache_path, exc)
        self.module = compiled

    def _input_specs(self, trt: Any, torch: Any) -> tuple[list[Any], list[Any]]:
        b = self.part.bundle
        max_b = self.part.max_batch
        opt_b = min(int(self.options.get("opt_batch", 8)), max_b)
        if self.part.kind == ENCODER:
            s = b.preprocessing.size
            spec = [trt.Input(min_shape=(1, 3, s, s), opt_shape=(opt_b, 3, s, s), max_shape=(max_b, 3, s, s),
                              dtype=torch.float32)]
            examples = [torch.zeros((opt_b, 3, s, s), device=self._device)]
            return spec, examples
        w, d = b.max_window, b.embedding_width
        opt_t = min(int(self.options.get("opt_window", w)), w)
        spec = [trt.Input(min_shape=(1, 1, d), opt_shape=(opt_b, opt_t, d), max_shape=(max_b, w, d), dtype=torch.float32),
                trt.Input(min_shape=(1,), opt_shape=(opt_b,), max_shape=(max_b,), dtype=torch.int64)]
        examples = [torch.zeros((opt_b, opt_t, d), device=self._device),
                    torch.full((opt_b,), opt_t, dtype=torch.int64, device=self._device)]
        return spec, examples

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self._device) for n in self._inputs]
        with torch.inference_mode():
            out = self.module(*args)
        if not isinstance(out, tuple | list):
            out = (out,)
        return {n: t.float().cpu().numpy() for n, t in zip(self._outputs, out, strict=True)}

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "model": self.part.kind, "device": str(self._device), "gpu": self.gpu_name,
                "precision": self.precision, "tensorrt": self.trt_version, "engine_cache": str(self.cache_path),
                "cache_hit": self.cache_hit}
