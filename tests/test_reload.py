"""Reload: the config diff, applying only the difference through ``ServiceControl``, ``dsanet reload``
against a running HTTP server, and relative paths that resolve from the deployment file's folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stream.config import load_config, parse_config
from stream.reload import LiveConfig, apply_plan, plan_reload
from tests.fixtures.control_fake import FakeControl

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
cameras:
  - name: a
    url: rtsp://127.0.0.1:8554/a
  - name: b
    url: rtsp://127.0.0.1:8554/b
  - name: c
    url: rtsp://127.0.0.1:8554/c
    events: {on_threshold: 0.7}
  - name: d
    url: rtsp://127.0.0.1:8554/d
model: {bundle: /models/x}
events: {on_threshold: 0.6, off_threshold: 0.4}
"""


def _cfg(text: str):
    return parse_config(text, "t")


def test_plan_touches_only_what_changed() -> None:
    new = BASE.replace("rtsp://127.0.0.1:8554/b", "rtsp://127.0.0.1:8554/b2")  # b: new URL -> restart
    new = new.replace("events: {on_threshold: 0.7}", "events: {on_threshold: 0.8, off_threshold: 0.3}")  # c
    new = new.replace("  - name: d\n    url: rtsp://127.0.0.1:8554/d\n", "")  # d removed
    new = new.replace("model:", "  - name: e\n    url: rtsp://127.0.0.1:8554/e\n    enabled: false\nmodel:")
    plan = plan_reload(_cfg(BASE), _cfg(new))
    assert plan.remove == ("d",)
    assert [c.name for c in plan.add] == ["e"]
    assert [c.name for c in plan.restart] == ["b"]
    assert plan.thresholds == (("c", 0.8, 0.3),)
    assert plan.enable == () and plan.disable == () and plan.restart_needed == ()
    assert not any("'a'" in line for line in plan.lines())  # camera a is not touched


def test_plan_global_thresholds_enable_flags_and_restart_sections() -> None:
    new = BASE.replace("events: {on_threshold: 0.6, off_threshold: 0.4}", "events: {on_threshold: 0.5, off_threshold: 0.4}")
    new = new.replace("url: rtsp://127.0.0.1:8554/a\n", "url: rtsp://127.0.0.1:8554/a\n    enabled: false\n")
    new = new.replace("model: {bundle: /models/x}", "model: {bundle: /models/y}")
    plan = plan_reload(_cfg(BASE), _cfg(new))
    assert plan.disable == ("a",)
    # c overrides on_threshold, so only the cameras that follow the global section change
    assert sorted(plan.thresholds) == [("a", 0.5, 0.4), ("b", 0.5, 0.4), ("d", 0.5, 0.4)]
    assert plan.restart_needed == () and plan.bundle == "/models/y"  # a bundle change is a live swap
    other = BASE.replace("model: {bundle: /models/x}", "model: {bundle: /models/y, runtime: torch}")
    mixed = plan_reload(_cfg(BASE), _cfg(other))
    assert mixed.restart_needed == ("model",) and mixed.bundle is None  # with another runtime: a restart
    timing = BASE.replace("events: {on_threshold: 0.6, off_threshold: 0.4}",
                          "events: {on_threshold: 0.6, off_threshold: 0.4, hold: 9}")
    assert sorted(c.name for c in plan_reload(_cfg(BASE), _cfg(timing)).restart) == ["a", "b", "c", "d"]
    assert plan_reload(_cfg(BASE), _cfg(BASE)).empty


def test_reload_applies_the_difference_and_reports_failures(tmp_path: Path) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(BASE)
    cfg = load_config(path)
    control = FakeControl(cfg.cameras)
    live = LiveConfig(cfg, control, path)
    assert live.reload().applied == [] and control.calls == []

    path.write_text(BASE.replace("  - name: d\n    url: rtsp://127.0.0.1:8554/d\n",
                                 "  - name: e\n    url: rtsp://127.0.0.1:8554/e\n"))
    rep = live.reload()
    assert rep.errors == [] and control.calls == [("remove", "d"), ("add", "e")]
    assert [c.name for c in live.cfg.cameras] == ["a", "b", "c", "e"]
    assert live.reload().applied == []  # applied once, nothing left to do

    control.calls.clear()
    path.write_text("cameras: [oops")
    rep = live.reload()
    assert control.calls == [] and "YAML syntax error" in rep.errors[0]

    # a step that fails is reported; the others still run
    del control.cams["a"]  # the service lost camera a behind our back
    path.write_text(BASE.replace("  - name: a\n    url: rtsp://127.0.0.1:8554/a\n", "")
                    .replace("  - name: d\n    url: rtsp://127.0.0.1:8554/d\n", ""))
    rep = live.reload()
    assert rep.errors == ["remove camera 'a': camera 'a' is not running"]
    assert rep.applied == ["remove camera 'e'"]
    assert [c.name for c in live.cfg.cameras] == ["b", "c"] and set(control.cams) == {"b", "c"}


