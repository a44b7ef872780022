"""The live side of per-camera calibration: sample scores, learn thresholds, persist and apply them.

- Scores reach :meth:`Calibrator.on_record` from the service's listener thread (``Service.add_listener``),
  never from the head thread; each calibrated camera keeps the newest ``min(max_samples,
  period / snippet_seconds)`` scores in a bounded ring (8 bytes a score).
- Learning (``stream.calibration.learn_thresholds``: a replay of the event machine) runs in the
  ``calibrator`` thread: once per camera when a full ``period`` of scores has been collected, and on demand
  (:meth:`Calibrator.relearn`: now, from the scores collected, or after a fresh period).
- A result is written to ``DIRECTORY/<camera>.json`` with ``engine.atomic.atomic_write`` and applied with
  ``set_thresholds`` (the service's own ``Service.set_thresholds``). At start a camera's file is re-loaded
  when it was learned on the same bundle (head hash); a file from another bundle is ignored (its scores
  would mean something else) and the camera collects again.
- **After a bundle hot swap** (:meth:`Calibrator.rebase`, called by ``Service.swap_bundle``) thresholds
  learned on the old bundle are dropped: its scores and the new bundle's are different distributions,
  so a threshold that cut the old bundle's false alarms to the target may let the new one fire all day
  or never. Each calibrated camera goes back to its configured thresholds at once and collects a fresh
  period of the new bundle's scores (the ones collected so far are discarded for the same reason); its
  file stays, naming the old bundle, until the new period replaces it (a restart on the old bundle
  re-loads it). A learning pass still running on old scores when the swap lands is not applied.
- Scores lost to a full listener queue, or a camera outage, leave no mark: the ring holds scores in order,
  as if contiguous. That only shortens the period the rate is measured over.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write
from engine.errors import DsanetError
from stream.calibration import CalibratedThresholds, CalibrationError, learn_thresholds
from stream.config import CalibrationConfig, EventsConfig
from stream.types import ScoreRecord

log = logging.getLogger(__name__)

FORMAT = 1
MIN_SAMPLES = 16
STATE_OFF, STATE_COLLECTING, STATE_LEARNING, STATE_CALIBRATED = "off", "collecting", "learning", "calibrated"


class CalibrationUnavailable(DsanetError):
    """A relearn was asked of a camera that does not calibrate, or has too few scores."""


class _Ring:
    """The newest ``size`` scores, in order (a float64 array used as a circular buffer)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = array("d", bytes(8 * size))
        self._n = 0  # scores ever added

    def add(self, v: float) -> None:
        self._buf[self._n % self.size] = v
        self._n += 1

    def __len__(self) -> int:
        return min(self._n, self.size)

    def values(self) -> list[float]:
        if self._n <= self.size:
            return self._buf[:self._n].tolist()
        i = self._n % self.size
        return self._buf[i:].tolist() + self._buf[:i].tolist()

    def clear(self) -> None:
        self._n = 0


@dataclass
class _Camera:
    name: str
    cfg: CalibrationConfig
    events: EventsConfig  # the configured timing and hysteresis the replay uses
    ring: _Ring
    state: str = STATE_COLLECTING
    collected: int = 0  # scores since the current period began
    result: CalibratedThresholds | None = None
    learned_at: float | None = None
    error: str | None = None
    due: bool = False  # learn at the next chance (full period, or asked now)


