"""The shared test fixtures do what later tests rely on: real clips, RTSP, MQTT, HTTP and TCP behaviour."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import av
import av.error
import numpy as np
import pytest

from tests.fixtures.clips import (
    ClipInfo,
    clip_info,
    event_frames_mask,
    frame_count,
    make_clip,
    make_clip_info,
    render_frame,
)
from tests.fixtures.http_receiver import SIGNATURE_HEADER, HttpReceiver, hmac_signature, standard_signature
from tests.fixtures.rtsp import RtspServer, file_mount, live_mount
from tests.fixtures.system import available, in_ci, port_accepts, require
from tests.fixtures.tcp_proxy import TcpProxy

READ_TIMEOUT_US = "3000000"  # PyAV/FFmpeg RTSP socket timeout: a silent server raises within ~2x this


# -- helpers -----------------------------------------------------------------------------------------------
def decode_all(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream, list[bool]]:
    """Every frame of a file as RGB, the stream, and each frame's keyframe flag."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, keys = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            keys.append(bool(frame.key_frame))
        return frames, stream, keys


def read_rtsp(url: str, transport: str = "tcp", max_frames: int | None = None,
              max_seconds: float | None = None) -> list[av.VideoFrame]:
    """Frames read from an RTSP URL until the stream ends, ``max_frames``, or ``max_seconds`` of reading.

    ``max_seconds`` only stops a read that is going well (a live source never ends); a silent server is
    caught by FFmpeg's socket timeout, which raises.
    """
    opts = {"rtsp_transport": transport, "timeout": READ_TIMEOUT_US}
    frames: list[av.VideoFrame] = []
    start = time.monotonic()
    with av.open(url, options=opts) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if max_frames is not None and len(frames) >= max_frames:
                break
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                break
    return frames


def read_rtsp_retry(url: str, attempts: int = 20, **kwargs: object) -> list[av.VideoFrame]:
    """``read_rtsp`` that retries on FFmpeg errors, as a real reader reconnects.

    Right after a resume the server first tears down the sessions whose clients left while it was
    frozen; a request landing in that moment can get a 5xx for the shared media.
    """
    for attempt in range(attempts):
        try:
            return read_rtsp(url, **kwargs)  # type: ignore[arg-type]
        except av.error.FFmpegError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return []


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def clip_preprocess(frames: list[np.ndarray]) -> np.ndarray:
    """Plain numpy CLIP preprocessing: resize to 224x224, scale, normalise, NCHW float32."""
    import cv2

    from engine.clip import CLIP_MEAN, CLIP_STD

    batch = np.stack([cv2.resize(f, (224, 224), interpolation=cv2.INTER_AREA) for f in frames])
    batch = (batch.astype(np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- clips ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height", "fps", "seconds", "gop"), [
    (640, 360, 25, 5.0, None),
    (320, 240, 30000 / 1001, 2.0, 10),
])
def test_clip_has_requested_size_rate_frames_and_gop(clip_factory, width, height, fps, seconds, gop) -> None:
    path = clip_factory(f"c{width}.mp4", width=width, height=height, fps=fps, seconds=seconds, gop=gop)
    frames, stream, keys = decode_all(path)
    assert len(frames) == frame_count(fps, seconds) == round(fps * seconds)
    assert frames[0].shape == (height, width, 3)
    assert abs(float(stream.average_rate) - fps) < 1e-3
    assert stream.codec_context.name == "h264"
    key_idx = [i for i, k in enumerate(keys) if k]
    want_gop = gop or round(fps)
    assert key_idx == list(range(0, len(frames), want_gop))  # fixed GOP, no scene-cut keyframes


