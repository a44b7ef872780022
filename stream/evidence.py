"""Evidence per event: a JPEG snapshot of the peak frame and an MP4 clip around the event.

What an operator needs after an alert is to *see* it. Both files are written by one small worker thread
so that the live pipeline never waits for a disk or an encoder:

* **Packet ring** (:class:`PacketRing`, one per camera, fed by the camera's reader thread): the last
  ``ring_seconds`` of *compressed* packets (not decoded frames: a 640x360 H.264 camera costs about
  100 kB per second, a decoded second would cost 17 MB), each stamped with the same capture-time clock
  the frames use (``packet pts + (capture - pts) of the latest decoded frame``), so event times map
  straight to packets. Trimming drops whole GOPs only, so the oldest kept packet is always a keyframe at
  or before the horizon; a byte cap bounds it hard. No ring exists when evidence is disabled.
* **Recording** (:class:`Recording`): when an event starts, the packets of its segment from the last
  keyframe at or before ``start - pre_roll`` are taken from the ring (shared, not copied), and every new
  packet is appended until ``end + post_roll``. A clip is capped at ``max_clip_seconds`` (300 s) and
  ``max_clip_bytes`` (256 MiB): a longer event gets a clip of its first five minutes (plus pre-roll),
  and ``clip_truncated: true``.
* **Segments**: the packets of one reader session with one resolution/pixel format share one codec
  template. A reconnect, a file loop or a resolution change starts a new segment, and a clip never
  crosses one: it is **cut at the change** (the part containing the event start is kept).
* **Clip** (:func:`remux_clip`): remuxed without re-encoding (PyAV output stream from the detached codec
  template, packets rebased so the first one has dts 0), starting on a keyframe, written to a temporary
  name and renamed (atomic).
* **Snapshot** (:func:`write_snapshot`): the frame of the window score with the highest score of the
  event (the frame the model embedded for that snippet), JPEG via OpenCV, written atomically **when the
  event ends** (one write per event; start and update events carry ``evidence: null``).
* **End events are held**: the ``end`` is handed to the sinks only once both files exist (or failed), so
  its ``evidence`` object names files a receiver can open. The wait is ``post_roll`` of capture time at
  most (plus ``grace`` seconds of wall time if the camera went silent); starts and updates are never
  delayed. Held ends are bounded (``max_pending``); beyond it an end is sent at once without evidence
  (counted as ``dsanet_evidence_total{result="dropped"}``). A later event of the same camera can
  therefore start before the previous end arrives; receivers order per ``id``.
* **Retention**: after each write and every ``retention_interval`` seconds, files older than
  ``max_age_days`` are deleted, then the oldest until the total is below ``max_total_mb``.
* **Paths**: ``<directory>/<camera slug>/<start UTC>_<event id prefix>.{jpg,mp4}``; the event carries
  them *relative to* ``evidence.directory``. The slug keeps ``[A-Za-z0-9_-]`` only (plus a hash of the
  real name when anything was replaced) and the resolved folder is checked to be inside the directory,
  so no camera name can escape it; no URL ever takes part in a file name.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DsanetError
from stream.events import Event, iso_utc
from stream.redact import redact
from stream.types import Frame, WindowScore

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_RING_BYTES = 64 * MIB  # per camera; a 4 Mbit/s camera fills it in ~2 minutes, far more than needed
DEFAULT_MAX_CLIP_SECONDS = 300.0
DEFAULT_MAX_CLIP_BYTES = 256 * MIB
DEFAULT_MAX_PENDING = 64  # held end events waiting for their files
DEFAULT_GRACE = 3.0  # wall seconds beyond post_roll to wait for a silent camera's packets
DEFAULT_RETENTION_INTERVAL = 300.0
EVIDENCE_SUFFIXES = (".jpg", ".mp4")


class EvidenceError(DsanetError):
    """The evidence directory cannot be used, or a camera name would leave it."""


# ------------------------------------------------------------------------------------------- paths


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def camera_slug(name: str) -> str:
    """A file-name-safe folder name for a camera: ``[A-Za-z0-9_-]`` only, at most ~60 characters.

    Anything replaced (dots, slashes, spaces, unicode) adds a short hash of the real name, so two names
    that differ only in unsafe characters still get different folders.
    """
    slug = _UNSAFE.sub("-", redact(name)).strip("-")[:48]  # redact: a URL-like name loses its password
    if slug != name or not slug:
        slug = f"{slug or 'camera'}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
    return slug


def safe_camera_dir(root: Path, camera: str) -> Path:
    """``root/<slug>``, resolved and checked to lie strictly inside ``root`` (symlinks included)."""
    base = root.resolve()
    path = (base / camera_slug(camera)).resolve()
    if path == base or not path.is_relative_to(base):
        raise EvidenceError(f"camera {camera!r}: evidence folder would be outside {base}")
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ packets


class BufferedPacket:
    """One compressed packet with its capture time (bytes are shared between ring and recordings)."""

    __slots__ = ("capture", "pts", "dts", "duration", "keyframe", "data", "segment")

    def __init__(self, capture: float, pts: int | None, dts: int | None, duration: int | None, keyframe: bool,
                 data: bytes, segment: Segment):
        self.capture, self.pts, self.dts, self.duration = capture, pts, dts, duration
        self.keyframe, self.data, self.segment = keyframe, data, segment


class Segment:
    """Packets that can go into one MP4 stream: one reader session, one resolution and pixel format.

    The codec template is *detached* from the reader's input container (copied into a never-written
    in-memory output), because the input is closed when the session ends while clips are written later.
    """

    _ids = 0

    def __init__(self, stream: Any, width: int | None, height: int | None, pix_fmt: str | None):
        Segment._ids += 1
        self.id = Segment._ids
        self.width, self.height, self.pix_fmt = width, height, pix_fmt
        self.closed = False
        self.template: Any = None
        self.error: str | None = None
        self.time_base: Fraction = Fraction(1, 90000)
        self._holder: Any = None
        try:
            import av

            self.codec = str(stream.codec_context.name)
            self.time_base = Fraction(stream.time_base) if stream.time_base else self.time_base
            self._holder = av.open(io.BytesIO(), mode="w", format="mp4")
            self.template = self._holder.add_stream_from_template(stream)
        except Exception as exc:  # codec not muxable into MP4, odd stream: snapshots still work
            self.codec = getattr(getattr(stream, "codec_context", None), "name", "?")
            self.error = redact(f"cannot remux {self.codec} into MP4: {exc}")


class Recording:
    """The packets of one event's clip, collected from the ring as they arrive (see module docstring)."""

    def __init__(self, event_id: str, camera: str, since: float, segment: Segment | None,
                 max_seconds: float, max_bytes: int):
        self.event_id, self.camera, self.since = event_id, camera, since
        self.segment = segment
        self.packets: list[BufferedPacket] = []
        self.bytes = 0
        self.max_seconds, self.max_bytes = max_seconds, max_bytes
        self.end_time: float | None = None  # capture time the clip must reach (event end + post_roll)
        self.truncated = False  # hit a cap: the clip covers the start of the event only
        self.cut = False  # the segment ended (reconnect, resolution change, end of file, shutdown)
        self.receiving = True  # still takes packets from the ring

    def add(self, p: BufferedPacket) -> None:
        """Called under the ring's lock for every new packet while ``receiving``."""
        if self.segment is None:  # nothing was buffered yet: the clip starts with the first keyframe
            if not p.keyframe:
                return
            self.segment = p.segment
        if p.segment is not self.segment:
            self.cut, self.receiving = True, False
            return
        if not self.packets and not p.keyframe:
            return  # a clip starts on a keyframe
        if self.end_time is not None and p.capture > self.end_time:
            self.receiving = False
            return
        if self.packets and (p.capture - self.packets[0].capture > self.max_seconds
                             or self.bytes + len(p.data) > self.max_bytes):
            self.truncated, self.receiving = True, False
            return
        self.packets.append(p)
        self.bytes += len(p.data)

    def selected(self) -> list[BufferedPacket]:
        """The packets of the clip: from the first (key)frame up to ``end_time``."""
        if self.end_time is None:
            return list(self.packets)
        return [p for p in self.packets if p.capture <= self.end_time + 1e-6]


