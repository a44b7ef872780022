"""Per-camera calibration on a synthetic day of scores: alerts/day before and after ``learn_thresholds``.

A camera's scores (one per snippet, 16/30 s) are calm (beta(2, 8)) with a recurring benign pattern the
model flags (bursts of 3-40 snippets scored 0.55-0.8). Printed side by side, on the same scores: alerts per
day of the event machine at the default thresholds, at the learned ones (target 2/day, floor 0.3), and at a
plain quantile threshold (the score exceeded by 2/day x 10 snippets), plus the cost of learning as a
multiple of one replay.

    .venv/bin/python bench/calibration.py            # one day (162,000 scores), about a minute
    .venv/bin/python bench/calibration.py --quick    # a tenth of a day
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_header, result_line, table  # noqa: E402

from stream.calibration import SECONDS_PER_DAY, count_starts, learn_thresholds  # noqa: E402
from stream.config import EventsConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of a day")
    ap.add_argument("--target", type=float, default=2.0, help="target alerts per day (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print_header("per-camera calibration: alerts/day before and after learn_thresholds")
    rng = np.random.default_rng(args.seed)
    snip = 16 / 30
    n = int(SECONDS_PER_DAY / snip / (10 if args.quick else 1))
    s = rng.beta(2, 8, size=n)
    for st in rng.integers(0, n - 60, size=max(1, n * 120 // 162000)):
        s[st:st + rng.integers(3, 40)] = rng.uniform(0.55, 0.8)
    ev = EventsConfig()
    days = n * snip / SECONDS_PER_DAY
    t0 = time.perf_counter()
    base = count_starts(s, snip, ev)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = learn_thresholds(s, snip, ev, target_per_day=args.target, floor=0.3)
    t_learn = time.perf_counter() - t0
    q = float(np.quantile(s, 1 - args.target * days * 10 / n))
    qa = count_starts(s, snip, ev.model_copy(update={"on_threshold": q, "off_threshold": max(q - 0.2, 0.0)}))
    print(f"{n} scores ({days:.2f} day), target {args.target:g}/day")
    print(table(["thresholds", "on", "off", "alerts/day"], [
        ["default", ev.on_threshold, ev.off_threshold, base / days],
        ["learned (floor 0.3)", r.on, r.off, r.expected_per_day],
        ["plain quantile", q, max(q - 0.2, 0.0), qa / days]], digits=4))
    print(f"learning = {t_learn / t_one:.1f} x one replay (same run)")
    print(result_line(fa_default=base / days, fa_learned=r.expected_per_day, on_learned=r.on,
                      fa_quantile=qa / days, learn_over_replay=t_learn / t_one))

if __name__ == "__main__":
    main()
