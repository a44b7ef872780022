"""Bundle hot-swap (``Service.swap_bundle``, ``POST /api/v1/bundle``, a reload of ``model.bundle``): the
cameras keep streaming across the switch, events say which bundle scored them, a bad or incompatible
bundle is refused while the old one keeps scoring, and another encoder restarts the windows."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from engine.bundle import sha256_file
from stream.feedback.swap import BundleIds, SwapError, check_compatible
from tests.test_service import dropped, write_config


def variant(src: Path, dst: Path, part: str | None = None, note: str = "v2", **json_updates: object) -> Path:
    """A copy of a bundle; ``part`` (an ONNX file) re-saved with another doc string: new sha256, same maths."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    if part is not None:
        import onnx

        model = onnx.load(str(dst / part))
        model.doc_string = note
        onnx.save(model, str(dst / part))
        meta["files"][part] = {"sha256": sha256_file(dst / part), "bytes": (dst / part).stat().st_size}
    meta["name"] = dst.name
    meta.update(json_updates)
    (dst / "bundle.json").write_text(json.dumps(meta, indent=2))
    return dst


def _wait(pred, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_compatibility_names_what_differs(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    from engine.bundle import load_bundle

    old = load_bundle(tiny_bundle_dir)
    other = load_bundle(variant(tiny_bundle_dir, tmp_path / "fps", snippet_fps=15.0, snippet_seconds=16 / 15))
    with pytest.raises(SwapError, match="snippet_fps 15.0 differs from the running bundle's 30.0"):
        check_compatible(old, other, [("a", 8)])
    with pytest.raises(SwapError, match="camera 'a': window.length 999 is longer than its max_window"):
        check_compatible(old, old, [("a", 999)])
    check_compatible(old, old, [("a", 8)])
    ids = BundleIds.of(old)
    assert ids.head == old.files["head.onnx"].sha256 and ids.short == ids.head[:12]


@pytest.mark.slow
def test_hot_swap_keeps_cameras_streaming_and_refuses_bad_bundles(tmp_path: Path, clip_factory,
                                                                 tiny_bundle_dir: Path) -> None:
    from stream.config import load_config
    from stream.console.wiring import start_console
    from stream.reload import LiveConfig
    from stream.service import Service
    from stream.types import ScoreRecord
    from tests.test_feedback import _http

    head2 = variant(tiny_bundle_dir, tmp_path / "head2", "head.onnx")
    enc2 = variant(head2, tmp_path / "enc2", "encoder.onnx")
    broken = variant(tiny_bundle_dir, tmp_path / "broken")
    with open(broken / "head.onnx", "r+b") as f:  # damaged after export: its sha256 no longer matches
        f.seek(100)
        f.write(b"\0" * 64)
    slow = variant(tiny_bundle_dir, tmp_path / "slow", snippet_fps=15.0, snippet_seconds=16 / 15)

    a = clip_factory("a.mp4", width=160, height=96, fps=15, seconds=4.0)
    b = clip_factory("b.mp4", width=160, height=96, fps=15, seconds=4.0)
    path = write_config(tmp_path, [{"name": "a", "url": f"file://{a}", "loop": True, "realtime": True},
                                   {"name": "b", "url": f"file://{b}", "loop": True, "realtime": True}],
                        bundle=tiny_bundle_dir, window="length: 8\n  lookahead: 1",
                        extra=f"feedback: {{directory: {json.dumps(str(tmp_path / 'site'))}}}\n")
    cfg = load_config(path)
    svc = Service(cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"enabled": False})}),
                  status_interval=0)
    handle = start_console(svc, svc.metrics, cfg, path)
    scores: list[tuple[float, str]] = []
    lock = threading.Lock()

    def listen(rec: object) -> None:
        if isinstance(rec, ScoreRecord):
            with lock:
                scores.append((time.monotonic(), rec.camera))

    def rate(camera: str, t0: float, t1: float) -> float:
        with lock:
            return sum(1 for t, c in scores if c == camera and t0 <= t < t1) / max(1e-6, t1 - t0)

    def max_gap(camera: str, t0: float, t1: float) -> float:
        with lock:
            ts = [t for t, c in scores if c == camera and t0 <= t < t1]
        return max((y - x for x, y in zip(ts, ts[1:], strict=False)), default=float("inf"))

    svc.add_listener(listen)
    old = svc.bundle_ids
    try:
        svc.start()
        assert _wait(lambda: all(s.scores >= 4 for s in svc.camera_snapshots()))
        readers = {c.name: c.reader for c in svc.cameras.values()}
        start_id = next(e.bundle for e in list(svc.events) if e.type == "start" and e.camera == "a")
        assert start_id == old.short

        t_before = time.monotonic()
        f0 = svc.cameras["b"].reader.stats.frames
        time.sleep(3.0)
        t_swap = time.monotonic()
        f1 = svc.cameras["b"].reader.stats.frames
        res = svc.swap_bundle(str(head2))  # same encoder: windows kept
        t_done = time.monotonic()
        f2 = svc.cameras["b"].reader.stats.frames
        time.sleep(3.0)
        t_after = time.monotonic()
        f3 = svc.cameras["b"].reader.stats.frames
        assert res["encoder_changed"] is False and res["bundle"]["id"] == svc.bundle_ids.short != old.short
        info = [x for x in svc.metrics.render().decode().splitlines() if x.startswith("dsanet_build_info{")]
        assert len(info) == 1 and 'bundle="head2"' in info[0], info  # the metric names the bundle now scoring
        assert {c.name: c.reader for c in svc.cameras.values()} == readers  # no camera restarted
        fps_before, fps_swap = (f1 - f0) / (t_swap - t_before), (f3 - f1) / (t_after - t_swap)
        s_before, s_swap = rate("b", t_before, t_swap), rate("b", t_swap, t_after)
        gap_before, gap_swap = max_gap("b", t_before, t_swap), max_gap("b", t_swap, t_after)
        print(f"hot-swap (same encoder), camera b: frames/s before {fps_before:.2f} across {fps_swap:.2f} "
              f"(ratio {fps_swap / fps_before:.2f}); scores/s before {s_before:.2f} across {s_swap:.2f} "
              f"(ratio {s_swap / max(s_before, 1e-6):.2f}); longest score gap before {gap_before:.2f} s, across "
              f"{gap_swap:.2f} s; load+try {res['load_seconds']:.2f} s; frames during the swap {f2 - f1}")
        assert f2 > f1 or t_done - t_swap < 0.2  # the reader kept decoding while the new bundle loaded
        # the readers never wait for the swap; scores go on (their rate on a loaded box is the head's to bear)
        assert fps_swap >= 0.5 * fps_before, (fps_before, fps_swap)
        assert _wait(lambda: rate("b", t_done, time.monotonic() + 1) > 0)
        assert dropped(svc.metrics, "swap") == 0

        # refused: damaged, incompatible, missing; the running bundle keeps scoring
        for bad, words in ((broken, "sha256"), (slow, "snippet_fps 15.0 differs"), (tmp_path / "nope", "nope")):
            code, body = _http(f"{handle.url}/api/v1/bundle", "POST", {"path": str(bad)})
            assert code == 422 and words in body["error"], body
        assert _http(f"{handle.url}/api/v1/bundle")[1]["bundle"]["id"] == res["bundle"]["id"]
        n = len(scores)
        assert _wait(lambda: len(scores) > n + 4)

        # a reload with another encoder in model.bundle: applied live, every window restarts
        path.write_text(path.read_text().replace(json.dumps(str(tiny_bundle_dir)), json.dumps(str(enc2))))
        rep = LiveConfig(load_config(path).model_copy(update={"model": cfg.model.model_copy(
            update={"bundle": str(head2)})}), svc, path).reload()
        assert rep.errors == [] and "model" not in rep.restart_needed, rep.to_dict()
        assert any("model.bundle: now enc2" in x and "windows restarted" in x for x in rep.applied), rep.applied
        t_enc = time.monotonic()
        assert _wait(lambda: all(rate(c, t_enc, time.monotonic() + 1) > 0 and
                                 sum(1 for t, cc in list(scores) if cc == c and t > t_enc) >= 3 for c in "ab"))
        assert {c.name: c.reader for c in svc.cameras.values()} == readers
    finally:
        svc.request_stop("test over")
        svc.shutdown()
        handle.close()
    ends = [e for e in svc.events if e.type == "end" and e.camera == "a"]
    assert ends and ends[-1].bundle == BundleIds.of(svc.models.bundle).short  # scored by the newest bundle


