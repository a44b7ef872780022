"""Live per-camera calibration (stream/calibrator.py): sampled scores, learning, persistence and re-load,
the API (GET/POST /api/v1/cameras/NAME/calibration, camera JSON), the dsanet_threshold gauge, and the
real service end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from stream.calibration import learn_thresholds
from stream.calibrator import MIN_SAMPLES, CalibrationUnavailable, Calibrator
from stream.config import CalibrationConfig, EventsConfig, load_config
from stream.types import ScoreRecord

SNIP = 0.5
EVENTS = EventsConfig(on_threshold=0.6, off_threshold=0.45, min_duration=0.0, hold=1.0, cooldown=0.0)


def _scores(n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    s = rng.beta(2, 6, size=n)
    s[n // 3: n // 3 + 4] = 0.95
    return [float(x) for x in s]


def _feed(cal: Calibrator, camera: str, scores: list[float]) -> None:
    for i, s in enumerate(scores):
        cal.on_record(ScoreRecord(camera, i, i * SNIP, (i + 1) * SNIP, s, None, None))


class Applied:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def __call__(self, name: str, on: float, off: float) -> None:
        self.calls.append((name, on, off))


def _cfg(tmp_path: Path, **kw) -> CalibrationConfig:
    return CalibrationConfig(enabled=True, period=40 * SNIP, target_per_day=500.0, floor=0.2,
                             directory=str(tmp_path / "cal"), **kw)


def test_learns_after_one_period_persists_and_reloads(tmp_path: Path) -> None:
    applied = Applied()
    cal = Calibrator(SNIP, applied, bundle_hash="abc")
    cfg = _cfg(tmp_path)
    assert cal.track("lobby", cfg, EVENTS) == EVENTS  # nothing on disk yet
    scores = _scores(40)
    _feed(cal, "lobby", scores[:39])
    assert cal.learn_due() == [] and cal.describe("lobby")["state"] == "collecting"
    _feed(cal, "lobby", scores[39:])
    assert cal.learn_due() == ["lobby"]
    want = learn_thresholds(scores, SNIP, EVENTS, cfg.target_per_day, cfg.floor)
    assert applied.calls == [("lobby", want.on, want.off)]
    d = cal.describe("lobby")
    assert d["state"] == "calibrated" and d["samples"] == 40 and d["on_threshold"] == pytest.approx(want.on)
    doc = json.loads((tmp_path / "cal" / "lobby.json").read_text())
    assert doc["on"] == want.on and doc["bundle"] == "abc" and doc["samples"] == 40
    # a restarted service re-loads them (same bundle); another bundle's file is ignored
    again = Calibrator(SNIP, Applied(), bundle_hash="abc").track("lobby", cfg, EVENTS)
    assert (again.on_threshold, again.off_threshold) == pytest.approx((want.on, want.off))
    other = Calibrator(SNIP, Applied(), bundle_hash="zzz")
    assert other.track("lobby", cfg, EVENTS) == EVENTS
    assert other.describe("lobby")["state"] == "collecting"
    # a floor raised since the file was written still bounds the re-loaded threshold
    high = Calibrator(SNIP, Applied(), bundle_hash="abc").track("lobby", cfg.model_copy(update={"floor": 0.99}),
                                                               EVENTS)
    assert high.on_threshold == 0.99 and high.off_threshold <= 0.99


def test_a_bundle_swap_drops_thresholds_learned_on_the_old_bundle(tmp_path: Path) -> None:
    """Calibrated thresholds describe the old bundle's scores: after a swap the camera is back on its
    configured thresholds at once, collects a full fresh period, and learns from new scores only."""
    applied = Applied()
    cal = Calibrator(SNIP, applied, bundle_hash="old")
    cfg = _cfg(tmp_path)
    cal.track("lobby", cfg, EVENTS)
    cal.track("hall", cfg, EVENTS)
    _feed(cal, "lobby", _scores(40))
    _feed(cal, "hall", _scores(20))  # still collecting at the swap
    assert cal.learn_due() == ["lobby"]
    assert cal.rebase("old") == []  # the same bundle again: nothing changes
    assert cal.describe("lobby")["state"] == "calibrated"
    applied.calls.clear()
    assert cal.rebase("new") == ["lobby"]
    assert applied.calls == [("lobby", EVENTS.on_threshold, EVENTS.off_threshold)]
    for cam in ("lobby", "hall"):
        d = cal.describe(cam)
        assert d["state"] == "collecting" and d["collected_scores"] == 0 and d["on_threshold"] is None
    new_scores = [min(1.0, x + 0.3) for x in _scores(40)]
    _feed(cal, "hall", new_scores[:39])
    assert cal.learn_due() == []  # the 20 old-bundle scores did not count toward the period
    _feed(cal, "hall", new_scores[39:])
    assert cal.learn_due() == ["hall"]
    want = learn_thresholds(new_scores, SNIP, EVENTS, cfg.target_per_day, cfg.floor)
    assert cal.describe("hall")["on_threshold"] == pytest.approx(want.on)
    assert json.loads((tmp_path / "cal" / "hall.json").read_text())["bundle"] == "new"


def test_scores_are_bounded_and_only_tracked_cameras_sample(tmp_path: Path) -> None:
    cal = Calibrator(SNIP, Applied())
    cal.track("a", _cfg(tmp_path, max_samples=20), EVENTS)
    cal.track("off", CalibrationConfig(enabled=False), EVENTS)
    _feed(cal, "a", _scores(100))
    _feed(cal, "off", _scores(10))
    cal.on_record({"camera": "a", "type": "start"})  # events are ignored
    assert cal.describe("a")["collected_scores"] == 20
    assert cal.describe("off") == {"enabled": False, "state": "off"}
    assert cal.active
    cal.forget("a")
    assert not cal.active


def test_relearn_now_and_restart(tmp_path: Path) -> None:
    applied = Applied()
    cal = Calibrator(SNIP, applied)
    cal.track("a", _cfg(tmp_path), EVENTS)
    with pytest.raises(CalibrationUnavailable, match="at least"):
        cal.relearn("a", now=True)
    with pytest.raises(CalibrationUnavailable, match="not enabled"):
        cal.relearn("nope")
    scores = _scores(MIN_SAMPLES + 4, seed=3)
    _feed(cal, "a", scores)
    assert cal.relearn("a", now=True)["state"] == "learning"
    assert cal.learn_due() == ["a"]
    want = learn_thresholds(scores, SNIP, EVENTS, 500.0, 0.2)
    assert applied.calls[-1] == ("a", want.on, want.off)
    d = cal.relearn("a")  # a fresh period: thresholds stay, scores start again
    assert d["state"] == "collecting" and d["collected_scores"] == 0 and d["on_threshold"] == pytest.approx(want.on)


def test_config_global_and_per_camera_override(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    p.write_text("cameras:\n  - {name: a, url: 'rtsp://h/a'}\n  - {name: b, url: 'rtsp://h/b', "
                 "calibration: {enabled: false}}\nmodel: {bundle: x}\n"
                 "calibration: {enabled: true, period: 3600, target_per_day: 4, floor: 0.35, directory: cal}\n")
    cfg = load_config(p)
    a, b = cfg.cameras
    assert cfg.calibration_for(a).enabled and not cfg.calibration_for(b).enabled
    assert cfg.calibration_for(b).floor == 0.35
    assert Path(cfg.calibration.directory) == tmp_path / "cal"  # relative to the file
    p.write_text(p.read_text().replace("floor: 0.35", "floor: 1.5"))
    with pytest.raises(Exception, match="floor"):
        load_config(p)


def test_api_and_cli_show_and_relearn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_http_api import Site

    site = Site(tmp_path)
    cal = Calibrator(SNIP, site.control.set_thresholds)
    site.console.calibration = cal
    try:
        cal.track("lobby", _cfg(tmp_path), EVENTS)
        code, body = site.call("GET", "/api/v1/cameras/lobby")
        assert code == 200 and body["calibration"]["state"] == "collecting"
        assert body["calibration"]["target_per_day"] == 500.0
        _, yard = site.call("GET", "/api/v1/cameras/yard")
        assert yard["calibration"] == {"enabled": False, "state": "off"}
        code, body = site.call("POST", "/api/v1/cameras/yard/calibration", {"now": True})
        assert code == 409 and "not enabled" in body["error"]
        code, body = site.call("POST", "/api/v1/cameras/lobby/calibration", {"now": "yes"})
        assert code == 400
        code, body = site.call("POST", "/api/v1/cameras/ghost/calibration", {})
        assert code == 404
        scores = _scores(MIN_SAMPLES * 2, seed=5)
        _feed(cal, "lobby", scores)
        code, body = site.call("POST", "/api/v1/cameras/lobby/calibration", {"now": True})
        assert code == 202 and body["calibration"]["state"] == "learning"
        cal.learn_due()
        want = learn_thresholds(scores, SNIP, EVENTS, 500.0, 0.2)
        _, cam = site.call("GET", "/api/v1/cameras/lobby")
        assert cam["on_threshold"] == pytest.approx(want.on) and cam["off_threshold"] == pytest.approx(want.off)
        code, body = site.call("GET", "/api/v1/cameras/lobby/calibration")
        assert code == 200 and body["calibration"]["state"] == "calibrated"
        # the CLI over the same API
        import argparse

        from stream.commands.calibrate import run as cli

        def ns(**kw):
            return argparse.Namespace(**{"camera": "lobby", "config": None, "url": site.url, "now": False,
                                         "show": False, **kw})
        assert cli(ns(show=True)) == 0
        assert f"on_threshold: {round(want.on, 6)}" in capsys.readouterr().out
        assert cli(ns(camera="yard", now=True)) == 1 and "not enabled" in capsys.readouterr().err
        assert cli(ns()) == 0 and cal.describe("lobby")["state"] == "collecting"
        assert cli(ns(url=None)) == 2
    finally:
        site.close()


def test_service_learns_persists_shows_the_gauge_and_reloads(tmp_path, clip_factory, tiny_bundle_dir) -> None:
    from stream.service import Service
    from tests.test_service import write_config

    clip = clip_factory("a.mp4", width=160, height=96, fps=15, seconds=4.0)
    extra = (f"calibration:\n  enabled: true\n  period: 4.2\n  target_per_day: 100000\n  floor: 0.05\n"
             f"  directory: {json.dumps(str(tmp_path / 'cal'))}\n")
    events = "on_threshold: 0.6\n  off_threshold: 0.45\n  min_duration: 0.0\n  hold: 1.0\n  cooldown: 0.0"
    path = write_config(tmp_path, [{"name": "a", "url": f"file://{clip}", "realtime": False}],
                        bundle=tiny_bundle_dir, events=events, extra=extra)
    cfg = load_config(path)
    svc = Service(cfg)
    seen: list = []
    orig = svc._on_scores
    svc.head.on_scores = lambda s: (seen.extend(s), orig(s))
    assert svc.run(duration=120, install_signals=False) == 0
    deadline = time.monotonic() + 10
    while svc.calibrator.describe("a")["state"] != "calibrated" and time.monotonic() < deadline:
        svc.calibrator.learn_due()
        time.sleep(0.05)
    want = learn_thresholds([w.score for w in seen], svc.spec.seconds, cfg.events_for(cfg.cameras[0]),
                            100000.0, 0.05)
    doc = json.loads((tmp_path / "cal" / "a.json").read_text())
    assert doc["on"] == pytest.approx(want.on) and doc["samples"] == len(seen) == 8
    snap = svc.camera_snapshots()[0]
    assert (snap.on_threshold, snap.off_threshold) == pytest.approx((want.on, want.off))
    text = svc.metrics.render().decode()
    assert f'dsanet_threshold{{camera="a",kind="on"}} {want.on}' in text
    # a restart re-loads the learned thresholds before the first score
    svc2 = Service(cfg)
    try:
        snap = svc2.camera_snapshots()[0]
        assert snap.on_threshold == pytest.approx(want.on)
        assert 'dsanet_threshold{camera="a",kind="off"}' in svc2.metrics.render().decode()
    finally:
        svc2.shutdown()
