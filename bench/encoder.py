"""CLIP image encoder: ONNX Runtime fp32 vs ONNX Runtime INT8 (dynamic) vs torch eager, images/s.

Why: the encoder is the service's dominant cost (one image per snippet per camera), so its throughput
decides how many cameras a CPU sustains. Two architectures:

* ``vitb16``: the full CLIP ViT-B/16 image tower (768 wide, 12 layers, 224 px, 16 px patches, 512-d
  projection), random weights: speed does not depend on the values. Exported once to ONNX (~350 MB)
  and cached under the bench cache (``$DSANET_BENCH_CACHE`` or ``.cache/bench``), INT8 too.
* ``tiny``: the tiny random CLIP tower the tests and the demo use.

For each, images/s at batch 1/8/32 (quick: fewer), the three backends interleaved with the same thread
count, and the cosine between INT8 and fp32 embeddings (per image, on preprocessed synthetic scenes
plus noise, the exporter's parity inputs). INT8 = ``export.onnx_export.quantize_encoder_int8``
(dynamic weight quantisation of MatMul/Gemm, what ``dsanet export --int8`` ships).

    .venv/bin/python bench/encoder.py             # full
    .venv/bin/python bench/encoder.py --quick     # about a minute once the ViT-B/16 graphs are cached
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cache_dir,
    print_header,
    result_line,
    set_threads,
    summary,
    table,
    time_interleaved,
    usable_cores,
)

VITB16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              image_size=224, patch_size=16, projection_dim=512, hidden_act="quick_gelu")


def build_vision(model: str, seed: int = 0) -> Any:
    """CLIPVisionModelWithProjection (eval) for 'vitb16' (random weights) or 'tiny' (the tiny CLIP)."""
    import torch

    if model == "tiny":
        from engine.clip import load_vision_model, resolve_clip_dir

        return load_vision_model(resolve_clip_dir("tiny")).eval()
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**VITB16)).eval()


def export_cached(model: str, encoder: Any, size: int, say: Any = print) -> tuple[Path, Path]:
    """(fp32, int8) ONNX paths in the cache; exported/quantised when missing or stale for these weights."""
    import torch

    from export.onnx_export import export_encoder_onnx, quantize_encoder_int8

    out = cache_dir(f"encoder-{model}")
    fp32, int8 = out / "encoder.onnx", out / "encoder.int8.onnx"
    probe = np.random.default_rng(3).standard_normal((1, 3, size, size), dtype=np.float32)
    fresh = False
    if fp32.exists():
        try:
            got = ort_session(fp32, 1).run(None, {"pixel_values": probe})[0]
            with torch.no_grad():
                ref = encoder(torch.from_numpy(probe)).numpy()
            fresh = float(np.abs(got - ref).max()) < 1e-3
        except Exception:  # broken or foreign cache: export again
            fresh = False
    if not fresh:
        say(f"exporting the {model} encoder to ONNX (cached in {out}; first run only)...")
        t0 = time.monotonic()
        export_encoder_onnx(encoder, fp32, size, max_batch=64)
        say(f"  exported in {time.monotonic() - t0:.0f} s")
        int8.unlink(missing_ok=True)
    if not int8.exists():
        quantize_encoder_int8(fp32, int8)
    return fp32, int8


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # fair to the interleaved torch
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def bench_model(model: str, batches: list[int], threads: int, iters: int, budget: float,
                torch_too: bool = True) -> tuple[list[list[Any]], dict[str, float]]:
    import torch

    from engine.runtimes.torch import make_encoder_module
    from export.parity import parity_images

    vision = build_vision(model)
    size = int(vision.config.image_size)
    encoder = make_encoder_module(vision)
    fp32, int8 = export_cached(model, encoder, size)
    s32, s8 = ort_session(fp32, threads), ort_session(int8, threads)
    images = parity_images(size)
    e32 = s32.run(None, {"pixel_values": images})[0]
    e8 = s8.run(None, {"pixel_values": images})[0]
    with torch.no_grad():
        et = encoder(torch.from_numpy(images)).numpy()
    cos8 = cosines(e8, e32)
    cos32 = cosines(e32, et)
    params = sum(p.numel() for p in vision.parameters()) / 1e6
    print(f"{model}: {params:.1f} M parameters, {size} px; fp32 {fp32.stat().st_size / 1e6:.0f} MB, "
          f"INT8 {int8.stat().st_size / 1e6:.0f} MB; cosine INT8 vs fp32 min {cos8.min():.5f} mean "
          f"{cos8.mean():.5f}; ORT fp32 vs torch min {cos32.min():.6f}")

    rows = []
    best: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        tx = torch.from_numpy(x)

        def run_torch(tx: Any = tx) -> None:
            with torch.inference_mode():
                encoder(tx)

        fns = {"ort_fp32": lambda x=x: s32.run(None, {"pixel_values": x}),
               "ort_int8": lambda x=x: s8.run(None, {"pixel_values": x})}
        if torch_too:
            fns["torch"] = run_torch
        t = time_interleaved(fns, iters=iters, warmup=1, max_seconds=budget)
        ips = {k: b / summary(v)["p50"] for k, v in t.items()}
        for k, v in ips.items():
            best[k] = max(best.get(k, 0.0), v)
        rows.append([model, b, ips.get("torch", float("nan")), ips["ort_fp32"], ips["ort_int8"],
                     ips["ort_fp32"] / ips["torch"] if "torch" in ips else float("nan"),
                     ips["ort_int8"] / ips["ort_fp32"], int(summary(t["ort_fp32"])["n"])])
    figures = {"cos_int8_min": float(cos8.min()), "cos_int8_mean": float(cos8.mean()),
               "ips_ort_fp32": best["ort_fp32"], "ips_ort_int8": best["ort_int8"],
               "ips_torch": best.get("torch", float("nan"))}
    return rows, figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes and calls (about a minute, cached graphs)")
    ap.add_argument("--models", default="vitb16,tiny", help="comma list of vitb16,tiny (default both)")
    ap.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8,32; quick 1,8)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for every backend (default: all cores)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per backend and batch size")
    ap.add_argument("--no-torch", action="store_true", help="ONNX Runtime only (torch ViT-B/16 is slow)")
    args = ap.parse_args(argv)

    m = print_header("CLIP image encoder: ORT fp32 vs ORT INT8 (dynamic) vs torch eager")
    threads = args.threads or usable_cores()
    set_threads(threads)
    batches = [int(v) for v in args.batches.split(",")] if args.batches else ([1, 8] if args.quick else [1, 8, 32])
    iters = args.iters or (3 if args.quick else 10)
    budget = 15.0 if args.quick else 60.0
    models = [s.strip() for s in args.models.split(",") if s.strip()]
    for name in models:
        if name not in ("vitb16", "tiny"):
            ap.error(f"--models: unknown model {name!r} (expected vitb16 or tiny)")
    print(f"threads: {threads} intra-op for every backend; images/s = batch / p50 call latency\n")

    all_rows: list[list[Any]] = []
    figs: dict[str, dict[str, float]] = {}
    for name in models:
        n = iters if name == "vitb16" or args.iters else iters * 10  # tiny calls take milliseconds
        rows, f = bench_model(name, batches, threads, n, budget, torch_too=not args.no_torch)
        all_rows += rows
        figs[name] = f
    print()
    print(table(["model", "batch", "torch img/s", "ORT fp32 img/s", "ORT INT8 img/s", "fp32 ORT/torch",
                 "INT8/fp32", "calls"], all_rows, digits=2))
    print()
    for name, f in figs.items():
        print(f"{name}: best ORT fp32 {f['ips_ort_fp32']:.2f} img/s, INT8 {f['ips_ort_int8']:.2f} img/s "
              f"({f['ips_ort_int8'] / f['ips_ort_fp32']:.2f}x), torch {f['ips_torch']:.2f} img/s; "
              f"INT8 cosine min {f['cos_int8_min']:.5f}")
    out: dict[str, Any] = {"threads": threads, "cores": m["cores"]}
    for name, f in figs.items():
        out.update({f"{name}_{k}": v for k, v in f.items()})
        out[f"{name}_int8_vs_fp32"] = f["ips_ort_int8"] / f["ips_ort_fp32"]
    print()
    print(result_line(**out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
