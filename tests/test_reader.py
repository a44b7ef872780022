"""Camera readers against real media: generated clips over file://, unreachable and frozen servers, and the
GStreamer RTSP server (kill, freeze, restart). Also the backoff policy and the capture clocks."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from stream.reader import (
    Backoff,
    BackoffPolicy,
    CameraReader,
    CameraState,
    LazyFrame,
    LiveClock,
    MediaClock,
    ReaderSettings,
    SourceError,
    file_path,
    source_kind,
)
from tests.fixtures.system import free_port

FAST = BackoffPolicy(initial=0.1, maximum=0.4, reset_after=60.0, jitter=0.1)


class Collector:
    """A FrameConsumer that keeps what a test needs (converting every frame, unlike the cutter)."""

    def __init__(self, convert: bool = True):
        self.convert = convert
        self.frames: list[tuple[int, float, float | None, tuple[int, int]]] = []
        self.images: list[np.ndarray] = []
        self.discontinuities = 0
        self.event = threading.Event()

    def on_frame(self, frame: LazyFrame) -> None:
        self.frames.append((frame.index, frame.capture_time, frame.pts_seconds, (frame.height, frame.width)))
        if self.convert:
            self.images.append(frame.to_frame().image)
        self.event.set()

    def on_discontinuity(self) -> None:
        self.discontinuities += 1

    def wait_frames(self, n: int, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while len(self.frames) < n and time.monotonic() < end:
            time.sleep(0.02)
        return len(self.frames) >= n


def wait_until(pred, timeout: float = 60.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture
def reader_factory():
    readers: list[CameraReader] = []

    def make(url: str, consumer=None, **kw) -> tuple[CameraReader, Collector]:
        consumer = consumer or Collector()
        kw.setdefault("backoff", FAST)
        r = CameraReader(ReaderSettings(name=kw.pop("name", "cam"), url=url, **kw), consumer)
        readers.append(r)
        return r, consumer

    yield make
    for r in readers:
        r.stop()
    for r in readers:
        assert r.join(30), "reader thread did not end"


# ---------------------------------------------------------------------------------------- pure parts


def test_backoff_doubles_caps_and_resets():
    b = Backoff(BackoffPolicy(initial=1, maximum=30, jitter=0), random.Random(0))
    assert [b.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next_delay() == 1


def test_backoff_jitter_stays_within_bounds_and_varies():
    b = Backoff(BackoffPolicy(initial=1, maximum=30, jitter=0.2), random.Random(1))
    delays = []
    for _ in range(200):
        b.reset()
        delays.append(b.next_delay())
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert len(set(round(d, 6) for d in delays)) > 50
    b.reset()
    for _ in range(10):
        d = b.next_delay()
    assert 24.0 <= d <= 30.0  # capped, jitter only below the cap


def test_source_kinds_and_paths():
    assert source_kind("rtsp://h/x") == "rtsp" and source_kind("rtsps://h/x") == "rtsp"
    assert source_kind("https://h/x.m3u8") == "http"
    assert source_kind("file:///tmp/a.mp4") == "file" and source_kind("/tmp/a.mp4") == "file"
    assert file_path("file:///tmp/a%20b.mp4") == "/tmp/a b.mp4"
    assert file_path("file:rel/a.mp4") == "rel/a.mp4"
    with pytest.raises(SourceError, match=r"user:\*\*\*@") as exc:
        source_kind("ftp://user:hunter2@h/x")
    assert "hunter2" not in str(exc.value)


def test_missing_file_and_bad_transport_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        CameraReader(ReaderSettings("c", f"file://{tmp_path}/nope.mp4"), Collector())
    with pytest.raises(SourceError, match="transport"):
        CameraReader(ReaderSettings("c", "rtsp://h/x", transport="sctp"), Collector())


def test_live_clock_follows_stream_time_through_network_bursts():
    clock = LiveClock(max_drift=5.0)
    t0 = 1_000.0
    out = []
    # 25 fps stream; frames arrive in bursts of 5 every 0.2 s with a 0.1-0.2 s delay
    for i in range(100):
        pts = i / 25
        arrival = t0 + (i // 5 + 1) * 0.2 + 0.1 + 0.1 * ((i // 5) % 2)
        out.append(clock.capture_time(pts, arrival))
    d = np.diff(out)
    np.testing.assert_allclose(d[10:], 0.04, atol=1e-9)  # spacing = stream spacing once anchored
    assert all(c <= t0 + (i // 5 + 1) * 0.2 + 0.2 + 1e-9 for i, c in enumerate(out))  # never after arrival


def test_live_clock_reanchors_on_backwards_or_drifting_timestamps():
    clock = LiveClock(max_drift=2.0)
    a = clock.capture_time(10.0, 100.0)
    b = clock.capture_time(10.04, 100.04)
    c = clock.capture_time(0.0, 100.08)  # timestamps restarted
    d = clock.capture_time(0.04, 110.0)  # 10 s stall: mapped time would drift far behind arrival
    assert (a, b) == (100.0, pytest.approx(100.04))
    assert c == pytest.approx(100.08) and d == pytest.approx(110.0)
    assert clock.capture_time(None, 111.0) == 111.0


def test_media_clock_continues_across_loops():
    clock = MediaClock()
    clock.new_loop(0.04)
    times = [clock.capture_time(i * 0.04, 500.0 + i * 0.001, 1.0)[0] for i in range(10)]
    clock.new_loop(0.04)
    times += [clock.capture_time(i * 0.04, 600.0, 2.0)[0] for i in range(10)]
    np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-9)


# ------------------------------------------------------------------------------------------ files


def test_file_source_reads_every_frame_then_stops(clip_factory, reader_factory):
    clip = clip_factory("a.mp4", width=160, height=90, fps=25, seconds=2.0)
    r, c = reader_factory(f"file://{clip}", realtime=False, loop=False)
    r.start()
    assert r.join(60)
    assert r.finished and r.state == CameraState.STOPPED
    assert [s for s in r.stats.states] == [CameraState.CONNECTING, CameraState.STREAMING, CameraState.STOPPED]
    assert len(c.frames) == 50 == r.stats.frames
    assert [f[0] for f in c.frames] == list(range(50))
    np.testing.assert_allclose(np.diff([f[1] for f in c.frames]), 0.04, atol=1e-6)  # media time
    assert c.images[0].shape == (90, 160, 3) and c.images[0].dtype == np.uint8
    assert c.discontinuities >= 1 and r.stats.reconnects == 0


def test_file_loop_keeps_media_clock_and_stops_on_request(clip_factory, reader_factory):
    clip = clip_factory("loop.mp4", width=96, height=64, fps=25, seconds=1.0)
    r, c = reader_factory(f"file://{clip}", realtime=False, loop=True)
    r.start()
    assert c.wait_frames(130)
    r.stop()
    assert r.join(30)
    times = np.array([f[1] for f in c.frames])
    np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-6)  # seamless across the loop points
    assert r.stats.reconnects == 0 and not r.finished


def test_realtime_file_is_paced(clip_factory, reader_factory):
    clip = clip_factory("rt.mp4", width=96, height=64, fps=25, seconds=1.0)
    r, c = reader_factory(f"file://{clip}", realtime=True, loop=False)
    t0 = time.monotonic()
    r.start()
    assert r.join(60)
    assert len(c.frames) == 25
    assert time.monotonic() - t0 >= 24 / 25 - 0.01  # could not have run faster than the media


def test_decode_errors_are_counted_and_decoding_resumes(clip_factory, reader_factory, tmp_path):
    clip = clip_factory("ok.mp4", width=160, height=90, fps=25, seconds=4.0, gop=25)
    data = bytearray(Path(clip).read_bytes())
    rng = random.Random(0)
    for k in range(len(data) // 4, 3 * len(data) // 4, 300):
        for j in range(8):
            data[k + j] = rng.randrange(256)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    r, c = reader_factory(f"file://{bad}", realtime=False)
    r.start()
    assert r.join(60)
    assert r.stats.decode_errors >= 1
    assert len(c.frames) > 50  # frames after the damage were decoded too (resync at the next keyframe)
    assert c.frames[-1][0] == len(c.frames) - 1


def test_resolution_change_midstream(tmp_path, reader_factory):
    import av

    path = tmp_path / "two_sizes.h264"
    with open(path, "wb") as out:
        for (w, h) in ((160, 96), (320, 192)):
            codec = av.CodecContext.create("libx264", "w")
            codec.width, codec.height, codec.pix_fmt = w, h, "yuv420p"
            codec.time_base = Fraction(1, 25)
            codec.options = {"preset": "ultrafast", "x264-params": "bframes=0:keyint=10"}
            for i in range(20):
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), i * 10 % 256, np.uint8), format="rgb24")
                frame.pts = i
                for pkt in codec.encode(frame):
                    out.write(bytes(pkt))
            for pkt in codec.encode(None):
                out.write(bytes(pkt))
    r, c = reader_factory(f"file://{path}", realtime=False)
    r.start()
    assert r.join(60)
    sizes = [f[3] for f in c.frames]
    assert sizes[0] == (96, 160) and sizes[-1] == (192, 320)
    assert {im.shape[:2] for im in c.images} == {(96, 160), (192, 320)}
    caps = [f[1] for f in c.frames]
    assert all(b >= a for a, b in zip(caps, caps[1:], strict=False))


def test_http_source_reads_and_an_ended_http_stream_is_reconnected(clip_factory, reader_factory):
    """http(s) sources are live: when the response ends, the reader reconnects (with backoff)."""
    import functools
    import http.server

    clip = clip_factory("web.mp4", width=96, height=64, fps=25, seconds=1.0)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(Path(clip).parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        r, c = reader_factory(f"http://127.0.0.1:{httpd.server_address[1]}/web.mp4", open_timeout=5, read_timeout=5)
        r.start()
        assert c.wait_frames(25)
        assert wait_until(lambda: r.stats.reconnects >= 1, timeout=30)
        assert c.wait_frames(50)  # read again after the reconnect
        assert not r.finished
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------------- failing live sources


def test_unreachable_url_backs_off_counts_reconnects_and_stops_promptly(reader_factory, caplog):
    port = free_port()
    url = f"rtsp://admin:s3cr3t-pw@127.0.0.1:{port}/stream"
    caplog.set_level(logging.DEBUG)
    r, c = reader_factory(url, open_timeout=1.0, read_timeout=1.0)
    r.start()
    assert wait_until(lambda: r.stats.reconnects >= 3, timeout=60)
    assert CameraState.BACKING_OFF in r.stats.states and CameraState.STREAMING not in r.stats.states
    r.stop()
    assert r.join(10)  # backoff sleeps are interruptible
    assert r.state == CameraState.STOPPED and not c.frames
    text = caplog.text + str(r.stats.last_error)
    assert "s3cr3t-pw" not in text and "admin:***@" in text


def test_silent_server_times_out_instead_of_blocking(reader_factory):
    """A server that accepts TCP and never answers (a hung camera) must not hang the reader."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        r, _ = reader_factory(f"rtsp://127.0.0.1:{srv.getsockname()[1]}/x", open_timeout=0.5, read_timeout=0.5)
        r.start()
        assert wait_until(lambda: r.stats.reconnects >= 2, timeout=60)
        assert r.stats.last_error
        r.stop()
        assert r.join(10)
    finally:
        srv.close()
        for s in conns:
            s.close()


