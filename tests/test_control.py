"""Runtime control of a running service (``stream.control.ServiceControl`` on ``stream.service.Service``):
cameras added and removed while it streams, thresholds changed live, listeners that never block it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from stream.config import CameraConfig
from stream.control import ServiceControl
from stream.listeners import ListenerHub
from stream.metrics import Metrics
from stream.types import ScoreRecord
from tests.test_service import dropped, read_events, write_config
from tests.test_service import service_factory as service_factory  # noqa: F401  (the fixture)

FPS = 25


def wait_until(pred, timeout: float = 90.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def snap(svc, name: str):
    return next(s for s in svc.camera_snapshots() if s.name == name)


def frames_per_second(svc, name: str, seconds: float) -> float:
    """Frames the camera's reader decoded per second over the next ``seconds``."""
    f0, t0 = svc.cameras[name].reader.stats.frames, time.monotonic()
    time.sleep(seconds)
    return (svc.cameras[name].reader.stats.frames - f0) / (time.monotonic() - t0)


def test_listener_hub_never_blocks_and_counts_what_it_drops() -> None:
    metrics = Metrics()
    hub = ListenerHub(metrics, maxsize=4)
    release, got = threading.Event(), []
    hub.add(lambda r: (release.wait(30), got.append(r)))
    recs = [ScoreRecord("cam", i, float(i), i + 0.5, 0.5, None, None) for i in range(20)]
    for r in recs:  # the listener is stuck on the first record: every publish still returns at once
        hub.publish(r)
    assert dropped(metrics, "listener") >= 15
    release.set()
    hub.stop(timeout=5.0)
    assert got[-1] == recs[-1]  # the newest survive, in order; every record is delivered or counted
    assert [r.index for r in got] == sorted(r.index for r in got)
    assert len(got) + dropped(metrics, "listener") == len(recs)


def test_add_and_remove_cameras_while_running(tmp_path: Path, clip_factory, tiny_bundle_dir, service_factory) -> None:
    a = clip_factory("a.mp4", width=160, height=96, fps=FPS, seconds=2.0)
    b = clip_factory("b.mp4", width=160, height=96, fps=FPS, seconds=2.0)
    cfg = write_config(tmp_path, [{"name": "a", "url": f"file://{a}", "loop": True}], bundle=tiny_bundle_dir)
    svc = service_factory(cfg, status_interval=0)
    assert isinstance(svc, ServiceControl)
    records: list = []
    svc.add_listener(records.append)
    svc.start()
    assert wait_until(lambda: snap(svc, "a").scores >= 2)

    svc.add_camera(CameraConfig(name="b", url=f"file://{b}", loop=True))
    with pytest.raises(ValueError, match="'B': a camera of that name is already watched"):
        svc.add_camera(CameraConfig(name="B", url=f"file://{b}"))
    # thresholds 0: the first score of b opens an event
    assert wait_until(lambda: snap(svc, "b").event_open and snap(svc, "b").scores >= 2)
    assert any(isinstance(r, ScoreRecord) and r.camera == "b" for r in list(records))
    assert snap(svc, "b").state == "streaming" and snap(svc, "b").frames > 0

    before = frames_per_second(svc, "a", 2.0)
    svc.remove_camera("b")
    after = frames_per_second(svc, "a", 2.0)
    assert after >= 0.7 * before and after > FPS / 2, (before, after)  # a kept its frame rate
    assert [s.name for s in svc.camera_snapshots()] == ["a"]
    with pytest.raises(KeyError, match="'b'"):
        svc.remove_camera("b")

    ends = [e for e in svc.events if e.camera == "b" and e.type == "end"]
    assert len(ends) == 1 and ends[0].reason == "camera_removed"
    assert wait_until(lambda: any(isinstance(r, dict) and r["camera"] == "b" and r["type"] == "end"
                                  for r in list(records)))
    payload = next(r for r in list(records) if isinstance(r, dict) and r["type"] == "end" and r["camera"] == "b")
    assert payload["reason"] == "camera_removed" and payload["id"] == ends[0].id
    n_a = snap(svc, "a").scores
    assert wait_until(lambda: snap(svc, "a").scores > n_a + 2)  # a is still scored
    svc.shutdown()
    sent = [e for e in read_events(tmp_path / "events.jsonl") if e["camera"] == "b"]
    assert sent[-1]["type"] == "end" and sent[-1]["reason"] == "camera_removed"


def test_thresholds_and_enable_take_effect_live(tmp_path: Path, clip_factory, tiny_bundle_dir,
                                                service_factory) -> None:
    a = clip_factory("a.mp4", width=160, height=96, fps=FPS, seconds=2.0)
    cfg = write_config(tmp_path, [{"name": "a", "url": f"file://{a}", "loop": True}], bundle=tiny_bundle_dir,
                       events="on_threshold: 1.0\n  off_threshold: 1.0\n  min_duration: 0.0\n  hold: 0.0\n"
                              "  cooldown: 0.0\n  update_interval: 1000.0")
    svc = service_factory(cfg, status_interval=0)
    svc.start()
    assert wait_until(lambda: snap(svc, "a").scores >= 3)
    assert not [e for e in svc.events if e.camera == "a"]  # a sigmoid score never reaches 1.0

    with pytest.raises(ValueError, match="off_threshold"):
        svc.set_thresholds("a", 0.2, 0.5)
    assert snap(svc, "a").on_threshold == 1.0  # a rejected change changes nothing
    with pytest.raises(KeyError):
        svc.set_thresholds("nope", 0.5, None)
    svc.set_thresholds("a", 0.0, 0.0)
    s = snap(svc, "a")
    assert (s.on_threshold, s.off_threshold) == (0.0, 0.0)
    assert wait_until(lambda: any(e.type == "start" and e.camera == "a" for e in svc.events))

    svc.set_camera_enabled("a", False)
    assert snap(svc, "a").state == "disabled" and not snap(svc, "a").event_open
    assert [e.reason for e in svc.events if e.type == "end"] == ["camera_disabled"]
    svc.set_camera_enabled("a", True)
    s = snap(svc, "a")
    assert s.enabled and s.on_threshold == 0.0  # the live thresholds survive a disable/enable
    assert wait_until(lambda: snap(svc, "a").scores >= 2 and snap(svc, "a").state == "streaming")
