"""Cameras per machine, measured by running: N looping real-time cameras, N raised until the service falls behind.

Why: a projection from per-call costs (what BENCHMARKS.md had) misses what only a running service shows:
queueing, batching, thread contention, the Python around the models. This starts the real service
(``stream.service.Service``, in-process) with a ViT-B/16-shaped bundle (random weights: cost does not
depend on the values; ``bench/common.py`` builds it once) on N looping real-time file cameras, 640x360
25 fps, camera-like generated clips (``bench/scenes.py``: ``busy`` street or ``still`` night scene), and
after a warm-up measures an interval. N is **sustained** when, over that interval, the lag (seconds from
a snippet's end to its score, sampled twice a second on every camera) has p95 <= one snippet
(0.533 s), nothing was dropped (``dsanet_dropped_total``), and at least 90% of the snippets due were
scored. Because one ViT-B/16 image alone takes 0.2-0.4 s on a small CPU, that latency bound can end
the search while the CPU is far from full, so each case also reports **keeps up**: the same test with
lag p95 <= two snippets, a service that keeps pace with its cameras at a bounded delay. The search doubles N from ``--start`` until a run fails, then bisects (``--quick``: shorter
intervals and one bisection step; the full run bisects to the exact count).

Beside each count: CPU seconds per camera-second split into **decode** (the same clip decoded alone,
as the reader decodes, for the frames the service decoded), **encoder** and **head** (CPU time of the
service's ``encoder-worker`` / ``head-worker`` threads, ``pthread_getcpuclockid``; ORT runs its calls in
those threads only when ``model.threads`` is 1, so the split comes from one more run at 1 thread when the
counts ran at another, e.g. the service's default) and **rest** (process CPU minus those:
readers' Python, RGB conversion and resize, window bookkeeping, events, metrics). And the **physical
limit**: the encoder's FLOPs per image (counted from the ViT-B/16 shape) against this CPU's GEMM
throughput, measured in the run at one thread: numpy's float32 matmul and ONNX Runtime's own ``MatMul``
(float32) and ``MatMulInteger`` (uint8 x int8, what the INT8 encoder's matmuls run on). The fp32 limit
takes the faster float32 kernel, the INT8 limit the INT8 kernel.

"After" runs: ``--set KEY=VALUE`` (dotted config path, YAML value, repeatable) sets any deployment config
key, e.g. ``--set scoring.adaptive_stride=4 --set still_gate.enabled=true``; ``--camera-set`` sets it in
every camera entry (per-camera override). A key this checkout's config does not know is reported as
``n/a`` (the counts are then not run) instead of failing.

The machine this runs on is usually shared: the header prints the load, and each run prints the CPU
share the service got (process CPU / wall); counts measured on a loaded machine are lower bounds.

    .venv/bin/python bench/capacity.py --quick                 # a few minutes once bundles are cached
    .venv/bin/python bench/capacity.py                         # full search, 60 s intervals
    .venv/bin/python bench/capacity.py --quick --set still_gate.enabled=true --set scoring.adaptive_stride=4
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cache_dir,
    cpu_seconds,
    dropped_total,
    print_header,
    quiet_logs,
    result_line,
    table,
    vitb16_bundle,
    vitb16_head_int8_bundle,
)
from scenes import clip_name, make_camera_clip  # noqa: E402

FPS = 25
W, H = 640, 360
SNIPPET_SECONDS = 16 / 30.0
SNIPPETS_PER_S = 30.0 / 16.0
VITB16 = dict(width=768, layers=12, mlp=3072, image=224, patch=16, proj=512)


# --- configuration ------------------------------------------------------------------------------------
def parse_sets(items: list[str]) -> list[tuple[list[str], Any]]:
    import yaml

    out = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set/--camera-set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip().split("."), yaml.safe_load(v)))
    return out


def _put(d: dict[str, Any], path: list[str], value: Any) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def build_config(bundle: Path, clips: list[Path], workdir: Path, threads: int | None,
                 sets: list[tuple[list[str], Any]], camera_sets: list[tuple[list[str], Any]]) -> Any:
    """A validated DeploymentConfig, or a string saying which override this checkout does not support."""
    from pydantic import ValidationError

    from stream.config import DeploymentConfig

    data: dict[str, Any] = {
        "cameras": [{"name": f"cam{i:02d}", "url": c.resolve().as_uri(), "loop": True, "realtime": True}
                    for i, c in enumerate(clips)],
        "model": {"bundle": str(bundle), "runtime": "onnxruntime", "device": "cpu", "threads": threads},
        "window": {"length": 64, "lookahead": 2},
        "sinks": [{"type": "jsonl", "path": str(workdir / "events.jsonl")}],
        "spool": {"directory": str(workdir / "spool")},
        "evidence": {"enabled": False, "directory": str(workdir / "evidence")},
        "metrics": {"enabled": False, "port": 0},
        "logging": {"level": "WARNING"},
    }
    for path, value in sets:
        _put(data, path, value)
    for cam in data["cameras"]:
        for path, value in camera_sets:
            _put(cam, path, value)
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        bad = [".".join(str(p) for p in e["loc"]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        if bad:
            return f"unsupported config key(s) on this checkout: {', '.join(sorted(set(bad)))}"
        raise SystemExit(f"--set/--camera-set: invalid config: {exc}") from None


def supported(sets: list[tuple[list[str], Any]], camera_sets: list[tuple[list[str], Any]]) -> str | None:
    """None when the overrides validate; else why not (for the n/a report)."""
    probe = cache_dir("capacity-clips") / "probe.mp4"
    probe.touch()
    cfg = build_config(Path("bundle"), [probe], cache_dir("capacity-run"), 1, sets, camera_sets)
    return cfg if isinstance(cfg, str) else None


# --- measurement --------------------------------------------------------------------------------------
def thread_cpu(names: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds so far of the live Python threads with these names (summed per name)."""
    out = dict.fromkeys(names, 0.0)
    for t in threading.enumerate():
        if t.name in out and t.ident is not None:
            try:
                out[t.name] += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (OSError, AttributeError):
                pass
    return out


