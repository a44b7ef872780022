"""DSANet head: ONNX Runtime (CPU) vs the same torch module in eager mode, side by side.

Why: the service runs ``head.onnx`` on ONNX Runtime by default on CPU because it should be much
faster than torch eager for the same weights (target: >= 3x at W=256, B=8). This measures it:
latency p50/p95 of one head call for B in {1, 8, 32} windows (cameras) of W in {64, 256} snippets,
both backends with the same intra-op thread count, calls interleaved.

The head is the real DSANet inference graph (UCF layout) on the tiny CLIP text tower: the head's cost
does not depend on the text tower (its class features are a constant buffer). The ONNX graph is made by
``export.onnx_export.export_head_onnx``, as ``dsanet export`` makes it.

Anchor: the official DSANet inference forward (lessiYin/DSANet ``src/model.py``, torch eager, W=256,
B=1) is not in this repository, so its timing is a *recorded* constant (``OFFICIAL_ANCHOR``: figure,
date, machine, how it was measured) printed beside ours measured live, with the ratios. Because a
recorded figure and a live one come from different moments of a shared machine, the anchor also carries
the ratio measured side by side in one process (official vs our head, same weights and inputs), which
is the figure to trust.

``--torch-threads`` times the torch runtime's head and a ViT-B/16-shaped encoder at 1 and 2 intra-op
threads, interleaved, to back the torch runtime's default thread count (``engine.runtimes.torch.default_cpu_threads``).

``--profile`` adds per-operator profiles of both backends at W=256, B=8 (ORT's own profiler and
``torch.profiler``) and ORT variants (optimisation level, threads) so a missed target can be explained.

    .venv/bin/python bench/head.py            # full
    .venv/bin/python bench/head.py --quick    # about a minute
"""

from __future__ import annotations

import argparse
import json
import sys
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

# The official forward, recorded (not re-run here: the official code is not part of this repository).
OFFICIAL_ANCHOR: dict[str, Any] = {
    "what": "official DSANet inference forward (src/model.py DSANet.forward, eval, no_grad, DNP_use=False), "
            "torch eager, W=256, B=1",
    # issue 13: "measured side by side on one quiet 2-core machine"
    "quiet": {"ms": {1: 61.5, 2: 35.0}, "date": "before 2026-12-02 (issue 13)", "machine": "2-core AMD EPYC VM, quiet",
              "how": "official src/ run from a throwaway script; same thread count as ours"},
    # this branch: /work/coord/scratch/compare.py (official vs our head, same weights and inputs,
    # interleaved call by call, 30 rounds); machine loaded by parallel work, so only the ratios travel
    "side_by_side": {"date": "2026-12-02", "machine": "2-core AMD EPYC VM, loaded (load 5-18)",
                     "how": "official src/ (commit 1417406) imported as is, clip.load/DistanceAdj('cuda') patched "
                            "to CPU; interleaved with our DSANetHead on the same weights; ratio of medians",
                     # 1 thread: process-CPU-time p50 ratio (robust under load): 0.94 (main before this
                     # change: 0.98-1.00). 2 threads: wall p50 ratio 1.05 (main 1.06), both sides ~10x
                     # slower than at 1 thread (torch's 2-thread pathology on this VM, see BENCHMARKS.md).
                     "ours_over_official": {1: 0.94, 2: 1.05}},
}


def official_ms(threads: int) -> float | None:
    return OFFICIAL_ANCHOR["quiet"]["ms"].get(int(threads))


def build_head(seed: int = 0) -> Any:
    """DSANetHead (UCF defaults, tiny CLIP text tower), eval mode, seeded weights."""
    import torch

    from engine.clip import resolve_clip_dir
    from engine.model import DSANetConfig, build_model, text_width_of

    clip = resolve_clip_dir("tiny")
    torch.manual_seed(seed)
    model = build_model(DSANetConfig(text_width=text_width_of(clip)), clip)
    return model.eval().inference_head().eval()


