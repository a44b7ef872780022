"""Live service on an imported official bundle: RTSP cameras, lag p95 and drops, fp32 vs INT8 encoder.

Why: the full-size DSANet bundle (CLIP ViT-B/16 encoder) is what a user runs after
``dsanet import-official``; how many cameras a CPU box sustains with it is measured here by running
the real service (``stream.service.Service``, in-process) against live GStreamer RTSP cameras (the
test fixture server, ``videotestsrc`` + x264 at 640x360 25 fps) for a while, not projected. Every
second the worst camera lag (``CameraStatus.lag``: how far scoring trails the stream) and the queue
drop counters are sampled; after the warm-up the p50/p95/max lag and the drops are reported per
(encoder, cameras) case.

    .venv/bin/python bench/official_live.py --bundle B_FP32 --bundle-int8 B_INT8 --cameras 1 2 --seconds 120
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, print_header, quiet_logs, result_line, table  # noqa: E402
from soak import config_text, rtsp_sources, sample  # noqa: E402


def run_case(bundle: Path, cameras: int, seconds: float, warmup: float) -> dict[str, float]:
    from stream.config import parse_config
    from stream.service import Service

    work = Path(tempfile.mkdtemp(prefix="dsanet-official-live-"))
    urls, server = rtsp_sources(cameras, 640, 360, 25, work)
    svc = Service(parse_config(config_text(urls, bundle, work, False)), out=io.StringIO(), status_interval=0)
    samples = []
    t0 = time.monotonic()
    try:
        svc.start()
        while time.monotonic() - t0 < warmup + seconds:
            time.sleep(1.0)
            samples.append((time.monotonic() - t0, sample(svc)))
    finally:
        svc.shutdown()
        server.close()
    warm = [s for t, s in samples if t >= warmup]
    lags = [s["lag_max_s"] for s in warm if s["lag_max_s"] == s["lag_max_s"]]
    first, last = warm[0], warm[-1]
    span = max(len(warm) - 1, 1)
    return {"lag_p50_s": percentile(lags, 50) if lags else float("nan"),
            "lag_p95_s": percentile(lags, 95) if lags else float("nan"),
            "lag_max_s": max(lags) if lags else float("nan"),
            "dropped": last["dropped"] - first["dropped"], "dropped_total": last["dropped"],
            "snippets_per_s": (last["snippets"] - first["snippets"]) / span,
            "scores_per_s": (last["scores"] - first["scores"]) / span,
            "reconnects": last["reconnects"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="imported bundle with the fp32 encoder")
    ap.add_argument("--bundle-int8", help="imported bundle with the INT8 encoder")
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=120.0, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=20.0)
    args = ap.parse_args()
    quiet_logs()
    print_header("Live service on an imported official DSANet bundle (RTSP cameras)")
    rows, result = [], {}
    cases = [("fp32", Path(args.bundle))] + ([("int8", Path(args.bundle_int8))] if args.bundle_int8 else [])
    for label, bundle in cases:
        for n in args.cameras:
            r = run_case(bundle, n, args.seconds, args.warmup)
            rows.append([label, n, r["lag_p50_s"], r["lag_p95_s"], r["lag_max_s"], int(r["dropped"]),
                         r["snippets_per_s"], r["scores_per_s"]])
            result[f"{label}_{n}cam_lag_p95_s"] = r["lag_p95_s"]
            result[f"{label}_{n}cam_dropped"] = int(r["dropped"])
            print(f"  {label} x{n}: lag p95 {r['lag_p95_s']:.2f} s, dropped {int(r['dropped'])}", flush=True)
    print()
    print(table(["encoder", "cameras", "lag p50 s", "lag p95 s", "lag max s", "dropped", "snippets/s", "scores/s"],
                rows))
    print(f"\n{args.seconds:.0f} s measured per case after {args.warmup:.0f} s warm-up; RTSP 640x360 25 fps live "
          "cameras; the machine is shared with parallel work")
    print(result_line(seconds=args.seconds, **result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