def reused_total(svc: Any) -> float:
    """Embeddings reused instead of encoded: repeated frames (filled snippets) and still-gate reuses."""
    return float(svc.encoder.reused + getattr(svc.encoder, "gated", 0))


def run_once(bundle: Path, clips: list[Path], seconds: float, warmup: float, threads: int | None,
             sets: list[tuple[list[str], Any]], camera_sets: list[tuple[list[str], Any]]) -> dict[str, Any]:
    from stream.service import Service

    work = cache_dir("capacity-run")
    cfg = build_config(bundle, clips, work, threads, sets, camera_sets)
    assert not isinstance(cfg, str), cfg
    svc = Service(cfg, out=io.StringIO(), status_interval=0)
    svc.start()
    names = ("encoder-worker", "head-worker")
    try:
        # warm until every camera has a score (models loaded, first calls done), then ``warmup`` more
        t_start = time.monotonic()
        while time.monotonic() - t_start < 10 * warmup and \
                any(c.status.scored == 0 for c in svc.cameras.values()):
            time.sleep(0.5)
        time.sleep(warmup)
        items0 = (svc.encoder.items, svc.head.items)
        frames0 = sum(c.reader.stats.frames for c in svc.cameras.values())
        scored0 = sum(c.status.scored for c in svc.cameras.values())
        drop0, reuse0 = dropped_total(svc), reused_total(svc)
        th0, cpu0, t0 = thread_cpu(names), cpu_seconds(), time.monotonic()
        inf0 = _inference_sums(svc)
        lags: list[float] = []
        while time.monotonic() - t0 < seconds:
            time.sleep(0.5)
            lags += [c.status.lag for c in svc.cameras.values() if c.status.lag is not None]
        wall = time.monotonic() - t0
        cpu = cpu_seconds() - cpu0
        th = {k: v - th0[k] for k, v in thread_cpu(names).items()}
        inf = {k: v - inf0.get(k, 0.0) for k, v in _inference_sums(svc).items()}
        frames = sum(c.reader.stats.frames for c in svc.cameras.values()) - frames0
        scored = sum(c.status.scored for c in svc.cameras.values()) - scored0
        dropped = dropped_total(svc) - drop0
        reused = reused_total(svc) - reuse0
        enc_items, head_items = svc.encoder.items - items0[0], svc.head.items - items0[1]
    finally:
        svc.request_stop("benchmark done")
        svc.shutdown()
    n = len(clips)
    due = n * wall * SNIPPETS_PER_S
    p95 = float(np.percentile(lags, 95)) if lags else float("inf")
    kept = bool(lags) and dropped == 0 and scored >= 0.9 * due
    ok = kept and p95 <= SNIPPET_SECONDS
    keeps_up = kept and p95 <= 2 * SNIPPET_SECONDS
    return {"n": n, "wall": wall, "cpu": cpu, "enc_cpu": th["encoder-worker"], "head_cpu": th["head-worker"],
            "frames": frames, "scored": scored, "due": due, "dropped": dropped, "reused": reused,
            "lag_p50": float(np.percentile(lags, 50)) if lags else float("nan"), "lag_p95": p95, "ok": ok, "keeps_up": keeps_up,
            "enc_items": enc_items, "head_items": head_items, "inf_encoder": inf.get("encoder", float("nan")), "inf_head": inf.get("head", float("nan"))}


