"""The reader thread: open, decode, deliver frames and packets, reconnect with backoff, until stopped."""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from engine.errors import DsanetError
from stream.reader import hwaccel
from stream.reader.backoff import Backoff
from stream.reader.clocks import LiveClock, MediaClock
from stream.reader.frames import FrameConsumer, LazyFrame
from stream.reader.protocols import MAX_PENDING_PACKETS, NullReaderMetrics, PacketSink, ReaderMetrics
from stream.reader.settings import ReaderSettings, ReaderStats
from stream.reader.state import CameraState, SourceError, file_path, source_kind
from stream.redact import redact, redact_url

#: this many intervals in a row, each as long as the others (within 10%) and all longer than 1.5x the
#: frame period, are a change of frame rate, not loss (a camera's timestamps are regular; loss under a
#: bandwidth cap or random drops rarely repeats the same gap six times)
RATE_CHANGE_INTERVALS = 6
RATE_CHANGE_SPREAD = 1.10

log = logging.getLogger("stream.reader")


class CameraReader:
    """Reads one camera in its own daemon thread until :meth:`stop`. Never raises out of the thread."""

    def __init__(self, settings: ReaderSettings, consumer: FrameConsumer, metrics: ReaderMetrics | None = None,
                 rng: random.Random | None = None, packets: PacketSink | None = None):
        self.settings = settings
        self._last_pts: float | None = None
        self._pts_deltas: deque[float] = deque(maxlen=32)
        self._lost_suspects: list[float] = []  # long intervals not judged yet: loss or a new frame rate
        self._suspect_errors = 0  # decode errors counted when the first suspect arrived
        self._hw_fallback_logged = False  # ingest.hwaccel chosen but this stream decodes in software
        self.kind = source_kind(settings.url)
        if settings.transport not in ("tcp", "udp"):
            raise SourceError(f"camera {settings.name!r}: transport must be tcp or udp, not {settings.transport!r}")
        if self.kind == "file" and not Path(file_path(settings.url)).is_file():
            raise SourceError(f"camera {settings.name!r}: file {file_path(settings.url)!r} does not exist")
        self.consumer = consumer
        self.metrics: ReaderMetrics = metrics or NullReaderMetrics()
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
        return av.open(target, mode="r", options=options, timeout=(s.open_timeout, s.read_timeout),
                       **hwaccel.open_options(s.hwaccel, s.hwaccel_device))

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
            if self.settings.hwaccel is not None and not hwaccel.is_hw(stream) and not self._hw_fallback_logged:
                self._hw_fallback_logged = True
                log.warning("camera %s: %s cannot decode this %s stream; decoding it in software", self.name,
                            self.settings.hwaccel, stream.codec_context.name)
            self._stream, self._seg_key, self._pts_offset = stream, None, None
            self._pending_packets = []
            self._last_pts, self._pts_deltas, self._lost_suspects = None, deque(maxlen=32), []
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
        the frame period; a file's average rate would already include the gap).

        A longer interval is first held as a *suspect*: if ``RATE_CHANGE_INTERVALS`` suspects in a row are
        alike (within ``RATE_CHANGE_SPREAD``), the camera changed its frame rate (25 -> 12.5 fps) and
        nothing was lost, so they become the new frame period; when a normal interval follows instead,
        each suspect was a gap and its missing frames are counted. Alike suspects with damaged frames
        among them (decode errors) are loss too: a bandwidth cap drops in a steady rhythm. Loss that
        repeats the same gap six times in a row with every frame intact cannot be told from a slower
        camera and is not counted.
        """
        if pts is None:
            return
        last, self._last_pts = self._last_pts, pts
        if last is None:
            return
        d = pts - last
        if d <= 0:
            return
        if len(self._pts_deltas) < 8:
            self._pts_deltas.append(d)
            return
        interval = statistics.median(self._pts_deltas)
        if interval > 0 and d > 1.5 * interval:
            if not self._lost_suspects:
                self._suspect_errors = self.stats.decode_errors
            self._lost_suspects.append(d)
            tail = self._lost_suspects[-RATE_CHANGE_INTERVALS:]
            if len(tail) == RATE_CHANGE_INTERVALS and max(tail) <= RATE_CHANGE_SPREAD * min(tail):
                if self.stats.decode_errors != self._suspect_errors:
                    # damaged frames among them: data went missing (a bandwidth cap drops in a steady
                    # rhythm), not a camera that slowed down
                    self._settle_suspects(interval, self._lost_suspects)
                else:
                    self._settle_suspects(interval, self._lost_suspects[:-RATE_CHANGE_INTERVALS])
                    self._pts_deltas.clear()
                    self._pts_deltas.extend(tail)  # the new frame period
                self._lost_suspects = []
            return
        self._settle_suspects(interval, self._lost_suspects)
        self._lost_suspects = []
        self._pts_deltas.append(d)

    def _settle_suspects(self, interval: float, gaps: list[float]) -> None:
        """Count the frames missing in gaps judged to be loss."""
        n = sum(max(0, round(g / interval) - 1) for g in gaps)
        if n:
            self.stats.frames_lost += n
            self.metrics.frames_lost(self.name, n)

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