def export_cached(head: Any, out: Path) -> Path:
    """head.onnx in the bench cache; re-exported when the cached graph disagrees with these weights."""
    import torch

    from export.onnx_export import export_head_onnx

    path = out / "head.onnx"
    width = int(head.config.embed_dim)
    if path.exists():
        x = np.random.default_rng(1).standard_normal((2, 32, width), dtype=np.float32)
        lens = np.array([32, 20], dtype=np.int64)
        try:
            got = ort_session(path, 1).run(["scores"], {"features": x, "lengths": lens})[0]
            with torch.no_grad():
                ref = head(torch.from_numpy(x), torch.from_numpy(lens))[0].numpy()
            if np.abs(got - ref).max() < 1e-4:
                return path
        except Exception:  # a stale or broken cache: export again
            pass
    export_head_onnx(head, path, width, int(head.config.visual_length), max_batch=64)
    return path


def ort_session(path: Path, threads: int, level: str = "all", profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    # no busy-waiting pool threads between calls: they would steal the CPU from the interleaved torch call
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def inputs(b: int, w: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((b, w, width), dtype=np.float32)
    return x, np.full(b, w, dtype=np.int64)


def ort_profile(path: Path, threads: int, b: int, w: int, width: int, iters: int, prefix: str) -> list[tuple[str, float, float]]:
    """(op type, total ms per call, share) from ORT's profiler, biggest first."""
    sess = ort_session(path, threads, profile_prefix=prefix)
    x, lens = inputs(b, w, width)
    for _ in range(2):
        sess.run(None, {"features": x, "lengths": lens})
    for _ in range(iters):
        sess.run(None, {"features": x, "lengths": lens})
    prof = sess.end_profiling()
    events = json.loads(Path(prof).read_text())
    Path(prof).unlink(missing_ok=True)
    per_op: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(ev.get("dur", 0)) / 1000.0
    runs = iters + 2
    total = sum(per_op.values()) or 1.0
    return sorted(((k, v / runs, v / total) for k, v in per_op.items()), key=lambda r: -r[1])


def torch_profile(head: Any, b: int, w: int, width: int, iters: int) -> list[tuple[str, float, float]]:
    """(aten op, self CPU ms per call, share) from torch.profiler, biggest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x, lens = inputs(b, w, width)
    tx, tl = torch.from_numpy(x), torch.from_numpy(lens)
    with torch.inference_mode():
        head(tx, tl)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                head(tx, tl)
    rows = [(e.key, e.self_cpu_time_total / 1000.0 / iters) for e in prof.key_averages()]
    total = sum(v for _, v in rows) or 1.0
    return sorted(((k, v, v / total) for k, v in rows), key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (about a minute)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: all cores)")
    ap.add_argument("--batches", default=None, help="comma list of B (default 1,8,32)")
    ap.add_argument("--windows", default=None, help="comma list of W (default 64,256)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per backend and case")
    ap.add_argument("--profile", action="store_true", help="per-op profiles and ORT variants at W=256, B=8")
    ap.add_argument("--torch-threads", action="store_true",
                    help="torch head and ViT-B/16-shaped encoder at 1 vs 2 intra-op threads")
    args = ap.parse_args(argv)

    m = print_header("DSANet head: ONNX Runtime CPU vs torch eager (same weights)")
    threads = args.threads or usable_cores()
    set_threads(threads)
    batches = [int(v) for v in args.batches.split(",")] if args.batches else ([1, 8] if args.quick else [1, 8, 32])
    windows = [int(v) for v in args.windows.split(",")] if args.windows else [64, 256]
    iters = args.iters or (5 if args.quick else 15)
    budget = 6.0 if args.quick else 25.0  # seconds per case at most

    import torch

    head = build_head()
    width = int(head.config.embed_dim)
    path = export_cached(head, cache_dir("head"))
    sess = ort_session(path, threads)
    print(f"threads: {threads} intra-op for both (torch.get_num_threads()={torch.get_num_threads()}); "
          f"ORT graph optimisation ORT_ENABLE_ALL; head graph {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"head: DSANet UCF layout, visual_length {head.config.visual_length}, {head.config.num_classes} classes\n")

    rows = []
    ratios: dict[tuple[int, int], float] = {}
    for w in windows:
        for b in batches:
            x, lens = inputs(b, w, width)
            tx, tl = torch.from_numpy(x), torch.from_numpy(lens)

            def run_torch(tx: Any = tx, tl: Any = tl) -> None:
                with torch.inference_mode():
                    head(tx, tl)

            def run_ort(x: np.ndarray = x, lens: np.ndarray = lens) -> None:
                sess.run(None, {"features": x, "lengths": lens})

            t = time_interleaved({"torch": run_torch, "ort": run_ort}, iters=iters, warmup=1, max_seconds=budget)
            st, so = summary(t["torch"]), summary(t["ort"])
            ratio = st["p50"] / so["p50"]
            ratios[(w, b)] = ratio
            rows.append([w, b, st["p50"] * 1e3, st["p95"] * 1e3, so["p50"] * 1e3, so["p95"] * 1e3, ratio,
                         b / so["p50"], int(st["n"])])
    print(table(["W", "B", "torch p50 ms", "torch p95 ms", "ORT p50 ms", "ORT p95 ms", "ORT speed-up (p50)",
                 "ORT windows/s", "calls"], rows, digits=2))
    key = (256, 8) if (256, 8) in ratios else next(iter(ratios))
    print(f"\nORT vs torch eager at W={key[0]}, B={key[1]}: {ratios[key]:.2f}x (target >= 3x: "
          f"{'met' if ratios[key] >= 3 else 'MISSED'})")

    extra: dict[str, Any] = anchor_section(rows, threads)
    if args.torch_threads:
        extra.update(torch_threads_section(head, width, quick=args.quick))
    if args.profile:
        extra.update(profile_section(head, path, threads, width, quick=args.quick))

    print()
    print(result_line(ratio_ort_vs_torch=ratios[key], W=key[0], B=key[1], threads=threads, cores=m["cores"],
                      **{f"ratio_w{w}_b{b}": r for (w, b), r in ratios.items()}, **extra))
    return 0


def anchor_section(rows: list[list[Any]], threads: int) -> dict[str, Any]:
    """Our W=256, B=1 row beside the recorded official forward at the same thread count."""
    ours = next((r for r in rows if r[0] == 256 and r[1] == 1), None)
    ref = official_ms(threads)
    print(f"\n## Anchor: {OFFICIAL_ANCHOR['what']}\n")
    q, s = OFFICIAL_ANCHOR["quiet"], OFFICIAL_ANCHOR["side_by_side"]
    if ours is None or ref is None:
        print(f"(needs W=256, B=1 in the run and threads 1 or 2; recorded figures: {q['ms']})")
        return {}
    side = s["ours_over_official"].get(int(threads))
    table_rows = [["official forward (RECORDED, not run here)", ref, "1.00", f"{q['date']}; {q['machine']}"],
                  ["our head, torch eager (live)", ours[2], f"{ours[2] / ref:.2f}", "this run"],
                  ["our head, ONNX Runtime (live)", ours[4], f"{ours[4] / ref:.2f}", "this run"]]
    print(table(["", "p50 ms", "x official", "when / where"], table_rows, digits=2))
    print(f"recorded official figure: {q['how']}. Live figures on another (or a loaded) machine make the "
          "live/recorded ratio indicative only;")
    print(f"side-by-side ratio ours/official at {threads} thread(s), same process ({s['date']}, {s['machine']}): "
          f"{side if side is not None else 'not recorded'}")
    return {"official_ms_recorded": ref, "torch_vs_official_recorded": ours[2] / ref,
            "ort_vs_official_recorded": ours[4] / ref}


def encoder_module_vitb16() -> Any:
    """A ViT-B/16-shaped CLIP image tower with random weights (cost only), wrapped as the torch runtime does."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from engine.runtimes.torch import make_encoder_module

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, projection_dim=512)
    return make_encoder_module(CLIPVisionModelWithProjection(cfg).eval())


def torch_threads_section(head: Any, width: int, quick: bool) -> dict[str, Any]:
    """torch eager at 1 vs 2 intra-op threads, interleaved call by call: head (W=256, B=1) and encoder (B=1)."""
    import torch

    enc = encoder_module_vitb16()
    x, lens = inputs(1, 256, width)
    tx, tl = torch.from_numpy(x), torch.from_numpy(lens)
    img = torch.zeros((1, 3, 224, 224))
    fns = {}
    for n in (1, 2):
        def run_head(n: int = n) -> None:
            torch.set_num_threads(n)
            with torch.inference_mode():
                head(tx, tl)

        def run_enc(n: int = n) -> None:
            torch.set_num_threads(n)
            with torch.inference_mode():
                enc(img)
        fns[f"head {n}t"], fns[f"encoder {n}t"] = run_head, run_enc
    t = time_interleaved(fns, iters=4 if quick else 12, warmup=1, max_seconds=30 if quick else 120)
    p50 = {k: summary(v)["p50"] for k, v in t.items()}
    print("\n## torch eager: 1 vs 2 intra-op threads (interleaved)\n")
    print(table(["part", "1 thread p50 ms", "2 threads p50 ms", "2t / 1t"],
                [[part, p50[f"{part} 1t"] * 1e3, p50[f"{part} 2t"] * 1e3, p50[f"{part} 2t"] / p50[f"{part} 1t"]]
                 for part in ("head", "encoder")], digits=2))
    return {"torch_head_2t_over_1t": p50["head 2t"] / p50["head 1t"],
            "torch_encoder_2t_over_1t": p50["encoder 2t"] / p50["encoder 1t"]}


def profile_section(head: Any, path: Path, threads: int, width: int, quick: bool) -> dict[str, Any]:
    """ORT variants and per-op profiles at W=256, B=8: where does the time go."""
    import tempfile

    b, w = 8, 256
    iters = 4 if quick else 15
    x, lens = inputs(b, w, width)
    variants: dict[str, Any] = {}
    for level in ("disable", "basic", "all"):
        s = ort_session(path, threads, level)
        variants[f"ORT opt={level}, {threads} threads"] = (lambda s=s: s.run(None, {"features": x, "lengths": lens}))
    if threads > 1:
        s1 = ort_session(path, 1)
        variants["ORT opt=all, 1 thread"] = lambda: s1.run(None, {"features": x, "lengths": lens})
    # what a cheaper head graph would buy: INT8 dynamic quantisation of MatMul/Gemm, as for the encoder
    q_path = path.with_name("head.int8.onnx")
    if not q_path.exists() or q_path.stat().st_mtime < path.stat().st_mtime:
        from export.onnx_export import quantize_head_int8

        quantize_head_int8(path, q_path)
    sq = ort_session(q_path, threads)
    variants[f"ORT INT8-dynamic head, {threads} threads"] = lambda: sq.run(None, {"features": x, "lengths": lens})
    ref = ort_session(path, threads).run(None, {"features": x, "lengths": lens})
    got = sq.run(None, {"features": x, "lengths": lens})
    q_diff = float(np.abs(got[0] - ref[0]).max())
    t = time_interleaved(variants, iters=iters, warmup=1, max_seconds=20 if quick else 60)
    print("\n## ORT variants at W=256, B=8\n")
    print(table(["variant", "p50 ms", "p95 ms"], [[k, summary(v)["p50"] * 1e3, summary(v)["p95"] * 1e3]
                                                  for k, v in t.items()], digits=2))
    print(f"INT8 head: max |score - fp32 score| = {q_diff:.2e} (random features; the bundle's head parity "
          f"tolerance is 1e-4)")
    with tempfile.TemporaryDirectory() as tmp:
        ops = ort_profile(path, threads, b, w, width, iters, str(Path(tmp) / "ort"))
    print("\n## ORT profile (kernel time per call, by op type), W=256, B=8\n")
    print(table(["op", "ms/call", "share"], [[k, v, s] for k, v, s in ops[:12]], digits=3))
    tops = torch_profile(head, b, w, width, iters)
    print("\n## torch eager profile (self CPU per call), W=256, B=8\n")
    print(table(["aten op", "ms/call", "share"], [[k, v, s] for k, v, s in tops[:12]], digits=3))
    p50 = {k: summary(v)["p50"] for k, v in t.items()}
    fp32 = p50[f"ORT opt=all, {threads} threads"]
    return {"ort_top_op": ops[0][0] if ops else "-", "torch_top_op": tops[0][0] if tops else "-",
            "int8_head_speedup": fp32 / p50[f"ORT INT8-dynamic head, {threads} threads"],
            "int8_head_max_score_diff": q_diff}


if __name__ == "__main__":
    sys.exit(main())
