"""Batching workers under overload, and the live service end to end: real clips, a real tiny bundle on
ONNX Runtime, real sinks; ordered shutdown ending open events; ``dsanet run`` as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stream.metrics import Metrics
from stream.reader import LazyFrame
from stream.scoring import DropOldestQueue, EncoderWorker
from stream.snippets import SnippetCutter, SnippetSpec
from stream.types import Frame, Snippet

ROOT = Path(__file__).resolve().parents[1]
DSANET = [sys.executable, "-m", "stream.cli"]


def dropped(metrics: Metrics, stage: str) -> float:
    total = 0.0
    for fam in metrics.registry.collect():
        for s in fam.samples:
            if s.name == "dsanet_dropped_total" and s.labels.get("stage") == stage:
                total += s.value
    return total


def snippet(cam: str, i: int, frame_index: int | None = None) -> Snippet:
    img = np.full((8, 8, 3), i % 256, np.uint8)
    f = Frame(cam, i if frame_index is None else frame_index, float(i), float(i), img)
    return Snippet(cam, i, float(i), float(i) + 0.5, f, 1)


# ------------------------------------------------------------------------------------------- queues


def test_drop_oldest_queue_never_blocks_and_counts():
    seen = []
    q: DropOldestQueue[int] = DropOldestQueue(3, on_drop=seen.append)
    assert all(q.put(i) for i in range(3))
    assert not q.put(3) and not q.put(4)
    assert seen == [0, 1] and q.dropped == 2 and len(q) == 3
    assert q.get_batch(2, 0.0) == [2, 3]
    assert q.get_batch(10, 0.0) == [4]
    assert q.get_batch(10, 0.0, timeout=0.01) == []
    q.put(5)
    q.close()
    assert not q.put(6) and seen[-1] == 6  # after close, puts are dropped (and reported)
    assert q.get_batch(10, 1.0, timeout=5) == [5]  # close: drain without waiting
    assert q.get_batch(10, 1.0, timeout=5) == []


def test_get_batch_waits_for_a_batch_to_fill_up_to_max_wait():
    q: DropOldestQueue[int] = DropOldestQueue(100)

    def producer() -> None:
        for i in range(4):
            time.sleep(0.01)
            q.put(i)

    t = threading.Thread(target=producer)
    t.start()
    batch = q.get_batch(4, max_wait=30.0, timeout=30.0)
    t.join()
    assert batch == [0, 1, 2, 3]  # returned as soon as the batch was full, long before max_wait


def test_encoder_worker_drops_oldest_under_overload_and_lag_stays_bounded():
    metrics = Metrics()
    q: DropOldestQueue[Snippet] = DropOldestQueue(8, on_drop=lambda s: metrics.dropped("encoder", s.camera),
                                                  name="encoder")
    release = threading.Event()
    out = []

    def slow_embed(x: np.ndarray) -> np.ndarray:
        release.wait(30)  # the model is stuck until the producer has overfilled the queue
        return np.ones((x.shape[0], 4), np.float32)

    w = EncoderWorker(q, slow_embed, lambda imgs: np.zeros((len(imgs), 3, 2, 2), np.float32),
                      out.extend, max_batch=4, max_wait=0.0, metrics=metrics)
    w.start()
    n = 200
    t0 = time.monotonic()
    for i in range(n):
        q.put(snippet("cam", i))  # never blocks, however slow the model
    put_seconds = time.monotonic() - t0
    release.set()
    assert w.stop(timeout=30)
    got = [e.index for e in out]
    assert got[-1] == n - 1  # the newest work survived
    assert len(got) <= 8 + 4  # at most the queue plus the batch in flight: lag is bounded
    assert dropped(metrics, "encoder") == n - len(got) == q.dropped
    assert got == sorted(got)
    assert put_seconds < 30  # sanity only: 200 puts did not wait for the stuck model


def test_encoder_worker_reuses_embedding_of_repeated_frames_and_survives_errors():
    metrics = Metrics()
    q: DropOldestQueue[Snippet] = DropOldestQueue(100)
    calls = []
    out = []

    def embed(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("device lost at rtsp://u:pw@cam/x")
        return np.arange(x.shape[0] * 4, dtype=np.float32).reshape(-1, 4) + 100 * len(calls)

    w = EncoderWorker(q, embed, lambda imgs: np.zeros((len(imgs), 3, 2, 2), np.float32), out.extend,
                      max_batch=16, max_wait=0.0, metrics=metrics)
    q.put(snippet("a", 0))
    w.start()
    assert w.queue.get_batch  # started
    time.sleep(0.2)  # let the failing first batch happen alone
    for s in (snippet("a", 1, 10), snippet("a", 2, 10), snippet("a", 3, 10), snippet("a", 4, 11)):
        q.put(s)
    assert w.stop(timeout=30)
    assert dropped(metrics, "encoder_error") == 1
    assert [e.index for e in out] == [1, 2, 3, 4]
    np.testing.assert_array_equal(out[0].embedding, out[1].embedding)  # filled snippets: same frame
    np.testing.assert_array_equal(out[0].embedding, out[2].embedding)
    assert sum(calls[1:]) == 2 and w.reused == 2  # frames 10 and 11 embedded once each


def test_encoder_worker_uses_pixels_prepared_by_the_readers():
    q: DropOldestQueue[Snippet] = DropOldestQueue(100)
    seen = []

    def embed(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return x.reshape(x.shape[0], -1)[:, :4]

    def no_preprocess(imgs):
        raise AssertionError("frames were already prepared")

    out = []
    w = EncoderWorker(q, embed, no_preprocess, out.extend, max_batch=8, max_wait=0.0)
    for i in range(3):
        s = snippet("a", i)
        q.put(Snippet(s.camera, s.index, s.start_time, s.end_time, s.frame, 1,
                      pixels=np.full((3, 2, 2), i, np.float32)))
    w.start()
    assert w.stop(timeout=30)
    assert [float(e.embedding[0]) for e in out] == [0.0, 1.0, 2.0]


def test_one_stuck_camera_does_not_slow_another():
    """Cutters push into a shared drop-oldest queue: a camera flooding it costs only drops, never a block."""
    q: DropOldestQueue[Snippet] = DropOldestQueue(4)
    spec = SnippetSpec(16, 30.0)
    cut_a = SnippetCutter("a", spec, q.put)
    cut_b = SnippetCutter("b", spec, q.put)
    img = np.zeros((4, 4, 3), np.uint8)
    for i in range(3000):  # nobody consumes: the queue is full almost at once
        cut_a.on_frame(LazyFrame("a", i, i / 30, 0.0, None, rgb=img))
    for i in range(64):
        cut_b.on_frame(LazyFrame("b", i, i / 30, 0.0, None, rgb=img))
    items = q.get_batch(10, 0.0)
    assert [s.camera for s in items][-3:] == ["b", "b", "b"]  # b's newest work is there
    assert q.dropped > 150


# --------------------------------------------------------------------------------------- end to end


def write_config(tmp: Path, cameras: list[dict], *, sinks: list[dict] | None = None, bundle: Path,
                 window: str = "length: 16\n  lookahead: 2", events: str | None = None,
                 metrics_port: int = 0, extra: str = "") -> Path:
    cams = "\n".join(
        "  - " + "\n    ".join(f"{k}: {json.dumps(v)}" for k, v in c.items()) for c in cameras)
    if sinks is None:
        sinks = [{"type": "jsonl", "path": str(tmp / "events.jsonl")}]
    sink_text = "\n".join("  - " + "\n    ".join(f"{k}: {json.dumps(v)}" for k, v in s.items()) for s in sinks)
    events = events or ("on_threshold: 0.0\n  off_threshold: 0.0\n  min_duration: 0.0\n  hold: 1.0\n"
                        "  cooldown: 0.0\n  update_interval: 1000.0")
    text = f"""cameras:
{cams}
model:
  bundle: {json.dumps(str(bundle))}
  runtime: onnxruntime
  threads: 1
  encoder_batch: 8
  encoder_max_wait: 0.02
  queue_size: 256
