"""The per-camera ring of compressed packets, its codec segments and the recordings taken from it."""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from stream.evidence.limits import (
    DEFAULT_MAX_CLIP_BYTES,
    DEFAULT_MAX_CLIP_SECONDS,
    DEFAULT_RING_BYTES,
)
from stream.redact import redact

log = logging.getLogger("stream.evidence")


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
