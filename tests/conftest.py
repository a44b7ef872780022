"""Shared pytest fixtures: real servers and real media, never mocks.

- ``clip_factory``: synthetic H.264 clips (``tests/fixtures/clips.py``) in the test's tmp dir.
- ``rtsp_server``: factory for GStreamer RTSP servers on free loopback ports (``tests/fixtures/rtsp.py``).
- ``mqtt_broker``: a mosquitto broker on a free loopback port (``tests/fixtures/mqtt.py``).
- ``http_receiver``: a webhook receiver recording POSTs (``tests/fixtures/http_receiver.py``).
- ``tcp_proxy``: factory for byte-corrupting loopback TCP proxies (``tests/fixtures/tcp_proxy.py``).
- ``tiny_clip_dir``: the tiny random CLIP, built once per session into a tmp dir.

Any module ``tests/fixtures/fx_<name>.py`` is loaded as a pytest plugin, so other parts of the suite can
share fixtures without editing this file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `tests.fixtures...` must import however pytest was launched
    sys.path.insert(0, str(_ROOT))

from tests.fixtures.clips import make_clip  # noqa: E402
from tests.fixtures.system import require  # noqa: E402

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("fx_*.py")
)


@pytest.fixture
def clip_factory(tmp_path: Path) -> Callable[..., Path]:
    """``clip_factory(name=None, **make_clip_kwargs) -> Path`` writing into the test's tmp dir.

    Without a name each call gets a new file (``clip0.mp4``, ``clip1.mp4``, ...).
    """
    folder = tmp_path / "clips"
    made: list[Path] = []

    def make(name: str | None = None, **kwargs: Any) -> Path:
        path = make_clip(folder / (name or f"clip{len(made)}.mp4"), **kwargs)
        made.append(path)
        return path

    return make


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``rtsp_server({"/cam": live_mount()}, auth=None) -> RtspServer`` (started, own free port).

    Every server it made is stopped at teardown (also after kill/freeze).
    """
    require("gst-rtsp-server")
    from tests.fixtures.rtsp import RtspServer

    servers: list[RtspServer] = []

    def start(mounts: dict[str, dict], **kwargs: Any) -> RtspServer:
        kwargs.setdefault("log_dir", tmp_path)
        server = RtspServer(mounts, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Any]:
    """A running mosquitto broker on a free loopback port (``.port``, ``.restart()``, ``.kill()``...)."""
    require("mosquitto")
    from tests.fixtures.mqtt import MosquittoBroker

    broker = MosquittoBroker(work_dir=tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def http_receiver() -> Iterator[Any]:
    """A running webhook receiver on a free loopback port (``.url()``, ``.requests()``, ``.fail()``...)."""
    from tests.fixtures.http_receiver import HttpReceiver

    receiver = HttpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[..., Any]]:
    """Factory: ``tcp_proxy(target_port) -> TcpProxy`` (started); all are stopped at teardown."""
    from tests.fixtures.tcp_proxy import TcpProxy

    proxies: list[TcpProxy] = []

    def start(target_port: int, **kwargs: Any) -> TcpProxy:
        proxy = TcpProxy(target_port, **kwargs)
        proxies.append(proxy)
        return proxy.start()

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random CLIP in Hugging Face layout, loaded back by the same loaders as real weights."""
    from engine.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