def _inference_sums(svc: Any) -> dict[str, float]:
    """Wall seconds inside model calls so far, per model (the service's dsanet_inference_seconds)."""
    out: dict[str, float] = {}
    for metric in svc.metrics.inference.collect():
        for s in metric.samples:
            if s.name.endswith("_sum"):
                out[s.labels.get("model", "?")] = out.get(s.labels.get("model", "?"), 0.0) + s.value
    return out


def decode_cpu_per_second(clip: Path, frames: int) -> float:
    """CPU seconds per second of video decoding ``frames`` frames of ``clip`` as the reader does."""
    import av

    done = 0
    t0 = time.process_time()
    while done < frames:
        with av.open(str(clip)) as c:
            for packet in c.demux(c.streams.video[0]):
                done += len(packet.decode())
                if done >= frames:
                    break
    return (time.process_time() - t0) / (done / FPS)


def search(label: str, bundle: Path, clips_of: Any, seconds: float, warmup: float, threads: int | None,
           start: int, max_n: int, bisect_steps: int, sets: Any, camera_sets: Any, say: Any = print,
           key: str = "ok", done: dict[int, dict] | None = None) -> tuple[int, list[dict]]:
    """Largest N whose run passes ``key`` (0 if even ``start`` fails; doubling then bisection). Returns
    (N, the runs it looked at). ``done`` (N -> run) reuses runs a search with another criterion made."""
    runs: list[dict] = []
    done = {} if done is None else done

    def trial(n: int) -> bool:
        if n in done:
            runs.append(done[n])
            return bool(done[n][key])
        r = run_once(bundle, clips_of(n), seconds, warmup, threads, sets, camera_sets)
        done[n] = r
        r["label"] = label
        runs.append(r)
        say(f"  {label}: N={n:3d} lag p50 {r['lag_p50']:.2f} s p95 {r['lag_p95']:.2f} s, dropped {r['dropped']:.0f}, "
            f"scored {r['scored']}/{r['due']:.0f} due, CPU share {r['cpu'] / r['wall']:.2f} cores, load "
            f"{os.getloadavg()[0]:.1f} -> {'OK' if r['ok'] else 'keeps up' if r.get('keeps_up') else 'behind'}")
        return bool(r[key])

    good, bad = 0, None
    n = start
    while n <= max_n:
        if trial(n):
            good = n
            if n == max_n:
                break
            n = min(n * 2, max_n)  # doubling past --max tries --max itself, so the answer is not capped below it
        else:
            bad = n
            break
    if bad is None:
        return good, runs
    steps = 0
    while bad - good > 1 and steps < bisect_steps:
        mid = (good + bad) // 2
        if mid == good:
            break
        if trial(mid):
            good = mid
        else:
            bad = mid
        steps += 1
    return good, runs


