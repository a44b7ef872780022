"""Alert latency: wall-clock from the first abnormal frame to the ``start`` event, against its bound.

Why: an alert is only useful if it comes soon after the anomaly begins. The service cannot be faster
than: the snippet that holds the first abnormal frame must end (up to one snippet), ``lookahead`` (L)
more snippets must arrive (the score is read L rows behind the newest), the models must run, and the
score must stay high for ``min_duration`` before a start fires. So the bound is
``snippet_seconds x (1 + L) + inference + min_duration``; target: p95 <= bound + 0.2 s.

Set-up: the demo recipe (``export.demo.build_demo``: tiny CLIP, features extracted from rendered
scenes, a DSANet head trained by the real trainer, exported bundle), and a short generated clip with
one clearly abnormal event of a class the demo model learnt, played as looping real-time file cameras
(``stream.service.Service`` in-process), so every loop is one event. The first abnormal frame of each
loop is seen at the snippet cutter (its capture time: the reader's wall clock for that frame); the start
event's time is when the service dispatches it. ``inference`` = mean encoder + head call time over the
run (``dsanet_inference_seconds``).

    .venv/bin/python bench/latency.py            # >= 20 events
    .venv/bin/python bench/latency.py --quick    # ~6 events, about a minute once the demo is built
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cache_dir,
    percentile,
    print_header,
    quiet_logs,
    result_line,
    service_config,
    table,
)

PERIOD = 12.0  # seconds per loop (= per event)
EVENT = (4.0, 8.0)  # abnormal span inside the loop
FPS = 30


def demo_assets(say: Any = print) -> tuple[Path, Path]:
    """(bundle dir, looping event clip): the demo recipe's trained bundle, and a 12 s clip with one event."""
    from export.demo import build_demo

    root = build_demo(cache_dir("demo"), say=say)
    return root / "bundle", event_clip()


def event_clip() -> Path:
    """12 s, 640x360, one abnormal span (a class the demo model learnt) at 4-8 s; cached."""
    from export.demo.video import EVENT_CLASSES, EventSpan, write_video

    clip = cache_dir("clips") / f"event_{EVENT_CLASSES[1]}_{PERIOD:g}s.mp4"
    if not clip.is_file():
        write_video(clip, PERIOD, [EventSpan(EVENT_CLASSES[1], *EVENT)], 640, 360, fps=FPS, seed=11)
    return clip


def _hist_mean(metrics: Any, model: str) -> float:
    total = count = 0.0
    for metric in metrics.inference.collect():
        for s in metric.samples:
            if s.labels.get("model") != model:
                continue
            if s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
    return total / count if count else float("nan")


