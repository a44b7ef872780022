"""A short soak (``bench/soak.py``): 4 live cameras for 60 s; resources must not grow after warm-up.

Tolerances (stated, not tuned to pass): RSS at the end <= the largest RSS seen between the end of warm-up (20 s)
and half-time, x 1.15 + 30 MB (ONNX Runtime's arena grows to the largest batch it has met, which on a
loaded machine happens whenever the head catches up with a full queue: the 10-minute soak in
docs/reliability.md shows one such step at 60 s, then a flat line; a leak keeps growing); Python threads
and open fds at the end within 2 of the warm-up values (a reconnect may hold one extra socket or thread
for a moment); native threads within 4 (FFmpeg decoder threads per session). The queues must not be
allowed past their bound (drops are counted instead) and the service must keep scoring after warm-up.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_short_soak_resources_do_not_grow_after_warmup(bench_cache_dir, monkeypatch):
    import soak

    monkeypatch.setenv("DSANET_BENCH_CACHE", str(bench_cache_dir))  # the run's tiny bundle (fx_bench.py)

    res = soak.run_soak(cameras=4, seconds=60.0, source="auto", width=160, height=96, fps=10, warmup=20.0,
                        out=io.StringIO())
    s, samples, w = res["summary"], res["samples"], res["warm_index"]
    print({k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in s.items()}, res["source"])
    assert len(samples) >= 50 and w >= 10
    rss_ref = max(x["rss_mb"] for x in samples[w: len(samples) // 2 + 1])
    assert s["rss_mb"]["end"] <= rss_ref * 1.15 + 30, (rss_ref, s["rss_mb"])
    assert abs(s["threads"]["end"] - s["threads"]["warm"]) <= 2, s["threads"]
    assert abs(s["fds"]["end"] - s["fds"]["warm"]) <= 2, s["fds"]
    assert s["native_threads"]["end"] <= s["native_threads"]["warm"] + 4, s["native_threads"]
    # work kept flowing after warm-up: more frames, snippets and scores at the end than at warm-up
    for key in ("frames", "snippets", "scores"):
        assert s[key]["end"] > s[key]["warm"], (key, s[key])
    # queues stay within their bound (64, drop-oldest); on an overloaded machine they may sit at it, and
    # then every item that did not fit was dropped and counted rather than queued without limit
    assert s["encoder_queue"]["max"] <= 64 and s["head_queue"]["max"] <= 64
    # lag does not build up: the second half's p95 stays within the first half's (x1.5 + 0.5 s for noise);
    # a service that falls behind its cameras shows a lag that keeps growing
    figures, _ = soak.evaluate(res)
    print("soak figures after warm-up", figures)
    assert figures["lag_p95_second_half_s"] <= 1.5 * figures["lag_p95_first_half_s"] + 0.5, figures
