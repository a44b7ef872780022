"""The encoder in-process (ONNX Runtime) vs on a Triton server on this box: what moving it out costs.

Why: `model.encoder: {runtime: triton}` lets many workers share one (GPU) Triton; on one machine it only
adds a hop. This measures that hop, side by side in one run, with the real ``tritonserver`` 2.51 (the
Python backend running the same encoder.onnx with onnxruntime; ``.ci/triton-venv.sh`` installs it):

* Part 1, model calls: images/s and latency per call at batch 1 and 8, in-process vs Triton
  (interleaved call by call), and the added latency per snippet (Triton p50 - in-process p50 at batch 1).
* Part 2, the live service: N looping 640x360 file cameras for S seconds with each encoder; CPU seconds
  per camera-second (worker process + Triton process tree), snippets scored, stream lag, and bytes on
  the wire per camera-second (the uint8 crops sent, measured by the client, next to what float32
  [3,S,S] input would be).

(Named triton_encoder.py, not triton.py: a script of that name on sys.path would shadow the ``triton``
package that torch probes for.)

Both sides use the same intra-op thread count (``--threads``, default 1). On a 2-core machine Triton and
the worker share the cores, so Part 2 is the cost of the hop, not a capacity figure for a GPU server.

    .venv/bin/python bench/triton_encoder.py                 # tiny encoder (~2 min)
    .venv/bin/python bench/triton_encoder.py --bundle vitb16 # the CLIP ViT-B/16 tower (random weights; slow)
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    cache_dir,
    cpu_seconds,
    make_clip,
    print_header,
    quiet_logs,
    result_line,
    service_config,
    summary,
    table,
    time_interleaved,
    tiny_bundle,
    vitb16_bundle,
)

CLK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Triton runs a stub per model)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(d.name)] = int(fields[1])
        times[int(d.name)] = (int(fields[11]) + int(fields[12])) / CLK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, pp in parents.items() if pp == p]
    return total


def part1(bundle_dir: Path, server: Any, threads: int, iters: int) -> dict[str, Any]:
    from engine.bundle import load_bundle
    from engine.runtime import load_models
    from engine.runtimes.triton import load_triton_encoder

    bundle = load_bundle(bundle_dir)
    _, local, _ = load_models(bundle_dir, runtime="onnxruntime", threads=threads)
    remote = load_triton_encoder(bundle, url=server.grpc_url, timeout=60.0, max_wait=120.0)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(8)]
    pix = {b: bundle.preprocessing(frames[:b]) for b in (1, 8)}
    crops = {b: remote.preprocess(frames[:b]) for b in (1, 8)}
    rows, out = [], {}
    for b in (1, 8):
        t = time_interleaved({"in-process": lambda b=b: local.embed(pix[b]),
                              "triton": lambda b=b: remote.embed(crops[b])}, iters=iters)
        lat = {k: summary(v) for k, v in t.items()}
        for k in ("in-process", "triton"):
            rows.append([k, b, b / lat[k]["p50"], lat[k]["p50"] * 1000, lat[k]["p95"] * 1000])
        out[b] = lat
    print("## Part 1: encoder calls (interleaved)\n")
    print(table(["encoder", "batch", "images/s", "p50 ms", "p95 ms"], rows, digits=2))
    added = (out[1]["triton"]["p50"] - out[1]["in-process"]["p50"]) * 1000
    print(f"\nadded latency per snippet (batch 1, p50): {added:.2f} ms; Triton at batch 8 "
          f"{out[8]['triton']['p50'] / out[8]['in-process']['p50']:.2f}x the in-process time\n")
    return {"added_ms": added, "ips_local_b8": 8 / out[8]["in-process"]["p50"],
            "ips_triton_b8": 8 / out[8]["triton"]["p50"]}


def run_service(bundle: Path, clips: list[Path], seconds: float, warmup: float, threads: int,
                server: Any | None) -> dict[str, Any]:
    from stream.service import Service

    work = cache_dir("triton-run") / ("triton" if server else "local")
    cfg = service_config(bundle, clips, work, threads=threads)
    if server is not None:
        enc = {"runtime": "triton", "url": server.grpc_url, "timeout": 60.0, "max_wait": 25.0}
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoder": _triton_cfg(enc)})})
    svc = Service(cfg, out=io.StringIO(), status_interval=0)
    svc.start()
    try:
        time.sleep(warmup)
        scored0 = sum(c.status.scored for c in svc.cameras.values())
        h0 = svc.models.encoder.health() if server else None
        c0 = cpu_seconds(), (tree_cpu(server.proc.pid) if server else 0.0)
        t0 = time.monotonic()
        lags: list[float] = []
        while time.monotonic() - t0 < seconds:
            time.sleep(0.5)
            lags += [c.status.lag for c in svc.cameras.values() if c.status.lag is not None]
        wall = time.monotonic() - t0
        c1 = cpu_seconds(), (tree_cpu(server.proc.pid) if server else 0.0)
        scored = sum(c.status.scored for c in svc.cameras.values()) - scored0
        h1 = svc.models.encoder.health() if server else None
    finally:
        svc.request_stop("benchmark done")
        svc.shutdown()
    cam_s = wall * len(clips)
    return {"worker_cpu": (c1[0] - c0[0]) / cam_s, "server_cpu": (c1[1] - c0[1]) / cam_s,
            "scored_per_cam_s": scored / cam_s, "lag_p50": float(np.percentile(lags, 50)) if lags else float("nan"),
            "wire_bytes_per_cam_s": ((h1.bytes_sent - h0.bytes_sent) / cam_s) if server else 0.0,
            "images_per_cam_s": ((h1.images - h0.images) / cam_s) if server else float("nan")}


def _triton_cfg(d: dict[str, Any]) -> Any:
    from stream.config import TritonEncoderConfig

    return TritonEncoderConfig.model_validate(d)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", choices=("tiny", "vitb16"), default="tiny")
    ap.add_argument("--bundle-dir", type=Path, default=None, help="use this bundle instead (e.g. a real one)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, both sides (default 1)")
    ap.add_argument("--iters", type=int, default=40, help="calls per contender in part 1")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per service run")
    ap.add_argument("--warmup", type=float, default=5.0)
    args = ap.parse_args(argv)
    quiet_logs()
    sys.path.insert(0, str(REPO))
    from engine.triton_repo import write_repository
    from tests.fixtures.triton import TritonServer, server_binary

    if server_binary() is None:
        print("bench/triton_encoder.py: tritonserver not found: run `bash .ci/triton-venv.sh` first", file=sys.stderr)
        return 2
    print_header(f"Encoder in-process (ONNX Runtime) vs Triton 2.51 (Python backend), {args.bundle} encoder")
    bundle = args.bundle_dir or (tiny_bundle() if args.bundle == "tiny" else vitb16_bundle())
    repo = cache_dir("triton-repo") / (bundle.name if args.bundle_dir else args.bundle)
    write_repository(bundle, repo, force=True)
    server = TritonServer(repo, work_dir=cache_dir("triton-server"), threads=args.threads).start()
    try:
        p1 = part1(bundle, server, args.threads, args.iters)
        clip = make_clip(cache_dir("clips") / "scene_640x360_25fps_s1.mp4", 20.0, 640, 360, fps=25, seed=1)
        clips = [clip] * args.cameras
        local = run_service(bundle, clips, args.seconds, args.warmup, args.threads, None)
        remote = run_service(bundle, clips, args.seconds, args.warmup, args.threads, server)
    finally:
        server.stop()
    from engine.bundle import load_bundle

    s = load_bundle(bundle).preprocessing.size
    f32 = remote["images_per_cam_s"] * 3 * s * s * 4
    print(f"## Part 2: the service, {args.cameras} looping 640x360 25 fps file cameras, {args.seconds:g} s each\n")
    rows = [["in-process", local["worker_cpu"], 0.0, local["worker_cpu"], local["scored_per_cam_s"],
             local["lag_p50"], 0.0],
            ["triton", remote["worker_cpu"], remote["server_cpu"], remote["worker_cpu"] + remote["server_cpu"],
             remote["scored_per_cam_s"], remote["lag_p50"], remote["wire_bytes_per_cam_s"] / 1000]]
    print(table(["encoder", "worker CPU s/cam-s", "Triton CPU s/cam-s", "total CPU s/cam-s", "scored/cam-s",
                 "lag p50 s", "wire KB/cam-s"], rows, digits=3))
    total_ratio = (remote["worker_cpu"] + remote["server_cpu"]) / local["worker_cpu"]
    print(f"\nwire: {remote['wire_bytes_per_cam_s'] / 1000:.1f} KB per camera-second of uint8 crops "
          f"({remote['images_per_cam_s']:.2f} images/s); float32 input would be {f32 / 1000:.1f} KB "
          f"({f32 / max(remote['wire_bytes_per_cam_s'], 1):.1f}x). Total CPU with Triton {total_ratio:.2f}x "
          "the in-process encoder's.")
    print(result_line(bundle=args.bundle, added_ms_b1=p1["added_ms"], ips_local_b8=p1["ips_local_b8"],
                      ips_triton_b8=p1["ips_triton_b8"], cpu_local=local["worker_cpu"],
                      cpu_triton_worker=remote["worker_cpu"], cpu_triton_server=remote["server_cpu"],
                      cpu_ratio=total_ratio, wire_kb_per_cam_s=remote["wire_bytes_per_cam_s"] / 1000,
                      wire_f32_kb_per_cam_s=f32 / 1000, lag_local=local["lag_p50"], lag_triton=remote["lag_p50"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
