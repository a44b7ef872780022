"""Shared pytest fixtures: real servers and real media, never mocks.

- ``clip_factory``: synthetic H.264 clips (``tests/fixtures/clips.py``) in the test's tmp dir.
- ``rtsp_server``: factory for GStreamer RTSP servers on free loopback ports (``tests/fixtures/rtsp.py``).
- ``mqtt_broker``: a mosquitto broker on a free loopback port (``tests/fixtures/mqtt.py``).
- ``http_receiver``: a webhook receiver recording POSTs (``tests/fixtures/http_receiver.py``).
- ``tcp_proxy``: factory for byte-corrupting loopback TCP proxies (``tests/fixtures/tcp_proxy.py``).
- ``tiny_clip_dir``: the tiny random CLIP, built once per test run into a tmp dir.

``make test`` runs the suite in two pytest-xdist workers (``-n 2 --dist loadgroup``). Each test module is
one unit of work (its module fixtures are built once), except that modules sharing something exclusive
are put in one named group (:data:`GROUPS`); :func:`pytest_collection_modifyitems` does both, and hands
out the modules holding slow tests first so that the two workers finish together. Expensive session
artefacts (tiny CLIP, tiny bundle) are built once per run for all workers (``tests/fixtures/shared.py``).

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
from tests.fixtures.shared import build_once  # noqa: E402
from tests.fixtures.system import require  # noqa: E402

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("fx_*.py")
)

#: modules that must run in the same xdist worker, one after the other (what they share, and why)
GROUPS: dict[str, tuple[str, ...]] = {
    # one Triton server and one Kafka broker per worker session (fx_scaleout): started once, not twice
    "scaleout": ("test_triton", "test_scaleout_e2e", "test_kafka_sink"),
}
_GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules}
#: scheduling weight of a test marked slow, against 1 for any other (slow tests take seconds to minutes)
SLOW_WEIGHT = 20


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``: one unit of work per module (or per :data:`GROUPS` group); heaviest first.

    A test that already carries an ``xdist_group`` mark keeps it. Units are ordered by weight (slow tests
    count :data:`SLOW_WEIGHT`), heaviest first, so that the long ones do not start last and leave one
    worker idle; the order of the tests inside a unit is kept. Without xdist nothing changes.
    """
    if not config.getoption("loadgroup", default=False):  # set in xdist workers under --dist loadgroup
        return
    weight: dict[str, int] = {}
    unit: dict[str, str] = {}
    for item in items:
        if not any(True for _ in item.iter_markers("xdist_group")):
            module = item.path.stem
            item.add_marker(pytest.mark.xdist_group(_GROUP_OF.get(module, module)))
        name = "_".join(sorted(str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                               for m in item.iter_markers("xdist_group")))
        unit[item.nodeid] = name
        weight[name] = weight.get(name, 0) + (SLOW_WEIGHT if item.get_closest_marker("slow") else 1)
    items.sort(key=lambda it: -weight[unit[it.nodeid]])  # stable: each unit's own order is kept


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
    """The tiny random CLIP in Hugging Face layout, loaded back by the same loaders as real weights.

    Built once per run, shared by all xdist workers (``tests/fixtures/shared.py``); treat it as read-only.
    """
    from engine.clip import build_tiny_clip

    return build_once(tmp_path_factory, "tiny-clip", build_tiny_clip)
