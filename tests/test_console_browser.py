"""The operator console in a real browser against a real service.

``dsanet run`` runs as its own process on two RTSP cameras (GStreamer's RTSP server, tests/fixtures/rtsp.py)
with the tiny bundle; Debian's chromium, driven by Playwright (``executable_path``, nothing downloaded),
loads the page it prints. The test checks what an operator sees: every camera with a moving score, an
event with its thumbnail whose clip plays in the browser's player, a camera added through the form that
streams. Alongside, it changes cameras through the API, SIGHUP and ``dsanet reload``, and checks on the
live feed that the cameras not named by a change keep every score (no index skipped) and keep reading
frames; the rates it measured are printed. Screenshots go to the test's folder and, when
``DSANET_SCREENSHOTS`` names a folder, there too (docs/img/console.png comes from such a run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.system import free_port, in_ci, require

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000  # page waits; generous for a loaded 2-core machine (a bound on failure, not a measurement)


def _require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright Python package is missing (pip install -e '.[dev]')"
    else:
        problem = None if Path(CHROMIUM).exists() else f"{CHROMIUM} not found (apt-get install chromium)"
    if problem:
        if in_ci():
            pytest.fail(f"missing in CI: {problem}", pytrace=False)
        pytest.skip(problem)


class Feed:
    """Records the service's live feed (/api/v1/stream) from a thread: score records per camera."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").rstrip("/").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        self.sock.sendall(f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.scores: dict[str, list[tuple[int, float, float]]] = defaultdict(list)  # (index, capture, arrival)
        self.events: list[dict[str, Any]] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    lines = block.decode(errors="replace").splitlines()
                    kind = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
                    data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
                    if not (kind and data):
                        continue
                    obj = json.loads(data)
                    with self._lock:
                        if kind == "score":
                            self.scores[obj["camera"]].append((obj["index"], obj["time"], time.monotonic()))
                        elif kind == "event":
                            self.events.append(obj)
                        elif kind == "dropped":
                            self.dropped += obj["dropped"]
        except OSError:
            return

    def count(self, camera: str) -> int:
        with self._lock:
            return len(self.scores[camera])

    def indices(self, camera: str) -> list[int]:
        with self._lock:
            return [i for i, _, _ in self.scores[camera]]

    def capture_rate(self, camera: str, start: int, stop: int | None = None) -> float:
        """Scores per second of capture time over the records ``start:stop`` of one camera."""
        with self._lock:
            rows = self.scores[camera][start:stop]
        if len(rows) < 2:
            return 0.0
        return (len(rows) - 1) / max(1e-9, rows[-1][1] - rows[0][1])

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Service:
    """``dsanet run -c FILE`` as a child process; ``url`` from the address it prints."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "-c", str(cfg),
                                      "--status-interval", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url: str | None = None
        self._got_url = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._got_url.wait(180):
            self.stop()
            raise AssertionError("dsanet run printed no console address:\n" + "\n".join(self.lines[-30:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as f:
            for line in self.proc.stdout:
                f.write(line)
                f.flush()
                self.lines.append(line.rstrip("\n"))
                if line.startswith("console: http://"):
                    self.url = line.split(" ", 1)[1].strip().rstrip("/")
                    self._got_url.set()
        self._got_url.set()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def camera(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.api("GET", "/api/v1/cameras")["cameras"] if c["name"] == name), None)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def _wait(what: str, cond: Any, timeout: float = 120.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _deployment(tmp: Path, bundle: Path, cams: dict[str, str]) -> Path:
    cameras = "\n".join(f"  - name: {n}\n    url: {u}" for n, u in cams.items())
    path = tmp / "site" / "deployment.yaml"
    path.parent.mkdir()
    path.write_text(f"""# the console's browser test: a deployment as an operator writes it
cameras:
{cameras}
model:
  bundle: {bundle}
  runtime: onnxruntime
  threads: 1
window:
  length: 8
  lookahead: 2
events:                 # every score opens an event: the test ends one through the page
  on_threshold: 0.0
  off_threshold: 0.0
  min_duration: 0.0
  hold: 0.0
  cooldown: 0.0
ingest:
  open_timeout: 5
  read_timeout: 3
evidence:
  enabled: true
  directory: evidence    # relative: resolves from this file's folder
  pre_roll: 2
  post_roll: 1
