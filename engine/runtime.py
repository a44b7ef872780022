"""One interface over the inference runtimes (ONNX Runtime, TensorRT, torch), a registry, and ``auto``.

The live service only ever sees ``EncoderModel.embed`` and ``HeadModel.score``; which engine runs
them is a deployment choice (CPU box: ONNX Runtime; GPU box: TensorRT or torch). Every runner is
built and warmed up when it is created, so the first camera frame does not pay for graph
optimisation or kernel compilation, and ``describe()`` reports what *actually* runs (the ONNX
Runtime CUDA provider, for one, silently falls back to CPU when CUDA libraries are missing).

Importing this module never imports torch: the torch and TensorRT runners import it when built,
and ``auto`` decides whether a GPU exists from the NVIDIA driver files before touching torch
(``DSANET_ASSUME_NO_GPU=1`` makes it treat a GPU machine as CPU-only, e.g. in tests).
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from engine.bundle import Bundle, load_bundle
from engine.errors import InputError, RuntimeUnavailable

log = logging.getLogger(__name__)

# int8 = the bundle's dynamically quantised encoder (a property of encoder.onnx, ONNX Runtime only)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ENCODER, HEAD = "encoder", "head"


@dataclass(frozen=True)
class ModelPart:
    """One of the two networks of a bundle; runners build from it (ONNX file or torch weights)."""

    bundle: Bundle
    kind: str  # ENCODER or HEAD

    def __post_init__(self) -> None:
        if self.kind not in (ENCODER, HEAD):
            raise ValueError(f"kind must be {ENCODER!r} or {HEAD!r}, got {self.kind!r}")

    @property
    def onnx_path(self) -> Path:
        return self.bundle.encoder_path if self.kind == ENCODER else self.bundle.head_path

    @property
    def input_names(self) -> list[str]:
        b = self.bundle
        return [b.encoder.input] if self.kind == ENCODER else [b.head.features, b.head.lengths]

    @property
    def output_names(self) -> list[str]:
        b = self.bundle
        return [b.encoder.output] if self.kind == ENCODER else [b.head.scores, b.head.class_probs]

    @property
    def max_batch(self) -> int:
        return self.bundle.encoder.max_batch if self.kind == ENCODER else self.bundle.head.max_batch

    def example_inputs(self, batch: int = 1, length: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic inputs of the right shapes, for warm-up and parity checks."""
        rng = np.random.default_rng(seed)
        b = self.bundle
        if self.kind == ENCODER:
            s = b.preprocessing.size
            return {b.encoder.input: rng.standard_normal((batch, 3, s, s), dtype=np.float32)}
        t = length or min(16, b.max_window)
        feats = rng.standard_normal((batch, t, b.embedding_width), dtype=np.float32)
        return {b.head.features: feats, b.head.lengths: np.full((batch,), t, dtype=np.int64)}

    @property
    def label(self) -> str:
        return f"{self.bundle.name}/{self.kind}"


