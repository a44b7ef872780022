"""The service's HTTP server and its API, over real HTTP (uvicorn on a loopback port) against a
``ServiceControl`` fake (tests/fixtures/control_fake.py): validation identical to the config file,
write-back that keeps comments, read-only files, paging and filters, the live feed, auth, evidence
confinement and a promtool-clean /metrics."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import DsanetError
from stream.config import ConfigError, load_config, parse_config
from stream.console.app import Console, create_app
from stream.console.auth import token_for
from stream.console.server import HttpServer
from stream.console.sse import Broadcaster
from stream.metrics import Metrics
from stream.reload import LiveConfig
from tests.fixtures.control_fake import FakeControl
from tests.fixtures.system import find_tool, require

DEPLOYMENT = """\
# Site A: the lobby and the yard.
cameras:
  - name: lobby                # the front entrance
    url: rtsp://viewer:${LOBBY_PW:-secret}@127.0.0.1:8554/lobby
  - name: yard
    url: rtsp://127.0.0.1:8554/yard
    transport: udp             # the yard camera drops TCP
model:
  bundle: bundle               # relative to this file
events:
  on_threshold: 0.6
  off_threshold: 0.4
sinks:
  - type: jsonl
    path: events.jsonl
"""


class Site:
    """A deployment file, the fake service, the console and its HTTP server on a free port."""

    def __init__(self, folder: Path, text: str = DEPLOYMENT, token: str | None = None,
                 evidence: Path | None = None) -> None:
        self.path = folder / "deployment.yaml"
        self.path.write_text(text)
        self.cfg = load_config(self.path)
        self.control = FakeControl(self.cfg.cameras)
        self.metrics = Metrics()
        self.live = LiveConfig(self.cfg, self.control, self.path)
        self.console = Console(self.control, self.live, self.metrics, evidence_dir=evidence, version="test")
        self.server = HttpServer(create_app(self.console, self.metrics, token=token), "127.0.0.1", 0,
                                 on_close=self.console.close)
        self.url = self.server.url
        self.token = token

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bool = False) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if self.token and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                payload = r.read()
                return r.status, payload if raw else json.loads(payload or b"null")
        except urllib.error.HTTPError as e:
            payload = e.read()
            return e.code, payload if raw else json.loads(payload or b"null")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.close()


def _without_lines(problems: list[str]) -> list[str]:
    return [re.sub(r" \(line \d+\)", "", p) for p in problems]


def _event(eid: str, camera: str, category: str, start: str, seq: int = 0, typ: str = "start",
           end: str | None = None, evidence: dict | None = None) -> dict[str, Any]:
    return {"schema": 1, "id": eid, "seq": seq, "type": typ, "camera": camera, "category": category,
            "category_key": category.replace(" ", ""), "category_score": 0.7, "score": 0.9, "peak_score": 0.95,
            "start_time": start, "end_time": end, "updated_time": end or start, "snippets": 4, "model": {},
            "evidence": evidence, "reason": "score_below_threshold" if typ == "end" else None}


# ------------------------------------------------------------------------------------------ cameras


def test_camera_list_has_state_fps_lag_score_thresholds_and_redacted_url(site: Site) -> None:
    site.control.score("yard", 0, time.time(), 0.83, "Fighting")
    code, body = site.call("GET", "/api/v1/cameras")
    assert code == 200
    cams = {c["name"]: c for c in body["cameras"]}
    assert set(cams) == {"lobby", "yard"}
    yard = cams["yard"]
    assert yard["state"] == "streaming" and yard["fps"] == 25.0 and yard["lag_seconds"] == 0.5
    assert yard["score"] == 0.83 and yard["category"] == "Fighting"
    assert (yard["on_threshold"], yard["off_threshold"]) == (0.6, 0.4)
    assert "secret" not in json.dumps(body) and "viewer:***@" in cams["lobby"]["url"]
    assert site.call("GET", "/api/v1/cameras/nope")[0] == 404


@pytest.mark.parametrize("camera", [
    {"name": "bad/name", "url": "rtsp://127.0.0.1/x"},
    {"name": "gate", "url": "ftp://127.0.0.1/x"},
    {"name": "gate", "url": "rtsp://127.0.0.1/x", "transprot": "tcp"},
    {"name": "gate"},
    {"name": "Lobby", "url": "rtsp://127.0.0.1/x"},
    {"name": "gate", "url": "rtsp://127.0.0.1/x", "events": {"on_threshold": 0.3, "off_threshold": 0.5}},
    {"name": "gate", "url": "rtsp://u:${NOT_SET_ANYWHERE_PW}@127.0.0.1/x"},
])
def test_add_camera_rejects_exactly_what_the_config_file_rejects(site: Site, camera: dict) -> None:
    code, body = site.call("POST", "/api/v1/cameras", camera)
    assert code == 422, body
    # the same camera appended to the file gives the same messages (the file adds line numbers)
    import yaml

    doc = yaml.safe_load(DEPLOYMENT)
    doc["cameras"].append(camera)
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_dump(doc), "f")
    assert body["problems"] == _without_lines(exc.value.problems)
    assert site.control.calls == []  # nothing reached the service
    assert "gate" not in site.path.read_text()


def test_add_change_remove_are_written_back_keeping_comments(site: Site) -> None:
    before = site.path.read_text()
    code, body = site.call("POST", "/api/v1/cameras", {"name": "gate", "url": "rtsp://127.0.0.1:8554/gate"})
    assert code == 201 and body["persisted"] is True and body["camera"]["name"] == "gate"
    assert ("add", "gate") in site.control.calls
    text = site.path.read_text()
    for line in ("# Site A: the lobby and the yard.", "# the front entrance", "# the yard camera drops TCP",
                 "${LOBBY_PW:-secret}", "# relative to this file"):
        assert line in text
    assert "gate" in [c.name for c in load_config(site.path).cameras]

    code, body = site.call("PATCH", "/api/v1/cameras/gate", {"on_threshold": 0.8, "off_threshold": 0.5})
    assert code == 200 and body["camera"]["on_threshold"] == 0.8 and body["persisted"]
    gate = next(c for c in load_config(site.path).cameras if c.name == "gate")
    assert (gate.events.on_threshold, gate.events.off_threshold) == (0.8, 0.5)

    code, body = site.call("PATCH", "/api/v1/cameras/gate", {"off_threshold": 0.9})
    assert code == 422 and "off_threshold (0.9) must be <= on_threshold (0.8)" in body["problems"][0]
    code, body = site.call("PATCH", "/api/v1/cameras/gate", {"url": "rtsp://elsewhere/"})
    assert code == 400 and "unknown key" in body["error"]

    code, _ = site.call("PATCH", "/api/v1/cameras/yard", {"enabled": False})
    assert code == 200 and ("enabled", "yard", False) in site.control.calls
    assert next(c for c in load_config(site.path).cameras if c.name == "yard").enabled is False

    code, body = site.call("DELETE", "/api/v1/cameras/gate")
    assert code == 200 and body["persisted"] and ("remove", "gate") in site.control.calls
    assert "gate" not in site.path.read_text()
    assert site.call("DELETE", "/api/v1/cameras/gate")[0] == 404
    # apart from the yard's enabled flag, the file is what the operator wrote
    assert site.path.read_text().replace("    enabled: false\n", "") == before


def test_read_only_file_changes_last_until_restart(site: Site) -> None:
    site.path.chmod(0o444)
    before = site.path.read_text()
    code, status = site.call("GET", "/api/v1/status")
    assert status["persistent"] is False and "read-only" in status["persist_note"]
    code, body = site.call("POST", "/api/v1/cameras", {"name": "gate", "url": "rtsp://127.0.0.1/gate"})
    assert code == 201 and body["persisted"] is False and "until restart" in body["note"]
    assert ("add", "gate") in site.control.calls
    assert site.path.read_text() == before


def test_bad_request_bodies_get_one_line_errors(site: Site) -> None:
    code, body = site.call("POST", "/api/v1/cameras", b"{not json")
    assert code == 400 and body["error"] == "the request body is not JSON"
    code, body = site.call("POST", "/api/v1/cameras", [1, 2])
    assert code == 422 and "must be a mapping" in body["problems"][0]
    assert site.call("GET", "/api/v1/events?limit=0")[0] == 400
    code, body = site.call("GET", "/api/v1/events?since=yesterday")
    assert code == 400 and "since" in body["error"]


# ------------------------------------------------------------------------------------------- events


def test_events_are_paged_and_filtered_by_camera_category_and_time(site: Site) -> None:
    site.control.event(_event("a", "lobby", "Fighting", "2026-12-01T10:00:00.000Z"))
    site.control.event(_event("b", "yard", "Explosion", "2026-12-01T10:05:00.000Z"))
    site.control.event(_event("c", "lobby", "Road accident", "2026-12-01T10:10:00.000Z"))
    site.control.event(_event("a", "lobby", "Fighting", "2026-12-01T10:00:00.000Z", seq=1, typ="end",
                              end="2026-12-01T10:00:09.000Z"))
    site.control.event(_event("d", "yard", "Fighting", "2026-12-01T10:15:00.000Z"))

    code, page = site.call("GET", "/api/v1/events?limit=2")
    assert code == 200 and [e["id"] for e in page["events"]] == ["d", "c"] and page["total"] == 4
    code, page2 = site.call("GET", f"/api/v1/events?limit=2&cursor={page['next_cursor']}")
    assert [e["id"] for e in page2["events"]] == ["b", "a"] and page2["next_cursor"] is None
    assert page2["events"][1]["type"] == "end"  # the latest message of an event wins

    ids = lambda q: [e["id"] for e in site.call("GET", "/api/v1/events?" + q)[1]["events"]]  # noqa: E731
    assert ids("camera=lobby") == ["c", "a"]
    assert ids("category=fighting") == ["d", "a"]
    assert ids("category=RoadAccident") == ["c"]  # the class key works too
    assert ids("since=2026-12-01T10:04:00Z&until=2026-12-01T10:11:00Z") == ["c", "b"]
    assert ids("camera=yard&category=Fighting") == ["d"]

    site.control.event(_event("a", "lobby", "Fighting", "2026-12-01T10:00:00.000Z", seq=0))  # late duplicate
    assert site.call("GET", "/api/v1/events?camera=lobby")[1]["events"][1]["type"] == "end"


def test_event_detail_has_its_score_curve_and_evidence_urls(site: Site) -> None:
    t0 = 1_800_000_000.0
    for i in range(30):  # scores before, during and after the event
        site.control.score("yard", i, t0 + i, 0.9 if 10 <= i < 20 else 0.1)
        if i == 12:
            site.control.event(_event("e", "yard", "Fighting", "2027-01-15T08:00:10.000Z"))
        if i == 22:
            site.control.event(_event("e", "yard", "Fighting", "2027-01-15T08:00:10.000Z", seq=1, typ="end",
                                      end="2027-01-15T08:00:20.000Z",
                                      evidence={"snapshot": "yard/x.jpg", "clip": "yard/x.mp4"}))
    assert t0 + 10 == 1_800_000_010.0  # the ISO times above are t0 + 10 s and t0 + 20 s
    code, ev = site.call("GET", "/api/v1/events/e")
    assert code == 200 and ev["snapshot_url"] == "/evidence/yard/x.jpg" and ev["clip_url"] == "/evidence/yard/x.mp4"
    times = [p["time"] for p in ev["curve"]]
    assert times[0] == t0  # 10 s of pre-roll from the history
    assert times[-1] == t0 + 25  # until 5 s after the end
    assert [p["score"] for p in ev["curve"] if t0 + 10 <= p["time"] < t0 + 20] == [0.9] * 10
    assert site.call("GET", "/api/v1/events/unknown")[0] == 404
    code, hist = site.call("GET", f"/api/v1/cameras/yard/scores?since={t0 + 27}")
    assert [s["index"] for s in hist["scores"]] == [28, 29]


# --------------------------------------------------------------------------------------------- feed


def _read_sse(url: str, want: int, headers: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """Read ``want`` messages from an SSE stream (raw socket: urllib buffers)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
    buf, out = b"", []
    try:
        while len(out) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                lines = block.decode().splitlines()
                kind = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
                data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
                if kind and data:
                    out.append((kind, json.loads(data)))
    finally:
        sock.close()
    return out


