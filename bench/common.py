"""Shared helpers of the ``bench/`` scripts: machine description, interleaved timing, tables, RESULT lines.

Why a shared module: every speed claim in BENCHMARKS.md must be a ratio measured side by side in one run,
printed with the machine it ran on and the command that produced it, and end in one machine-readable
``RESULT key=value ...`` line (the smoke test and any CI tracking parse it). Timing here interleaves the
contenders round by round, so a load change on a shared machine hits both sides of a ratio alike.

The scripts are run as ``.venv/bin/python bench/NAME.py``; this module is imported from the same folder.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `engine`, `stream`, `export` importable
    sys.path.insert(0, str(REPO))


# --- machine ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, CPU model, load, library versions, date."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": usable_cores(),
        "cpu": cpu_model(),
        "load_1m": round(load[0], 2),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "av": _version("av"),
    }


def command_line() -> str:
    """The command that produced the figures, as a user would type it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def print_header(title: str) -> dict[str, Any]:
    """Print the benchmark title, the machine and the command; returns the machine dict."""
    m = machine()
    print(f"# {title}")
    print(f"date {m['date_utc']}; machine: {m['cores']} cores, {m['cpu']}; load(1m) {m['load_1m']}")
    print(f"python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, "
          f"av {m['av']}")
    print(f"command: {command_line()}")
    print()
    return m


def cache_dir(name: str) -> Path:
    """A persistent cache folder for slow-to-make artefacts (exported ONNX graphs, bundles, clips).

    ``$DSANET_BENCH_CACHE`` or ``<repo>/.cache/bench``; falls back to the temp folder if not writable.
    """
    root = Path(os.environ.get("DSANET_BENCH_CACHE") or REPO / ".cache" / "bench")
    try:
        (root / name).mkdir(parents=True, exist_ok=True)
        return root / name
    except OSError:
        p = Path(tempfile.gettempdir()) / "dsanet-bench" / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def set_threads(n: int) -> None:
    """Give torch the same intra-op thread count as ONNX Runtime gets (fair ratios)."""
    import torch

    torch.set_num_threads(int(n))


# --- timing -----------------------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample."""
    xs = sorted(samples)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50), "p95": percentile(samples, 95), "mean": sum(samples) / len(samples),
            "n": float(len(samples))}