def test_apply_plan_restart_is_remove_then_add() -> None:
    old, new = _cfg(BASE), _cfg(BASE.replace("8554/b", "8554/b2"))
    control = FakeControl(old.cameras)
    rep = apply_plan(plan_reload(old, new), control)
    assert control.calls == [("remove", "b"), ("add", "b")] and rep.applied == ["restart camera 'b'"]
    assert control.cams["b"]["url"] == "rtsp://127.0.0.1:8554/b2"


def test_relative_paths_resolve_from_the_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "deployment.yaml").write_text(
        "cameras:\n  - {name: replay, url: 'file:clips/a b.mp4'}\n  - {name: abs, url: 'file:///data/x.mp4'}\n"
        "model: {bundle: models/bundle}\nsinks: [{type: jsonl, path: out/events.jsonl}]\n"
        "evidence: {directory: ev}\nspool: {directory: /var/spool/dsanet}\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the file's folder
    cfg = load_config("site/deployment.yaml")
    from stream.reader import file_path

    assert file_path(cfg.cameras[0].url) == str(site / "clips" / "a b.mp4")
    assert cfg.cameras[1].url == "file:///data/x.mp4"
    assert cfg.model.bundle == str(site / "models" / "bundle")
    assert cfg.sinks[0].path == str(site / "out" / "events.jsonl")
    assert cfg.evidence.directory == str(site / "ev")
    assert cfg.spool.directory == "/var/spool/dsanet"
    # and a reload from elsewhere means the same: nothing to do
    monkeypatch.chdir(site)
    assert plan_reload(cfg, load_config("deployment.yaml")).empty


def test_dsanet_reload_command_against_a_running_server(tmp_path: Path) -> None:
    from tests.test_http_api import DEPLOYMENT, Site

    s = Site(tmp_path)
    try:
        port = s.server.port
        s.path.write_text(DEPLOYMENT.replace("model:", "  - name: gate\n    url: rtsp://127.0.0.1/gate\nmodel:")
                          + f"metrics:\n  port: {port}\n")
        res = subprocess.run([sys.executable, "-m", "stream.cli", "reload", "-c", str(s.path)], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "applied: add camera 'gate' (rtsp://127.0.0.1/gate)" in res.stdout
        assert "needs a restart (not applied): metrics" in res.stdout
        assert s.control.calls == [("add", "gate")]
        res = subprocess.run([sys.executable, "-m", "stream.cli", "reload", "--url", s.url], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
        assert res.returncode == 0 and "applied" not in res.stdout
    finally:
        s.close()
    res = subprocess.run([sys.executable, "-m", "stream.cli", "reload", "--url", s.url], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1 and "no service answers" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_sighup_reloads_a_service_without_http_server(tmp_path: Path, clip_factory, tiny_bundle_dir: Path) -> None:
    """With metrics (and so the HTTP server) off, SIGHUP still reloads instead of ending the process."""
    import signal
    import threading

    clip = clip_factory("cam.mp4", width=160, height=120, fps=25, seconds=4.0)
    path = tmp_path / "deployment.yaml"
    cams = f"  - name: a\n    url: file://{clip}\n    loop: true\n"
    body = (f"model: {{bundle: {tiny_bundle_dir}, runtime: onnxruntime, threads: 1}}\n"
            "window: {length: 8, lookahead: 2}\nmetrics: {enabled: false}\nspool: {directory: spool}\n")
    path.write_text("cameras:\n" + cams + body)
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "-c", str(path), "--duration", "60",
                             "--status-interval", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    seen = {"start": threading.Event(), "added": threading.Event()}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "watching 1 camera" in line:
                seen["start"].set()
            if "reload: add camera 'b'" in line:
                seen["added"].set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert seen["start"].wait(120), "".join(lines)
        path.write_text("cameras:\n" + cams + cams.replace("name: a", "name: b") + body)
        proc.send_signal(signal.SIGHUP)
        assert seen["added"].wait(60), "".join(lines)
        assert proc.poll() is None  # still running: SIGHUP did not end it
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, "".join(lines[-20:])