def test_event_mask_and_info_match_the_requested_segment(tmp_path) -> None:
    mask = event_frames_mask(25, 4.0, (1.0, 2.0))
    assert mask.shape == (100,) and mask.sum() == 25
    assert np.flatnonzero(mask)[0] == 25 and np.flatnonzero(mask)[-1] == 49
    assert not event_frames_mask(25, 4.0, None).any()
    info = make_clip_info(tmp_path / "c.mp4", width=160, height=96, seconds=4.0, event=(1.0, 2.0), sidecar=True)
    assert isinstance(info, ClipInfo) and info.event_frames == (25, 50) and info.n_frames == 100
    assert clip_info(tmp_path / "c.mp4") == info
    assert not (tmp_path / "d.json").exists()
    make_clip(tmp_path / "d.mp4", width=160, height=96, seconds=1.0)
    assert not (tmp_path / "d.json").exists()  # no sidecar unless asked: folders of clips hold only videos


def test_clips_are_deterministic_per_seed() -> None:
    a = render_frame(60, 160, 96, event=(2.0, 3.0), seed=1)
    assert np.array_equal(a, render_frame(60, 160, 96, event=(2.0, 3.0), seed=1))
    assert not np.array_equal(a, render_frame(60, 160, 96, event=(2.0, 3.0), seed=2))


def test_event_frames_differ_strongly_from_calm_frames(clip_factory, tiny_clip_dir) -> None:
    import torch

    from engine.clip import load_vision_model

    path = clip_factory("ev.mp4", seconds=4.0, event=(1.5, 2.5))
    frames, _, _ = decode_all(path)
    mask = event_frames_mask(25, 4.0, (1.5, 2.5))
    calm = [frames[i] for i in (0, 12, 25, 90, 99)]
    event = [frames[i] for i in (40, 45, 50, 55, 60)]
    assert mask[[40, 45, 50, 55, 60]].all() and not mask[[0, 12, 25, 90, 99]].any()

    # Pixels: calm frames barely change over time; the event is far from every calm frame.
    calm_pix = max(mean_abs_diff(a, b) for a in calm for b in calm)
    event_pix = min(mean_abs_diff(a, e) for a in calm for e in event)
    assert calm_pix < 10 and event_pix > 60, (calm_pix, event_pix)

    # Even the tiny random CLIP separates them: calm-calm distances below every calm-event distance.
    model = load_vision_model(tiny_clip_dir)
    with torch.no_grad():
        emb = model(pixel_values=torch.from_numpy(clip_preprocess(calm + event))).image_embeds.numpy()
    calm_emb, event_emb = emb[:5], emb[5:]
    calm_d = max(cosine_distance(a, b) for i, a in enumerate(calm_emb) for b in calm_emb[i + 1:])
    cross_d = min(cosine_distance(a, e) for a in calm_emb for e in event_emb)
    assert cross_d > 10 * calm_d, (calm_d, cross_d)  # measured: ~0.0002 vs ~0.24


def test_h265_clip(clip_factory) -> None:
    path = clip_factory("h265.mp4", width=320, height=180, seconds=1.0, codec="h265")
    frames, stream, _ = decode_all(path)
    assert stream.codec_context.name == "hevc" and len(frames) == 25 and frames[0].shape == (180, 320, 3)


# -- RTSP ----------------------------------------------------------------------------------------------------
@pytest.mark.system
def test_rtsp_file_mount_delivers_at_least_90_percent_of_frames_over_tcp(clip_factory, rtsp_server) -> None:
    path = clip_factory("five.mp4", seconds=5.0, event=(2.0, 3.0))
    srv = rtsp_server({"/clip": file_mount(path)})
    results: dict[str, list[av.VideoFrame]] = {}

    def reader(name: str) -> None:
        results[name] = read_rtsp(srv.url("/clip"), "tcp")  # the stream ends with the file

    first = threading.Thread(target=reader, args=("first",))
    first.start()
    time.sleep(1.0)
    reader("second")  # a second reader while the first is watching gets the whole file too
    first.join(timeout=120)
    for frames in results.values():
        assert len(frames) >= 0.9 * 125, len(frames)
        assert (frames[0].width, frames[0].height) == (640, 360)
        # The event arrives as the loud red segment (untouched file content, no re-encode).
        red = [float(np.mean(f.to_ndarray(format="rgb24")[..., 0] > 200)) for f in frames]
        assert max(red) > 0.4 and min(red) < 0.01
    assert len(results) == 2