class _SwapControl:
    """FakeControl plus ``FeedbackControl``: records swaps; refuses paths containing 'bad'."""

    def __init__(self, cameras: list) -> None:
        from tests.fixtures.control_fake import FakeControl

        self.fake = FakeControl(cameras)
        self.swapped: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.fake, name)

    def mark_event(self, event_id: str, kind: str, category: str | None = None) -> dict:
        raise AssertionError("not used")

    def feedback_status(self) -> dict:
        return {}

    def swap_bundle(self, path: str) -> dict:
        if "bad" in path:
            raise SwapError(f"bundle {path}: bundle refused (a restart can apply it): snippet_fps 15.0 differs")
        self.swapped.append(path)
        return {"bundle": {"name": Path(path).name, "id": "0123456789ab"}, "encoder_changed": False}


@pytest.mark.parametrize("new_model,applied,errors,restart", [
    ("{bundle: /m/ft}", ["model.bundle: now ft (head 0123456789ab)"], [], []),
    ("{bundle: /m/bad}", [], ["model.bundle: bundle /m/bad: bundle refused (a restart can apply it): snippet_fps "
                              "15.0 differs"], []),
    ("{bundle: /m/ft, threads: 2}", [], [], ["model"]),  # another model key too: only a restart applies it
])
def test_a_reload_swaps_the_bundle_live_or_reports_why_not(tmp_path: Path, new_model, applied, errors,
                                                          restart) -> None:
    from stream.config import load_config
    from stream.reload import LiveConfig

    path = tmp_path / "d.yaml"
    body = "cameras:\n  - {name: a, url: 'rtsp://127.0.0.1/a'}\nmodel: %s\n"
    path.write_text(body % "{bundle: /m/base}")
    ctl = _SwapControl(load_config(path).cameras)
    live = LiveConfig(load_config(path), ctl, path)
    path.write_text(body % new_model)
    rep = live.reload()
    assert (rep.applied, rep.errors, rep.restart_needed) == (applied, errors, restart)
    assert ctl.swapped == (["/m/ft"] if applied else [])
    # a refused swap keeps the running bundle in the live config, so the next reload tries again
    assert live.cfg.model.bundle == ("/m/base" if errors else "/m/ft")


