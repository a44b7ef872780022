"""Feedback marks and the site-data folder (``stream.feedback``): the exact layout ``export.data`` reads,
last mark wins, clear refusals, the disk bound (normal samples evicted first, marks last), restarts; and
a real service marked through the HTTP API, ``dsanet feedback`` and the MQTT command topic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from export.data import LABEL_MAPS, load_features, read_list
from stream.feedback.labels import raw_labels
from stream.feedback.store import Capture, FeedbackError, SiteData

ROOT = Path(__file__).resolve().parents[1]
D = 512
UCF_KEYS = tuple(LABEL_MAPS["ucf"].values())
UCF_RAW = tuple(LABEL_MAPS["ucf"])


def _labels() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    names = tuple(k[:1].upper() + k[1:] for k in UCF_KEYS)
    return UCF_KEYS, names, raw_labels(UCF_KEYS, "ucf")


def _store(root: Path, **kw) -> SiteData:
    opts = dict(max_bytes=64 << 20, pending_events=50, normal_per_camera=10, snippet_frames=16, snippet_fps=30.0,
                snippet_seconds=16 / 30, labels=_labels)
    opts.update(kw)
    return SiteData(root, **opts)


def _capture(eid: str, t: float, rows: int = 20, camera: str = "gate", predicted: str = "fighting") -> Capture:
    feats = np.random.default_rng(abs(hash(eid)) % 2**32).standard_normal((rows, D)).astype(np.float32)
    return Capture(eid, camera, feats, t, t + rows * 0.5, "ab" * 32, predicted, (4, rows - 5))


@pytest.mark.parametrize("preset", sorted(LABEL_MAPS))
def test_raw_labels_equal_the_trainers_label_maps(preset: str) -> None:
    assert raw_labels(tuple(LABEL_MAPS[preset].values()), preset) == tuple(LABEL_MAPS[preset])


def test_raw_labels_of_an_unknown_preset_follow_the_ucf_rule() -> None:
    assert raw_labels(("normal", "fighting", "roadAccidents"), "site") == ("Normal", "Fighting", "RoadAccidents")


def test_marks_land_in_the_trainers_layout_and_last_mark_wins(tmp_path: Path) -> None:
    root = tmp_path / "site"
    s = _store(root)
    assert s.add_capture(_capture("e1", 1000.0)) == "pending"
    assert s.add_capture(_capture("e2", 2000.0, camera="a/b c")) == "pending"  # an unsafe camera name
    r1 = s.mark("e1", "false_alarm")
    assert (r1.label, r1.state, r1.replaced) == ("Normal", "stored", None)
    r2 = s.mark("e2", "confirmed", "road accidents".replace(" ", ""))  # a class key, any case
    assert r2.label == "RoadAccidents"
    again = s.mark("e1", "confirmed", "Fighting")
    assert again.replaced == {"kind": "false_alarm", "label": "Normal"} and again.label == "Fighting"
    assert s.add_normal("gate", np.ones((8, D), np.float32), 500.0, 504.0, "cd" * 32) is not None

    rows = read_list(root / "list.csv", root)
    assert sorted(r.label for r in rows) == ["Fighting", "Normal", "RoadAccidents"]
    for r in rows:
        feat = load_features(r.path, width=D)
        assert feat.dtype == np.float32 and feat.shape[1] == D
        assert Path(r.path).resolve().is_relative_to((root / "features").resolve())
    assert (root / "list.csv").read_text().splitlines()[0] == "path,label"
    examples = [json.loads(line) for line in (root / "examples.jsonl").read_text().splitlines()]
    by_kind = {e["kind"]: e for e in examples}
    assert set(by_kind) == {"confirmed", "normal_sample"}
    e1 = next(e for e in examples if e["event_id"] == "e1")
    assert {"id", "camera", "kind", "label", "event_id", "start", "end", "bundle", "marked_at"} <= set(e1)
    assert (e1["kind"], e1["label"], e1["start"], e1["bundle"]) == ("confirmed", "Fighting", 1000.0, "ab" * 32)
    assert e1["event_rows"] == [4, 15] and e1["predicted"] == "fighting"
    assert by_kind["normal_sample"]["event_id"] is None and by_kind["normal_sample"]["label"] == "Normal"
    info = json.loads((root / "snippets.json").read_text())
    assert info == {"snippet_frames": 16, "snippet_fps": 30.0, "snippet_seconds": 16 / 30}
    # a confirmed event's features are exactly what the capture held
    np.testing.assert_array_equal(load_features(root / e1["path"], width=D), _capture("e1", 1000.0).features)
    assert not list((root / "pending").glob("e1*"))  # moved, not copied


@pytest.mark.parametrize("eid,kind,category,status,words", [
    ("nope", "false_alarm", None, 404, "event 'nope' is not known"),
    ("e1", "confirmed", "Juggling", 422, "unknown category 'Juggling': expected one of Abuse"),
    ("e1", "confirmed", "Normal", 422, "is the normal class"),
    ("e1", "false_alarm", "Fighting", 422, "a false alarm takes no category"),
    ("e3", "confirmed", None, 422, "the event's category 'Person falling' is not a class of the bundle"),
])
def test_refusals_name_the_event_or_category(tmp_path: Path, eid, kind, category, status, words) -> None:
    s = _store(tmp_path / "site")
    s.add_capture(_capture("e1", 1000.0))
    s.add_capture(_capture("e3", 3000.0, predicted="Person falling"))  # a class added at deployment
    with pytest.raises(FeedbackError, match=words) as err:
        s.mark(eid, kind, category)
    assert err.value.status == status
    assert not (tmp_path / "site" / "list.csv").read_text().strip().splitlines()[1:]  # nothing stored


def test_a_mark_on_an_open_event_waits_for_its_capture_and_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "site"
    s = _store(root)
    s.note_open("e9", "gate", "fighting")
    assert s.mark("e9", "confirmed").state == "waiting"
    s2 = _store(root)  # restart before the event's end: the waiting mark is kept only with its event
    assert "e9" not in s2.waiting  # its event is gone with the crash: nothing dangles
    s.add_capture(_capture("e8", 10.0))  # a capture from the first run, not yet marked
    assert s.add_capture(_capture("e9", 20.0)) == "marked"
    s3 = _store(root)
    assert [e.label for e in s3.examples.values()] == ["Fighting"]
    assert list(s3.pending) == ["e8"]  # a capture survives a restart and can still be marked
    assert s3.mark("e8", "false_alarm").state == "stored"
    assert sorted(r.label for r in read_list(root / "list.csv", root)) == ["Fighting", "Normal"]


def test_a_mark_on_an_open_event_survives_a_crash_before_the_event_ends(tmp_path: Path) -> None:
    """The recorder keeps the open event's rows so far next to the waiting mark: a restart (the previous
    run died with the event open) applies the mark from them; without a crash the end's full capture wins."""
    from types import SimpleNamespace

    from stream.config import FeedbackConfig
    from stream.feedback.recorder import FeedbackRecorder
    from stream.types import SnippetEmbedding

    def run(root: Path, crash: bool) -> SiteData:
        store = _store(root)
        rec = FeedbackRecorder(FeedbackConfig(context_snippets=4), store, 0.5, lambda: "ab" * 32)
        rng = np.random.default_rng(1)

        def push(i0: int, i1: int) -> None:
            for i in range(i0, i1):
                rec.on_embedding(SnippetEmbedding("gate", i, 100 + 0.5 * i, 100.5 + 0.5 * i,
                                                  rng.standard_normal(D).astype(np.float32)))

        push(0, 12)
        ev = {"id": "e7", "camera": "gate", "type": "start", "start_time": 104.0, "end_time": None,
              "updated_time": 106.0, "category_key": "fighting"}
        rec.on_events([SimpleNamespace(**ev)])  # an open event from row 8 on (the fields the recorder reads)
        assert store.mark("e7", "confirmed").state == "waiting"
        assert rec.capture_open("e7") and not rec.capture_open("other")
        rec._waiting.extend(rec.queue.clear())
        rec._drain(final=False)  # the writer's turn: a partial request is cut at once
        assert (root / "pending" / "e7.npy").is_file() and (root / "pending" / "e7.mark.json").is_file()
        if crash:
            return _store(root)  # the process died with the event open; the next start
        push(12, 24)
        rec.on_events([SimpleNamespace(**{**ev, "type": "end", "end_time": 108.0})])
        rec._waiting.extend(rec.queue.clear())
        rec._drain(final=True)
        return _store(root)

    after_crash = run(tmp_path / "a", crash=True)
    ex = after_crash.examples["event-e7"]
    assert (ex.kind, ex.label) == ("confirmed", "Fighting") and not after_crash.waiting
    assert ex.extra["partial"] is True and ex.extra["truncated"] is True
    assert ex.snippets == 8 and ex.extra["event_rows"] == [4, 7]  # 4 rows before the event, its 4 so far
    assert not list((tmp_path / "a" / "pending").glob("e7*"))
    ended = run(tmp_path / "b", crash=False)
    ex = ended.examples["event-e7"]
    assert "partial" not in ex.extra and ex.extra["truncated"] is False and ex.label == "Fighting"
    assert ex.snippets == 16 and ex.extra["event_rows"] == [4, 11]  # the full capture: 4 after-context rows