@pytest.mark.system
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_live_mount_delivers_frames(rtsp_server, transport) -> None:
    srv = rtsp_server({"/live": live_mount(width=320, height=240, fps=25)})
    frames = read_rtsp(srv.url("/live"), transport, max_frames=30)
    assert len(frames) == 30
    assert (frames[-1].width, frames[-1].height) == (320, 240)


@pytest.mark.system
def test_rtsp_loop_mount_plays_past_the_end_and_serves_two_readers(clip_factory, rtsp_server) -> None:
    path = clip_factory("short.mp4", width=320, height=180, seconds=1.0)  # 25 frames
    srv = rtsp_server({"/loop": file_mount(path, loop=True)})
    results: dict[str, int] = {}

    def reader(name: str) -> None:
        results[name] = len(read_rtsp(srv.url("/loop"), "tcp", max_frames=60))

    threads = [threading.Thread(target=reader, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {"a": 60, "b": 60}  # more than the file holds: it looped, for both readers


@pytest.mark.system
def test_rtsp_kill_then_restart_on_the_same_port(rtsp_server) -> None:
    srv = rtsp_server({"/cam": live_mount(width=320, height=180)})
    port, pid = srv.port, srv.pid
    assert len(read_rtsp(srv.url("/cam"), max_frames=5)) == 5
    srv.kill()
    assert not srv.running and not port_accepts(port)
    with pytest.raises(av.error.FFmpegError):
        read_rtsp(srv.url("/cam"), max_frames=1)
    srv.restart()
    assert srv.port == port and srv.pid != pid and srv.running
    assert len(read_rtsp(srv.url("/cam"), max_frames=5)) == 5


@pytest.mark.system
def test_rtsp_kill_ends_an_open_reader(rtsp_server) -> None:
    srv = rtsp_server({"/cam": live_mount(width=320, height=180)})
    outcome: list[object] = []
    reading = threading.Event()

    def reader() -> None:
        try:
            with av.open(srv.url("/cam"), options={"rtsp_transport": "tcp", "timeout": READ_TIMEOUT_US}) as c:
                for n, _frame in enumerate(c.decode(video=0)):
                    if n == 5:
                        reading.set()
            outcome.append("ended")
        except av.error.FFmpegError as exc:
            outcome.append(exc)
        finally:
            reading.set()

    t = threading.Thread(target=reader)
    t.start()
    assert reading.wait(120) and not outcome  # frames are flowing
    srv.kill()
    t.join(timeout=120)
    assert not t.is_alive()  # a killed server ends the read (end of stream or an FFmpeg error)
    assert outcome and (outcome[0] == "ended" or isinstance(outcome[0], av.error.FFmpegError))


@pytest.mark.system
def test_rtsp_freeze_makes_reads_fail_and_resume_recovers(rtsp_server) -> None:
    srv = rtsp_server({"/cam": live_mount(width=320, height=180)})
    url = srv.url("/cam")
    with av.open(url, options={"rtsp_transport": "tcp", "timeout": "1000000"}) as container:
        frames = container.decode(video=0)
        for _ in range(5):
            next(frames)
        srv.freeze()
        with pytest.raises(av.error.FFmpegError):
            for _ in range(10_000):  # a frozen server sends nothing: the socket timeout fires
                next(frames)
    with pytest.raises(av.error.FFmpegError):  # opening a frozen server fails too
        av.open(url, options={"rtsp_transport": "tcp", "timeout": "1000000"})
    srv.resume()
    assert len(read_rtsp_retry(url, max_frames=5)) == 5


@pytest.mark.system
def test_rtsp_auth_and_credentials_in_url(rtsp_server) -> None:
    srv = rtsp_server({"/cam": live_mount(width=320, height=180)}, auth=("viewer", "s3cret:/@"))
    assert "viewer:s3cret%3A%2F%40@" in srv.url("/cam", credentials=srv.auth)
    assert len(read_rtsp(srv.url("/cam", credentials=srv.auth), max_frames=3)) == 3
    with pytest.raises(av.error.FFmpegError):
        read_rtsp(srv.url("/cam"), max_frames=1)
    with pytest.raises(av.error.FFmpegError):
        read_rtsp(srv.url("/cam", credentials=("viewer", "wrong")), max_frames=1)


@pytest.mark.system
def test_rtsp_h265_live_and_file_mounts(clip_factory, rtsp_server) -> None:
    require("x265enc")
    path = clip_factory("h265.mp4", width=320, height=180, seconds=1.0, codec="h265")
    srv = rtsp_server({"/live": live_mount(width=320, height=180, codec="h265"),
                       "/file": file_mount(path, codec="h265", loop=True)})
    for mount in ("/live", "/file"):
        frames = read_rtsp(srv.url(mount), max_frames=5)
        assert len(frames) == 5 and (frames[0].width, frames[0].height) == (320, 180)


@pytest.mark.system
def test_rtsp_through_the_tcp_proxy(rtsp_server, tcp_proxy) -> None:
    srv = rtsp_server({"/cam": live_mount(width=320, height=180)})
    proxy = tcp_proxy(srv.port)
    frames = read_rtsp(f"rtsp://127.0.0.1:{proxy.port}/cam", max_frames=10)
    assert len(frames) == 10
    counts = proxy.snapshot()
    assert counts["connections"] >= 1 and counts["bytes_downstream"] > 10_000


@pytest.mark.system
def test_rtsp_server_reports_a_bad_mount_file(tmp_path) -> None:
    require("gst-rtsp-server")
    from tests.fixtures.rtsp import RtspServerError

    srv = RtspServer({"/x": file_mount(tmp_path / "missing.mp4")}, log_dir=tmp_path, ready_timeout=20)
    with pytest.raises(RtspServerError, match="not found"):
        srv.start()
    assert not srv.running


# -- MQTT ----------------------------------------------------------------------------------------------------
@pytest.mark.system
def test_mqtt_qos1_round_trip_and_resubscribe_after_restart(mqtt_broker) -> None:
    from tests.fixtures.mqtt import MqttCollector, publish

    with MqttCollector(mqtt_broker.port, "dsanet/#", qos=1) as sub:
        publish(mqtt_broker.port, "dsanet/cam1/event", json.dumps({"n": 1}), qos=1)
        got = sub.wait_for(1)
        assert [(m.topic, m.json(), m.qos) for m in got] == [("dsanet/cam1/event", {"n": 1}, 1)]
        port, subacks = mqtt_broker.port, sub.subacks
        mqtt_broker.restart()
        assert mqtt_broker.port == port
        assert sub.wait_subscribed(subacks + 1)  # it reconnected and subscribed again
        publish(mqtt_broker.port, "dsanet/cam1/event", json.dumps({"n": 2}), qos=1)
        assert [m.json()["n"] for m in sub.wait_for(2)] == [1, 2]


@pytest.mark.system
def test_mqtt_persistent_session_keeps_queued_messages_across_a_clean_restart(tmp_path) -> None:
    require("mosquitto")
    from tests.fixtures.mqtt import MosquittoBroker, MqttCollector, publish

    with MosquittoBroker(work_dir=tmp_path / "b", persistence=True) as broker:
        MqttCollector(broker.port, "q/#", client_id="keeper", clean_session=False).start().stop()
        for n in range(3):
            publish(broker.port, "q/x", str(n), qos=1)  # subscriber offline: the broker queues them
        broker.restart()  # SIGTERM: mosquitto writes its database
        with MqttCollector(broker.port, "q/#", client_id="keeper", clean_session=False) as sub:
            assert [m.payload for m in sub.wait_for(3)] == [b"0", b"1", b"2"]


@pytest.mark.system
def test_mqtt_kill_drops_connections(mqtt_broker) -> None:
    from tests.fixtures.mqtt import mqtt_connack_ok

    assert mqtt_connack_ok(mqtt_broker.port)
    mqtt_broker.kill()
    assert not mqtt_broker.running and not mqtt_connack_ok(mqtt_broker.port)
    mqtt_broker.start()
    assert mqtt_connack_ok(mqtt_broker.port)


# -- HTTP receiver -----------------------------------------------------------------------------------------
def _post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 30) -> int:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_http_receiver_records_fails_and_verifies_hmac(http_receiver) -> None:
    body = json.dumps({"camera": "cam1", "score": 0.9}).encode()
    assert _post(http_receiver.url("/hook"), body, {"X-Test": "1"}) == 200
    (req,) = http_receiver.requests()
    assert (req.method, req.path, req.json, req.header("x-test")) == ("POST", "/hook", {"camera": "cam1", "score": 0.9}, "1")
    assert req.signature_valid is None and req.status == 200

    http_receiver.fail(500)
    assert _post(http_receiver.url(), body) == 500
    assert _post(http_receiver.url(), body) == 500
    http_receiver.succeed()
    http_receiver.fail(503, count=1)
    assert [_post(http_receiver.url(), body) for _ in range(2)] == [503, 200]
    assert [r.status for r in http_receiver.requests()] == [200, 500, 500, 503, 200]
    assert len(http_receiver.requests(ok_only=True)) == 2

    http_receiver.clear()
    http_receiver.set_secret("topsecret")
    ids = {"webhook-id": "e1:0", "webhook-timestamp": "1700000000"}

    def signed(secret: str, b: bytes, **over: str) -> dict[str, str]:
        h = {**ids, **over}
        return {**h, SIGNATURE_HEADER: hmac_signature(secret, ids["webhook-id"], ids["webhook-timestamp"], b),
                "webhook-signature": standard_signature(secret, ids["webhook-id"], ids["webhook-timestamp"], b)}

    assert _post(http_receiver.url(), body, signed("topsecret", body)) == 200
    assert _post(http_receiver.url(), body, signed("other", body)) == 200
    assert _post(http_receiver.url(), body + b" ", signed("topsecret", body)) == 200  # body changed
    assert _post(http_receiver.url(), body, signed("topsecret", body, **{"webhook-timestamp": "1700000999"})) == 200
    assert _post(http_receiver.url(), body) == 200  # unsigned
    assert [r.signature_valid for r in http_receiver.requests()] == [True, False, False, False, False]


def test_http_receiver_slow_mode_outlasts_a_short_client_timeout() -> None:
    with HttpReceiver() as receiver:
        receiver.slow(3.0)
        with pytest.raises(TimeoutError):
            _post(receiver.url(), b"{}", timeout=0.3)
        assert len(receiver.wait_for(1)) == 1  # it was received; only the answer was late
        receiver.slow(0)
        assert _post(receiver.url(), b"{}") == 200
        port = receiver.port
    assert not port_accepts(port)  # clean shutdown closed the socket


# -- TCP proxy -------------------------------------------------------------------------------------------------
class EchoServer:
    """Echoes every byte back (a real server for the proxy to sit in front of)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _through(proxy: TcpProxy, payload: bytes) -> bytes:
    """Send ``payload`` through the proxy to the echo server and return what comes back until EOF."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        out = bytearray()

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := sock.recv(65536):
            out += chunk
        sender.join()
        return bytes(out)


def test_tcp_proxy_passes_bytes_untouched_or_corrupts_them_on_demand() -> None:
    payload = os.urandom(400_000)
    echo = EchoServer()
    try:
        with TcpProxy(echo.port, seed=3) as proxy:
            assert _through(proxy, payload) == payload
            assert proxy.snapshot()["flipped_bytes"] == 0

            proxy.corrupt(flip_rate=0.001, after_bytes=1000)
            back = _through(proxy, payload)
            assert len(back) == len(payload) and back[:1000] == payload[:1000] and back != payload
            flips = sum(a != b for a, b in zip(back, payload, strict=True))
            assert flips == proxy.snapshot()["flipped_bytes"] > 0

            proxy.corrupt(drop_rate=0.5, after_bytes=1000)
            back = _through(proxy, payload)
            assert back[:1000] == payload[:1000] and len(back) < len(payload)
            assert proxy.snapshot()["dropped_chunks"] > 0

            proxy.clean()
            assert _through(proxy, payload) == payload
    finally:
        echo.close()


# -- tiny CLIP and system checks -----------------------------------------------------------------------------
def test_tiny_clip_fixture_loads_with_the_engine_loaders(tiny_clip_dir) -> None:
    import torch

    from engine.clip import is_tiny, load_text_model, load_tokenizer, load_vision_model

    assert is_tiny(tiny_clip_dir)
    vision = load_vision_model(tiny_clip_dir)
    with torch.no_grad():
        emb = vision(pixel_values=torch.zeros(2, 3, 224, 224)).image_embeds
    assert tuple(emb.shape) == (2, 512)
    tok = load_tokenizer(tiny_clip_dir)
    ids = tok(["a person fighting"], padding="max_length", max_length=77, return_tensors="pt")
    text = load_text_model(tiny_clip_dir)
    with torch.no_grad():
        hidden = text(**ids).last_hidden_state
    assert hidden.shape[:2] == (1, 77)


def test_require_skips_locally_and_fails_in_ci(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match=r"bash \.ci/system-packages\.sh"):
        require("exe:dsanet-no-such-program")
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="missing system package in CI"):
        require("exe:dsanet-no-such-program")
    require("exe:sh")  # present: no skip, no failure
    assert available("exe:sh") and not available("exe:dsanet-no-such-program")