class Runner(abc.ABC):
    """A built, warmed-up network. Subclasses set ``name`` and implement ``_build``/``run``/``describe``."""

    name: ClassVar[str] = "?"
    # precisions this runtime can honour; auto uses it to skip a runtime instead of failing late
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, part: ModelPart, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 warmup: bool = True, **options: Any) -> None:
        if precision not in PRECISIONS:
            raise RuntimeUnavailable(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        if precision not in self.precisions:
            raise RuntimeUnavailable(f"the {self.name} runtime does not run {precision} "
                                     f"(it runs {', '.join(self.precisions)})")
        self.part = part
        self.device = device
        self.precision = precision
        self.threads = threads
        self.options = options
        self._build()
        if warmup:
            self.warmup()

    @classmethod
    def probe(cls, device: str) -> str | None:
        """Why this runtime cannot run on ``device`` here (None when it may). Must stay cheap."""
        return None

    @abc.abstractmethod
    def _build(self) -> None:
        """Load the model onto the device (raise ``RuntimeUnavailable`` when that cannot work)."""

    @abc.abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; outputs are float32 numpy arrays keyed by the bundle's output names."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What actually runs: runtime, device/providers, precision, and anything a deployer checks."""

    def warmup(self, iterations: int = 2) -> None:
        """Run a few batches so lazy initialisation (allocation, autotuning, compilation) happens now."""
        sizes = [1, min(2, self.part.max_batch)]
        for i in range(iterations):
            self.run(self.part.example_inputs(batch=sizes[i % len(sizes)]))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free device memory (optional)."""


# --- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Runner]] = {}


def register_runtime(name: str) -> Callable[[type[Runner]], type[Runner]]:
    """Class decorator: make a ``Runner`` subclass available as ``create_runner(name, ...)``."""

    def deco(cls: type[Runner]) -> type[Runner]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"runtime {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _ensure_builtin() -> None:
    import engine.runtimes  # noqa: F401  (registers onnxruntime, torch, tensorrt; imports no torch)


def registered_runtimes() -> list[str]:
    """Every runtime name known to the registry, usable here or not."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def available_runtimes(device: str = "cpu") -> list[str]:
    """Runtimes whose cheap probe says they may run on ``device`` on this machine."""
    _ensure_builtin()
    return [n for n in sorted(_REGISTRY) if _REGISTRY[n].probe(device) is None]


def runtime_class(name: str) -> type[Runner]:
    _ensure_builtin()
    if name not in _REGISTRY:
        raise RuntimeUnavailable(f"unknown runtime {name!r} (known: {', '.join(sorted(_REGISTRY))}, or 'auto')")
    return _REGISTRY[name]


def create_runner(name: str, part: ModelPart | str | os.PathLike[str], device: str = "cpu",
                  precision: str = "fp32", threads: int | None = None, kind: str | None = None,
                  **options: Any) -> Runner:
    """Build runtime ``name`` for one network: a ``ModelPart``, or a bundle directory plus ``kind``."""
    cls = runtime_class(name)
    if not isinstance(part, ModelPart):
        if kind is None:
            raise RuntimeUnavailable(f"create_runner({name!r}, {part}): give kind='encoder' or 'head' with a bundle path")
        part = ModelPart(load_bundle(part), kind)
    device = normalise_device(device)
    if device == "auto":
        device = "cuda" if nvidia_gpu_present() and cls.probe("cuda") is None else "cpu"
    reason = cls.probe(device)
    if reason is not None:
        raise RuntimeUnavailable(f"runtime {name} cannot run on {device}: {reason}")
    return cls(part, device=device, precision=precision, threads=threads, **options)


# --- GPU detection without torch ----------------------------------------------------------------
def nvidia_gpu_present() -> bool:
    """An NVIDIA driver is loaded (cheap; does not import torch or initialise CUDA)."""
    if os.environ.get("DSANET_ASSUME_NO_GPU"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def cuda_device(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def normalise_device(device: str) -> str:
    d = (device or "cpu").strip().lower()
    if d in ("cpu", "auto", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise RuntimeUnavailable(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")


# --- auto selection ----------------------------------------------------------------------------
# (runtime, device) in order of preference; the last is the CPU fallback that always exists.
AUTO_ORDER: tuple[tuple[str, str], ...] = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"),
                                           ("onnxruntime", "cpu"))


@dataclass
class AutoChoice:
    runtime: str
    device: str
    skipped: list[tuple[str, str, str]]  # (runtime, device, reason)


def create_auto(part: ModelPart, device: str = "auto", precision: str = "fp32", threads: int | None = None,
                **options: Any) -> tuple[Runner, AutoChoice]:
    """Try TensorRT, ONNX Runtime CUDA, torch CUDA, then ONNX Runtime CPU; log every skip and the choice.

    ``device='cpu'`` restricts the search to CPU runtimes; ``auto`` tries the GPU ones first and falls
    back to the CPU; ``cuda``/``cuda:N`` require a GPU (no silent CPU fallback: that is a deployment
    error worth failing on). The CPU fallback runs fp32 even if another precision was asked for (it has no
    other), with a warning.
    """
    device = normalise_device(device)
    skipped: list[tuple[str, str, str]] = []
    for name, dev in AUTO_ORDER:
        target = dev
        if dev == "cuda":
            if device == "cpu":
                skipped.append((name, dev, "device=cpu was requested"))
                continue
            if cuda_device(device):
                target = device
        elif cuda_device(device):
            skipped.append((name, dev, f"device={device} was requested (a GPU is required)"))
            continue
        cls = runtime_class(name)
        reason = cls.probe(target)
        prec = precision
        if reason is None and prec not in cls.precisions:
            if (name, dev) == AUTO_ORDER[-1]:
                log.warning("%s: %s on %s has no %s; running fp32", part.label, name, target, prec)
                prec = "fp32"
            else:
                reason = f"does not run {prec}"
        if reason is not None:
            skipped.append((name, target, reason))
            continue
        try:
            runner = cls(part, device=target, precision=prec, threads=threads, **options)
        except RuntimeUnavailable as exc:
            skipped.append((name, target, str(exc)))
            continue
        except Exception as exc:  # a GPU runtime failing at build time (CUDA error, OOM...) must not end the search
            if (name, dev) == AUTO_ORDER[-1]:
                raise
            log.warning("runtime auto (%s): %s on %s failed to build: %s: %s", part.label, name, target,
                        type(exc).__name__, exc)
            skipped.append((name, target, f"failed to build: {type(exc).__name__}: {exc}"))
            continue
        for sname, sdev, why in skipped:
            log.info("runtime auto (%s): skipped %s on %s: %s", part.label, sname, sdev, why)
        log.info("runtime auto (%s): using %s on %s (%s)", part.label, name, target, runner.describe())
        return runner, AutoChoice(name, target, skipped)
    details = "; ".join(f"{n} on {d}: {w}" for n, d, w in skipped)
    raise RuntimeUnavailable(f"no inference runtime can run {part.label}: {details}")


# --- the two networks as the service sees them ---------------------------------------------------
class EncoderModel:
    """CLIP image tower: preprocessed images [B,3,S,S] float32 -> L2-unnormalised embeddings [B,D]."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.bundle = bundle
        self.runner = runner
        self.size = bundle.preprocessing.size
        self.width = bundle.embedding_width
        self.max_batch = bundle.encoder.max_batch

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = _as_float32(images, "images")
        if images.ndim != 4 or images.shape[1:] != (3, self.size, self.size):
            raise InputError(f"encoder input must be [B,3,{self.size},{self.size}] float32 (use "
                             f"engine.preprocess first), got shape {list(images.shape)}")
        b = images.shape[0]
        if b == 0:
            return np.zeros((0, self.width), dtype=np.float32)
        if b > self.max_batch:
            raise InputError(f"encoder batch {b} is over the limit of {self.max_batch} images per call")
        out = self.runner.run({self.bundle.encoder.input: images})[self.bundle.encoder.output]
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return self.runner.describe()


class HeadModel:
    """DSANet head: window features [B,T,D] + valid lengths [B] -> scores [B,T], class_probs [B,T,C]."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.bundle = bundle
        self.runner = runner
        self.width = bundle.embedding_width
        self.max_window = bundle.max_window
        self.max_batch = bundle.head.max_batch
        self.class_names = bundle.class_names
        self.display_names = bundle.display_names

    def score(self, features: np.ndarray, lengths: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        features = _as_float32(features, "features")
        if features.ndim != 3:
            raise InputError(f"head features must be [B,T,{self.width}], got shape {list(features.shape)}")
        b, t, d = features.shape
        if d != self.width:
            raise InputError(f"head features have width {d}, the bundle's head takes {self.width}-d embeddings")
        if not 1 <= b <= self.max_batch:
            raise InputError(f"head batch {b} is outside 1..{self.max_batch}")
        if not 1 <= t <= self.max_window:
            raise InputError(f"window length T={t} is outside 1..{self.max_window} snippets")
        lengths = np.asarray(lengths)
        if lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer):
            raise InputError(f"lengths must be {b} integers (one per window), got {lengths.dtype} {list(lengths.shape)}")
        if lengths.min() < 1 or lengths.max() > t:
            raise InputError(f"lengths must be within 1..T={t}, got {lengths.tolist()}")
        if not np.isfinite(features).all():
            raise InputError("head features contain NaN or infinity")
        h = self.bundle.head
        out = self.runner.run({h.features: features, h.lengths: lengths.astype(np.int64)})
        return np.asarray(out[h.scores], dtype=np.float32), np.asarray(out[h.class_probs], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return self.runner.describe()


def _as_float32(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating):
        return np.ascontiguousarray(a, dtype=np.float32)
    raise InputError(f"{what} must be float32, got {a.dtype} (raw uint8 frames go through engine.preprocess first)")


def load_models(bundle_dir: str | os.PathLike[str], runtime: str = "auto", device: str = "cpu",
                precision: str = "fp32", threads: int | None = None, verify_hashes: bool = True, **options: Any,
                ) -> tuple[Bundle, EncoderModel, HeadModel]:
    """Load and validate a bundle, build both networks on the chosen runtime, warm them up.

    ``runtime``: a registered name or ``auto``; ``device``: cpu, cuda, cuda:N or auto; ``precision``:
    fp32/fp16/bf16 (torch, TensorRT); ``threads``: intra-op threads; ``verify_hashes`` re-hashes every
    bundle file (about a second per GB) to refuse a damaged bundle; other ``options`` go to the runners
    (e.g. ``providers``, ``strict_providers``, ``compile``, ``cache_dir``).
    """
    bundle = load_bundle(bundle_dir, verify_hashes=verify_hashes)
    device = normalise_device(device)
    runners = []
    for kind in (ENCODER, HEAD):
        part = ModelPart(bundle, kind)
        if runtime == "auto":
            runner, _ = create_auto(part, device=device, precision=precision, threads=threads, **options)
        else:
            runner = create_runner(runtime, part, device=device, precision=precision, threads=threads, **options)
            log.info("runtime %s (%s): %s", runtime, part.label, runner.describe())
        runners.append(runner)
    return bundle, EncoderModel(bundle, runners[0]), HeadModel(bundle, runners[1])