def test_live_feed_carries_cameras_scores_and_events(site: Site) -> None:
    import threading

    got: list[list[tuple[str, dict]]] = []
    reader = threading.Thread(target=lambda: got.append(_read_sse(site.url, 3)))
    reader.start()
    deadline = time.monotonic() + 10
    while site.console.feed.clients == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    site.control.score("lobby", 7, 1_800_000_000.0, 0.42, "Explosion")
    site.control.event(_event("f", "lobby", "Explosion", "2027-01-15T08:00:00.000Z"))
    reader.join(10)
    kinds = [k for k, _ in got[0]]
    assert kinds == ["cameras", "score", "event"]
    assert {c["name"] for c in got[0][0][1]["cameras"]} == {"lobby", "yard"}
    assert got[0][1][1]["score"] == 0.42 and got[0][1][1]["index"] == 7
    assert got[0][2][1]["id"] == "f"


def test_a_slow_feed_client_loses_its_oldest_messages_and_they_are_counted() -> None:
    import asyncio

    m = Metrics()
    feed = Broadcaster(queue_size=3, on_drop=lambda n: m.dropped("console_feed", "", n))

    async def scenario() -> list[tuple[str, str]]:
        gen = feed.stream()
        assert await gen.__anext__() == b"retry: 2000\n\n"
        nxt = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)  # subscribed, waiting
        for i in range(10):
            feed.publish("score", {"i": i})  # never blocks although nobody reads
        frames = [await nxt] + [await gen.__anext__() for _ in range(3)]
        await gen.aclose()
        return [f.decode() for f in frames]

    frames = asyncio.run(scenario())
    assert frames[0] == 'event: dropped\ndata: {"dropped": 7}\n\n'
    assert [json.loads(f.split("data: ")[1])["i"] for f in frames[1:]] == [7, 8, 9]
    assert feed.dropped == 7
    assert 'dsanet_dropped_total{camera="",stage="console_feed"} 7.0' in m.render().decode()
    assert feed.clients == 0