def direct_costs(bundle: Path, threads: int, calls: int = 3) -> tuple[float, float]:
    """(encoder, head) CPU s per camera-second timed outside the service: batch 1, window 64, this thread."""
    from engine.runtime import load_models

    _, enc, head = load_models(bundle, runtime="onnxruntime", device="cpu", threads=threads)
    rng = np.random.default_rng(0)
    img = rng.standard_normal((1, 3, enc.size, enc.size), dtype=np.float32)
    feats = rng.standard_normal((1, 64, head.width), dtype=np.float32)
    lens = np.full(1, 64, dtype=np.int64)
    enc.embed(img)
    head.score(feats, lens)
    t0 = time.thread_time()
    for _ in range(calls):
        enc.embed(img)
    e = (time.thread_time() - t0) / calls
    t0 = time.thread_time()
    for _ in range(calls):
        head.score(feats, lens)
    h = (time.thread_time() - t0) / calls
    return e * SNIPPETS_PER_S, h * SNIPPETS_PER_S


# --- physical limit -----------------------------------------------------------------------------------
def vit_flops(width: int, layers: int, mlp: int, image: int, patch: int, proj: int) -> float:
    """Multiply-adds x 2 of one image through a ViT image tower (GEMMs and attention products)."""
    tokens = (image // patch) ** 2 + 1
    macs = (image // patch) ** 2 * 3 * patch * patch * width  # patch embedding
    per_layer = tokens * width * 3 * width + 2 * tokens * tokens * width + tokens * width * width + \
        2 * tokens * width * mlp
    macs += layers * per_layer + width * proj
    return 2.0 * macs


GEMM_M = 197 * 8  # rows of the encoder's MLP GEMM for a batch of 8 images


def _rate(call: Any, ops: float, seconds: float) -> tuple[float, float]:
    """(G operations per CPU second, per wall second) of ``call`` repeated for ``seconds`` (3 calls at least),
    after one warm-up call."""
    call()
    calls = 0
    c0, w0 = time.process_time(), time.monotonic()
    while time.monotonic() - w0 < seconds or calls < 3:
        call()
        calls += 1
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    return calls * ops / cpu / 1e9, calls * ops / wall / 1e9


def gemm_throughput(seconds: float = 1.5, n: int = 768, k: int = 3072) -> tuple[float, float]:
    """(GFLOP/s per CPU second, GFLOP/s on the wall clock) of float32 matmul [197*8, k] x [k, n], numpy."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_M, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    return _rate(lambda: a @ b, 2.0 * GEMM_M * k * n, seconds)


def ort_gemm_throughput(int8: bool, seconds: float = 1.5, n: int = 768, k: int = 3072) -> float | None:
    """Operations per CPU second (G) of ONNX Runtime's own GEMM kernel at one thread, same shape as
    :func:`gemm_throughput`: ``MatMul`` in float32, or ``MatMulInteger`` (uint8 x int8 -> int32, the kernel
    under the INT8 encoder's ``DynamicQuantizeMatMul``). The encoder runs on these kernels, not numpy's, and
    on some CPUs they are much faster (MLAS vs OpenBLAS), so the limit uses the faster measured one. None
    when the ``onnx`` package (the ``export`` extra) is missing."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    m = GEMM_M
    a_t, b_t, y_t = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if int8 else \
        (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", a_t, [m, k]), helper.make_tensor_value_info("b", b_t, [k, n])],
        [helper.make_tensor_value_info("y", y_t, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if int8:
        feed = {"a": rng.integers(0, 256, (m, k), dtype=np.uint8), "b": rng.integers(-127, 128, (k, n), dtype=np.int8)}
    else:
        feed = {"a": rng.standard_normal((m, k), dtype=np.float32), "b": rng.standard_normal((k, n), dtype=np.float32)}
    return _rate(lambda: sess.run(None, feed), 2.0 * m * k * n, seconds)[0]


def int8_gemm_factor() -> tuple[float, str]:
    """INT8 over fp32 peak multiply-adds per cycle on this CPU, from its instruction set: 4x with VNNI
    (one instruction multiplies and accumulates 8-bit values into 32 bits), 2x on plain AVX2 (vpmaddubsw and
    vpmaddwd take two steps and an int16 intermediate). Used only when the INT8 kernel cannot be timed."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return 2.0, "CPU flags unknown"
    if flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}:
        return 4.0, "VNNI"
    return 2.0, "AVX2 without VNNI"


# --- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 s intervals after 10 s warm-up, one bisection step")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per run (default 60; quick 20)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before measuring (default 20; quick 10)")
    ap.add_argument("--cases", default="busy:fp32,busy:int8,still:int8",
                    help="comma list of scene:precision (scene busy|still, precision fp32|int8)")
    ap.add_argument("--start", type=int, default=1, help="first N tried (default 1)")
    ap.add_argument("--max", type=int, default=64, help="largest N tried (default 64)")
    ap.add_argument("--head-int8", action="store_true",
                    help="give the bundle a dynamic-INT8 head (dsanet export --head-int8; cost only, not gated)")
    ap.add_argument("--threads", type=int, default=None,
                    help="model.threads for the counts (default: the service's default, the runtime's own thread "
                         "count); the CPU split always comes from a run at 1 thread, where each model runs in its "
                         "worker thread and per-thread CPU time splits it exactly")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="deployment config override, dotted path, YAML value (repeatable)")
    ap.add_argument("--camera-set", dest="camera_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="per-camera config override applied to every camera (repeatable)")
    args = ap.parse_args(argv)
    quiet_logs()
    m = print_header("Cameras per machine, measured by running (ViT-B/16-shaped bundle, 640x360 25 fps)")
    cores = m["cores"]
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    warmup = args.warmup if args.warmup is not None else (10.0 if args.quick else 20.0)
    bisect_steps = 1 if args.quick else 8
    sets, camera_sets = parse_sets(args.sets), parse_sets(args.camera_sets)
    overrides = " ".join(args.sets + [f"cameras[*].{s}" for s in args.camera_sets]
                         + (["head-int8"] if args.head_int8 else [])) or "none"
    print(f"overrides: {overrides}; model.threads {args.threads or 'default'}; measured {seconds:g} s after {warmup:g} s warm-up; "
          f"sustained = lag p95 <= {SNIPPET_SECONDS:.3f} s (one snippet), 0 dropped, >= 90% of snippets scored; "
          f"keeps up = the same with lag p95 <= {2 * SNIPPET_SECONDS:.3f} s (two snippets)\n")

    enc_flops = vit_flops(**VITB16)
    g_cpu, g_wall = gemm_throughput()
    ort_fp32, ort_int8 = ort_gemm_throughput(False), ort_gemm_throughput(True)
    best_fp32 = max(g_cpu, ort_fp32 or 0.0)
    per_cam = enc_flops * SNIPPETS_PER_S / 1e9  # GFLOP/s one camera needs
    limit_cpu = cores * best_fp32 / per_cam
    if ort_int8 is not None:
        int8_ops, int8_why = ort_int8, "ORT MatMulInteger measured"
    else:
        factor, why = int8_gemm_factor()
        int8_ops, int8_why = factor * best_fp32, f"{factor:g}x fp32 from CPU flags ({why})"
    limit_int8 = cores * int8_ops / per_cam
    print(table(["encoder", "GFLOP/image", "GFLOP/s per camera", "numpy fp32 GEMM G/s per CPU s",
                 "ORT fp32 GEMM G/s per CPU s", "ORT INT8 GEMM G/s per CPU s", "numpy GEMM G/s wall now",
                 "cameras at fp32 GEMM peak", "cameras at INT8 GEMM peak"],
                [["ViT-B/16", enc_flops / 1e9, per_cam, g_cpu, "n/a" if ort_fp32 is None else ort_fp32,
                  "n/a" if ort_int8 is None else ort_int8, g_wall, limit_cpu,
                  limit_int8]], digits=2))
    print(f"\nphysical limit: ViT-B/16 encoder {enc_flops / 1e9:.1f} GFLOP per image x {SNIPPETS_PER_S:.3f} "
          f"images per camera-second = {per_cam:.1f} GFLOP/s per camera; fastest fp32 GEMM measured "
          f"{best_fp32:.0f} GFLOP/s per CPU second (numpy {g_cpu:.0f}, {g_wall:.0f} on the wall clock now, load "
          f"{os.getloadavg()[0]:.1f}) -> at most {limit_cpu:.1f} cameras on {cores} idle cores at fp32 GEMM peak; "
          f"INT8 GEMM {int8_ops:.0f} G operations per CPU second ({int8_why}) -> at most {limit_int8:.1f} cameras "
          f"with every encoder operation at INT8 GEMM peak\n")
    limit_keys = {"limit_fp32_gemm_cams": limit_cpu, "limit_int8_gemm_cams": limit_int8, "gemm_gflops_per_cpu_s": g_cpu,
                  "ort_gemm_gflops_per_cpu_s": math.nan if ort_fp32 is None else ort_fp32,
                  "ort_int8_gops_per_cpu_s": math.nan if ort_int8 is None else ort_int8}
    out: dict[str, Any] = {}
    why = supported(sets, camera_sets)
    if why is not None:
        print(f"n/a: {why}")
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        for c in cases:
            out[c.replace(":", "_")] = "n/a"
        out.update({"head_to_encoder": "n/a", **limit_keys, "encoder_gflop": enc_flops / 1e9,
                    "overrides": overrides.replace(" ", ","), "load_1m": m["load_1m"]})
        print()
        print(result_line(**out))
        return 0

    clip_seconds = {"busy": 10.0, "still": 20.0}
    folder = cache_dir("capacity-clips")

    def clips_for(scene: str) -> Any:
        paths = [make_camera_clip(folder / clip_name(W, H, FPS, clip_seconds[scene], "h264", scene, s), W, H, FPS,
                                  clip_seconds[scene], "h264", scene, s) for s in range(1, 9)]
        return lambda n: [paths[i % len(paths)] for i in range(n)]

    rows, split_rows = [], []
    counts: dict[str, int] = {}
    keepup: dict[str, int] = {}
    split_best: dict[str, dict[str, float]] = {}
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        scene, _, prec = case.partition(":")
        if scene not in clip_seconds or prec not in ("fp32", "int8"):
            ap.error(f"--cases: {case!r} is not scene:precision with scene busy|still and precision fp32|int8")
        bundle = (vitb16_head_int8_bundle if args.head_int8 else vitb16_bundle)(encoder_int8=prec == "int8")
        clips_of = clips_for(scene)
        print(f"## {scene} scene, {prec}")
        done: dict[int, dict] = {}
        n_keep, _ = search(case, bundle, clips_of, seconds, warmup, args.threads, args.start, args.max, bisect_steps,
                           sets, camera_sets, key="keeps_up", done=done)
        n, _ = search(case, bundle, clips_of, seconds, warmup, args.threads, args.start, args.max, bisect_steps,
                      sets, camera_sets, key="ok", done=done)
        runs = list(done.values())
        counts[case] = n
        keepup[case] = n_keep
        # the CPU split: one camera (it keeps up, so CPU per snippet scored is the cost of keeping up; a
        # run that fell behind encodes snippets it never scores) at 1 thread (ORT's own pool threads would
        # hide model CPU from the per-thread split)
        r = done.get(1) if args.threads == 1 else None
        if r is None:
            r = run_once(bundle, clips_of(1), seconds, warmup, 1, sets, camera_sets)
            print(f"  CPU split: N={r['n']} at model.threads 1, lag p95 {r['lag_p95']:.2f} s, "
                  f"CPU share {r['cpu'] / r['wall']:.2f} cores")
        # per camera-second *at real time*: decode and the rest per second of video decoded, so a run that
        # fell behind still gives the cost of keeping up
        video_s = max(r["frames"], 1) / FPS
        nan = float("nan")
        dec = decode_cpu_per_second(clips_of(1)[0], int(r["frames"] / max(r["n"], 1)) or FPS)
        # per snippet *scored*, not per call: with the still gate a reused snippet costs no encoder call and
        # with adaptive stride one head call scores k snippets, and both savings belong in the figure
        enc = r["enc_cpu"] / r["scored"] * SNIPPETS_PER_S if r["enc_items"] >= 5 and r["scored"] else nan
        head = r["head_cpu"] / r["scored"] * SNIPPETS_PER_S if r["head_items"] >= 5 and r["scored"] else nan
        if math.isnan(enc) or math.isnan(head):  # too few calls in the interval: time the calls directly
            d_enc, d_head = direct_costs(bundle, 1)
            print(f"  (fewer than 5 {'encoder' if math.isnan(enc) else 'head'} calls in the interval: "
                  f"timed directly, encoder {d_enc:.4f} head {d_head:.4f} CPU s per camera-second)")
            enc = d_enc if math.isnan(enc) else enc
            head = d_head if math.isnan(head) else head
        rest = (r["cpu"] - r["enc_cpu"] - r["head_cpu"]) / video_s - dec
        total = dec + enc + head + rest
        split_best[case] = {"decode": dec, "encoder": enc, "head": head, "rest": rest, "total": total}
        # the largest run that kept up (else the first run): what the counts rest on
        k = max((x for x in runs if x["keeps_up"]), key=lambda x: x["n"], default=runs[0])
        rows.append([scene, prec, n, n_keep, k["n"], k["lag_p95"], k["dropped"], f"{k['scored']}/{k['due']:.0f}",
                     k["cpu"] / k["wall"], k["reused"]])
        split_rows.append([scene, prec, r["n"], dec, enc, head, rest, total, head / enc if enc > 0 else float("nan"),
                           cores / total if total > 0 else float("nan")])
        print()
    print("## Sustained cameras (measured)\n")
    print(table(["scene", "precision", "sustained N", "keeps up N", "run shown: N", "lag p95 s", "dropped", "scored/due",
                 "CPU share (cores)", "embeddings reused"], rows, digits=3))
    print("\n## CPU seconds per camera-second\n")
    print(table(["scene", "precision", "cameras", "decode", "encoder", "head", "rest", "total", "head/encoder",
                 "cores / total"], split_rows, digits=4))
    print("\nPer camera-second at real time: encoder and head CPU per snippet scored, x 1.875/s; decode from "
          "the clip decoded alone; rest = the process's other CPU per second of video decoded. 'cores / total' is "
          "the count an idle machine could hold if CPU alone bounded it (no lag margin).")
    for case, n in counts.items():
        out[case.replace(":", "_")] = n
    for case, n in keepup.items():
        out[case.replace(":", "_") + "_keepup"] = n
    # head over encoder CPU per camera-second, for the INT8 busy case when run (the target's case)
    ref = split_best.get("busy:int8") or next(iter(split_best.values()), None)
    out["head_to_encoder"] = ref["head"] / ref["encoder"] if ref and ref["encoder"] > 0 else float("nan")
    for case, s in split_best.items():
        k = case.replace(":", "_")
        out[f"{k}_cpu_per_cam_s"] = s["total"]
        out[f"{k}_enc_per_cam_s"] = s["encoder"]
        out[f"{k}_cpu_bound_cams"] = cores / s["total"] if s["total"] > 0 else float("nan")
    out["decode_per_cam_s"] = max(s["decode"] for s in split_best.values()) if split_best else float("nan")
    out.update(limit_keys)
    out["encoder_gflop"] = enc_flops / 1e9
    out["overrides"] = overrides.replace(" ", ",")
    out["load_1m"] = m["load_1m"]
    out["load_end"] = round(os.getloadavg()[0], 2)
    print()
    print(result_line(**{k: (math.nan if v is None else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