def test_the_disk_bound_evicts_normal_samples_first_and_marks_last(tmp_path: Path) -> None:
    root = tmp_path / "site"
    one = 64 * D * 4 + 128  # one [64, 512] float32 file
    s = _store(root, max_bytes=8 * one, normal_per_camera=100)
    for i in range(3):
        s.add_capture(_capture(f"m{i}", 100.0 + i, rows=64))
        s.mark(f"m{i}", "false_alarm")
    for i in range(10):  # more calm samples than fit
        s.add_normal("gate", np.full((64, D), i, np.float32), 1000.0 + i, 1010.0 + i, None)
        assert s.total_bytes <= s.max_bytes
    kinds = [e.kind for e in s.examples.values()]
    assert kinds.count("false_alarm") == 3  # marks kept
    normals = sorted(e.start for e in s.examples.values() if e.kind == "normal_sample")
    assert normals and normals == [1000.0 + i for i in range(10 - len(normals), 10)]  # the newest ones stay
    assert s.evicted["normal_sample"] == 10 - len(normals)
    du = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert du <= s.max_bytes + 4096, (du, s.max_bytes)  # what is on disk (snippets.json aside)
    # per-camera count cap
    s2 = _store(tmp_path / "site2", normal_per_camera=2)
    for i in range(5):
        s2.add_normal("gate", np.ones((4, D), np.float32), float(i), i + 1.0, None)
    assert sorted(e.start for e in s2.examples.values()) == [3.0, 4.0]
    # a restart re-reads the same bound and content
    s3 = _store(root, max_bytes=8 * one, normal_per_camera=100)
    assert sorted(s3.examples) == sorted(s.examples) and s3.total_bytes <= s3.max_bytes


