"""The demo camera over the local RTSP server, so ``make demo`` exercises a real camera's ingest path.

``configs/demo.yaml`` names its camera as a file (``file:.../camera.mp4``, looped in real time). When
``dsanet run`` runs that config and GStreamer's RTSP server is installed (Debian's ``/usr/bin/python3``
with ``gir1.2-gst-rtsp-server-1.0``, the same server the tests use, ``stream/gst/rtsp_server_main.py``),
the clip is served untouched (no re-encode) as a looping live mount on a free loopback port, and the demo
camera reads ``rtsp://127.0.0.1:PORT/demo`` instead: RTSP session setup, RTP depayloading, the reader's
reconnect logic, as with a real camera. Otherwise the file plays directly and the log says why.

Only the running config changes (the deployment file still says ``file:``); a reload of the demo config
re-reads the file and so switches the demo camera to the file source.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.config import DeploymentConfig

log = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "gst" / "rtsp_server_main.py"
MOUNT = "/demo"
_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          "missing = [e for e in ('qtdemux', 'h264parse', 'rtph264pay') if Gst.ElementFactory.find(e) is None]; "
          "print(' '.join(missing))")


def gstreamer_missing(python: str = SYSTEM_PYTHON, timeout: float = 30.0) -> str | None:
    """None when the GStreamer RTSP server can run here, else a sentence saying what is missing."""
    if not Path(python).exists():
        return f"{python} not found (GStreamer's Python bindings live in the system Python)"
    try:
        res = subprocess.run([python, "-c", _CHECK], capture_output=True, text=True, timeout=timeout,
                             env=_server_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}"
    if res.returncode != 0:
        return "GStreamer RTSP server bindings missing (" + (res.stderr.strip().splitlines() or ["?"])[-1] + ")"
    if res.stdout.strip():
        return f"GStreamer elements missing: {res.stdout.strip()}"
    return None


def _server_env() -> dict[str, str]:
    """The system Python must not see the venv's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("GST_DEBUG", "1")
    env.setdefault("GST_DEBUG_NO_COLOR", "1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _options_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(f"OPTIONS rtsp://127.0.0.1:{port}/ RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
            return sock.recv(64).startswith(b"RTSP/1.0 200")
    except OSError:
        return False


@dataclass
class DemoRtspServer:
    """The running server process (stop it with :meth:`stop`)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


def start_server(clip: Path, log_dir: Path, ready_timeout: float = 30.0,
                 python: str = SYSTEM_PYTHON) -> DemoRtspServer:
    """Serve ``clip`` looped as ``rtsp://127.0.0.1:PORT/demo``; raises OSError when it does not come up."""
    import json

    port = _free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "rtsp-server.log"
    mounts = {MOUNT: {"kind": "file", "path": str(clip.resolve()), "loop": True, "codec": "h264"}}
    cmd = [python, str(SERVER_SCRIPT), "--port", str(port), "--mounts", json.dumps(mounts),
           "--parent-pid", str(os.getpid())]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_server_env())
    server = DemoRtspServer(proc, port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _options_ok(port):
            return server
        time.sleep(0.1)
    server.stop()
    tail = log_path.read_text(errors="replace")[-500:] if log_path.is_file() else ""
    raise OSError(f"the RTSP server did not come up on 127.0.0.1:{port} (exit {proc.poll()}): {tail.strip()}")


def _file_path(url: str) -> Path | None:
    if not url.startswith("file:"):
        return None
    rest = url[len("file:"):]
    return Path(rest[2:] if rest.startswith("//") else rest)


def serve_demo_camera(cfg: DeploymentConfig, demo: Path | None = None, env: Mapping[str, str] | None = None,
                      python: str = SYSTEM_PYTHON) -> tuple[DeploymentConfig, DemoRtspServer | None]:
    """(config to run, server or None): the demo's file camera moved onto the local RTSP server.

    The demo camera is an enabled camera whose URL is the demo folder's ``camera.mp4`` (``demo``, default
    ``engine.demo_paths.demo_dir()``); any other config is returned as it is, without a look at GStreamer.
    ``DSANET_DEMO_RTSP=0`` keeps the file source. With no GStreamer, or when the server fails, the config is
    unchanged and a log line says so.
    """
    from engine.demo_paths import DemoLayout, demo_dir

    env = os.environ if env is None else env
    layout = DemoLayout(demo if demo is not None else demo_dir())
    target = layout.camera.resolve()
    cams = [c for c in cfg.cameras if c.enabled and (p := _file_path(c.url)) is not None and p.resolve() == target]
    if not cams:
        return cfg, None
    if env.get("DSANET_DEMO_RTSP", "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("demo camera: DSANET_DEMO_RTSP=0, playing %s as a file", cams[0].url)
        return cfg, None
    missing = gstreamer_missing(python)
    if missing:
        log.warning("demo camera: %s; playing the clip as a file source instead of over the local RTSP "
                    "server (install gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{good,bad} for the "
                    "RTSP path)", missing)
        return cfg, None
    cam = cams[0]
    clip = _file_path(cam.url)
    assert clip is not None
    try:
        server = start_server(clip, layout.root, python=python)
    except OSError as exc:
        log.warning("demo camera: %s; playing the clip as a file source", exc)
        return cfg, None
    new_cam = cam.model_copy(update={"url": server.url, "loop": False})
    cameras: list[Any] = [new_cam if c is cam else c for c in cfg.cameras]
    log.info("demo camera %s: %s served by the local GStreamer RTSP server as %s (log %s)", cam.name, clip,
             server.url, server.log_path)
    return cfg.model_copy(update={"cameras": cameras}), server
