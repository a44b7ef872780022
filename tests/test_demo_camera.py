"""The demo camera over the local RTSP server (``stream/demo_camera.py``): served when GStreamer is there,
the file otherwise with a log line saying so, and no other config touched."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.config import DeploymentConfig
from stream.demo_camera import serve_demo_camera
from tests.fixtures.system import require


def _config(url: str) -> DeploymentConfig:
    return DeploymentConfig.model_validate({
        "cameras": [{"name": "demo-cam", "url": url, "loop": True}, {"name": "other", "url": "rtsp://10.0.0.9/x"}],
        "model": {"bundle": "/nonexistent-bundle"}})


def test_a_config_without_the_demo_camera_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    other = tmp_path / "clip.mp4"
    cfg = _config(f"file://{other}")
    # python must not even be run: a missing interpreter would otherwise log a warning
    out, server = serve_demo_camera(cfg, demo=tmp_path / "demo", python="/nonexistent/python3")
    assert server is None and out is cfg


@pytest.mark.parametrize("env, python, says", [
    ({}, "/nonexistent/python3", "playing the clip as a file source"),
    ({"DSANET_DEMO_RTSP": "0"}, "/nonexistent/python3", "DSANET_DEMO_RTSP=0"),
])
def test_without_gstreamer_the_demo_camera_plays_the_file_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, env: dict[str, str], python: str, says: str) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    cfg = _config(f"file://{demo / 'camera.mp4'}")
    with caplog.at_level(logging.INFO, logger="stream.demo_camera"):
        out, server = serve_demo_camera(cfg, demo=demo, env=env, python=python)
    assert server is None and out.cameras[0].url == cfg.cameras[0].url
    assert says in caplog.text


def test_with_gstreamer_the_demo_camera_streams_over_rtsp(tmp_path: Path,
                                                          clip_factory: Callable[..., Path]) -> None:
    require("gst-rtsp-server")
    import av

    demo = tmp_path / "demo"
    demo.mkdir()
    clip = clip_factory(width=320, height=180, seconds=2.0)
    (demo / "camera.mp4").write_bytes(clip.read_bytes())
    cfg = _config(f"file://{demo / 'camera.mp4'}")
    out, server = serve_demo_camera(cfg, demo=demo, env={})
    assert server is not None
    try:
        cam = out.cameras[0]
        assert cam.url == server.url and cam.url.startswith("rtsp://127.0.0.1:") and not cam.loop
        assert out.cameras[1] == cfg.cameras[1]  # the other camera is untouched
        frames = 0
        with av.open(cam.url, options={"rtsp_transport": "tcp"}, timeout=10) as c:
            for _ in c.decode(video=0):
                frames += 1
                if frames >= 10:
                    break
        assert frames >= 10
    finally:
        server.stop()
    assert server.proc.poll() is not None