def test_orphans_of_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "site"
    s = _store(root)
    s.add_capture(_capture("e1", 1.0))
    s.mark("e1", "false_alarm")
    orphan = root / "features" / "gate" / "event-lost.npy"  # written, but the index never was
    np.save(orphan, np.zeros((2, D), np.float32))
    (root / "pending" / "x.npy.tmp").write_bytes(b"torn")
    s2 = _store(root)
    assert not orphan.exists() and not (root / "pending" / "x.npy.tmp").exists()
    assert list(s2.examples) == ["event-e1"]


# --- a real service ---------------------------------------------------------------------------------------
def _wait(pred, timeout: float = 120.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _http(url: str, method: str = "GET", body: object | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", "feedback", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.system
def test_a_running_service_takes_marks_from_api_cli_and_mqtt(tmp_path: Path, clip_factory, tiny_bundle_dir: Path,
                                                           mqtt_broker) -> None:
    from stream.config import load_config
    from stream.console.wiring import start_console
    from stream.service import Service
    from tests.fixtures.mqtt import MqttCollector, publish
    from tests.test_service import write_config

    a = clip_factory("a.mp4", width=160, height=96, fps=15, seconds=4.0)
    b = clip_factory("b.mp4", width=160, height=96, fps=15, seconds=4.0)
    site = tmp_path / "site"
    path = write_config(
        tmp_path, [{"name": "a", "url": f"file://{a}", "loop": True, "realtime": True},
                   {"name": "b", "url": f"file://{b}", "loop": True, "realtime": True,
                    "events": {"on_threshold": 1.0, "off_threshold": 1.0}}],
        bundle=tiny_bundle_dir, window="length: 8\n  lookahead: 1",
        sinks=[{"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
               {"type": "mqtt", "port": mqtt_broker.port, "publish_scores": False}],
        extra=f"feedback:\n  directory: {json.dumps(str(site))}\n  context_snippets: 2\n"
              "  normal_sample_interval: 0.5\n  normal_sample_snippets: 4\n  normal_samples_per_camera: 2\n")
    cfg = load_config(path)
    svc = Service(cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"enabled": False})}),
                  status_interval=0)
    handle = start_console(svc, svc.metrics, cfg, path)
    api = f"{handle.url}/api/v1"

    def started(n: int) -> list[str]:
        return [e.id for e in list(svc.events) if e.camera == "a" and e.type == "start"][:n]

    def ended(eid: str) -> bool:
        return any(e.id == eid and e.type == "end" for e in list(svc.events))

    try:
        with MqttCollector(mqtt_broker.port, "dsanet/feedback/result") as sub:
            svc.start()
            assert _wait(lambda: len(started(1)) == 1), "no event on camera a"
            e1 = started(1)[0]
            # marked while open: stored when it ends
            code, body = _http(f"{api}/events/{e1}/feedback", "POST", {"mark": "false_alarm"})
            assert code == 202 and body["state"] == "waiting" and body["label"] == "Normal", body
            code, body = _http(f"{api}/events/{e1}/feedback", "POST", {"mark": "confirmed", "category": "Juggling"})
            assert code == 422 and "unknown category 'Juggling'" in body["error"]
            code, body = _http(f"{api}/events/no-such-event/feedback", "POST", {"mark": "false_alarm"})
            assert code == 404 and "'no-such-event' is not known" in body["error"]
            code, body = _http(f"{api}/events/{e1}/feedback", "POST", {"mark": "maybe"})
            assert code == 400 and "mark 'maybe'" in body["error"]
            svc.set_thresholds("a", 1.0, 1.0)  # no sigmoid score reaches 1.0: the event ends after its hold
            assert _wait(lambda: ended(e1))
            assert _wait(lambda: f"event-{e1}" in svc.feedback.store.examples), svc.feedback_status()

            res = _cli(e1, "--confirm", "--category", "fighting", "--url", handle.url)
            assert res.returncode == 0, res.stderr
            assert "stored as label Fighting" in res.stdout and "replaces the earlier mark (false_alarm, Normal)" \
                in res.stdout
            res = _cli("no-such-event", "--false-alarm", "--url", handle.url)
            assert res.returncode == 2 and "'no-such-event' is not known" in res.stderr and "Traceback" not in res.stderr

            svc.set_thresholds("a", 0.0, 0.0)  # a second event, marked over MQTT after it ended
            assert _wait(lambda: len(started(2)) == 2)
            e2 = started(2)[1]
            svc.set_thresholds("a", 1.0, 1.0)
            assert _wait(lambda: ended(e2))
            assert _wait(lambda: e2 in svc.feedback.store.pending)
            publish(mqtt_broker.port, "dsanet/feedback/set", json.dumps({"event_id": e2, "mark": "confirmed"}))
            publish(mqtt_broker.port, "dsanet/feedback/set", json.dumps({"event_id": "zzz", "mark": "confirmed"}))
            got = sub.wait_for(2)
            answers = {m.json()["event_id"]: m.json() for m in got}
            assert answers[e2]["ok"] and answers[e2]["kind"] == "confirmed", answers
            assert not answers["zzz"]["ok"] and answers["zzz"]["status"] == 404
            predicted = next(e.category_key for e in svc.events if e.id == e2 and e.type == "end")
            assert answers[e2]["label"] == raw_labels(UCF_KEYS, "ucf")[UCF_KEYS.index(predicted)]
            # calm camera b: normal samples, capped per camera
            assert _wait(lambda: svc.feedback.samples >= 3)
            code, st = _http(f"{api}/feedback")
            per_camera = [sum(1 for e in svc.feedback.store.examples.values() if e.kind == "normal_sample"
                              and e.camera == c) for c in ("a", "b")]
            assert per_camera[1] == 2 and max(per_camera) == 2  # a is calm too once its thresholds are 1.0
            assert code == 200 and st["examples"]["normal_sample"] == sum(per_camera)
            assert st["bytes"] <= st["max_bytes"]
            assert st["bundle"]["head_sha256"] and st["queue_dropped"] == 0
    finally:
        svc.request_stop("test over")
        svc.shutdown()
        handle.close()

    rows = read_list(site / "list.csv", site)
    examples = {json.loads(x)["id"]: json.loads(x) for x in (site / "examples.jsonl").read_text().splitlines()}
    assert examples[f"event-{e1}"]["label"] == "Fighting" and examples[f"event-{e1}"]["kind"] == "confirmed"
    assert examples[f"event-{e2}"]["kind"] == "confirmed"
    assert sum(1 for e in examples.values() if e["kind"] == "normal_sample" and e["camera"] == "b") == 2
    head_sha = json.loads((tiny_bundle_dir / "bundle.json").read_text())["files"]["head.onnx"]["sha256"]
    assert {e["bundle"] for e in examples.values()} == {head_sha}
    for r in rows:
        f = load_features(r.path, width=D)
        assert f.shape[0] >= 1
    ev2 = examples[f"event-{e2}"]  # started mid-stream: 2 rows of context before it, 2 after
    lo, hi = ev2["event_rows"]
    assert lo == 2 and hi >= lo and ev2["snippets"] == hi + 1 + 2, ev2
    sent = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sent and all(e["bundle"] == head_sha[:12] for e in sent)  # events name the bundle that scored them
    # restart: a new store over the same folder sees the same examples
    again = SiteData(site, max_bytes=cfg.feedback.max_bytes, pending_events=10, normal_per_camera=2,
                     snippet_frames=16, snippet_fps=30.0, snippet_seconds=16 / 30, labels=_labels)
    assert set(again.examples) == set(examples)