# ---------------------------------------------------------------------------------------- real RTSP


@pytest.mark.system
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_live_camera_streams(rtsp_server, reader_factory, transport):
    from tests.fixtures.rtsp import live_mount

    srv = rtsp_server({"/cam": live_mount(width=320, height=180, fps=25)})
    r, c = reader_factory(srv.url(), transport=transport, open_timeout=10, read_timeout=5)
    r.start()
    assert c.wait_frames(40, timeout=60), f"no frames over {transport}: {r.stats}"
    assert r.state == CameraState.STREAMING
    assert c.frames[-1][3] == (180, 320)
    caps = np.array([f[1] for f in c.frames])
    assert np.all(np.diff(caps) >= 0)
    assert np.median(np.diff(caps)) == pytest.approx(0.04, abs=0.01)  # stream timestamps, not bursts


@pytest.mark.system
def test_rtsp_server_killed_then_back_reconnects(rtsp_server, reader_factory):
    from tests.fixtures.rtsp import live_mount

    srv = rtsp_server({"/cam": live_mount(width=160, height=96, fps=25)})
    r, c = reader_factory(srv.url(), open_timeout=5, read_timeout=1.0)
    r.start()
    assert c.wait_frames(10)
    srv.kill()
    assert wait_until(lambda: r.state in (CameraState.BACKING_OFF, CameraState.CONNECTING), timeout=30)
    assert wait_until(lambda: r.stats.reconnects >= 1, timeout=30)
    n = len(c.frames)
    srv.start()
    assert wait_until(lambda: len(c.frames) > n + 10, timeout=60), r.stats
    assert r.state == CameraState.STREAMING
    assert c.discontinuities >= 1