class PacketRing:
    """Recent compressed packets of one camera, bounded by seconds (whole GOPs) and by bytes.

    ``begin_segment``/``push``/``end_segment`` are called by the camera's reader thread; ``record`` and
    ``finish`` by the service's head worker; everything is guarded by one short lock.
    """

    def __init__(self, camera: str, max_seconds: float, max_bytes: int = DEFAULT_RING_BYTES,
                 on_ready: Callable[[], None] | None = None):
        if max_seconds <= 0 or max_bytes <= 0:
            raise ValueError("ring bounds must be positive")
        self.camera = camera
        self.max_seconds, self.max_bytes = float(max_seconds), int(max_bytes)
        self.on_ready = on_ready
        self._lock = threading.Lock()
        self._packets: deque[BufferedPacket] = deque()
        self._keys: deque[BufferedPacket] = deque()  # keyframes among _packets, same order
        self._bytes = 0
        self._segment: Segment | None = None
        self._recordings: list[Recording] = []
        self.pushed = 0
        self.dropped_for_bytes = 0  # packets dropped by the byte cap before the time horizon

    # -- reader side -------------------------------------------------------------------------------
    def begin_segment(self, stream: Any, width: int | None = None, height: int | None = None,
                      pix_fmt: str | None = None) -> None:
        seg = Segment(stream, width, height, pix_fmt)  # outside the lock: opens an in-memory muxer
        with self._lock:
            self._close_segment()
            self._segment = seg
        if seg.error:
            log.warning("camera %s: %s; clips will be skipped for this stream", self.camera, seg.error)

    def end_segment(self) -> None:
        with self._lock:
            self._close_segment()
            self._segment = None

    def _close_segment(self) -> None:
        if self._segment is None:
            return
        self._segment.closed = True
        ready = False
        for r in self._recordings:
            if r.segment is self._segment:
                r.cut, r.receiving = True, False
                ready = True
        self._recordings = [r for r in self._recordings if r.receiving]
        if ready and self.on_ready is not None:
            self.on_ready()

    def push(self, data: bytes, pts: int | None, dts: int | None, duration: int | None, keyframe: bool,
             capture: float) -> None:
        ready = False
        with self._lock:
            seg = self._segment
            if seg is None:
                return
            p = BufferedPacket(capture, pts, dts, duration, bool(keyframe), data, seg)
            self._packets.append(p)
            self._bytes += len(data)
            if p.keyframe:
                self._keys.append(p)
            self.pushed += 1
            self._trim(capture - self.max_seconds)
            if self._recordings:
                for r in self._recordings:
                    r.add(p)
                    ready |= not r.receiving
                if ready:
                    self._recordings = [r for r in self._recordings if r.receiving]
        if ready and self.on_ready is not None:
            self.on_ready()

    def _pop(self) -> None:
        p = self._packets.popleft()
        self._bytes -= len(p.data)
        if self._keys and self._keys[0] is p:
            self._keys.popleft()

    def _trim(self, horizon: float) -> None:
        # time: drop whole GOPs while the next keyframe is still at or before the horizon
        while len(self._keys) >= 2 and self._keys[1].capture <= horizon:
            target = self._keys[1]
            while self._packets[0] is not target:
                self._pop()
        if self._keys and self._keys[0].capture <= horizon:
            target = self._keys[0]
            while self._packets[0] is not target:  # leading packets without their keyframe
                self._pop()
        elif not self._keys:
            while self._packets and self._packets[0].capture < horizon:
                self._pop()
        # bytes: hard cap, oldest first, whatever the GOP structure
        while self._bytes > self.max_bytes and len(self._packets) > 1:
            self._pop()
            self.dropped_for_bytes += 1

    # -- event side --------------------------------------------------------------------------------
    def record(self, event_id: str, since: float, event_start: float, max_seconds: float = DEFAULT_MAX_CLIP_SECONDS,
               max_bytes: int = DEFAULT_MAX_CLIP_BYTES) -> Recording:
        """Start collecting a clip from the last keyframe at or before ``since`` (the segment that holds
        ``event_start``); it keeps taking new packets until :meth:`finish` says where it ends."""
        with self._lock:
            pkts = list(self._packets)
            seg: Segment | None = None
            for p in pkts:  # the segment of the last packet at or before the event start
                if p.capture <= event_start:
                    seg = p.segment
            if seg is None:
                seg = pkts[0].segment if pkts else self._segment
            rec = Recording(event_id, self.camera, since, seg, max_seconds, max_bytes)
            same = [p for p in pkts if p.segment is seg]
            first = None
            for i, p in enumerate(same):
                if p.keyframe and (first is None or p.capture <= since):
                    first = i
                if p.capture > since and first is not None:
                    break
            if first is not None:
                for p in same[first:]:
                    rec.add(p)
            if seg is None or (seg is self._segment and not seg.closed):
                if rec.receiving:
                    self._recordings.append(rec)
            else:  # the event's segment is over already (reconnect since): the clip is cut there
                rec.cut, rec.receiving = True, False
            return rec

    def finish(self, rec: Recording, end_time: float) -> bool:
        """The event ended: the clip runs to ``end_time`` (capture). True when nothing more is awaited."""
        with self._lock:
            rec.end_time = end_time
            if rec.packets and rec.packets[-1].capture >= end_time:
                rec.receiving = False
            if not rec.receiving:
                self._recordings = [r for r in self._recordings if r is not rec]
            return not rec.receiving

    def stop_recording(self, rec: Recording) -> None:
        """No more packets for this recording (shutdown, deadline)."""
        with self._lock:
            rec.receiving = False
            self._recordings = [r for r in self._recordings if r is not rec]

    # -- introspection -----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Packets, bytes and capture-time span held now (for tests, the memory figure, debugging)."""
        with self._lock:
            span = self._packets[-1].capture - self._packets[0].capture if self._packets else 0.0
            return {"packets": len(self._packets), "bytes": self._bytes, "seconds": span,
                    "keyframes": len(self._keys)}

    def packets(self) -> list[BufferedPacket]:
        with self._lock:
            return list(self._packets)


