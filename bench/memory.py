"""Resident memory of the service per added camera (slope of RSS against camera count).

Why: a deployment sizes its machine by "fixed cost + per-camera cost"; the per-camera part (decoder
state, up to half a snippet of decoded frames, the frames of the rows still to be reported, a
window of 64 x 512 floats, queues) must stay small and constant. For each N in {1, 2, 4, 8} a fresh
child process runs the real service (``stream.service.Service``) with N looping real-time file cameras
(generated 640x360 25 fps clips), waits for the warm-up, samples RSS (``/proc/self/status`` VmRSS) a
few times and reports the median; the parent fits ``RSS = a + b x N`` by least squares. Run with the
tiny encoder and (not in ``--quick``) the full CLIP ViT-B/16 encoder (random weights, ONNX only).

    .venv/bin/python bench/memory.py            # tiny + ViT-B/16, N in {1,2,4,8}
    .venv/bin/python bench/memory.py --quick    # tiny, N in {1,2,4}
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cache_dir,
    make_clip,
    print_header,
    quiet_logs,
    result_line,
    rss_bytes,
    service_config,
    table,
    tiny_bundle,
    vitb16_bundle,
)


def child(bundle: str, n: int, warmup: float, samples: int, threads: int | None) -> dict[str, Any]:
    """In a fresh process: run the service with n cameras, return RSS samples after warm-up."""
    quiet_logs()
    from stream.service import Service

    clips = [make_clip(cache_dir("clips") / f"scene_640x360_25fps_s{1 + i % 4}.mp4", 20.0, 640, 360, fps=25,
                       seed=1 + i % 4) for i in range(n)]
    rss_loaded = None
    cfg = service_config(Path(bundle), clips, cache_dir(f"memory-run-{n}"), threads=threads)
    svc = Service(cfg, out=io.StringIO(), status_interval=0)
    rss_loaded = rss_bytes()
    svc.start()
    try:
        time.sleep(warmup)
        rss = []
        for _ in range(samples):
            rss.append(rss_bytes())
            time.sleep(1.0)
        frames = sum(c.reader.stats.frames for c in svc.cameras.values())
    finally:
        svc.request_stop("benchmark done")
        svc.shutdown()
    return {"n": n, "rss": rss, "rss_loaded": rss_loaded, "frames": frames}


def child_main(bundle: str, n: int, warmup: float, samples: int, threads: int | None) -> None:
    """Print the child's figures, then leave without interpreter teardown.

    A model call still running in a worker thread when the interpreter finalises makes ONNX Runtime
    abort the process (seen at N=4 on a loaded machine), which would lose a measurement already taken.
    """
    import os

    print("CHILD " + json.dumps(child(bundle, n, warmup, samples, threads)), flush=True)
    sys.stderr.flush()
    os._exit(0)


def measure(bundle: Path, n: int, warmup: float, samples: int, threads: int | None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(bundle), "--n", str(n),
           "--warmup", str(warmup), "--samples", str(samples)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"memory child for N={n} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][6:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny encoder only, N in {1,2,4}, short warm-up")
    ap.add_argument("--counts", default=None, help="comma list of camera counts (default 1,2,4,8; quick 1,2,4)")
    ap.add_argument("--encoders", default=None, help="comma list of tiny,vitb16 (default both; quick tiny)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before sampling (default 20; quick 6)")
    ap.add_argument("--samples", type=int, default=None, help="RSS samples, 1 s apart (default 5; quick 3)")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads per model")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (6.0 if args.quick else 20.0)
    samples = args.samples or (3 if args.quick else 5)
    if args.child:
        child_main(args.child, args.n, warmup, samples, args.threads)

    m = print_header("Service RSS per added camera")
    counts = [int(v) for v in args.counts.split(",")] if args.counts else ([1, 2, 4] if args.quick else [1, 2, 4, 8])
    encoders = args.encoders.split(",") if args.encoders else (["tiny"] if args.quick else ["tiny", "vitb16"])
    rows, fits = [], {}
    for enc in encoders:
        bundle = tiny_bundle() if enc == "tiny" else vitb16_bundle()
        xs, ys = [], []
        for n in counts:
            r = measure(bundle, n, warmup, samples, args.threads)
            med = float(np.median(r["rss"]))
            xs.append(n)
            ys.append(med)
            rows.append([enc, n, r["rss_loaded"] / 2**20, med / 2**20, (max(r["rss"]) - min(r["rss"])) / 2**20,
                         r["frames"]])
        slope, intercept = np.polyfit(xs, ys, 1) if len(xs) > 1 else (float("nan"), ys[0])
        fits[enc] = (float(slope), float(intercept))
    print(f"warm-up {warmup:g} s, {samples} RSS samples 1 s apart (median reported); 640x360 25 fps looping "
          f"file cameras, real-time; one fresh process per row\n")
    print(table(["encoder", "cameras", "RSS after model load MiB", "RSS running MiB", "RSS spread MiB",
                 "frames decoded"], rows, digits=1))
    print()
    for enc, (b, a) in fits.items():
        print(f"{enc}: RSS ~ {a / 2**20:.0f} MiB + {b / 2**20:.1f} MiB per camera (least squares over N={counts})")
    out: dict[str, Any] = {"cores": m["cores"]}
    for enc, (b, a) in fits.items():
        out[f"{enc}_mib_per_camera"] = b / 2**20
        out[f"{enc}_base_mib"] = a / 2**20
    print()
    print(result_line(**out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
