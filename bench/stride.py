"""Adaptive head stride vs stride 1: score agreement, frame AUC, event timing and head CPU saved.

The live path is replayed exactly: each video's embeddings go through ``stream.window.EmbeddingWindow``
with ``stream.stride.StrideController`` deciding the stride from the scores, and the scores feed a real
``stream.events.EventMachine`` (default event settings, UCF snippet geometry 16/30 s). Scores reach the
controller and the machine ``--feedback-delay`` pushes after their window was made (default 1: the head
queue's hand-over in the service), so the stride reacts as late as it does live. Stride 1 (today's path)
is run side by side on the same head.

Figures per (max stride k, margin): max and mean |score_k - score_1| over all snippets, frame AUC
(``export.metrics.frame_auc_ap``) and its change, the share of snippets scored at stride k, head calls and
head seconds relative to stride 1 (the calls ratio is exact; the seconds ratio is timed in the same run,
one replay after the other, so on a loaded machine it is the noisier of the two), and per event: start-time delta (capture time,
seconds) and how many snippets later the start event was emitted.

Data: the consistency benchmark's synthetic features and trained head (``bench/consistency.py``, cached).

    .venv/bin/python bench/stride.py            # 8 videos <= 160 snippets, W=64, k in 2,4,8, margin 0.1,0.2,0.3
    .venv/bin/python bench/stride.py --quick    # 3 videos <= 80 snippets, k=4, margin 0.2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_header, result_line, table, usable_cores  # noqa: E402

SNIPPET_SECONDS = 16 / 30


class Replay:
    """One video through window + stride controller + event machine, as the service runs it."""

    def __init__(self, emb: np.ndarray, score_fn: Callable[..., Any], length: int, lookahead: int,
                 max_stride: int, margin: float, delay: int, on_threshold: float | None) -> None:
        from stream.config import EventsConfig, ScoringConfig
        from stream.events import EventMachine
        from stream.stride import StrideController
        from stream.window import EmbeddingWindow

        self.emb, self.score_fn, self.delay = emb, score_fn, delay
        self.events_cfg = EventsConfig() if on_threshold is None else EventsConfig(
            on_threshold=on_threshold, off_threshold=min(on_threshold, EventsConfig().off_threshold))
        self.win = EmbeddingWindow(length, lookahead, camera="c", max_stride=max_stride)
        self.ctl = StrideController(ScoringConfig(adaptive_stride=max_stride, stride_margin=margin))
        self.machine: Any = None
        self.make_machine = lambda c: EventMachine("c", self.events_cfg, ["Normal"] + [f"k{i}" for i in range(1, c)])
        self.head_seconds = 0.0
        self.head_calls = 0

    def run(self) -> tuple[np.ndarray, list[tuple[float, int]], np.ndarray]:
        """(scores [N], start events as (start_time, push count at emission), stride used per push)."""
        n = self.emb.shape[0]
        scores = np.full(n, np.nan, dtype=np.float32)
        starts: list[tuple[float, int]] = []
        strides = np.zeros(n, dtype=np.int32)
        queue: list[tuple[int, list[Any]]] = []  # (push count when it may be delivered, scores)

        def deliver(upto: int) -> None:
            from stream.events import EventMachine

            while queue and queue[0][0] <= upto:
                for ws in queue.pop(0)[1]:
                    if self.machine is None:
                        self.machine = self.make_machine(len(ws.class_probs))
                    if not np.isnan(scores[ws.index]):
                        raise SystemExit(f"snippet {ws.index} scored twice")
                    scores[ws.index] = ws.score
                    for ev in self.machine.push(ws):
                        if ev.type == "start":
                            starts.append((ev.start_time, upto))
                    busy = self.machine.state != EventMachine.IDLE
                    self.win.stride = self.ctl.observe(ws.score, ws.ahead_max, self.events_cfg.on_threshold, busy)

        def score(job: Any) -> list[Any]:
            from stream.window import score_jobs

            t0 = time.perf_counter()
            out = score_jobs([job], self.score_fn)
            self.head_seconds += time.perf_counter() - t0
            self.head_calls += 1
            return out

        for i in range(n):
            deliver(i)
            strides[i] = self.win.stride
            job = self.win.push(self.emb[i], index=i, start_time=i * SNIPPET_SECONDS,
                                end_time=(i + 1) * SNIPPET_SECONDS)
            if job is not None:
                queue.append((i + self.delay, score(job)))
        last = self.win.flush()
        if last is not None:
            queue.append((n, score(last)))
        deliver(n + self.delay + 1)
        if np.isnan(scores).any():
            raise SystemExit(f"{int(np.isnan(scores).sum())} snippets got no score")
        return scores, starts, strides


def match_events(a: list[tuple[float, int]], b: list[tuple[float, int]]) -> tuple[list[float], list[int], int]:
    """Pair each start of ``b`` with the nearest start of ``a``: (|start deltas| s, emission deltas, unmatched)."""
    dts, dpush, unmatched = [], [], abs(len(a) - len(b))
    for t, p in b:
        if not a:
            break
        j = int(np.argmin([abs(t - u) for u, _ in a]))
        dts.append(abs(t - a[j][0]))
        dpush.append(p - a[j][1])
    return dts, dpush, unmatched


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 videos of at most 80 snippets, k=4, margin 0.2")
    ap.add_argument("--strides", default=None, help="comma list of max strides k (default 2,4,8; quick 4)")
    ap.add_argument("--margins", default=None, help="comma list of stride margins (default 0.1,0.2,0.3; quick 0.2)")
    ap.add_argument("--window", type=int, default=64, help="window length W (the config default 64)")
    ap.add_argument("--lookahead", type=int, default=4, help="lookahead L (the config default 4)")
    ap.add_argument("--videos", type=int, default=None, help="test videos (default 8; quick 3)")
    ap.add_argument("--max-snippets", type=int, default=None, help="cut videos to this many snippets (160; quick 80)")
    ap.add_argument("--feedback-delay", type=int, default=1, help="pushes between a window and its scores' arrival")
    ap.add_argument("--on-threshold", type=float, default=None, help="events.on_threshold (default: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    ap.add_argument("--random-head", action="store_true", help="untrained head (smoke tests only)")
    args = ap.parse_args(argv)

    from consistency import frame_auc, head_score_fn, pick_videos, synthetic_setup

    m = print_header("Adaptive head stride vs stride 1 (live read-out replayed)")
    threads = args.threads or usable_cores()
    strides = [int(v) for v in (args.strides or ("4" if args.quick else "2,4,8")).split(",")]
    margins = [float(v) for v in (args.margins or ("0.2" if args.quick else "0.1,0.2,0.3")).split(",")]
    n_videos = args.videos if args.videos is not None else (3 if args.quick else 8)
    max_snip = args.max_snippets if args.max_snippets is not None else (80 if args.quick else 160)
    ckpt, clip, videos = synthetic_setup(train_head=not args.random_head)
    videos = pick_videos(videos, n_videos, max_snip)
    score_fn, _ = head_score_fn(ckpt, clip, threads)
    gts = [v[2] for v in videos]
    n_snip = sum(v[1].shape[0] for v in videos)
    print(f"data: consistency benchmark's synthetic features, {len(videos)} videos, {n_snip} snippets; "
          f"{'UNTRAINED' if args.random_head else 'trained'} head on ONNX Runtime ({threads} threads); "
          f"W={args.window}, L={args.lookahead}, feedback delay {args.feedback_delay} push(es)\n")

    def replay_all(k: int, margin: float) -> dict[str, Any]:
        out: dict[str, Any] = {"scores": [], "starts": [], "strided": 0, "calls": 0, "seconds": 0.0}
        for _, emb, _ in videos:
            r = Replay(emb, score_fn, args.window, args.lookahead, k, margin, args.feedback_delay,
                       args.on_threshold)
            s, st, used = r.run()
            out["scores"].append(s)
            out["starts"].append(st)
            out["strided"] += int((used > 1).sum())
            out["calls"] += r.head_calls
            out["seconds"] += r.head_seconds
        return out

    base = replay_all(1, 0.0)
    auc1 = frame_auc(base["scores"], gts)
    n_events = sum(len(s) for s in base["starts"])
    rows = []
    res: dict[str, Any] = {}
    for k in strides:
        for margin in margins:
            rk = replay_all(k, margin)
            diff = np.concatenate([np.abs(a - b) for a, b in zip(rk["scores"], base["scores"], strict=True)])
            auck = frame_auc(rk["scores"], gts)
            dts: list[float] = []
            dpush: list[int] = []
            unmatched = 0
            for a, b in zip(base["starts"], rk["starts"], strict=True):
                t, p, u = match_events(a, b)
                dts += t
                dpush += p
                unmatched += u
            calls = rk["calls"] / max(1, base["calls"])
            secs = rk["seconds"] / max(1e-9, base["seconds"])
            rows.append([k, margin, float(diff.max()), float(diff.mean()), auck, auck - auc1,
                         rk["strided"] / n_snip, calls, secs,
                         max(dts) if dts else 0.0, max(dpush) if dpush else 0, unmatched])
            key = f"k{k}_m{margin:g}"
            res[f"{key}_maxdiff"] = float(diff.max())
            res[f"{key}_dauc"] = auck - auc1
            res[f"{key}_head_calls_saved"] = 1.0 - calls
            res[f"{key}_head_time_saved"] = 1.0 - secs
            res[f"{key}_start_dt_max"] = max(dts) if dts else 0.0
            res[f"{key}_emit_delay_max"] = max(dpush) if dpush else 0
            res[f"{key}_unmatched"] = unmatched
    print(table(["max stride k", "margin", "max |diff|", "mean |diff|", "frame AUC", "AUC - stride 1",
                 "share at stride k", "head calls vs 1", "head time vs 1", "max |start dt| s",
                 "max emit delay (snippets)", "events +/-"], rows, digits=4))
    print(f"\nstride 1: frame AUC {auc1:.4f}, {base['calls']} head calls, {n_events} start events "
          f"(events.on_threshold {Replay(videos[0][1], score_fn, args.window, args.lookahead, 1, 0.0, 1, args.on_threshold).events_cfg.on_threshold:g})")
    print("emit delay: snippets between the start event at stride 1 and at stride k (worst case k - 1 "
          "+ the feedback delay of the score that ends the calm)")
    print()
    print(result_line(videos=len(videos), snippets=n_snip, auc_stride1=auc1, events=n_events, cores=m["cores"],
                      **res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
