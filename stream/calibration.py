"""Per-camera threshold calibration: on/off thresholds learned from a camera's own score distribution.

:func:`learn_thresholds` replays a run of scores (one per snippet, in capture order, ``snippet_seconds``
apart) through the real event machine (``stream.events.EventMachine``, so ``min_duration``, ``hold`` and
``cooldown`` count exactly as they do live) and picks the lowest ``on_threshold`` whose replay raises no
more start events than ``target_per_day`` allows over the run's length. A plain quantile would ignore
that one long anomaly is one alert and a thousand isolated blips shorter than ``min_duration`` are none.

- ``on`` is never below ``floor`` (the operator's bound): a camera that sees nothing but calm learns
  ``floor``, not a threshold that fires on noise later.
- ``off`` keeps the configured hysteresis: ``on - (events.on_threshold - events.off_threshold)``, at
  least 0.
- The replay knows no categories (scores only), so a cooldown holds back every new start as if all
  alerts were of one category; with several categories live, the rate can be somewhat higher.
- The count of starts is a step function of ``on`` that changes only at the scores' own values, so the
  candidates are those values; a binary search finds the boundary (about 17 replays for 100k scores),
  then the answer is checked and, if the count is not monotone there, moved up until it meets the target.

No threads and no clock: the same scores give the same thresholds (the live wiring is
``stream.calibrator``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from stream.config import EventsConfig
from stream.events import EventMachine
from stream.types import WindowScore

SECONDS_PER_DAY = 86400.0
_CAMERA = "calibration"
_CLASSES = ("Normal", "Anomaly")


class CalibrationError(ValueError):
    """Calibration cannot run on these inputs (too few scores, bad target or floor)."""


@dataclass(frozen=True)
class CalibratedThresholds:
    """What a calibration learned: thresholds, the alert rate they give on the scores, and how many scores."""

    on: float
    off: float
    expected_per_day: float  # start events per day of the replay at (on, off)
    samples: int  # scores the thresholds were learned from

    def as_dict(self) -> dict[str, float | int]:
        return {"on": self.on, "off": self.off, "expected_per_day": self.expected_per_day, "samples": self.samples}


def count_starts(scores: Sequence[float], snippet_seconds: float, events: EventsConfig) -> int:
    """Start events the event machine raises on ``scores`` with ``events``' thresholds and timing.

    Scores below ``on_threshold`` while the machine is idle are not fed: they change nothing there, and
    the capture-time gap they leave only resets a pending or open event, which an idle machine has not.
    So a replay costs time in proportion to the snippets near alerts, not to the period.
    """
    machine = EventMachine(_CAMERA, events, list(_CLASSES))
    n = 0
    step = float(snippet_seconds)
    on = events.on_threshold
    idle = EventMachine.IDLE
    for i, s in enumerate(scores):
        score = min(max(float(s), 0.0), 1.0)
        if score < on and machine.state == idle:
            continue  # a no-op for an idle machine (the time gap it leaves resets nothing when idle)
        t = i * step
        ws = WindowScore(_CAMERA, i, t, t + step, score, (1.0 - score, score), i, t + step)
        for ev in machine.push(ws):
            if ev.type == "start":
                n += 1
    return n


def learn_thresholds(scores: Sequence[float], snippet_seconds: float, events: EventsConfig,
                     target_per_day: float, floor: float) -> CalibratedThresholds:
    """The lowest on/off thresholds (``on >= floor``) whose event-machine replay on ``scores`` raises at
    most ``target_per_day`` start events per day of scores; see the module docstring."""
    if not snippet_seconds > 0 or not math.isfinite(snippet_seconds):
        raise CalibrationError(f"snippet_seconds must be > 0, got {snippet_seconds!r}")
    if not target_per_day >= 0 or not math.isfinite(target_per_day):
        raise CalibrationError(f"target_per_day must be >= 0, got {target_per_day!r}")
    if not 0.0 <= floor <= 1.0:
        raise CalibrationError(f"floor must be within [0, 1], got {floor!r}")
    values = [float(s) for s in scores]
    if len(values) < 2:
        raise CalibrationError(f"need at least 2 scores to calibrate, got {len(values)}")
    if any(not math.isfinite(v) for v in values):
        raise CalibrationError("scores must be finite numbers")
    days = len(values) * snippet_seconds / SECONDS_PER_DAY
    budget = target_per_day * days
    gap = max(events.on_threshold - events.off_threshold, 0.0)

    def settings(on: float) -> EventsConfig:
        return events.model_copy(update={"on_threshold": on, "off_threshold": max(on - gap, 0.0)})

    cache: dict[float, int] = {}

    def starts(on: float) -> int:
        if on not in cache:
            cache[on] = count_starts(values, snippet_seconds, settings(on))
        return cache[on]

    # candidates: the floor, every distinct score above it, and just above the largest score (no event)
    above = sorted({min(v, 1.0) for v in values if v > floor})
    top = min(math.nextafter(max(values), math.inf), 1.0)
    candidates = [floor, *above]
    if top > candidates[-1]:
        candidates.append(top)
    lo, hi = 0, len(candidates) - 1
    if starts(candidates[hi]) > budget:
        lo = hi  # even the highest candidate fires too often (scores at 1.0): report it as it is
    while lo < hi:  # first candidate whose replay meets the budget (monotone in the usual case)
        mid = (lo + hi) // 2
        if starts(candidates[mid]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    while lo < len(candidates) - 1 and starts(candidates[lo]) > budget:
        lo += 1  # not monotone around the boundary: step up until the target is met
    on = candidates[lo]
    chosen = settings(on)
    return CalibratedThresholds(on=on, off=chosen.off_threshold, expected_per_day=starts(on) / days,
                                samples=len(values))


__all__ = ["CalibratedThresholds", "CalibrationError", "count_starts", "learn_thresholds"]