@pytest.mark.system
def test_promtool_lints_a_metrics_page() -> None:
    require("promtool")
    from tests.fixtures.system import promtool_check_metrics

    good = "# HELP dsanet_frames_total Frames read.\n# TYPE dsanet_frames_total counter\ndsanet_frames_total 3\n"
    assert promtool_check_metrics(good).returncode == 0
    bad = promtool_check_metrics("# TYPE dsanet_frames_total counter\ndsanet_frames_total 3\n")
    assert bad.returncode != 0 and "no help text" in (bad.stdout + bad.stderr).lower()


class _WorkerTmp:
    """Stands in for one xdist worker's ``tmp_path_factory``: its base temp dir sits beside the others'."""

    def __init__(self, run: Path, worker: str) -> None:
        self.base = run / f"popen-{worker}"
        self.base.mkdir(parents=True, exist_ok=True)

    def getbasetemp(self) -> Path:
        return self.base

    def mktemp(self, name: str) -> Path:  # pragma: no cover - only used without xdist
        raise AssertionError("build_once must not make a private folder under xdist")


def test_build_once_builds_a_session_artefact_once_for_all_xdist_workers(tmp_path, monkeypatch) -> None:
    from tests.fixtures.shared import build_once

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    calls: list[Path] = []

    def build(folder: Path) -> Path:
        calls.append(folder)
        time.sleep(0.3)  # the other workers arrive while this one is still building
        (folder / "thing").write_text("built")
        return folder / "thing"

    got: list[Path] = []
    workers = [threading.Thread(target=lambda w=w: got.append(
        build_once(_WorkerTmp(tmp_path, w), "artefact", build))) for w in ("gw0", "gw1", "gw2")]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(calls) == 1 and len(got) == 3 and len(set(got)) == 1
    assert got[0].read_text() == "built" and got[0].parent.parent == tmp_path / "shared"


def test_build_once_builds_again_after_a_failed_build(tmp_path, monkeypatch) -> None:
    from tests.fixtures.shared import build_once

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")

    def broken(folder: Path) -> Path:
        (folder / "half").write_text("half")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        build_once(_WorkerTmp(tmp_path, "gw0"), "artefact", broken)
    out = build_once(_WorkerTmp(tmp_path, "gw1"), "artefact", lambda f: f)
    assert out == tmp_path / "shared" / "artefact" and not (out / "half").exists()  # what failed is gone


def test_build_once_without_xdist_builds_in_a_private_folder(tmp_path_factory, monkeypatch) -> None:
    from tests.fixtures.shared import build_once

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    a = build_once(tmp_path_factory, "private", lambda f: f)
    b = build_once(tmp_path_factory, "private", lambda f: f)
    assert a != b and a.is_dir() and b.is_dir()
