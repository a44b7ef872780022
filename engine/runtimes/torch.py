"""torch runner: eager or ``torch.compile``, CPU or CUDA, fp32 / fp16 / bf16.

Where the weights come from (decided here, recorded in bundle.json's ``torch`` section):
* the head is rebuilt from ``head.safetensors``: the ``DSANetHead`` state dict (backbone weights plus
  the baked class text features) with the ``DSANetConfig`` JSON in the file's metadata, so no CLIP
  text tower and no training checkpoint is needed at serving time;
* the encoder is the CLIP image tower saved in Hugging Face layout under ``encoder_torch/``
  (``config.json`` + ``model.safetensors`` of ``CLIPVisionModelWithProjection``), so the bundle is
  self-contained instead of pointing at a CLIP folder that may not exist on the serving machine.
  ``dsanet export --no-torch-weights`` leaves both out (smaller bundle, ONNX Runtime only).

Reduced precision runs under ``torch.autocast`` with fp32 weights: the DSANet head casts its input
to fp32 and computes its masks in fp32, which a plain ``.half()`` of the module would break, and
autocast keeps softmax/normalisation in fp32 where it matters. torch is imported when a runner is
built, never when this module is imported.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from typing import Any

import numpy as np

from engine.categories import CategorySet, OpenHeadModel
from engine.errors import BundleError, InputError, RuntimeUnavailable
from engine.runtime import ENCODER, ModelPart, Runner, cuda_device, nvidia_gpu_present, register_runtime

log = logging.getLogger(__name__)

TORCH_HINT = "pip install torch (or the 'dsanet-stream[tensorrt]' / '[train]' extras)"

# Intra-op threads on CPU when ``threads`` is not given: one per usable core, the count that measured
# fastest on quiet machines (BENCHMARKS.md, "torch eager: 1 vs 2 intra-op threads", `bench/head.py
# --torch-threads`): 2 threads took 0.59x (head, W=256) and 0.60x (ViT-B/16 encoder) of 1 thread's time on
# a 2-core Zen 5 (2026-12-02), 0.60x / 0.58x on a 2-core Zen 2 the same day. (The 1-thread default this
# replaces came from a 2026-11-29 run where 2 threads took 12x longer, on a machine shared with other
# jobs: oversubscribed cores, not the thread count, made that run slow.) Set ``model.threads`` to override.
def default_cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise RuntimeUnavailable(f"torch is not installed: {TORCH_HINT}") from exc
    return torch


def torch_dtype(precision: str) -> Any:
    torch = import_torch()
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def make_encoder_module(vision: Any) -> Any:
    """Wrap ``CLIPVisionModelWithProjection``: pixel_values [B,3,S,S] -> image_embeds [B,D] (one tensor out)."""
    torch = import_torch()

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).image_embeds

    return ImageEmbeds(vision).eval()


def load_head_module(path: Any, open_head: bool = False) -> Any:
    """Rebuild the ``DSANetHead`` from a bundle's head.safetensors (weights + DSANetConfig metadata);
    ``open_head``: as ``DSANetOpenHead`` (class text features as a third input; the buffer kept)."""
    torch = import_torch()
    from safetensors import safe_open
    from safetensors.torch import load_file

    from engine.model import DSANetConfig, DSANetHead
    from engine.model.backbone import VadClipBackbone
    from engine.model.head import DSANetOpenHead

    if not path.is_file():
        raise BundleError(f"{path}: missing (the torch runtime needs the head weights; re-export without "
                          "--no-torch-weights or use the onnxruntime runtime)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError for damaged files
        raise BundleError(f"{path}: cannot read the head weights: {exc}") from exc
    if "dsanet_config" not in meta:
        raise BundleError(f"{path}: metadata has no dsanet_config")
    config = DSANetConfig.from_json(meta["dsanet_config"], source=str(path))
    text = state.get("text_features")
    if text is None:
        raise BundleError(f"{path}: has no text_features tensor")
    head = (DSANetOpenHead if open_head else DSANetHead)(config, VadClipBackbone(config), torch.zeros_like(text))
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not fit the DSANet config in its metadata: {exc}") from exc
    return head.eval()


def load_encoder_module(directory: Any) -> Any:
    from engine.clip import load_vision_model

    if not (directory / "config.json").is_file():
        raise BundleError(f"{directory}: missing (the torch runtime needs the CLIP image tower; re-export "
                          "without --no-torch-weights or use the onnxruntime runtime)")
    return make_encoder_module(load_vision_model(directory))


def load_module(part: ModelPart) -> Any:
    """The torch ``nn.Module`` (eval mode, fp32, CPU) of one bundle part."""
    spec = part.bundle.torch
    if spec is None:
        raise RuntimeUnavailable(f"bundle {part.bundle.root} has no torch weights (exported with "
                                 "--no-torch-weights): use the onnxruntime runtime or re-export")
    if part.kind == ENCODER:
        if spec.encoder_dir is None:
            raise RuntimeUnavailable(f"bundle {part.bundle.root} has no torch encoder weights")
        return load_encoder_module(part.bundle.path(spec.encoder_dir))
    return load_head_module(part.bundle.path(spec.head_weights))


def probe_torch(device: str) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return f"torch is not installed ({TORCH_HINT})"
    if cuda_device(device) and not nvidia_gpu_present():
        return "no NVIDIA GPU driver found (/proc/driver/nvidia/version is absent)"
    return None


@register_runtime("torch")
class TorchRunner(Runner):
    """Options: ``compile`` (bool, default False), ``compile_mode`` (torch.compile mode, e.g.
    'reduce-overhead' or 'max-autotune'); ``threads`` sets ``torch.set_num_threads`` (on CPU, unset means
    one thread per usable core, the count that measured fastest: :func:`default_cpu_threads`)."""

    precisions = ("fp32", "fp16", "bf16")

    @classmethod
    def probe(cls, device: str) -> str | None:
        return probe_torch(device)

    def _build(self) -> None:
        torch = import_torch()
        self._torch = torch
        if cuda_device(self.device) and not torch.cuda.is_available():
            raise RuntimeUnavailable(f"torch {torch.__version__} cannot use CUDA here (CPU-only build or no GPU)")
        self._device = torch.device(self.device)
        threads = self.threads or (default_cpu_threads() if self._device.type == "cpu" else None)
        if threads:
            torch.set_num_threads(int(threads))
        self._dtype = torch_dtype(self.precision)
        module = load_module(self.part).to(self._device)
        self.compiled = bool(self.options.get("compile", False))
        if self.compiled:
            kwargs = {"dynamic": True}
            if self.options.get("compile_mode"):
                kwargs["mode"] = self.options["compile_mode"]
            module = torch.compile(module, **kwargs)
        self.module = module
        self._inputs = self.part.input_names
        self._outputs = self.part.output_names

    def _autocast(self) -> Any:
        torch = self._torch
        if self.precision == "fp32":
            return torch.autocast(self._device.type, enabled=False)
        return torch.autocast(self._device.type, dtype=self._dtype)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self._device, non_blocking=True)
                for n in self._inputs]
        with torch.inference_mode(), self._autocast():
            out = self.module(*args)
        if not isinstance(out, tuple | list):
            out = (out,)
        return {n: t.float().cpu().numpy() for n, t in zip(self._outputs, out, strict=True)}

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        d = {"runtime": self.name, "model": self.part.kind, "device": str(self._device),
             "precision": self.precision, "compiled": self.compiled, "version": torch.__version__,
             "threads": torch.get_num_threads()}
        if self._device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self._device)
        return d


class TorchOpenHeadModel(OpenHeadModel):
    """The open-vocabulary head on torch (``OpenHeadModel``'s interface): head.safetensors rebuilt as
    ``DSANetOpenHead``, so edited categories run on the torch runtime's device and precision instead of
    falling back to ``head_open.onnx`` on ONNX Runtime CPU. For the bundle's own classes (features from
    text.onnx) it matches the baked-in head (tests/test_categories.py)."""

    def __init__(self, bundle: Any, categories: CategorySet, device: str = "cpu", precision: str = "fp32",
                 threads: int | None = None) -> None:
        torch = import_torch()
        spec = bundle.torch
        if spec is None:
            raise RuntimeUnavailable(f"bundle {bundle.root} has no torch weights (exported with "
                                     "--no-torch-weights): use the onnxruntime runtime or re-export")
        if cuda_device(device) and not torch.cuda.is_available():
            raise RuntimeUnavailable(f"torch {torch.__version__} cannot use CUDA here (CPU-only build or no GPU)")
        if threads:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self.bundle = bundle
        self.spec = bundle.head_open
        self.width = bundle.embedding_width
        self.max_window = bundle.max_window
        self.max_batch = bundle.head.max_batch
        self.device, self.precision = torch.device(device), precision
        self._dtype = torch_dtype(precision)
        self.module = load_head_module(bundle.path(spec.head_weights), open_head=True).to(self.device)
        self._lock = threading.Lock()
        self._categories = self._checked(categories)
        self.last_used = self._categories
        self._text = (self._categories, torch.from_numpy(np.asarray(self._categories.features)).to(self.device))

    def score(self, features: np.ndarray, lengths: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        cats = self._categories  # one read: the whole batch uses one class list
        feats = np.ascontiguousarray(features, dtype=np.float32)
        if feats.ndim != 3 or feats.shape[2] != self.width:
            raise InputError(f"head features must be [B,T,{self.width}], got shape {list(feats.shape)}")
        held, text = self._text
        if held is not cats:  # class features moved to the device once per class list
            text = torch.from_numpy(np.asarray(cats.features)).to(self.device)
            self._text = (cats, text)
        x = torch.from_numpy(feats).to(self.device)
        lens = torch.from_numpy(np.asarray(lengths, dtype=np.int64)).to(self.device)
        autocast = (torch.autocast(self.device.type, enabled=False) if self.precision == "fp32"
                    else torch.autocast(self.device.type, dtype=self._dtype))
        with torch.inference_mode(), autocast:
            scores, probs = self.module(x, lens, text)
        self.last_used = cats
        return scores.float().cpu().numpy(), probs.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "model": "head_open", "device": str(self.device), "precision": self.precision,
                "classes": len(self._categories)}


def head_config_json(head: Any) -> str:
    """The metadata string stored next to the head weights."""
    return json.dumps(head.config.to_dict(), sort_keys=True)