sinks:
  - type: jsonl
    path: events.jsonl
spool:
  directory: spool
metrics:
  port: {free_port()}
""")
    return path


class Across:
    """Frame and score rates of the cameras a change does not name, before and after it; every score
    index after the change must follow the previous one (no snippet of theirs skipped)."""

    def __init__(self, name: str, feed: Feed, service: Service, cameras: tuple[str, ...]) -> None:
        self.name, self.feed, self.service, self.cameras = name, feed, service, cameras

    def __enter__(self) -> Across:
        self.pos = {c: self.feed.count(c) for c in self.cameras}
        self.fps = {c: self.service.camera(c)["fps"] for c in self.cameras}
        self.rate = {c: self.feed.capture_rate(c, max(0, self.pos[c] - 10), self.pos[c]) for c in self.cameras}
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            return
        for c in self.cameras:
            _wait(f"{c} scoring after {self.name}", lambda c=c: self.feed.count(c) >= self.pos[c] + 8)
        for c in self.cameras:
            n, missing = _no_gap(self.feed, c, max(0, self.pos[c] - 1))
            assert missing == 0, (self.name, c, n, missing)
            fps = self.service.camera(c)["fps"]
            assert self.service.camera(c)["state"] == "streaming"
            FIGURES.append(f"{self.name}: {c} {self.fps[c]:.1f} -> {fps:.1f} frames/s, "
                           f"{self.rate[c]:.2f} -> {self.feed.capture_rate(c, self.pos[c]):.2f} scores/s of "
                           f"capture time, {n} scores since, 0 skipped")


FIGURES: list[str] = []


def _no_gap(feed: Feed, camera: str, since: int) -> tuple[int, int]:
    """(scores since position ``since``, missing indices among them) for one camera."""
    idx = feed.indices(camera)[since:]
    missing = sum(b - a - 1 for a, b in zip(idx, idx[1:], strict=False) if b > a + 1)
    return len(idx), missing


def test_console_in_a_real_browser(tmp_path: Path, rtsp_server: Any, tiny_bundle_dir: Path) -> None:
    _require_browser()
    require("gst-rtsp-server")
    from playwright.sync_api import expect, sync_playwright

    from tests.fixtures.rtsp import live_mount

    mounts = {f"/{n}": live_mount(width=320, height=240, fps=25, pattern=p)
              for n, p in (("a", "ball"), ("b", "smpte"), ("c", "snow"), ("d", "pinwheel"))}
    srv = rtsp_server(mounts)
    cfg = _deployment(tmp_path, tiny_bundle_dir, {"cam-a": srv.url("/a"), "cam-b": srv.url("/b")})
    shots = tmp_path / "screenshots"
    shots.mkdir()
    service = Service(cfg, tmp_path / "service.log")
    feed = None
    FIGURES.clear()
    try:
        feed = Feed(service.url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service.url + "/")

            # every camera, streaming, with a score that moves
            for name in ("cam-a", "cam-b"):
                card = page.locator(f'article[data-camera="{name}"]')
                expect(card.locator(".state")).to_have_text("streaming", timeout=WAIT_MS)
            score = page.locator('article[data-camera="cam-b"] .score-value')
            expect(score).not_to_have_text("–", timeout=WAIT_MS)
            first = score.inner_text()
            page.wait_for_function("([el, v]) => el.textContent !== v", arg=[score.element_handle(), first],
                                   timeout=WAIT_MS)
            page.wait_for_function("() => document.querySelectorAll('.event-item').length >= 2", timeout=WAIT_MS)

            # end cam-a's event through the page's threshold controls; the end carries the evidence
            card_a = page.locator('article[data-camera="cam-a"]')
            card_a.locator("input.on").fill("1")
            card_a.locator("input.off").fill("1")
            card_a.locator("button.save-thresholds").click()
            thumb = page.locator('.event-item[data-camera="cam-a"] img.thumb').first
            expect(thumb).to_be_visible(timeout=WAIT_MS)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=thumb.element_handle(),
                                   timeout=WAIT_MS)
            assert service.camera("cam-a")["on_threshold"] == 1.0
            assert "on_threshold: 1.0" in cfg.read_text()  # written back into the file
            page.screenshot(path=str(shots / "console.png"))

            # the event opens to its clip, which plays in the browser's player, and its score curve
            page.locator('.event-item[data-camera="cam-a"]').first.click()
            expect(page.locator("#event-dialog")).to_be_visible(timeout=WAIT_MS)
            page.wait_for_function("() => { const v = document.querySelector('#clip'); "
                                   "return v.readyState >= 2 && v.currentTime > 0.3 && !v.error; }", timeout=WAIT_MS)
            assert page.evaluate("document.querySelector('#clip').videoWidth") == 320
            page.screenshot(path=str(shots / "event.png"))
            page.keyboard.press("Escape")

            # a camera added through the form streams; the others keep every score meanwhile
            with Across("add (page form)", feed, service, ("cam-a", "cam-b")):
                page.locator("#add-camera summary").click()
                page.fill("#camera-form input[name=name]", "cam-c")
                page.fill("#camera-form input[name=url]", srv.url("/c"))
                page.click("#camera-form button[type=submit]")
                card_c = page.locator('article[data-camera="cam-c"]')
                expect(card_c.locator(".state")).to_have_text("streaming", timeout=WAIT_MS)
                expect(card_c.locator(".score-value")).not_to_have_text("–", timeout=WAIT_MS)
            assert "cam-c" in cfg.read_text()
            page.screenshot(path=str(shots / "added.png"))

            # phone width: one column, still readable
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            phone.goto(service.url + "/")
            expect(phone.locator('article[data-camera="cam-c"] .state')).to_have_text("streaming", timeout=WAIT_MS)
            box_cam = phone.locator('article[data-camera="cam-a"]').bounding_box()
            box_ev = phone.locator("#events-section").bounding_box()
            assert box_cam and box_ev and box_cam["width"] <= 390 and box_ev["y"] > box_cam["y"]
            wide = phone.evaluate("() => [...document.querySelectorAll('body *')].filter(e => "
                                  "e.getBoundingClientRect().right > 390.5).map(e => e.tagName + '.' + e.className)")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390, wide
            phone.screenshot(path=str(shots / "phone.png"), full_page=True)

            # remove through the API: the page drops the card; the removed camera's event ends
            with Across("remove (API)", feed, service, ("cam-a", "cam-b")):
                out = service.api("DELETE", "/api/v1/cameras/cam-c")
                assert out["persisted"] is True
                expect(card_c).to_have_count(0, timeout=WAIT_MS)
                _wait("cam-c's event to end", lambda: any(e["camera"] == "cam-c" and e["type"] == "end"
                                                          and e["reason"] == "camera_removed" for e in feed.events))

            # SIGHUP: the file gains cam-d; only cam-d starts
            with Across("reload (SIGHUP adds cam-d)", feed, service, ("cam-a", "cam-b")):
                cfg.write_text(cfg.read_text().replace("model:\n", f"  - name: cam-d\n    url: {srv.url('/d')}\nmodel:\n", 1))
                service.proc.send_signal(signal.SIGHUP)
                expect(page.locator('article[data-camera="cam-d"] .state')).to_have_text("streaming", timeout=WAIT_MS)
            # and `dsanet reload` after taking it out again
            with Across("reload (dsanet reload removes cam-d)", feed, service, ("cam-a", "cam-b")):
                cfg.write_text(cfg.read_text().replace(f"  - name: cam-d\n    url: {srv.url('/d')}\n", ""))
                res = subprocess.run([sys.executable, "-m", "stream.cli", "reload", "-c", str(cfg)], cwd=ROOT,
                                     capture_output=True, text=True, timeout=120)
                assert res.returncode == 0 and res.stdout.strip() == "applied: remove camera 'cam-d'", res
                expect(page.locator('article[data-camera="cam-d"]')).to_have_count(0, timeout=WAIT_MS)
            assert not errors, errors
            browser.close()
    finally:
        if feed is not None:
            feed.close()
        code = service.stop()
        target = os.environ.get("DSANET_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            for f in shots.glob("*.png"):
                shutil.copy(f, Path(target) / f.name)
    assert code == 0, "\n".join(service.lines[-30:])
    assert feed.dropped == 0
    print("\nmeasured (loaded 2-core machine):\n  " + "\n  ".join(FIGURES))
    # relative paths of the file resolved from its folder, wherever the service was started
    assert (cfg.parent / "events.jsonl").is_file() and any((cfg.parent / "evidence").rglob("*.mp4"))
