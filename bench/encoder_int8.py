"""CLIP image encoder: dynamic INT8 (what ships) vs static calibrated QDQ INT8, beside fp32.

Why: the encoder is most of a camera's CPU with a full-size tower. Static INT8 drops the per-call
activation min/max of dynamic INT8; whether that is faster on this CPU, and whether it keeps the
embedding cosine >= 0.995 against fp32, decides which the exporter keeps. Calibration: 16 frames of the
generated camera scenes (``bench/scenes.py``, busy and still, two seeds) through the service's
preprocessing; evaluation on *other* frames (other seeds) plus the exporter's parity images, so the
gate is not measured on the calibration set.

Models: ``tiny`` (the tiny random CLIP) and ``vitb16`` (ViT-B/16-shaped, random weights; fp32 and dynamic
INT8 graphs come from the bench bundles). Images/s = batch / p50 latency, the three interleaved call by
call, same thread count. Random weights do not have real CLIP's activation outliers, so the cosine of a
real checkpoint must be checked again at export (the exporter's parity gate does that).

    .venv/bin/python bench/encoder_int8.py --quick          # tiny and ViT-B/16, batch 8
    .venv/bin/python bench/encoder_int8.py --models tiny    # seconds
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
    summary,
    table,
    time_interleaved,
    tiny_bundle,
    vitb16_bundle,
)
from encoder import cosines, ort_session  # noqa: E402
from scenes import Scene  # noqa: E402

MIN_COSINE = 0.995


def scene_frames(seeds: list[int], per_scene: int, w: int = 640, h: int = 360) -> list[np.ndarray]:
    out = []
    for seed in seeds:
        for kind in ("busy", "still"):
            sc = Scene(w, h, 25, kind, seed)
            # still scene: include frames with its crossing object (9-11 s of each 20 s)
            idx = np.linspace(0, 24 * 20 - 1, per_scene).astype(int) if kind == "busy" else \
                np.linspace(9 * 25, 11 * 25 - 1, per_scene).astype(int)
            out += [sc.frame(int(i)) for i in idx]
    return out


def graphs(model: str, calib: np.ndarray, size: int, say: Any = print) -> dict[str, Path]:
    """fp32, dynamic INT8 and static INT8 ONNX paths (static made once into the bench cache)."""
    from export.encoder_int8 import quantize_encoder_static

    b32 = tiny_bundle(False) if model == "tiny" else vitb16_bundle(False)
    b8 = tiny_bundle(True) if model == "tiny" else vitb16_bundle(True)
    static = cache_dir(f"encoder-static-{model}") / "encoder.qdq.onnx"
    if not static.is_file() or static.stat().st_mtime < (b32 / "encoder.onnx").stat().st_mtime:
        say(f"calibrating static INT8 for {model} on {len(calib)} images (cached in {static.parent})...")
        t0 = time.monotonic()
        tmp = static.with_suffix(".tmp.onnx")
        quantize_encoder_static(b32 / "encoder.onnx", tmp, calib)
        tmp.replace(static)
        say(f"  done in {time.monotonic() - t0:.0f} s")
    return {"fp32": b32 / "encoder.onnx", "dynamic": b8 / "encoder.onnx", "static": static}


def bench_model(model: str, batches: list[int], threads: int, iters: int, budget: float) -> tuple[list[list[Any]],
                                                                                                   dict[str, float]]:
    from engine.preprocess import preprocess_frames
    from export.parity import parity_images

    size = 224 if model == "vitb16" else int(__import__("json").loads(
        (tiny_bundle() / "bundle.json").read_text())["preprocessing"]["size"])
    calib = preprocess_frames(scene_frames([11, 12], 4), size=size)
    held = np.concatenate([preprocess_frames(scene_frames([21, 22], 3), size=size), parity_images(size)])
    paths = graphs(model, calib, size)
    sess = {k: ort_session(p, threads) for k, p in paths.items()}
    emb = {k: s.run(None, {"pixel_values": held})[0] for k, s in sess.items()}
    cos = {k: cosines(emb[k], emb["fp32"]) for k in ("dynamic", "static")}
    mb = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    print(f"{model}: fp32 {mb['fp32']:.0f} MB, dynamic {mb['dynamic']:.0f} MB, static {mb['static']:.0f} MB; "
          f"cosine vs fp32 on {len(held)} held-out images: dynamic min {cos['dynamic'].min():.5f} "
          f"mean {cos['dynamic'].mean():.5f}, static min {cos['static'].min():.5f} mean {cos['static'].mean():.5f}")
    rows = []
    best: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for b in batches:
        x = np.concatenate([held] * (b // len(held) + 1))[:b] + 0.01 * rng.standard_normal((b, 3, size, size),
                                                                                           dtype=np.float32)
        fns = {k: (lambda s=s, x=x: s.run(None, {"pixel_values": x})) for k, s in sess.items()}
        t = time_interleaved(fns, iters=iters, warmup=1, max_seconds=budget)
        ips = {k: b / summary(v)["p50"] for k, v in t.items()}
        for k, v in ips.items():
            best[k] = max(best.get(k, 0.0), v)
        rows.append([model, b, ips["fp32"], ips["dynamic"], ips["static"], ips["dynamic"] / ips["fp32"],
                     ips["static"] / ips["dynamic"], int(summary(t["fp32"])["n"])])
    figs = {"cos_dynamic_min": float(cos["dynamic"].min()), "cos_static_min": float(cos["static"].min()),
            "ips_fp32": best["fp32"], "ips_dynamic": best["dynamic"], "ips_static": best["static"]}
    return rows, figs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 8 only, few calls")
    ap.add_argument("--models", default="tiny,vitb16", help="comma list of tiny,vitb16")
    ap.add_argument("--batches", default=None, help="comma list (default 1,8; quick 8)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the service default)")
    ap.add_argument("--iters", type=int, default=None)
    args = ap.parse_args(argv)
    m = print_header("CLIP image encoder: fp32 vs dynamic INT8 vs static (QDQ) INT8")
    batches = [int(v) for v in args.batches.split(",")] if args.batches else ([8] if args.quick else [1, 8])
    all_rows: list[list[Any]] = []
    out: dict[str, Any] = {"threads": args.threads, "load_1m": m["load_1m"]}
    for name in [s.strip() for s in args.models.split(",") if s.strip()]:
        if name not in ("tiny", "vitb16"):
            ap.error(f"--models: unknown model {name!r}")
        iters = args.iters or ((3 if args.quick else 8) if name == "vitb16" else 30)
        rows, f = bench_model(name, batches, args.threads, iters, 20.0 if args.quick else 60.0)
        all_rows += rows
        keep = "static" if f["ips_static"] > f["ips_dynamic"] and f["cos_static_min"] >= MIN_COSINE else "dynamic"
        out.update({f"{name}_{k}": v for k, v in f.items()})
        out[f"{name}_static_vs_dynamic"] = f["ips_static"] / f["ips_dynamic"]
        out[f"{name}_keep"] = keep
    print()
    print(table(["model", "batch", "fp32 img/s", "dynamic INT8 img/s", "static INT8 img/s", "dynamic/fp32",
                 "static/dynamic", "calls"], all_rows, digits=2))
    print(f"\nkeep: the faster INT8 whose min cosine vs fp32 >= {MIN_COSINE} on held-out images")
    print()
    print(result_line(**out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