@pytest.mark.system
def test_rtsp_frozen_server_is_detected_by_read_timeout(rtsp_server, reader_factory):
    from tests.fixtures.rtsp import live_mount

    srv = rtsp_server({"/cam": live_mount(width=160, height=96, fps=25)})
    r, c = reader_factory(srv.url(), open_timeout=2, read_timeout=0.5)
    r.start()
    assert c.wait_frames(10)
    srv.freeze()
    try:
        assert wait_until(lambda: r.stats.reconnects >= 1, timeout=30), r.stats
        assert r.stats.last_error
    finally:
        srv.resume()
    n = len(c.frames)
    assert wait_until(lambda: len(c.frames) > n + 5, timeout=60)


@pytest.mark.system
def test_rtsp_credentials_are_used_but_never_logged(rtsp_server, reader_factory, caplog):
    from tests.fixtures.rtsp import live_mount

    caplog.set_level(logging.DEBUG)
    srv = rtsp_server({"/cam": live_mount(width=160, height=96, fps=25)}, auth=("viewer", "pa55-word"))
    good, cg = reader_factory(srv.url(credentials=srv.auth), name="good", open_timeout=5)
    bad, _ = reader_factory(srv.url(credentials=("viewer", "wrong-pass")), name="bad", open_timeout=5)
    good.start()
    bad.start()
    assert cg.wait_frames(5)
    assert wait_until(lambda: bad.stats.reconnects >= 1, timeout=30)
    assert "pa55-word" not in caplog.text and "wrong-pass" not in caplog.text
    assert "wrong-pass" not in str(bad.stats.last_error)