def time_interleaved(fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 2,
                     max_seconds: float | None = None) -> dict[str, list[float]]:
    """Wall-clock seconds per call of each function, alternating them call by call.

    Interleaving matters on a shared machine: a burst of load from elsewhere lands on every contender
    instead of on whichever happened to run during it. Stops early (at least 3 rounds) after
    ``max_seconds``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    t_start = time.monotonic()
    for i in range(iters):
        order = list(fns.items()) if i % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
        if max_seconds is not None and i >= 2 and time.monotonic() - t_start > max_seconds:
            break
    return out


# --- output -----------------------------------------------------------------------------------------
def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -digits):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table (pastes into BENCHMARKS.md as is)."""
    cells = [[fmt(c, digits) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    out = [line(list(headers)), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def result_line(**values: Any) -> str:
    """``RESULT key=value ...``: one line, no spaces inside values (floats to 4 significant digits)."""
    parts = []
    for k, v in values.items():
        if isinstance(v, bool):
            s = "1" if v else "0"
        elif isinstance(v, float):
            s = "nan" if math.isnan(v) else f"{v:.4g}"
        else:
            s = str(v).replace(" ", "_")
        parts.append(f"{k}={s}")
    return "RESULT " + " ".join(parts)


def parse_result(text: str) -> dict[str, str]:
    """The key/value pairs of the last ``RESULT`` line in ``text`` (empty if there is none)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {}
    return dict(p.split("=", 1) for p in lines[-1].split()[1:] if "=" in p)


# --- the live service, driven in-process (memory, pipeline, latency) -----------------------------------
def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; ru_maxrss is a peak, not a level)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (the service runs in-process)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def tiny_bundle(encoder_int8: bool = False) -> Path:
    """The tiny-CLIP bundle (real head architecture, random weights), built once into the bench cache."""
    from export.tiny_bundle import build_tiny_bundle

    out = cache_dir("bundles") / ("tiny-int8" if encoder_int8 else "tiny")
    if not (out / "bundle.json").is_file():
        build_tiny_bundle(out, encoder_int8=encoder_int8, force=True)
    return out


def vitb16_bundle(encoder_int8: bool = False) -> Path:
    """A bundle with the full CLIP ViT-B/16 image tower (random weights) and the DSANet head, cached.

    Speed and memory do not depend on the weight values; no torch weights are stored (ONNX only).
    """
    out = cache_dir("bundles") / ("vitb16-int8" if encoder_int8 else "vitb16")
    if (out / "bundle.json").is_file():
        return out
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from engine.clip import resolve_clip_dir
    from engine.model import DSANetConfig, build_model, text_width_of
    from engine.preprocess import Preprocessing
    from export.bundle_writer import ExportOptions, write_bundle

    clip = resolve_clip_dir("tiny")
    torch.manual_seed(0)
    head = build_model(DSANetConfig(text_width=text_width_of(clip)), clip).eval().inference_head()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=16, projection_dim=512, hidden_act="quick_gelu")).eval()
    opts = ExportOptions(name=out.name, encoder_int8=encoder_int8, torch_weights=False, snippet_fps=30.0,
                         clip="vit-b-16 (random weights, benchmark)", tiny_clip=False, source={"preset": "ucf"})
    write_bundle(head, vision, out, Preprocessing.from_clip_dir(clip), opts, force=True)
    return out


def vitb16_head_int8_bundle(encoder_int8: bool = False) -> Path:
    """``vitb16_bundle`` plus a dynamic-INT8 head (``with_head_int8``), cached: what the INT8 head costs."""
    return with_head_int8(vitb16_bundle(encoder_int8))


def with_head_int8(base: Path) -> Path:
    """A copy of bundle ``base`` (as ``<name>-head-int8`` beside it, cached) that also ships a dynamic-INT8
    ``head.int8.onnx``, which the ONNX Runtime runner then uses.

    Cost only: a benchmark bundle has random weights and no test features to gate the INT8 head on (what
    ``dsanet export --head-int8`` does), so ``parity.head_int8`` records that it was not gated.
    """
    import json
    import shutil

    from engine.bundle import HEAD_INT8_ONNX, sha256_file
    from export.onnx_export import quantize_head_int8

    out = base.with_name(base.name + "-head-int8")
    if (out / "bundle.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    meta = json.loads((tmp / "bundle.json").read_text())
    quantize_head_int8(tmp / meta["head"]["file"], tmp / HEAD_INT8_ONNX)
    meta["name"] = out.name
    meta["head"]["int8_file"] = HEAD_INT8_ONNX
    meta["files"][HEAD_INT8_ONNX] = {"sha256": sha256_file(tmp / HEAD_INT8_ONNX),
                                     "bytes": (tmp / HEAD_INT8_ONNX).stat().st_size}
    meta.setdefault("parity", {})["head_int8"] = {
        "quantization": "int8-dynamic", "data": "none: benchmark bundle with random weights, cost only, not gated",
        "passed": True}
    (tmp / "bundle.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int = 25, seed: int = 0,
              events: Sequence[Any] = ()) -> Path:
    """A generated H.264 scene (``export.demo.video``), cached by name."""
    from export.demo.video import write_video

    if not path.is_file():
        write_video(path, seconds, events, width, height, fps=fps, seed=seed)
    return path


def service_config(bundle: Path, clips: Sequence[Path], workdir: Path, *, threads: int | None = None,
                   window: int = 64, lookahead: int = 2, precision: str = "fp32", events: dict[str, Any] | None = None,
                   loop: bool = True, realtime: bool = True, metrics_port: int | None = None) -> Any:
    """A validated ``DeploymentConfig``: one looping file camera per clip, a jsonl sink, ONNX Runtime CPU."""
    from stream.config import DeploymentConfig

    data: dict[str, Any] = {
        "cameras": [{"name": f"cam{i:02d}", "url": Path(c).resolve().as_uri(), "loop": loop, "realtime": realtime}
                    for i, c in enumerate(clips)],
        "model": {"bundle": str(bundle), "runtime": "onnxruntime", "device": "cpu", "precision": precision,
                  "threads": threads},
        "window": {"length": window, "lookahead": lookahead},
        "sinks": [{"type": "jsonl", "path": str(workdir / "events.jsonl")}],
        "spool": {"directory": str(workdir / "spool")},
        "evidence": {"enabled": False, "directory": str(workdir / "evidence")},
        # the feedback store records like a real deployment's, but into the run's folder, not ./site-data
        "feedback": {"directory": str(workdir / "site-data")},
        "metrics": {"enabled": metrics_port is not None, "port": metrics_port or 0},
        "logging": {"level": "WARNING"},
    }
    if events:
        data["events"] = events
    return DeploymentConfig.model_validate(data)


def quiet_logs() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    for name in ("stream", "engine", "libav"):
        logging.getLogger(name).setLevel(logging.WARNING)


def dropped_total(svc: Any) -> float:
    """Every item a running Service dropped so far (``dsanet_dropped_total``, all stages and cameras)."""
    total = 0.0
    for metric in svc.metrics.dropped_c.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                total += s.value
    return total