# ------------------------------------------------------------------------------ auth and evidence


def test_token_required_off_loopback_and_enforced_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSANET_TEST_TOKEN", raising=False)
    with pytest.raises(DsanetError, match="DSANET_TEST_TOKEN"):
        token_for("0.0.0.0", "DSANET_TEST_TOKEN")
    assert token_for("127.0.0.1", "DSANET_TEST_TOKEN") is None
    monkeypatch.setenv("DSANET_TEST_TOKEN", "s3cret-token")
    token = token_for("0.0.0.0", "DSANET_TEST_TOKEN")
    s = Site(tmp_path, token=token)
    try:
        for path in ("/api/v1/cameras", "/metrics", "/", "/api/v1/stream"):
            code, body = s.call("GET", path, headers={"Authorization": "Bearer wrong"}, raw=True)
            assert code == 401 and b"s3cret" not in body, path
        code, _ = s.call("GET", "/api/v1/cameras")
        assert code == 200
        basic = base64.b64encode(b"dsanet:s3cret-token").decode()
        assert s.call("GET", "/api/v1/cameras", headers={"Authorization": f"Basic {basic}"})[0] == 200
        bad = base64.b64encode(b"admin:s3cret-token").decode()
        assert s.call("GET", "/api/v1/cameras", headers={"Authorization": f"Basic {bad}"})[0] == 401
        # probes stay open for orchestrators
        req = urllib.request.Request(s.url + "/healthz")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
    finally:
        s.close()


