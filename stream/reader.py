"""Camera readers: one PyAV thread per camera, with timeouts, reconnects and an explicit state.

Why it looks like this (measured in ``docs/environment.md``):

* A killed RTSP server ends PyAV's demux loop *normally*, without an exception; a frozen one blocks a read
  for ever unless a timeout is set. So every open passes both FFmpeg's ``timeout`` option (microseconds,
  honoured by the RTSP and HTTP protocols) and PyAV's own ``timeout=(open_s, read_s)`` interrupt, and a
  live source whose loop ends for any reason is treated as a disconnect.
* Packets are demuxed and decoded separately: an exception from *decoding* one packet is a decode error
  (counted; the decoder resynchronises at the next decodable packet), an exception from *reading* is a
  connection failure (reconnect). A long run of consecutive decode errors also forces a reconnect.
* Reconnects use capped exponential backoff with jitter (:class:`Backoff`); the delay resets once a session
  has streamed healthily for ``reset_after`` seconds, so a flapping camera does not hammer its server.
* Each reader owns its thread and hands frames to a consumer *synchronously* in that thread. The consumer
  (the snippet cutter) is cheap and never blocks: it pushes into a bounded drop-oldest queue. So one
  camera's trouble (a hung socket, a slow decoder) can never slow another camera.
* Frames are handed over *undecoded to RGB* (:class:`LazyFrame`): converting YUV to RGB costs more than
  decoding at typical sizes, and only one frame per snippet is ever embedded, so only that one is
  converted. Each frame keeps its own size, so a resolution change mid-stream needs no special case.

Capture time (the clock snippets are cut on) is the *stream timestamp mapped to the wall clock*:

* live sources (:class:`LiveClock`): ``capture = anchor_wall + (pts - anchor_pts)``. The anchor is the
  frame that arrived with the least delay so far (whenever a frame would map later than its own arrival,
  the anchor moves back), so network bursts do not squeeze or stretch snippets the way arrival times
  would. Timestamps that go backwards or drift more than ``max_drift`` seconds from arrival re-anchor on
  the arrival time; frames without a timestamp use their arrival time.
* file sources (:class:`MediaClock`): ``capture = start_wall + media time``, continued seamlessly across
  loops. When ``realtime`` is on the reader sleeps so that frames are released at that capture time
  (like a camera); when off it reads as fast as it can and capture times run ahead of the wall clock
  (batch replay: snippets still cover exactly the media time the model was trained on).

Evidence (``stream.evidence``): when a :class:`PacketSink` is given, every demuxed packet is also handed
over *compressed* (a copy of its bytes) with its capture time on the same clock as the frames: ``packet
time + (capture - pts)`` of the latest decoded frame of the session, so event times map to packets. The
packets of a session before its first decoded frame wait (at most 512) until that offset is known. A new
session, or a frame whose size or pixel format differs from the previous one, starts a new segment (a clip
never crosses one). Without a sink nothing is buffered.

Credentials never reach a log line: URLs go through :func:`stream.redact.redact_url` and FFmpeg's
messages through :func:`stream.redact.redact`.
"""

from __future__ import annotations

import enum
import logging
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np

from engine.errors import DsanetError
from stream.redact import redact, redact_url
from stream.types import Frame

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")


class SourceError(DsanetError):
    """A camera URL cannot be used at all (unsupported scheme, missing file); retrying will not help."""


class CameraState(str, enum.Enum):
    """Where a reader is in its life; exported as ``dsanet_camera_state{camera,state}``."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


# ------------------------------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class BackoffPolicy:
    """Capped exponential backoff: ``initial * 2**n`` up to ``maximum``, each delay jittered by +/- ``jitter``."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 60.0  # seconds of healthy streaming after which the next failure starts again at initial
    jitter: float = 0.2  # fraction
    multiplier: float = 2.0


