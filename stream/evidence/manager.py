"""The evidence stage: follows scores, holds each end event until its snapshot and clip exist, writes
them in its own worker thread and passes every event on downstream (to the sinks)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.config import EvidenceConfig
from stream.events import Event, iso_utc
from stream.evidence.limits import (
    DEFAULT_GRACE,
    DEFAULT_MAX_CLIP_BYTES,
    DEFAULT_MAX_CLIP_SECONDS,
    DEFAULT_MAX_PENDING,
    DEFAULT_RETENTION_INTERVAL,
    DEFAULT_RING_BYTES,
    MIB,
)
from stream.evidence.paths import EvidenceError, safe_camera_dir
from stream.evidence.retention import enforce_retention
from stream.evidence.ring import PacketRing, Recording
from stream.evidence.writers import remux_clip, write_snapshot
from stream.redact import redact
from stream.types import WindowScore

if TYPE_CHECKING:
    from stream.metrics import Metrics

log = logging.getLogger("stream.evidence")


@dataclass
class _CameraState:
    ring: PacketRing | None
    on_threshold: float
    run_best: WindowScore | None = None  # best frame of the current run of scores >= on_threshold
    last: WindowScore | None = None
    event_id: str | None = None
    best: WindowScore | None = None  # best frame of the open event
    recording: Recording | None = None


@dataclass
class _Held:
    event: Event
    recording: Recording | None
    best: WindowScore | None
    deadline: float  # monotonic: write with what we have after this
    ready: bool = False


class EvidenceManager:
    """Owns the rings, follows scores and events, and writes evidence in its own worker thread.

    A stage of the event path: ``submit(ev)`` for every event passes it to ``downstream`` (the sinks) at
    once, except an end, which is held until its files exist (or failed) and then passed on from the
    worker thread. Setup: ``ring = add_camera(name, on_threshold)`` (give the ring to the reader);
    ``observe(ws)`` for every score *before* the event machine sees it; ``start()``; at shutdown, after
    the open events were ended, ``stop(timeout)`` writes what is buffered and sends the held ends.
    """

    def __init__(self, cfg: EvidenceConfig, downstream: Callable[[Event], None], metrics: Metrics | None = None, *,
                 ring_bytes: int = DEFAULT_RING_BYTES, max_clip_seconds: float = DEFAULT_MAX_CLIP_SECONDS,
                 max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES, max_pending: int = DEFAULT_MAX_PENDING,
                 grace: float = DEFAULT_GRACE, retention_interval: float = DEFAULT_RETENTION_INTERVAL):
        self.pre_roll = cfg.pre_roll
        self.post_roll = cfg.post_roll
        self.max_age_seconds = cfg.max_age_days * 86400.0
        self.max_total_bytes = int(cfg.max_total_mb * MIB)
        self.root = Path(cfg.directory)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EvidenceError(f"evidence.directory {str(self.root)!r}: cannot create it "
                                f"({exc.strerror or exc})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise EvidenceError(f"evidence.directory {str(self.root)!r}: not writable")
        self.root = self.root.resolve()
        self.downstream = downstream
        self._cams_lock = threading.Lock()
        self.metrics = metrics
        self.ring_bytes, self.max_clip_seconds, self.max_clip_bytes = ring_bytes, max_clip_seconds, max_clip_bytes
        self.max_pending, self.grace, self.retention_interval = max_pending, grace, retention_interval
        self._cams: dict[str, _CameraState] = {}
        self._dirs: dict[str, Path] = {}
        self._held: list[_Held] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._flush = False
        self._thread: threading.Thread | None = None
        self._busy: _Held | None = None
        self.heartbeat = time.monotonic()
        self.written: dict[str, int] = {"snapshot": 0, "clip": 0}
        self.failed: dict[str, int] = {"snapshot": 0, "clip": 0}

    # -- setup ------------------------------------------------------------------------------------
    def add_camera(self, name: str, on_threshold: float, ring_seconds: float | None = None) -> PacketRing:
        """Register a camera; returns its packet ring (``ring_seconds`` defaults to pre_roll + 10 s)."""
        folder = safe_camera_dir(self.root, name)
        seconds = ring_seconds if ring_seconds is not None else self.pre_roll + 10.0
        ring = PacketRing(name, max(1.0, seconds), self.ring_bytes, on_ready=self._wake)
        with self._cams_lock:
            self._dirs[name] = folder
            self._cams[name] = _CameraState(ring, float(on_threshold))
        return ring

    def set_threshold(self, name: str, on_threshold: float) -> None:
        """The camera's new start threshold (the peak frame of a pending run is tracked above it)."""
        st = self._cams.get(name)
        if st is not None:
            st.on_threshold = float(on_threshold)

    def remove_camera(self, name: str) -> None:
        """Forget a removed camera once its last end was submitted (a held end keeps its recording)."""
        with self._cams_lock:
            self._cams.pop(name, None)

    def submit(self, ev: Event) -> None:
        """The stage's input: pass ``ev`` downstream now, or hold it (an end) until its files exist."""
        try:
            if self.handle(ev):
                return
        except Exception:  # evidence must never cost an alert
            log.exception("camera %s: evidence failed for event %s", ev.camera, ev.id)
        self.downstream(ev)

    def camera_dir(self, name: str) -> Path:
        if name not in self._dirs:
            self._dirs[name] = safe_camera_dir(self.root, name)
        return self._dirs[name]

    # -- pipeline side (head worker thread; never blocks on disk) ---------------------------------
    def observe(self, ws: WindowScore) -> None:
        """Follow the scores to remember the peak frame (call before the event machine sees ``ws``)."""
        st = self._cams.get(ws.camera)
        if st is None:
            return
        st.last = ws if ws.frame is not None else st.last
        if ws.frame is None:
            return
        if st.event_id is not None:
            if st.best is None or ws.score > st.best.score:
                st.best = ws
        elif ws.score >= st.on_threshold:
            if st.run_best is None or ws.score > st.run_best.score:
                st.run_best = ws
        else:
            st.run_best = None

    def handle(self, ev: Event) -> bool:
        """Take note of an event. Returns True when the event (an end) is held and will be dispatched by
        the evidence worker; False when the caller should dispatch it now."""
        st = self._cams.get(ev.camera)
        if st is None:
            return False
        if ev.type == "start":
            best = st.run_best if st.run_best is not None and st.run_best.start_time >= ev.start_time - 1e-6 \
                else st.last
            st.event_id, st.best, st.run_best = ev.id, best, None
            st.recording = None
            if st.ring is not None:
                st.recording = st.ring.record(ev.id, ev.start_time - self.pre_roll, ev.start_time,
                                              self.max_clip_seconds + self.pre_roll, self.max_clip_bytes)
            return False
        if ev.type != "end" or st.event_id != ev.id:
            return False  # updates; ends we never saw start (restart recovery)
        rec, best = st.recording, st.best
        st.event_id, st.best, st.recording, st.run_best = None, None, None, None
        if self._stop.is_set():  # the worker is gone: send the end now
            if rec is not None and st.ring is not None:
                st.ring.stop_recording(rec)
            return False
        held = _Held(ev, rec, best, time.monotonic() + self.post_roll + self.grace)
        if rec is not None and st.ring is not None:
            end = (ev.end_time if ev.end_time is not None else ev.updated_time) + self.post_roll
            held.ready = st.ring.finish(rec, end)
        else:
            held.ready = True
        with self._cond:
            if len(self._held) >= self.max_pending:
                dropped = True
            else:
                dropped = False
                self._held.append(held)
                self._cond.notify()
        if dropped:
            log.warning("camera %s: evidence queue full (%d held ends); sending end %s without evidence",
                        ev.camera, self.max_pending, ev.id)
            self._count(ev.camera, "snapshot", "dropped")
            self._count(ev.camera, "clip", "dropped")
            if rec is not None and st.ring is not None:
                st.ring.stop_recording(rec)
            return False
        return True

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- worker -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._retention()
        self._thread = threading.Thread(target=self._run, name="evidence", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Write everything held now (what is buffered; readers are stopped by then) and send the held
        ends; ends not written within ``timeout`` are sent without evidence. True if all were written."""
        with self._cond:
            self._flush = True
            self._cond.notify()
        self._stop.set()
        ok = True
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            ok = not self._thread.is_alive()
        with self._cond:
            left, self._held = self._held, []
        for h in left:  # worker gone or too slow: never lose an end
            ok = False
            log.warning("camera %s: evidence for event %s not written before shutdown", h.event.camera, h.event.id)
            self._send(h, None)
        return ok

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._held)

    def _run(self) -> None:
        next_retention = time.monotonic() + self.retention_interval
        while True:
            self.heartbeat = time.monotonic()
            with self._cond:
                now = time.monotonic()
                due = [h for h in self._held
                       if self._flush or h.ready or h.recording is None or not h.recording.receiving
                       or now >= h.deadline]
                if not due:
                    if self._stop.is_set():
                        return
                    self._cond.wait(0.25)
                    continue
                job = due[0]
                self._held.remove(job)
                self._busy = job
            try:
                self._process(job)
            except Exception:  # never lose the end event, whatever happened to its files
                log.exception("camera %s: evidence for event %s failed", job.event.camera, job.event.id)
                self._send(job, None)
            finally:
                self._busy = None
            if time.monotonic() >= next_retention:
                self._retention()
                next_retention = time.monotonic() + self.retention_interval

    def _process(self, job: _Held) -> None:
        ev = job.event
        cam = self._cams.get(ev.camera)
        rec = job.recording
        if rec is not None and rec.receiving and cam is not None and cam.ring is not None:
            cam.ring.stop_recording(rec)  # deadline or shutdown: use what we have
        folder = self.camera_dir(ev.camera)
        folder.mkdir(parents=True, exist_ok=True)
        stem = datetime.fromtimestamp(ev.start_time, tz=timezone.utc).strftime("%Y%m%dT%H%M%S") + \
            f"Z_{ev.id.replace('-', '')[:12]}"
        errors: list[str] = []
        written: list[Path] = []
        out: dict[str, Any] = {"snapshot": None, "snapshot_time": None, "snapshot_score": None, "clip": None,
                               "clip_start": None, "clip_end": None, "clip_truncated": False, "errors": errors}
        best = job.best
        if best is not None and best.frame is not None:
            path = folder / (stem + ".jpg")
            try:
                write_snapshot(path, best.frame)
                written.append(path)
                out.update(snapshot=self._rel(path), snapshot_time=iso_utc(best.frame.capture_time),
                           snapshot_score=round(float(best.score), 4))
                self._count(ev.camera, "snapshot", "ok")
            except Exception as exc:
                errors.append(f"snapshot: {redact(exc)}")
                self._count(ev.camera, "snapshot", "failed")
                log.error("camera %s: cannot write snapshot for event %s: %s", ev.camera, ev.id, redact(exc))
        else:
            errors.append("snapshot: no frame")
            self._count(ev.camera, "snapshot", "failed")
        if rec is not None and rec.segment is not None:
            path = folder / (stem + ".mp4")
            try:
                t0, t1 = remux_clip(path, rec.segment, rec.selected())
                written.append(path)
                out.update(clip=self._rel(path), clip_start=iso_utc(t0), clip_end=iso_utc(t1),
                           clip_truncated=bool(rec.truncated or rec.cut and t1 < (rec.end_time or t1)))
                self._count(ev.camera, "clip", "ok")
            except Exception as exc:
                errors.append(f"clip: {redact(exc)}")
                self._count(ev.camera, "clip", "failed")
                log.error("camera %s: cannot write clip for event %s: %s", ev.camera, ev.id, redact(exc))
        else:
            errors.append("clip: no video buffered")
            self._count(ev.camera, "clip", "failed")
        self._retention(frozenset(p.resolve() for p in written))
        self._send(job, out)

    def _send(self, job: _Held, evidence: dict[str, Any] | None) -> None:
        try:
            self.downstream(replace(job.event, evidence=evidence))
        except Exception:
            log.exception("camera %s: could not dispatch end event %s", job.event.camera, job.event.id)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _count(self, camera: str, kind: str, result: str) -> None:
        tally = self.written if result == "ok" else self.failed
        tally[kind] = tally.get(kind, 0) + 1
        if self.metrics is not None:
            self.metrics.evidence(camera, kind, result)

    def _retention(self, protect: frozenset[Path] = frozenset()) -> None:
        try:
            gone = enforce_retention(self.root, self.max_age_seconds, self.max_total_bytes, protect=protect)
        except OSError as exc:
            log.warning("evidence retention failed: %s", exc.strerror or exc)
            return
        if gone:
            log.info("evidence retention: deleted %d file(s)", len(gone))