window:
  {window}
events:
  {events}
ingest:
  open_timeout: 2
  read_timeout: 1
  backoff_initial: 0.2
  backoff_max: 1
sinks:
{sink_text}
metrics:
  enabled: true
  port: {metrics_port}
spool:
  directory: {json.dumps(str(tmp / "spool"))}
{extra}"""
    path = tmp / "deploy.yaml"
    path.write_text(text)
    return path


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def service_factory():
    made = []

    def make(cfg_path: Path, **kw):
        from stream.config import load_config
        from stream.service import Service

        svc = Service(load_config(cfg_path), **kw)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.shutdown()


def test_service_end_to_end_two_file_cameras(tmp_path, clip_factory, tiny_bundle_dir, service_factory):
    a = clip_factory("a.mp4", width=320, height=180, fps=25, seconds=4.0)
    b = clip_factory("b.mp4", width=160, height=96, fps=15, seconds=3.0)
    cfg = write_config(tmp_path, [
        {"name": "a", "url": f"file://{a}", "realtime": False},
        {"name": "b", "url": f"file://{b}", "realtime": False},
    ], bundle=tiny_bundle_dir)
    import io

    out = io.StringIO()
    svc = service_factory(cfg, out=out, status_interval=0.5)
    scores: list = []
    orig = svc._on_scores
    svc.head.on_scores = lambda s: (scores.extend(s), orig(s))
    assert svc.run(duration=120, install_signals=False) == 0
    assert svc.stop_reason == "every source has ended"
    # every snippet of both cameras was scored exactly once, in order
    for cam, seconds in (("a", 4.0), ("b", 3.0)):
        idx = [s.index for s in scores if s.camera == cam]
        n = svc.cameras[cam].cutter.emitted
        assert n == int(np.ceil(seconds / (16 / 30) - 1e-6))
        assert idx == list(range(n))
        assert all(0.0 <= s.score <= 1.0 for s in scores)
        assert all(len(s.class_probs) == 14 and abs(sum(s.class_probs) - 1) < 1e-3 for s in scores)
    # thresholds 0: each camera opened one event at its first score and it was ended by the shutdown
    evs = read_events(tmp_path / "events.jsonl")
    for cam in ("a", "b"):
        mine = [e for e in evs if e["camera"] == cam]
        assert [e["type"] for e in mine] == ["start", "end"]
        assert mine[-1]["reason"] == "shutdown" and mine[0]["id"] == mine[1]["id"]
    assert not list((tmp_path / "spool" / "open-events").glob("*.json"))  # journal cleared
    text = svc.metrics.render().decode()
    assert 'dsanet_frames_decoded_total{camera="a"} 100.0' in text
    assert 'dsanet_frames_decoded_total{camera="b"} 45.0' in text
    assert 'dsanet_camera_state{camera="a",state="stopped"} 1.0' in text
    assert 'dsanet_build_info{bundle="' in text
    assert 'dsanet_events_total{camera="a"' in text
    assert "dsanet_inference_seconds_count{model=\"encoder\"}" in text
    printed = out.getvalue()
    assert "watching 2 camera(s)" in printed and "ALERT" in printed


def test_service_dead_camera_does_not_hold_back_a_live_one(tmp_path, clip_factory, tiny_bundle_dir,
                                                          service_factory):
    from tests.fixtures.system import free_port

    good = clip_factory("good.mp4", width=160, height=96, fps=25, seconds=60.0)
    cfg = write_config(tmp_path, [
        {"name": "dead", "url": f"rtsp://user:pw-XYZ@127.0.0.1:{free_port()}/none"},
        {"name": "good", "url": f"file://{good}", "realtime": True, "loop": True},
    ], bundle=tiny_bundle_dir)
    svc = service_factory(cfg, status_interval=0)
    svc.start()
    try:
        from urllib.request import urlopen

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and svc.cameras["good"].status.scored < 4:
            time.sleep(0.05)
        assert svc.cameras["good"].status.scored >= 4
        assert svc.cameras["dead"].reader.stats.reconnects >= 1
        with urlopen(svc.server.url + "/readyz", timeout=10) as r:
            assert r.status == 200
        with urlopen(svc.server.url + "/metrics", timeout=10) as r:
            page = r.read().decode()
        assert "pw-XYZ" not in page
        assert 'dsanet_camera_up{camera="good"} 1.0' in page and 'dsanet_camera_up{camera="dead"} 0.0' in page
        assert svc.cameras["good"].status.lag is not None and svc.cameras["good"].status.lag < 30
    finally:
        t0 = time.monotonic()
        steps = svc.shutdown()
        assert steps["total"] <= time.monotonic() - t0 + 1e-6
    evs = read_events(tmp_path / "events.jsonl")
    assert [e["type"] for e in evs if e["camera"] == "good"] == ["start", "end"]
    assert all(e["camera"] != "dead" for e in evs)


def test_events_left_open_by_a_crash_are_ended_on_start(tmp_path, clip_factory, tiny_bundle_dir, service_factory):
    from stream.events import Event, OpenEventJournal

    clip = clip_factory("c.mp4", width=96, height=64, fps=25, seconds=1.0)
    cfg = write_config(tmp_path, [{"name": "c", "url": f"file://{clip}", "realtime": False}],
                       bundle=tiny_bundle_dir, events="on_threshold: 1.0\n  off_threshold: 0.5")
    journal = OpenEventJournal(tmp_path / "spool" / "open-events")
    journal.record(Event(id="crashed-1", seq=3, type="update", camera="c", category="Fighting",
                         category_key="Fighting", category_score=0.8, score=0.9, peak_score=0.95,
                         start_time=1000.0, end_time=None, updated_time=1010.0, snippets=20))
    svc = service_factory(cfg, status_interval=0)
    assert svc.run(duration=60, install_signals=False) == 0
    evs = read_events(tmp_path / "events.jsonl")
    assert [(e["id"], e["type"], e["seq"], e["reason"]) for e in evs] == [("crashed-1", "end", 4, "restart_recovery")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.mark.slow
def test_dsanet_run_cli_sigterm_ends_events_and_exits_zero(tmp_path, clip_factory, tiny_bundle_dir):
    clip = clip_factory("live.mp4", width=320, height=180, fps=25, seconds=30.0)
    cfg = write_config(tmp_path, [{"name": "cam1", "url": f"file://{clip}", "realtime": True, "loop": True}],
                       bundle=tiny_bundle_dir)
    proc = subprocess.Popen([*DSANET, "run", "-c", str(cfg), "--status-interval", "1"], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("[cam1]") and "score=0." in line:
                break
        assert any(ln.startswith("[cam1] streaming") for ln in lines), "".join(lines) + proc.stderr.read()
        assert any(ln.startswith("ALERT") for ln in lines)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        stop_seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped in" in err and "signal SIGTERM" in err
    evs = read_events(tmp_path / "events.jsonl")
    assert [e["type"] for e in evs] == ["start", "end"] and evs[-1]["reason"] == "shutdown"
    print(f"stop took {stop_seconds:.2f} s")


def test_dsanet_run_duration_and_clear_errors(tmp_path, clip_factory, tiny_bundle_dir):
    clip = clip_factory("d.mp4", width=96, height=64, fps=25, seconds=20.0)
    cfg = write_config(tmp_path, [{"name": "d", "url": f"file://{clip}", "realtime": True}], bundle=tiny_bundle_dir)
    res = subprocess.run([*DSANET, "run", "-c", str(cfg), "--duration", "2", "--status-interval", "0.5"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "[d] streaming" in res.stdout and "duration of 2 s reached" in res.stderr
    # a config naming a bundle that does not exist: one clear line, exit 2 (bad config), no traceback
    bad = write_config(tmp_path, [{"name": "d", "url": f"file://{clip}"}], bundle=tmp_path / "no-bundle")
    res = subprocess.run([*DSANET, "run", "-c", str(bad)], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no-bundle" in res.stderr
    res = subprocess.run([*DSANET, "run", "-c", str(tmp_path / "missing.yaml")], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "file not found" in res.stderr


def test_port_in_use_is_a_clear_error_and_shutdown_is_clean(tmp_path, clip_factory, tiny_bundle_dir,
                                                            service_factory):
    import socket

    from engine.errors import DsanetError

    clip = clip_factory("p.mp4", width=96, height=64, fps=25, seconds=1.0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cfg = write_config(tmp_path, [{"name": "p", "url": f"file://{clip}"}], bundle=tiny_bundle_dir,
                           metrics_port=busy.getsockname()[1])
        svc = service_factory(cfg, status_interval=0)
        with pytest.raises(DsanetError, match="metrics.port"):
            svc.run(duration=5, install_signals=False)
    assert svc._shut and not svc.encoder.is_alive()


def test_shutdown_does_not_wait_for_a_camera_stuck_in_a_read(tmp_path, clip_factory, tiny_bundle_dir,
                                                             service_factory):
    """A hung camera (TCP accepted, never a byte) blocks its reader in FFmpeg for up to the open timeout;
    shutdown moves on without it and still ends the other camera's event."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns: list = []
    threading.Thread(target=lambda: conns.append(srv.accept()[0]), daemon=True).start()
    clip = clip_factory("ok.mp4", width=96, height=64, fps=25, seconds=30.0)
    cfg = write_config(tmp_path, [
        {"name": "hung", "url": f"rtsp://127.0.0.1:{srv.getsockname()[1]}/x"},
        {"name": "ok", "url": f"file://{clip}", "realtime": True},
    ], bundle=tiny_bundle_dir)
    text = cfg.read_text().replace("open_timeout: 2", "open_timeout: 120").replace("read_timeout: 1",
                                                                                  "read_timeout: 120")
    cfg.write_text(text)
    svc = service_factory(cfg, status_interval=0)
    try:
        svc.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and svc.cameras["ok"].status.scored < 2:
            time.sleep(0.05)
        assert svc.cameras["ok"].status.scored >= 2
        assert svc.cameras["hung"].reader.state.value == "connecting"
        svc.shutdown()
        assert svc.cameras["hung"].reader.alive  # still blocked in the open: shutdown did not wait for it
        evs = read_events(tmp_path / "events.jsonl")
        assert [e["type"] for e in evs if e["camera"] == "ok"] == ["start", "end"]
    finally:
        srv.close()
        for c in conns:
            c.close()