class Backoff:
    """Stateful delays for one camera. Jitter spreads reconnect storms when many cameras share a server."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None):
        self.policy = policy
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        p = self.policy
        base = min(p.maximum, p.initial * p.multiplier ** self.attempt)
        self.attempt += 1
        if p.jitter > 0:
            base *= 1.0 + self._rng.uniform(-p.jitter, p.jitter)
        return max(0.0, min(p.maximum, base))

    def reset(self) -> None:
        self.attempt = 0


# -------------------------------------------------------------------------------------------- clocks


class LiveClock:
    """Maps stream timestamps of a live source to wall-clock capture times (see module docstring)."""

    def __init__(self, max_drift: float = 5.0):
        self.max_drift = max_drift
        self._anchor_wall: float | None = None
        self._anchor_pts = 0.0
        self._last_pts: float | None = None
        self._last = float("-inf")

    def reset(self) -> None:
        """A new session (reconnect): timestamps restart, so does the mapping (monotonicity is kept)."""
        self._anchor_wall = None
        self._last_pts = None

    def capture_time(self, pts: float | None, arrival: float) -> float:
        if pts is None:
            t = arrival
        elif (self._anchor_wall is None or self._last_pts is None or pts < self._last_pts - 1e-6
              or self._anchor_wall + (pts - self._anchor_pts) < arrival - self.max_drift):
            self._anchor_wall, self._anchor_pts = arrival, pts
            t = arrival
        else:
            t = self._anchor_wall + (pts - self._anchor_pts)
            if t > arrival:  # this frame came faster than the anchor: it is the better anchor
                self._anchor_wall -= t - arrival
                t = arrival
        if pts is not None:
            self._last_pts = pts
        t = max(t, self._last)  # never backwards within a camera
        self._last = t
        return t


class MediaClock:
    """Capture time of file sources: wall time at the first frame + media time, continued across loops."""

    def __init__(self) -> None:
        self._base_wall: float | None = None  # wall time of media time 0 of the current loop
        self._base_mono = 0.0
        self._loop_first_pts: float | None = None
        self._last = float("-inf")
        self._frame_interval = 1.0 / 25.0
        self._count = 0

    def new_loop(self, frame_interval: float | None) -> None:
        """The file starts again: the next frame follows the last one by one frame interval."""
        if frame_interval:
            self._frame_interval = frame_interval
        if self._base_wall is not None:
            self._loop_first_pts = None
        self._count = 0

    def capture_time(self, pts: float | None, arrival: float, arrival_mono: float) -> tuple[float, float]:
        """Returns (capture wall time, monotonic time at which a real-time player releases the frame)."""
        media = pts if pts is not None else self._count * self._frame_interval
        self._count += 1
        if self._base_wall is None:
            self._base_wall, self._base_mono = arrival - media, arrival_mono - media
            self._loop_first_pts = media
        elif self._loop_first_pts is None:  # first frame of a new loop
            nxt = self._last + self._frame_interval
            shift = nxt - (self._base_wall + media)
            self._base_wall += shift
            self._base_mono += shift
            self._loop_first_pts = media
        t = max(self._base_wall + media, self._last)
        self._last = t
        return t, self._base_mono + (t - self._base_wall)


# ----------------------------------------------------------------------------------- frame hand-over


class LazyFrame:
    """A decoded frame not yet converted to RGB; :meth:`to_frame` converts once, on demand.

    Only valid inside the consumer call (the decoder may reuse its buffers afterwards), except that the
    consumer may keep *one* LazyFrame alive until it decides (PyAV frames are reference counted).
    """

    __slots__ = ("camera", "index", "capture_time", "monotonic", "pts_seconds", "width", "height", "_av", "_rgb",
                 "_frame")

    def __init__(self, camera: str, index: int, capture_time: float, monotonic: float, pts_seconds: float | None,
                 av_frame: Any = None, rgb: np.ndarray | None = None):
        self.camera, self.index = camera, index
        self.capture_time, self.monotonic, self.pts_seconds = capture_time, monotonic, pts_seconds
        self._av, self._rgb, self._frame = av_frame, rgb, None
        if rgb is not None:
            self.height, self.width = int(rgb.shape[0]), int(rgb.shape[1])
        else:
            self.height, self.width = int(av_frame.height), int(av_frame.width)

    def to_frame(self) -> Frame:
        if self._frame is None:
            rgb = self._rgb if self._rgb is not None else self._av.to_ndarray(format="rgb24")
            self._frame = Frame(camera=self.camera, index=self.index, capture_time=self.capture_time,
                                monotonic=self.monotonic, image=rgb, pts_seconds=self.pts_seconds)
            self._av = None  # release the decoder's buffer
        return self._frame

    @property
    def converted(self) -> bool:
        return self._frame is not None


class FrameConsumer(Protocol):
    """What a reader feeds. Both calls run in the reader's thread and must not block."""

    def on_frame(self, frame: LazyFrame) -> None: ...

    def on_discontinuity(self) -> None:
        """The stream ended or broke (reconnect, end of file, stop): flush what is pending."""