class Calibrator:
    """Per-camera calibration for one service. Thread-safe; ``start``/``stop`` run the learning thread."""

    def __init__(self, snippet_seconds: float, set_thresholds: Callable[[str, float, float], None],
                 bundle_hash: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.snippet_seconds = float(snippet_seconds)
        self._set_thresholds = set_thresholds
        self.bundle_hash = bundle_hash
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._cams: dict[str, _Camera] = {}
        self._generation = 0  # bumped by rebase: results learned on an older bundle's scores are not applied

    # ------------------------------------------------------------------------------ cameras
    def track(self, name: str, cfg: CalibrationConfig, events: EventsConfig) -> EventsConfig:
        """Start calibrating a camera (no-op when its calibration is off); returns ``events`` with the
        thresholds re-loaded from its file when there is a valid one for this bundle."""
        if not cfg.enabled:
            with self._lock:
                self._cams.pop(name, None)
            return events
        size = max(MIN_SAMPLES, min(cfg.max_samples, math.ceil(cfg.period / self.snippet_seconds)))
        cam = _Camera(name, cfg, events, _Ring(size))
        loaded = self._load(name, cfg)
        out = events
        if loaded is not None:
            res, at = loaded
            on = max(res.on, cfg.floor)
            off = min(max(res.off, 0.0), on)
            cam.result, cam.learned_at = CalibratedThresholds(on, off, res.expected_per_day, res.samples), at
            cam.state = STATE_CALIBRATED
            out = events.model_copy(update={"on_threshold": on, "off_threshold": off})
            log.info("camera %s: calibrated thresholds re-loaded (on %.4f, off %.4f)", name, on, off)
        with self._lock:
            self._cams[name] = cam
        return out

    def forget(self, name: str) -> None:
        """Stop calibrating a removed camera (its file stays: re-adding it re-loads the thresholds)."""
        with self._lock:
            self._cams.pop(name, None)

    def rebase(self, bundle_hash: str | None) -> list[str]:
        """A new bundle scores from now on: every camera discards the scores collected and starts a fresh
        period; cameras that had learned thresholds go back to their configured ones (returned)."""
        with self._lock:
            if bundle_hash == self.bundle_hash:
                return []
            self.bundle_hash = bundle_hash
            self._generation += 1
            reset = []
            for cam in self._cams.values():
                if cam.result is not None:
                    reset.append(cam)
                cam.ring.clear()
                cam.collected, cam.due, cam.error, cam.result, cam.learned_at = 0, False, None, None, None
                cam.state = STATE_COLLECTING
        for cam in reset:
            self._set_thresholds(cam.name, cam.events.on_threshold, cam.events.off_threshold)
            log.info("camera %s: calibrated thresholds dropped after the bundle swap (back to on %.4f, off %.4f); "
                     "collecting %g s of the new bundle's scores", cam.name, cam.events.on_threshold,
                     cam.events.off_threshold, cam.cfg.period)
        return [c.name for c in reset]

    @property
    def active(self) -> bool:
        with self._lock:
            return bool(self._cams)

    # ------------------------------------------------------------------------------ data
    def on_record(self, rec: Any) -> None:
        """Listener: one score (``ScoreRecord``) into its camera's ring; events are ignored."""
        if not isinstance(rec, ScoreRecord):
            return
        with self._lock:
            cam = self._cams.get(rec.camera)
            if cam is None:
                return
            cam.ring.add(float(rec.score))
            cam.collected += 1
            if cam.state == STATE_COLLECTING and cam.collected * self.snippet_seconds >= cam.cfg.period:
                cam.due = True
                self._wake.set()

    def relearn(self, name: str, now: bool = False) -> dict[str, Any]:
        """On demand: ``now`` learns from the scores collected (at least ``MIN_SAMPLES``) at the thread's next
        turn; otherwise a fresh period starts (thresholds stay as they are until it is complete)."""
        with self._lock:
            cam = self._cams.get(name)
            if cam is None:
                raise CalibrationUnavailable(f"camera {name!r}: calibration is not enabled for it "
                                             f"(calibration.enabled in the config)")
            if now:
                if len(cam.ring) < MIN_SAMPLES:
                    raise CalibrationUnavailable(f"camera {name!r}: {len(cam.ring)} scores collected, "
                                                 f"need at least {MIN_SAMPLES} to calibrate now")
                cam.due = True
                cam.state = STATE_LEARNING
                self._wake.set()
            else:
                cam.ring.clear()
                cam.collected, cam.due, cam.error = 0, False, None
                cam.state = STATE_COLLECTING
        return self.describe(name)

    def describe(self, name: str) -> dict[str, Any]:
        """The camera's calibration for the API: state, progress, the learned thresholds, the settings."""
        with self._lock:
            cam = self._cams.get(name)
            if cam is None:
                return {"enabled": False, "state": STATE_OFF}
            c = cam.cfg
            res = cam.result
            return {
                "enabled": True, "state": cam.state,
                "progress": round(min(1.0, cam.collected * self.snippet_seconds / c.period), 4),
                "collected_scores": len(cam.ring),
                "on_threshold": None if res is None else round(res.on, 6),
                "off_threshold": None if res is None else round(res.off, 6),
                "expected_per_day": None if res is None else round(res.expected_per_day, 4),
                "samples": None if res is None else res.samples,
                "learned_at": cam.learned_at, "error": cam.error,
                "period": c.period, "target_per_day": c.target_per_day, "floor": c.floor,
            }

    # ------------------------------------------------------------------------------ learning
    def learn_due(self) -> list[str]:
        """Learn every camera that is due (the thread's work; tests call it directly); returns their names."""
        with self._lock:
            due = [(c, c.ring.values()) for c in self._cams.values() if c.due]
            for c, _ in due:
                c.due, c.state = False, STATE_LEARNING
            generation = self._generation
        done = []
        for cam, values in due:
            try:
                res = learn_thresholds(values, self.snippet_seconds, cam.events, cam.cfg.target_per_day,
                                       cam.cfg.floor)
                with self._lock:
                    if generation != self._generation:  # a swap landed meanwhile: these were the old bundle's
                        log.info("camera %s: calibration learned on the previous bundle's scores discarded",
                                 cam.name)
                        continue
                self._save(cam, res)
                self._set_thresholds(cam.name, res.on, res.off)
            except (CalibrationError, DsanetError, OSError, ValueError, KeyError) as exc:
                with self._lock:
                    cam.error, cam.state = str(exc), (STATE_CALIBRATED if cam.result else STATE_COLLECTING)
                log.warning("camera %s: calibration failed: %s", cam.name, exc)
                continue
            with self._lock:
                cam.result, cam.learned_at, cam.error, cam.state = res, self._clock(), None, STATE_CALIBRATED
            log.info("camera %s: calibrated on %d scores: on %.4f, off %.4f (%.2f alerts/day on them)",
                     cam.name, res.samples, res.on, res.off, res.expected_per_day)
            done.append(cam.name)
        return done

    def _path(self, name: str, cfg: CalibrationConfig) -> Path:
        return Path(cfg.directory) / f"{name}.json"  # camera names cannot hold '/' or '..'

    def _save(self, cam: _Camera, res: CalibratedThresholds) -> None:
        doc = {"format": FORMAT, "camera": cam.name, **res.as_dict(), "learned_at": self._clock(),
               "bundle": self.bundle_hash, "snippet_seconds": self.snippet_seconds, "period": cam.cfg.period,
               "target_per_day": cam.cfg.target_per_day, "floor": cam.cfg.floor}
        path = self._path(cam.name, cam.cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())

    def _load(self, name: str, cfg: CalibrationConfig) -> tuple[CalibratedThresholds, float | None] | None:
        path = self._path(name, cfg)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != FORMAT or doc.get("camera") != name:
                raise ValueError("not a calibration file of this camera")
            res = CalibratedThresholds(float(doc["on"]), float(doc["off"]), float(doc["expected_per_day"]),
                                       int(doc["samples"]))
            if not (0.0 <= res.off <= res.on <= 1.0):
                raise ValueError(f"thresholds out of range (on {res.on}, off {res.off})")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("camera %s: ignoring calibration file %s: %s", name, path, exc)
            return None
        if doc.get("bundle") != self.bundle_hash:
            log.warning("camera %s: calibration file %s was learned on another bundle (%s, now %s); "
                        "collecting again", name, path, doc.get("bundle"), self.bundle_hash)
            return None
        at = doc.get("learned_at")
        return res, float(at) if isinstance(at, (int, float)) else None

    # ------------------------------------------------------------------------------ thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="calibrator", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._stopped.is_set():
                self.learn_due()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = ["Calibrator", "CalibrationUnavailable", "MIN_SAMPLES"]