def run(bundle: Path, clip: Path, cameras: int, seconds: float, lookahead: int, window: int,
        events_cfg: dict[str, Any]) -> dict[str, Any]:
    from stream.service import Service

    cfg = service_config(bundle, [clip] * cameras, cache_dir("latency-run"), window=window, lookahead=lookahead,
                         events=events_cfg)
    svc = Service(cfg, out=io.StringIO(), status_interval=0)
    lock = threading.Lock()
    onsets: dict[str, list[float]] = {name: [] for name in svc.cameras}
    starts: list[tuple[str, float, str]] = []

    for name, cam in svc.cameras.items():
        orig = cam.cutter.on_frame
        last_pts = {"v": None}

        def on_frame(frame: Any, orig: Any = orig, name: str = name, last: dict = last_pts) -> None:
            pts = frame.pts_seconds
            if pts is not None:
                prev = last["v"]
                # the first frame at or past the event start in this loop (pts restarts every loop)
                if pts >= EVENT[0] and (prev is None or prev < EVENT[0] or pts < prev):
                    with lock:
                        onsets[name].append(float(frame.capture_time))
                last["v"] = pts
            orig(frame)

        cam.cutter.on_frame = on_frame  # type: ignore[method-assign]

    emit = svc._emit  # the event path's entry (evidence stage or delivery), where start events enter

    def on_event(ev: Any) -> None:
        if ev.type == "start":
            with lock:
                starts.append((ev.camera, time.time(), ev.category))
        emit(ev)

    svc._emit = on_event
    scored: list[tuple[str, float, float, float]] = []  # camera, snippet start, snippet end, score
    on_scores = svc.head.on_scores  # the head worker's callback (Service._on_scores)

    def record(batch: Any) -> None:
        with lock:
            scored.extend((ws.camera, ws.start_time, ws.end_time, ws.score) for ws in batch)
        on_scores(batch)

    svc.head.on_scores = record
    svc.start()
    try:
        time.sleep(seconds)
    finally:
        svc.request_stop("benchmark done")
        svc.shutdown()
    inference = _hist_mean(svc.metrics, "encoder") + _hist_mean(svc.metrics, "head")
    lat, unmatched, categories, model_delay = [], 0, [], []
    on_thr = float(events_cfg["on_threshold"])
    for cam, t_ev, cat in starts:
        before = [t for t in onsets[cam] if t <= t_ev]
        if before and t_ev - before[-1] < PERIOD / 2:
            onset = before[-1]
            lat.append(t_ev - onset)
            categories.append(cat)
            # the model's own delay: end of the first snippet at/after the onset that scores >= on_threshold
            highs = [e for c, st, e, sc in scored if c == cam and e > onset and st < t_ev and sc >= on_thr]
            model_delay.append(min(highs) - onset if highs else float("nan"))
        else:
            unmatched += 1
    n_onsets = sum(len(v) for v in onsets.values())
    return {"latencies": lat, "unmatched": unmatched, "onsets": n_onsets, "inference": inference,
            "model_delay": model_delay,
            "snippet_seconds": float(svc.spec.seconds), "categories": categories}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~6 events instead of >= 20")
    ap.add_argument("--events", type=int, default=None, help="events to wait for (default 22; quick 6)")
    ap.add_argument("--cameras", type=int, default=2, help="looping file cameras playing the event clip (default 2)")
    ap.add_argument("--lookahead", type=int, default=2, help="lookahead L in snippets (default: config default 2)")
    ap.add_argument("--window", type=int, default=64,
                    help="window length in snippets (default 64, at most the bundle's max_window)")
    ap.add_argument("--bundle", default=None,
                    help="use this bundle instead of the demo's ('tiny': the untrained tiny bundle, smoke tests only)")
    ap.add_argument("--min-duration", type=float, default=1.0, help="events.min_duration (default 1.0 s)")
    args = ap.parse_args(argv)
    quiet_logs()

    m = print_header("Alert latency: first abnormal frame -> start event")
    if args.bundle:
        from common import tiny_bundle

        bundle = tiny_bundle() if args.bundle == "tiny" else Path(args.bundle)
        clip = event_clip()
    else:
        bundle, clip = demo_assets()
    from engine.bundle import load_bundle

    max_window = int(load_bundle(bundle).max_window)
    if args.window > max_window:  # the demo model is small (its recipe sets visual_length)
        print(f"window {args.window} > the bundle's max_window {max_window}: using {max_window}")
        args.window = max_window
    n_events = args.events or (6 if args.quick else 22)
    loops = int(np.ceil(n_events / args.cameras))
    seconds = loops * PERIOD + EVENT[1] + 2.0
    events_cfg = {"on_threshold": 0.6, "off_threshold": 0.4, "min_duration": args.min_duration, "hold": 1.0,
                  "cooldown": 1.0, "update_interval": 5.0}
    print(f"bundle {bundle} (demo recipe); clip {clip.name}: {PERIOD:g} s loop, abnormal {EVENT[0]:g}-{EVENT[1]:g} s, "
          f"640x360 {FPS} fps; {args.cameras} cameras; window {args.window}, lookahead {args.lookahead}; events "
          f"{events_cfg}; running {seconds:.0f} s\n")
    r = run(bundle, clip, args.cameras, seconds, args.lookahead, args.window, events_cfg)
    lat = r["latencies"]
    snip = r["snippet_seconds"]
    bound = snip * (1 + args.lookahead) + r["inference"] + args.min_duration
    p50 = percentile(lat, 50) if lat else float("nan")
    p95 = percentile(lat, 95) if lat else float("nan")
    rows = [["latency (s)", len(lat), p50, p95, min(lat) if lat else float("nan"), max(lat) if lat else float("nan"),
             bound, bound + 0.2]]
    print(table(["what", "events", "p50", "p95", "min", "max", "bound", "target p95 <="], rows, digits=3))
    met = bool(lat) and p95 <= bound + 0.2
    print(f"\nbound = snippet {snip:.3f} s x (1 + L={args.lookahead}) + inference {r['inference']:.3f} s "
          f"(mean encoder + head call) + min_duration {args.min_duration:g} s = {bound:.3f} s; "
          f"p95 {p95:.3f} s: target {'met' if met else 'MISSED'}")
    md = [x for x in r["model_delay"] if x == x]
    if md:
        rest = [a - b for a, b in zip(lat, r["model_delay"], strict=True) if b == b]
        print(f"model delay (onset -> end of the first snippet scoring >= on_threshold): p50 {percentile(md, 50):.3f} s, "
              f"p95 {percentile(md, 95):.3f} s; the rest (lookahead, min_duration, inference, queues): p50 "
              f"{percentile(rest, 50):.3f} s, p95 {percentile(rest, 95):.3f} s (service part of the bound: "
              f"{bound - snip:.3f} s)")
    print(f"abnormal onsets seen {r['onsets']}, start events matched {len(lat)}, start events not following an onset "
          f"{r['unmatched']}; categories {sorted(set(r['categories']))}")
    print()
    print(result_line(events=len(lat), p50_s=p50, p95_s=p95, bound_s=bound, target_met=met,
                      model_delay_p50_s=percentile(md, 50) if md else float("nan"),
                      unmatched=r["unmatched"], onsets=r["onsets"], lookahead=args.lookahead, cores=m["cores"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