class PacketSink(Protocol):
    """Where compressed packets go when evidence is on (``stream.evidence.PacketRing``); reader thread."""

    def begin_segment(self, stream: Any, width: int | None = None, height: int | None = None,
                      pix_fmt: str | None = None) -> None: ...

    def push(self, data: bytes, pts: int | None, dts: int | None, duration: int | None, keyframe: bool,
             capture: float) -> None: ...

    def end_segment(self) -> None: ...


MAX_PENDING_PACKETS = 512  # packets of a session held until its first frame gives the pts -> capture offset


class ReaderMetrics(Protocol):
    def camera_state(self, camera: str, state: CameraState) -> None: ...

    def frame_decoded(self, camera: str) -> None: ...

    def decode_error(self, camera: str) -> None: ...

    def frames_lost(self, camera: str, n: int) -> None: ...

    def reconnect(self, camera: str) -> None: ...


class _NullMetrics:
    def camera_state(self, camera: str, state: CameraState) -> None:
        pass

    def frame_decoded(self, camera: str) -> None:
        pass

    def decode_error(self, camera: str) -> None:
        pass

    def frames_lost(self, camera: str, n: int) -> None:
        pass

    def reconnect(self, camera: str) -> None:
        pass


# ---------------------------------------------------------------------------------------- the reader