# ------------------------------------------------------------------------------------------ writers


def write_snapshot(path: Path, frame: Frame, quality: int = 90) -> None:
    """The frame as a JPEG (OpenCV), written to a temporary name and renamed."""
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(frame.image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise EvidenceError(f"camera {frame.camera!r}: JPEG encoding failed")
    _atomic_write(path, buf.tobytes())


def remux_clip(path: Path, segment: Segment, packets: list[BufferedPacket]) -> tuple[float, float]:
    """Write ``packets`` (starting on a keyframe) as an MP4 without re-encoding; returns the capture times
    (first, end) the clip covers. Timestamps are rebased so the first packet has dts 0."""
    import av

    if segment.template is None:
        raise EvidenceError(segment.error or "no codec template")
    if not packets or not packets[0].keyframe:
        raise EvidenceError("no keyframe in the buffered packets")
    tb = segment.time_base
    first = packets[0]
    base = first.dts if first.dts is not None else first.pts
    if base is None:
        base = 0
    tmp = path.with_name(path.name + ".tmp")
    last_end = first.capture
    try:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            st = out.add_stream_from_template(segment.template)
            prev_dts: int | None = None
            for p in packets:
                pts = p.pts if p.pts is not None else (p.dts if p.dts is not None else
                                                       int(round((p.capture - first.capture) / tb)) + base)
                dts = p.dts if p.dts is not None else pts
                pts, dts = pts - base, dts - base
                if prev_dts is not None and dts <= prev_dts:
                    continue  # non-monotonic timestamps would make the muxer fail; drop the packet
                prev_dts = dts
                pk = av.Packet(p.data)
                pk.pts, pk.dts = max(pts, dts), dts
                pk.time_base = tb
                if p.duration:
                    pk.duration = p.duration
                pk.is_keyframe = p.keyframe
                pk.stream = st
                out.mux(pk)
                dur = float(p.duration * tb) if p.duration else 0.0
                last_end = max(last_end, p.capture + dur)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return first.capture, last_end


# ---------------------------------------------------------------------------------------- retention


def enforce_retention(root: Path, max_age_seconds: float, max_total_bytes: int,
                      now: float | None = None, protect: frozenset[Path] = frozenset()) -> list[Path]:
    """Delete evidence older than ``max_age_seconds``, then the oldest until the total fits; returns what
    was deleted. Only ``*.jpg``/``*.mp4`` in the camera folders are touched (plus stale ``*.tmp``);
    ``protect`` (the files just written, which an end event is about to name) are never deleted."""
    now = time.time() if now is None else now
    files: list[tuple[float, int, Path]] = []
    deleted: list[Path] = []
    if not root.is_dir():
        return deleted
    for d in root.iterdir():
        if not d.is_dir() or d.is_symlink():
            continue
        for f in d.iterdir():
            try:
                if f.is_symlink() or not f.is_file():
                    continue
                st = f.stat()
            except OSError:
                continue
            if f.suffix == ".tmp":
                if now - st.st_mtime > 3600:  # left by a crash mid-write
                    _unlink(f, deleted)
                continue
            if f.suffix in EVIDENCE_SUFFIXES and f.resolve() not in protect:
                files.append((st.st_mtime, st.st_size, f))
    files.sort(key=lambda x: (x[0], str(x[2])))
    keep: list[tuple[float, int, Path]] = []
    for mtime, size, f in files:
        if now - mtime > max_age_seconds:
            _unlink(f, deleted)
        else:
            keep.append((mtime, size, f))
    total = sum(s for _, s, _ in keep)
    for _, size, f in keep:
        if total <= max_total_bytes:
            break
        if _unlink(f, deleted):
            total -= size
    return deleted


def _unlink(f: Path, deleted: list[Path]) -> bool:
    try:
        f.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("evidence retention: cannot delete %s (%s)", f, exc.strerror or exc)
        return False
    deleted.append(f)
    return True


# ------------------------------------------------------------------------------------------ manager


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

    Service use: ``ring = add_camera(name, on_threshold)`` (give the ring to the reader); ``observe(ws)``
    for every score *before* the event machine sees it; ``handle(ev)`` for every event (True: an end was
    taken and will be passed to ``dispatch`` once its files exist); ``start()``; at shutdown, after the
    open events were ended, ``stop(timeout)`` writes what is buffered and sends the held ends.
    """

    def __init__(self, cfg: Any, dispatch: Callable[[Event], None], metrics: Any = None, *,
                 ring_bytes: int = DEFAULT_RING_BYTES, max_clip_seconds: float = DEFAULT_MAX_CLIP_SECONDS,
                 max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES, max_pending: int = DEFAULT_MAX_PENDING,
                 grace: float = DEFAULT_GRACE, retention_interval: float = DEFAULT_RETENTION_INTERVAL):
        self.pre_roll = float(getattr(cfg, "pre_roll", 5.0))
        self.post_roll = float(getattr(cfg, "post_roll", 5.0))
        self.max_age_seconds = float(getattr(cfg, "max_age_days", 7.0)) * 86400.0
        self.max_total_bytes = int(float(getattr(cfg, "max_total_mb", 2048.0)) * MIB)
        self.root = Path(getattr(cfg, "directory", "evidence"))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EvidenceError(f"evidence.directory {str(self.root)!r}: cannot create it "
                                f"({exc.strerror or exc})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise EvidenceError(f"evidence.directory {str(self.root)!r}: not writable")
        self.root = self.root.resolve()
        self.dispatch = dispatch
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
        self._dirs[name] = safe_camera_dir(self.root, name)
        seconds = ring_seconds if ring_seconds is not None else self.pre_roll + 10.0
        ring = PacketRing(name, max(1.0, seconds), self.ring_bytes, on_ready=self._wake)
        self._cams[name] = _CameraState(ring, float(on_threshold))
        return ring

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
            self.dispatch(replace(job.event, evidence=evidence))
        except Exception:
            log.exception("camera %s: could not dispatch end event %s", job.event.camera, job.event.id)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _count(self, camera: str, kind: str, result: str) -> None:
        tally = self.written if result == "ok" else self.failed
        tally[kind] = tally.get(kind, 0) + 1
        hook = getattr(self.metrics, "evidence", None)
        if callable(hook):
            try:
                hook(camera, kind, result)
            except Exception:
                pass

    def _retention(self, protect: frozenset[Path] = frozenset()) -> None:
        try:
            gone = enforce_retention(self.root, self.max_age_seconds, self.max_total_bytes, protect=protect)
        except OSError as exc:
            log.warning("evidence retention failed: %s", exc.strerror or exc)
            return
        if gone:
            log.info("evidence retention: deleted %d file(s)", len(gone))
