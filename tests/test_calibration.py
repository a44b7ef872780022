"""Per-camera calibration: learn_thresholds replays the real event machine (stream/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stream.calibration import SECONDS_PER_DAY, CalibrationError, count_starts, learn_thresholds
from stream.config import EventsConfig
from stream.events import EventMachine
from stream.types import WindowScore

SNIP = 0.5


def _naive_starts(scores, events: EventsConfig) -> int:
    """Every score through the machine, nothing skipped."""
    m = EventMachine("c", events, ["Normal", "Anomaly"])
    n = 0
    for i, s in enumerate(scores):
        t = i * SNIP
        n += sum(ev.type == "start" for ev in m.push(WindowScore("c", i, t, t + SNIP, float(s),
                                                                 (1 - float(s), float(s)), i, t + SNIP)))
    return n


def _bursty(seed: int, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.beta(2, 9, size=n)
    for start in rng.integers(0, n - 40, size=25):
        s[start:start + rng.integers(1, 30)] = rng.uniform(0.5, 0.99)
    return s


@pytest.mark.parametrize("events", [
    EventsConfig(),
    EventsConfig(on_threshold=0.5, off_threshold=0.2, min_duration=0.0, hold=0.0, cooldown=0.0),
    EventsConfig(on_threshold=0.7, off_threshold=0.7, min_duration=3.0, hold=10.0, cooldown=60.0),
])
def test_fast_replay_counts_what_the_full_replay_counts(events: EventsConfig) -> None:
    for seed in range(3):
        s = _bursty(seed)
        assert count_starts(s, SNIP, events) == _naive_starts(s, events)


@pytest.mark.parametrize("target", [0.0, 20.0, 200.0])
def test_learned_thresholds_meet_the_target_and_are_the_lowest_that_do(target: float) -> None:
    s = _bursty(7)
    ev = EventsConfig()
    got = learn_thresholds(s, SNIP, ev, target_per_day=target, floor=0.1)
    days = len(s) * SNIP / SECONDS_PER_DAY
    gap = ev.on_threshold - ev.off_threshold
    assert got.samples == len(s)
    assert got.off == pytest.approx(max(got.on - gap, 0.0))
    at = count_starts(s, SNIP, ev.model_copy(update={"on_threshold": got.on, "off_threshold": got.off}))
    assert at <= target * days
    assert got.expected_per_day == pytest.approx(at / days)
    # the next lower score value would fire more often than the target allows
    lower = max(v for v in s if v < got.on)
    below = ev.model_copy(update={"on_threshold": lower, "off_threshold": max(lower - gap, 0.0)})
    assert lower < 0.1 or count_starts(s, SNIP, below) > target * days


def test_never_below_the_floor() -> None:
    calm = np.random.default_rng(1).uniform(0.0, 0.2, size=2000)
    got = learn_thresholds(calm, SNIP, EventsConfig(), target_per_day=1.0, floor=0.45)
    assert got.on == pytest.approx(0.45)
    assert got.expected_per_day == 0.0
    high = learn_thresholds(_bursty(2), SNIP, EventsConfig(), target_per_day=0.0, floor=0.3)
    assert high.on > 0.3


@pytest.mark.parametrize("change, lower", [
    ({"min_duration": 0.0}, False),  # every one-snippet blip is an alert: the threshold must clear them
    ({"min_duration": 1.0}, True),   # blips shorter than min_duration never start: a low threshold is fine
])
def test_event_timing_matters_not_just_the_quantile(change: dict, lower: bool) -> None:
    s = np.full(4000, 0.1)
    s[::50] = 0.9  # 80 isolated one-snippet blips
    ev = EventsConfig().model_copy(update=change)
    got = learn_thresholds(s, SNIP, ev, target_per_day=10.0, floor=0.2)
    assert (got.on < 0.9) is lower


def test_hold_merges_flicker_into_one_alert() -> None:
    s = np.full(4000, 0.05)
    s[1000:1400] = np.tile([0.9, 0.9, 0.9, 0.05], 100)  # flicker: 100 short runs in one stretch
    short = learn_thresholds(s, SNIP, EventsConfig(hold=0.0, cooldown=0.0), target_per_day=50.0, floor=0.2)
    long = learn_thresholds(s, SNIP, EventsConfig(hold=5.0, cooldown=0.0), target_per_day=50.0, floor=0.2)
    assert long.on < 0.9 <= short.on


@pytest.mark.parametrize("scores, kwargs, match", [
    ([0.5], {}, "at least 2"),
    ([0.1, 0.2], {"target_per_day": -1.0}, "target_per_day"),
    ([0.1, 0.2], {"floor": 1.5}, "floor"),
    ([0.1, float("nan")], {}, "finite"),
])
def test_bad_inputs_are_named(scores, kwargs, match) -> None:
    args = {"target_per_day": 1.0, "floor": 0.2, **kwargs}
    with pytest.raises(CalibrationError, match=match):
        learn_thresholds(scores, SNIP, EventsConfig(), **args)