def source_kind(url: str) -> str:
    """``"file"`` for file:// URLs and plain paths, ``"rtsp"`` or ``"http"`` for live sources."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # plain or Windows path
        return "file"
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "http"
    raise SourceError(f"unsupported source {redact_url(url)!r}: use rtsp://, rtsps://, http(s):// or file://")


def file_path(url: str) -> str:
    """The local path of a file source (``file:///abs``, ``file:rel`` or a plain path)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return unquote((parts.netloc or "") + parts.path) if parts.netloc not in ("", "localhost") else unquote(parts.path)
    return url


@dataclass(frozen=True)
class ReaderSettings:
    """Everything one reader needs; built from ``cfg.cameras[i]`` and ``cfg.ingest`` by the service."""

    name: str
    url: str
    transport: str = "tcp"  # rtsp transport: tcp | udp
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    loop: bool = False  # file sources: start again at the end
    realtime: bool = True  # file sources: release frames at their media time
    max_consecutive_decode_errors: int = 100
    max_clock_drift: float = 5.0
    low_latency: bool = True  # RTSP: no input buffering in FFmpeg while probing


@dataclass
class ReaderStats:
    frames: int = 0
    decode_errors: int = 0
    frames_lost: int = 0  # frames missing from the stream, from gaps in presentation time
    reconnects: int = 0
    sessions: int = 0
    last_frame_monotonic: float | None = None
    last_error: str | None = None
    states: deque[CameraState] = field(default_factory=lambda: deque(maxlen=256))  # recent transitions


class CameraReader:
    """Reads one camera in its own daemon thread until :meth:`stop`. Never raises out of the thread."""

    def __init__(self, settings: ReaderSettings, consumer: FrameConsumer, metrics: ReaderMetrics | None = None,
                 rng: random.Random | None = None, packets: PacketSink | None = None):
        self.settings = settings
        self._last_pts: float | None = None
        self._pts_deltas: deque[float] = deque(maxlen=32)
        self.kind = source_kind(settings.url)
        if settings.transport not in ("tcp", "udp"):
            raise SourceError(f"camera {settings.name!r}: transport must be tcp or udp, not {settings.transport!r}")
        if self.kind == "file" and not Path(file_path(settings.url)).is_file():
            raise SourceError(f"camera {settings.name!r}: file {file_path(settings.url)!r} does not exist")
        self.consumer = consumer
        self.metrics: ReaderMetrics = metrics or _NullMetrics()
        self.backoff = Backoff(settings.backoff, rng)
        self.stats = ReaderStats()
        self.state = CameraState.STOPPED
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0
        self._finished = threading.Event()  # the source ended for good (file without loop)
        self._live_clock = LiveClock(settings.max_clock_drift)
        self._media_clock = MediaClock()
        self.heartbeat = time.monotonic()  # last time the loop made progress (for /healthz)
        self.packets = packets  # evidence packet ring, None when evidence is off
        self._stream: Any = None
        self._seg_key: tuple[int, int, str] | None = None
        self._pts_offset: float | None = None  # capture - pts of the latest frame of this session
        self._last_capture = 0.0
        self._pending_packets: list[tuple[bytes, int | None, int | None, int | None, bool, float | None]] = []

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def safe_url(self) -> str:
        return redact_url(self.settings.url)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end; it notices between packets (at most one read timeout later)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def finished(self) -> bool:
        """True once a non-looping file has been read to its end (the reader then stops by itself)."""
        return self._finished.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _set_state(self, state: CameraState) -> None:
        with self._state_lock:
            if state == self.state and self.stats.states:
                return
            self.state = state
            self.stats.states.append(state)
        self.metrics.camera_state(self.name, state)
        # streaming/stopped are news; connecting/backing_off repeat on every retry (the warning says it all)
        level = logging.INFO if state in (CameraState.STREAMING, CameraState.STOPPED) else logging.DEBUG
        log.log(level, "camera %s: %s", self.name, state.value)

    # -- main loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # never let a reader die silently with a traceback mid-service
            log.exception("camera %s: reader failed unexpectedly", self.name)
        finally:
            try:
                self.consumer.on_discontinuity()
            except Exception:
                log.exception("camera %s: consumer failed on flush", self.name)
            self._set_state(CameraState.STOPPED)

    def _loop(self) -> None:
        first, looping = True, False
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            if not first:
                self.stats.reconnects += 1
                self.metrics.reconnect(self.name)
            first = False
            if not looping:  # a file starting over stays STREAMING
                self._set_state(CameraState.CONNECTING)
            started = time.monotonic()
            healthy = False
            error: str | None = None
            try:
                healthy = self._session()
            except DsanetError as exc:  # unusable source: no point retrying quickly, but keep trying
                error = redact(exc)
            except Exception as exc:  # av.error.FFmpegError, OSError, anything FFmpeg throws
                error = redact(f"{type(exc).__name__}: {exc}")
            else:
                error = "the stream ended" if healthy else "the stream ended before the first frame"
            self.stats.last_error = error
            looping = self.kind == "file" and healthy and self.settings.loop and not self._stop.is_set()
            if not looping:  # a loop continues the media clock seamlessly: nothing to flush
                self.consumer.on_discontinuity()
            if self._stop.is_set():
                break
            if looping:
                first = True  # a loop is not a reconnect
                continue
            if self.kind == "file" and healthy:
                self._finished.set()
                log.info("camera %s: end of file", self.name)
                break
            if time.monotonic() - started >= self.settings.backoff.reset_after and healthy:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self._set_state(CameraState.BACKING_OFF)
            log.warning("camera %s (%s): %s; reconnecting in %.1f s (attempt %d)", self.name, self.safe_url, error,
                        delay, self.backoff.attempt)
            self._wait(delay)

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.heartbeat = time.monotonic()
            self._stop.wait(min(left, 1.0))

    def _open(self) -> Any:
        import av  # heavy native import kept out of module import time

        s = self.settings
        options: dict[str, str] = {}
        if self.kind == "rtsp":
            options["rtsp_transport"] = s.transport
            options["timeout"] = str(int(s.read_timeout * 1e6))
        elif self.kind == "http":
            options["timeout"] = str(int(s.read_timeout * 1e6))
        if self.kind == "rtsp" and s.low_latency:
            # RTSP only: nobuffer discards the packets read while probing, harmless on a live camera (the
            # next keyframe comes within a GOP) but it loses the start of an HTTP file (measured)
            options["fflags"] = "nobuffer"
        target = file_path(s.url) if self.kind == "file" else s.url
        log.debug("camera %s: opening %s", self.name, self.safe_url)
        return av.open(target, mode="r", options=options, timeout=(s.open_timeout, s.read_timeout))

    def _session(self) -> bool:
        """One connection: open, stream until it ends or fails. True if at least one frame was decoded."""
        import av

        self.stats.sessions += 1
        container = self._open()
        got_frame = False
        try:
            if not container.streams.video:
                raise SourceError(f"camera {self.name!r}: {self.safe_url} has no video stream")
            stream = container.streams.video[0]
            self._stream, self._seg_key, self._pts_offset = stream, None, None
            self._pending_packets = []
            self._last_pts, self._pts_deltas = None, deque(maxlen=32)
            self._live_clock.reset()
            rate = stream.average_rate or stream.guessed_rate
            self._media_clock.new_loop(float(1 / rate) if rate else None)
            session_start = time.monotonic()
            consecutive_errors = 0
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                now_mono = time.monotonic()
                self.heartbeat = now_mono
                if got_frame and now_mono - session_start >= self.settings.backoff.reset_after:
                    self.backoff.reset()  # healthy long enough: next failure starts at the initial delay
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    consecutive_errors += 1
                    self.stats.decode_errors += 1
                    self.metrics.decode_error(self.name)
                    log.debug("camera %s: decode error: %s", self.name, redact(exc))
                    if consecutive_errors >= self.settings.max_consecutive_decode_errors:
                        raise SourceError(f"camera {self.name!r}: {consecutive_errors} decode errors in a row") from None
                    self._buffer(packet)  # the compressed stream is still what the camera sent
                    continue
                if frames:
                    consecutive_errors = 0
                for av_frame in frames:
                    if self._stop.is_set():
                        break
                    if not got_frame:
                        got_frame = True
                        self._set_state(CameraState.STREAMING)
                    if getattr(av_frame, "is_corrupt", False):  # concealed by FFmpeg, still damage to count
                        self.stats.decode_errors += 1
                        self.metrics.decode_error(self.name)
                    self._deliver(av_frame)
                self._buffer(packet)
            return got_frame
        finally:
            if self.packets is not None:
                self._pending_packets = []
                try:
                    self.packets.end_segment()
                except Exception:
                    log.exception("camera %s: packet buffer failed", self.name)
            self._stream = None
            try:
                container.close()
            except Exception:  # closing a broken connection can fail too; nothing to do about it
                pass

    def _count_lost(self, pts: float | None) -> None:
        """Frames lost on the way show up as a gap in presentation time (the median recent interval is
        the frame period; a file's average rate would already include the gap)."""
        if pts is None:
            return
        if self._last_pts is not None:
            d = pts - self._last_pts
            if len(self._pts_deltas) >= 8:
                interval = statistics.median(self._pts_deltas)
                if interval > 0 and d > 1.5 * interval:
                    n = round(d / interval) - 1
                    self.stats.frames_lost += n
                    self.metrics.frames_lost(self.name, n)
            if d > 0:
                self._pts_deltas.append(d)
        self._last_pts = pts

    def _deliver(self, av_frame: Any) -> None:
        arrival, mono = time.time(), time.monotonic()
        pts = av_frame.time
        self._count_lost(pts)
        if self.kind == "file":
            capture, release = self._media_clock.capture_time(pts, arrival, mono)
            if self.settings.realtime:
                while not self._stop.is_set():
                    left = release - time.monotonic()
                    if left <= 0:
                        break
                    self._stop.wait(min(left, 0.5))
                    self.heartbeat = time.monotonic()
                mono = max(mono, time.monotonic())
        else:
            capture = self._live_clock.capture_time(pts, arrival)
        if self.packets is not None:
            self._track_segment(av_frame, capture, pts)
        self._index += 1
        self.stats.frames += 1
        self.stats.last_frame_monotonic = mono
        self.metrics.frame_decoded(self.name)
        self.consumer.on_frame(LazyFrame(self.name, self._index - 1, capture, mono, pts, av_frame=av_frame))


    # -- evidence packets ------------------------------------------------------------------------------

    def _track_segment(self, av_frame: Any, capture: float, pts: float | None) -> None:
        """Keep the pts -> capture offset and start a new segment when the picture format changes."""
        assert self.packets is not None
        self._last_capture = capture
        if pts is not None:
            self._pts_offset = capture - float(pts)
        fmt = getattr(getattr(av_frame, "format", None), "name", "") or ""
        key = (int(av_frame.width), int(av_frame.height), str(fmt))
        if key != self._seg_key:
            if self._seg_key is not None:
                log.info("camera %s: picture changed from %dx%d to %dx%d; new evidence segment", self.name,
                         self._seg_key[0], self._seg_key[1], key[0], key[1])
            self._seg_key = key
            try:
                self.packets.begin_segment(self._stream, key[0], key[1], key[2])
            except Exception:
                log.exception("camera %s: packet buffer failed", self.name)

    def _buffer(self, packet: Any) -> None:
        """Hand one compressed packet to the evidence ring (no-op without one)."""
        ring = self.packets
        if ring is None or packet.size == 0:  # the demuxer's final flush packet is empty
            return
        tb = packet.time_base
        t = packet.pts if packet.pts is not None else packet.dts
        secs = float(t * tb) if t is not None and tb is not None else None
        item = (bytes(packet), packet.pts, packet.dts, packet.duration or None, bool(packet.is_keyframe), secs)
        if self._pts_offset is None or self._seg_key is None:
            if len(self._pending_packets) < MAX_PENDING_PACKETS:
                self._pending_packets.append(item)
            return
        try:
            if self._pending_packets:
                pending, self._pending_packets = self._pending_packets, []
                for it in pending:
                    self._push(ring, it)
            self._push(ring, item)
        except Exception:
            log.exception("camera %s: packet buffer failed", self.name)

    def _push(self, ring: PacketSink,
              item: tuple[bytes, int | None, int | None, int | None, bool, float | None]) -> None:
        data, pts, dts, duration, key, secs = item
        capture = secs + self._pts_offset if secs is not None and self._pts_offset is not None else self._last_capture
        ring.push(data, pts, dts, duration, key, capture)


def make_reader_settings(camera: Any, ingest: Any) -> ReaderSettings:
    """ReaderSettings from the config's camera entry and ``ingest`` section (duck-typed)."""
    return ReaderSettings(
        name=camera.name, url=camera.url, transport=getattr(camera, "transport", "tcp"),
        open_timeout=ingest.open_timeout, read_timeout=ingest.read_timeout,
        backoff=BackoffPolicy(initial=ingest.backoff_initial, maximum=ingest.backoff_max,
                              reset_after=ingest.backoff_reset_after, jitter=ingest.jitter),
        loop=getattr(camera, "loop", False), realtime=getattr(camera, "realtime", True),
    )


FrameCallback = Callable[[LazyFrame], None]