@pytest.mark.parametrize("model,writable,persisted", [
    ("{bundle: /m/base}  # the site's model", True, True),
    ("{bundle: '${SITE_BUNDLE}'}", True, False),  # an env reference is the operator's: never overwritten
    ("{bundle: /m/base}", False, False),  # read-only file: applied, not written
])
def test_an_api_swap_is_written_back_to_the_deployment_file(tmp_path: Path, monkeypatch, model, writable,
                                                             persisted) -> None:
    """After an API swap the file names the new bundle (so a restart or a reload keeps it), or the answer
    says why not; the rest of the file is untouched."""
    import os
    import stat

    from stream.config import load_config
    from stream.reload import LiveConfig

    monkeypatch.setenv("SITE_BUNDLE", "/m/base")
    path = tmp_path / "d.yaml"
    path.write_text("# site a\ncameras:\n  - {name: a, url: 'rtsp://127.0.0.1/a'}  # gate\nmodel: " + model + "\n")
    before = path.read_text()
    if not writable:
        os.chmod(path, stat.S_IRUSR)
    ctl = _SwapControl(load_config(path).cameras)
    live = LiveConfig(load_config(path), ctl, path)
    res = live.swap_bundle(ctl, "ft")
    assert ctl.swapped == [str(tmp_path / "ft")] and live.cfg.model.bundle == str(tmp_path / "ft")
    assert res["persisted"] is persisted
    if persisted:
        assert res["note"] is None
        text = path.read_text()
        assert "bundle: ft" in text and "# site a" in text and "# gate" in text
        assert load_config(path).model.bundle == str(tmp_path / "ft")  # relative to the file's folder
        assert live.reload().applied == []  # the file and the running bundle agree: nothing to switch back
    else:
        assert path.read_text() == before and "model.bundle" in res["note"]