def test_evidence_is_served_only_from_inside_the_evidence_folder(tmp_path: Path) -> None:
    ev = tmp_path / "evidence"
    (ev / "yard").mkdir(parents=True)
    (ev / "yard" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    (ev / "yard" / "a.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    (ev / "yard" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    s = Site(tmp_path, evidence=ev)
    try:
        code, body = s.call("GET", "/evidence/yard/a.jpg", raw=True)
        assert code == 200 and body == b"\xff\xd8jpeg"
        req = urllib.request.Request(s.url + "/evidence/yard/a.mp4", headers={"Range": "bytes=0-3"})
        with urllib.request.urlopen(req, timeout=5) as r:  # the browser's player seeks with ranges
            assert r.status == 206 and r.headers["Content-Type"] == "video/mp4" and len(r.read()) == 4
        for bad in ("/evidence/../secret.jpg", "/evidence/%2e%2e/secret.jpg", "/evidence/yard/link.jpg",
                    "/evidence//etc/passwd", "/evidence/yard/%2e%2e/%2e%2e/secret.jpg", "/evidence/yard/none.jpg"):
            code, body = s.call("GET", bad, raw=True)
            assert code == 404 and b"outside" not in body, bad
    finally:
        s.close()


def test_metrics_healthz_readyz_on_the_one_server_and_promtool_clean(site: Site) -> None:
    site.metrics.register_camera("lobby")
    site.metrics.scored("lobby", 0.5, 0.2)
    code, page = site.call("GET", "/metrics", raw=True)
    assert code == 200 and b'dsanet_anomaly_score{camera="lobby"} 0.5' in page
    code, body = site.call("GET", "/readyz", raw=True)
    assert code == 503 and b"model not loaded" in body
    assert site.call("GET", "/healthz", raw=True)[0] == 200
    code, html = site.call("GET", "/", raw=True)
    assert code == 200 and b'<script src="/static/console.js">' in html
    for asset in (b"/static/console.js", b"/static/console.css"):
        assert site.call("GET", asset.decode(), raw=True)[0] == 200
    assert b"http://" not in html and b"https://" not in html  # no CDN: every asset is ours
    require("promtool")
    res = subprocess.run([find_tool("promtool"), "check", "metrics"], input=page, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_static_assets_reference_nothing_outside_the_package() -> None:
    static = Path(__file__).resolve().parents[1] / "stream" / "console" / "static"
    for f in static.iterdir():
        text = f.read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), f
        assert "@import" not in text and "url(http" not in text, f


def test_server_port_in_use_is_a_clear_error(site: Site) -> None:
    with pytest.raises(DsanetError, match=rf"cannot listen on 127.0.0.1:{site.server.port}"):
        HttpServer(create_app(None, site.metrics), "127.0.0.1", site.server.port)


def test_http_section_and_legacy_metrics_port(tmp_path: Path) -> None:
    base = "cameras: [{name: a, url: 'rtsp://127.0.0.1/a'}]\nmodel: {bundle: b}\n"
    assert parse_config(base + "metrics: {port: 9200}\n").http_port == 9200
    cfg = parse_config(base + "http: {port: 9300, host: 0.0.0.0}\n")
    assert (cfg.http_host, cfg.http_port) == ("0.0.0.0", 9300)
    with pytest.raises(ConfigError, match=r"http.port.*differs from metrics.port"):
        parse_config(base + "metrics: {port: 9200}\nhttp: {port: 9300}\n")


def test_other_web_pages_cannot_change_cameras_or_rebind_the_name(site: Site) -> None:
    cam = {"name": "gate", "url": "rtsp://127.0.0.1/gate"}
    # a hostile page's fetch: cross-origin POST (a "simple" request needs no preflight)
    code, body = site.call("POST", "/api/v1/cameras", cam, headers={"Origin": "http://evil.example",
                                                                    "Content-Type": "text/plain"})
    assert code == 403 and "cross-origin" in body["error"]
    assert site.call("POST", "/api/v1/reload", headers={"Origin": "null"})[0] == 403
    assert site.control.calls == []
    # DNS rebinding: a foreign name resolving to 127.0.0.1 reaches a loopback server
    code, body = site.call("GET", "/api/v1/cameras", headers={"Host": "evil.example"})
    assert code == 403 and "not this loopback server" in body["error"]
    # the console itself (same origin) may
    host = site.url.removeprefix("http://")
    code, _ = site.call("POST", "/api/v1/cameras", cam, headers={"Origin": site.url, "Host": host})
    assert code == 201 and site.control.calls == [("add", "gate")]


def test_start_console_from_the_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.console.wiring import start_console

    path = tmp_path / "deployment.yaml"
    path.write_text(DEPLOYMENT + "metrics:\n  port: 0\nhttp:\n  console: false\n")
    cfg = load_config(path)
    control = FakeControl(cfg.cameras)
    handle = start_console(control, Metrics(), cfg, path)
    try:
        assert handle.console is None and control.listeners == []
        assert handle.live is not None  # SIGHUP reloads also without the console
        with urllib.request.urlopen(handle.url + "/metrics", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(handle.url + "/api/v1/cameras", timeout=5)
        assert err.value.code == 404
    finally:
        handle.close()
    monkeypatch.delenv("DSANET_HTTP_TOKEN", raising=False)
    exposed = load_config(path).model_copy(update={"http": cfg.http.model_copy(update={"host": "0.0.0.0"})})
    with pytest.raises(DsanetError, match="needs an access token: set the environment variable DSANET_HTTP_TOKEN"):
        start_console(control, Metrics(), exposed, path)
    handle = start_console(control, Metrics(), load_config(path).model_copy(
        update={"http": cfg.http.model_copy(update={"console": True})}), path)
    try:
        assert handle.live is not None and handle.live.persistent and len(control.listeners) == 1
    finally:
        handle.close()
    assert control.listeners == []  # closing the console removes its listener


def test_added_camera_keeps_env_references_in_the_file(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_PW", "hunter2")
    code, body = site.call("POST", "/api/v1/cameras", {"name": "gate", "url": "rtsp://v:${GATE_PW}@127.0.0.1/g"})
    assert code == 201 and "hunter2" not in json.dumps(body)
    assert site.control.cams["gate"]["config"].url == "rtsp://v:hunter2@127.0.0.1/g"  # the service gets the value
    text = site.path.read_text()
    assert "rtsp://v:${GATE_PW}@127.0.0.1/g" in text and "hunter2" not in text  # the file keeps the reference
