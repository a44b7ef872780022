"""Sinks: the registry, and each sink delivering to a real receiver (file, stdout, HTTP, MQTT broker)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

import stream.sinks.jsonl as jsonl_mod
from stream.config import SinkConfig, SinkConfigBase
from stream.events import Event, EventMachine, EventSettings, iso_utc
from stream.sinks import SinkError, available_sinks, create_sink, register_sink, sink_class
from stream.sinks.base import Backoff, Result, Sink
from stream.sinks.spool import DEAD_LETTER_FILE, SpoolItem
from stream.types import WindowScore

T0 = 1_795_000_000.0
CLASSES = ["normal", "fight", "shoot"]
SINK_CFG = TypeAdapter(SinkConfig)


def sink_cfg(**kw: Any) -> Any:
    """A sink config validated by the deployment schema (so tests use exactly what users write)."""
    return SINK_CFG.validate_python(kw)


def make_events(camera: str = "cam1", n_events: int = 2, t0: float = T0) -> list[Event]:
    """Real events from the state machine: start/update/end for each of ``n_events`` anomalies."""
    m = EventMachine(camera, EventSettings(min_duration=0.0, hold=0.0, cooldown=0.0, update_interval=0.0),
                     CLASSES, None, {"name": "m", "hash": "h"})
    out: list[Event] = []
    i = 0
    for _ in range(n_events):
        for s in (0.7, 0.9, 0.1):
            start = t0 + i
            out += m.push(WindowScore(camera, i, start, start + 1, s, (1 - s, s * 0.7, s * 0.3), i, start + 1))
            i += 1
    return out


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll until ``cond`` holds (generous timeout: this is about liveness, not speed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class RecordingMetrics:
    def __init__(self) -> None:
        self.results: list[tuple[str, str]] = []
        self.depths: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def sink_delivered(self, sink_name: str, result: str) -> None:
        with self.lock:
            self.results.append((sink_name, result))

    def spool_depth(self, sink_name: str, n: int) -> None:
        with self.lock:
            self.depths.append((sink_name, n))

    def count(self, result: str) -> int:
        with self.lock:
            return sum(1 for _, r in self.results if r == result)


# -------------------------------------------------------------------------------------------- registry


def test_registry_lists_builtin_sinks_and_rejects_unknown() -> None:
    assert {"jsonl", "stdout", "webhook", "mqtt"} <= set(available_sinks())
    with pytest.raises(SinkError, match="unknown sink type 'pager'.*jsonl"):
        sink_class("pager")

    with pytest.raises(SinkError, match="pager"):
        create_sink(SinkConfigBase(type="pager"), None)


def test_register_custom_sink(tmp_path) -> None:
    got: list[dict] = []

    @register_sink("test-memory")
    class MemorySink(Sink):
        def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
            got.append(item.payload)
            return Result.DELIVERED, None

    class MemoryConfig(SinkConfigBase):  # a plugin sink brings its own config class
        type: str = "test-memory"

    assert "test-memory" in available_sinks()
    s = create_sink(MemoryConfig(name="mem"), tmp_path)
    assert isinstance(s, MemorySink) and s.name == "mem" and s.spool.directory == tmp_path / "mem"
    s.start()
    evs = make_events()
    for e in evs:
        s.submit(e)
    s.stop(10)
    assert [(d["id"], d["seq"]) for d in got] == [(e.id, e.seq) for e in evs]
    with pytest.raises(SinkError, match="registered twice"):
        register_sink("jsonl")(MemorySink)


def _config_for(kind: str, tmp_path: Path) -> Any:
    return {
        "jsonl": lambda: sink_cfg(type="jsonl", path=str(tmp_path / "out.jsonl")),
        "stdout": lambda: sink_cfg(type="stdout", format="json"),
        # nothing listens on port 9 of loopback: every attempt fails fast
        "webhook": lambda: sink_cfg(type="webhook", url="http://127.0.0.1:9/hook", hmac_secret="s3cret-hmac",
                                    bearer_token="s3cret-token", backoff_initial=0.05, backoff_max=0.1),
        "mqtt": lambda: sink_cfg(type="mqtt", host="127.0.0.1", port=9, password="s3cret-pw", username="u"),
    }[kind]()


@pytest.mark.parametrize("kind", ["jsonl", "stdout", "webhook", "mqtt"])
def test_every_registered_sink_spools_durably_and_describes_itself(kind: str, tmp_path: Path) -> None:
    assert kind in available_sinks()
    cfg = _config_for(kind, tmp_path)
    metrics = RecordingMetrics()
    s = create_sink(cfg, tmp_path / "spool", metrics)
    assert s.name == kind and s.type_name == kind
    evs = make_events(n_events=1)
    for e in evs:  # not started: submit only spools
        s.submit(e)
    d = s.describe()
    text = json.dumps(d, default=str)
    assert d["name"] == kind and d["type"] == kind and d["spool"]["depth"] == 3 and d["spool"]["durable"]
    assert "s3cret" not in text  # secrets never appear in describe()
    assert metrics.depths[-1] == (kind, 3)
    s.stop(0.1)
    # a new process finds the events in the spool, in order
    s2 = create_sink(cfg, tmp_path / "spool")
    items = []
    while (it := s2.spool.peek()) is not None:
        items.append((it.payload["id"], it.payload["seq"]))
        s2.spool.ack(it)
    assert items == [(e.id, e.seq) for e in evs]


def test_unwritable_spool_dir_keeps_service_running(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    out = tmp_path / "events.jsonl"
    metrics = RecordingMetrics()
    with caplog.at_level(logging.ERROR):
        s = create_sink(sink_cfg(type="jsonl", path=str(out)), blocker, metrics)
        s.start()
        evs = make_events(n_events=1)
        for e in evs:
            s.submit(e)
        wait_for(lambda: metrics.count("delivered") == len(evs), what="deliveries from the memory spool")
        s.stop(5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(blocker / "jsonl") in errors[0]
    assert metrics.count("spool_error") >= 1 and not s.describe()["spool"]["durable"]
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == [0, 1, 2]


def test_full_spool_drops_oldest_and_reports_it(tmp_path) -> None:
    metrics = RecordingMetrics()
    s = create_sink(sink_cfg(type="stdout", spool_max_events=2), tmp_path, metrics)
    evs = make_events(n_events=2)  # 6 events into room for 2
    for e in evs:
        s.submit(e)
    assert metrics.count("dropped") == 4 and s.spool.dropped == 4
    kept = []
    while (it := s.spool.peek()) is not None:
        kept.append((it.payload["id"], it.payload["seq"]))
        s.spool.ack(it)
    assert kept == [(e.id, e.seq) for e in evs[-2:]]


def test_backoff_is_capped_exponential() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


# ---------------------------------------------------------------------------------------------- jsonl


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_jsonl_appends_in_order_and_fsyncs_on_end(tmp_path, monkeypatch) -> None:
    out = tmp_path / "sub" / "events.jsonl"
    fsyncs: list[str] = []
    real = jsonl_mod.os.fsync

    def spy(fd: int) -> None:
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(out.resolve()):  # the events file, not the spool
            fsyncs.append("out")
        real(fd)

    monkeypatch.setattr(jsonl_mod.os, "fsync", spy)
    metrics = RecordingMetrics()
    s = create_sink(sink_cfg(type="jsonl", path=str(out)), tmp_path / "spool", metrics)
    s.start()
    evs = make_events(n_events=2)
    for e in evs:
        s.submit(e)
    wait_for(lambda: metrics.count("delivered") == len(evs), what="jsonl deliveries")
    lines = out.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [e.to_dict() for e in evs]
    assert len(fsyncs) == 2  # one per ended event, not per line
    s.stop(5)
    assert len(s.spool) == 0


def test_jsonl_restart_delivers_spooled_and_skips_repeat_of_last_line(tmp_path) -> None:
    out = tmp_path / "events.jsonl"
    cfg = sink_cfg(type="jsonl", path=str(out))
    evs = make_events(n_events=1)
    s = create_sink(cfg, tmp_path / "spool")
    for e in evs:
        s.submit(e)
    # simulate a crash after the first line was written but before its spool entry was acked
    out.write_text(evs[0].to_json() + "\n")
    s2 = create_sink(cfg, tmp_path / "spool")
    s2.start()
    wait_for(lambda: len(s2.spool) == 0, what="spool drained")
    s2.stop(5)
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == [0, 1, 2]


def test_jsonl_torn_last_line_does_not_corrupt_next(tmp_path) -> None:
    out = tmp_path / "events.jsonl"
    out.write_text('{"id":"old","seq":0}\n{"id":"torn","se')
    s = create_sink(sink_cfg(type="jsonl", path=str(out)), tmp_path / "spool")
    s.start()
    e = make_events(n_events=1)[0]
    s.submit(e)
    wait_for(lambda: len(s.spool) == 0, what="delivery")
    s.stop(5)
    lines = out.read_text().splitlines()
    assert json.loads(lines[-1]) == e.to_dict() and lines[1] == '{"id":"torn","se'


# --------------------------------------------------------------------------------------------- stdout


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_stdout_formats(fmt: str, tmp_path, capsys) -> None:
    s = create_sink(sink_cfg(type="stdout", format=fmt), tmp_path / "spool")
    s.start()
    evs = make_events(camera="yard", n_events=1)
    for e in evs:
        s.submit(e)
    wait_for(lambda: len(s.spool) == 0, what="stdout delivery")
    s.stop(5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    if fmt == "json":
        assert [json.loads(x) for x in lines] == [e.to_dict() for e in evs]
    else:
        assert lines[0].startswith("ALERT ") and "[yard] START" in lines[0] and evs[0].id in lines[0]
        assert "END" in lines[2] and "reason=score_below_threshold" in lines[2]


# -------------------------------------------------------------------------------------------- webhook

FAST = {"backoff_initial": 0.02, "backoff_max": 0.1}


def webhook(receiver: Any, tmp_path: Path, metrics: Any = None, **kw: Any) -> Sink:
    cfg = sink_cfg(type="webhook", url=kw.pop("url", None) or receiver.url(), **{**FAST, **kw})
    return create_sink(cfg, tmp_path / "spool", metrics)


def delivered_keys(receiver: Any) -> list[tuple[str, int]]:
    return [(r.json["id"], r.json["seq"]) for r in receiver.requests(ok_only=True)]


def test_webhook_retries_5xx_then_delivers_each_event_once_in_order(http_receiver, tmp_path) -> None:
    http_receiver.set_secret("hook-secret")
    http_receiver.fail(500, count=3)
    metrics = RecordingMetrics()
    s = webhook(http_receiver, tmp_path, metrics, hmac_secret="hook-secret", bearer_token="tok-123",
                headers={"X-Site": "plant-3"})
    evs = make_events("cam1", 2) + make_events("cam2", 1)
    s.start()
    for e in evs:
        s.submit(e)
    got = http_receiver.wait_for(len(evs), ok_only=True)
    s.stop(5)
    assert delivered_keys(http_receiver) == [(e.id, e.seq) for e in evs]  # exactly once each, in order
    reqs = http_receiver.requests()
    assert len(reqs) == len(evs) + 3 and [r.status for r in reqs[:3]] == [500, 500, 500]
    assert all(r.json == reqs[0].json for r in reqs[:4])  # the same event was retried, not skipped
    assert all(r.signature_valid for r in reqs)
    r = got[0]
    assert r.method == "POST" and r.path == "/hook" and r.header("content-type") == "application/json"
    assert r.header("authorization") == "Bearer tok-123" and r.header("x-site") == "plant-3"
    assert r.header("x-dsanet-event-id") == evs[0].id and r.header("x-dsanet-event-seq") == "0"
    assert abs(int(r.header("x-dsanet-timestamp")) - r.wall_time) < 120
    assert json.loads(r.body) == evs[0].to_dict()
    assert metrics.count("delivered") == len(evs) and metrics.count("failed") == 3
    assert len(s.spool) == 0 and metrics.depths[-1] == ("webhook", 0)


def test_webhook_signature_matches_receiver_check(http_receiver, tmp_path) -> None:
    from stream.sinks.webhook import sign, verify

    body = b'{"a":1}'
    assert verify("k", "e:0", "1700000000", body, sign("k", "e:0", "1700000000", body))
    assert not verify("k", "e:0", "1700000000", body, sign("other", "e:0", "1700000000", body))
    assert not verify("k", "e:0", "1700000001", body, sign("k", "e:0", "1700000000", body))  # timestamp is signed
    http_receiver.set_secret("right")
    s = webhook(http_receiver, tmp_path, hmac_secret="wrong")
    s.start()
    s.submit(make_events(n_events=1)[0])
    http_receiver.wait_for(1)
    s.stop(5)
    assert http_receiver.requests()[0].signature_valid is False


def test_webhook_4xx_goes_to_dead_letter_and_delivery_moves_on(http_receiver, tmp_path) -> None:
    metrics = RecordingMetrics()
    s = webhook(http_receiver, tmp_path, metrics)
    evs = make_events(n_events=1)
    http_receiver.fail(400, count=1)
    s.start()
    for e in evs:
        s.submit(e)
    http_receiver.wait_for(len(evs) - 1, ok_only=True)
    wait_for(lambda: len(s.spool) == 0, what="spool drained")
    s.stop(5)
    assert delivered_keys(http_receiver) == [(e.id, e.seq) for e in evs[1:]]
    assert len(http_receiver.requests()) == len(evs)  # the rejected one was not retried
    dead = [json.loads(x) for x in (tmp_path / "spool" / "webhook" / DEAD_LETTER_FILE).read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["reason"] == "HTTP 400" and dead[0]["event"] == evs[0].to_dict()
    assert metrics.count("dead_letter") == 1 and s.spool.dead_letters == 1


@pytest.mark.parametrize("status", [408, 429, 503])
def test_webhook_retryable_statuses(status: int, http_receiver, tmp_path) -> None:
    s = webhook(http_receiver, tmp_path)
    http_receiver.fail(status, count=2)
    s.start()
    e = make_events(n_events=1)[0]
    s.submit(e)
    http_receiver.wait_for(1, ok_only=True)
    s.stop(5)
    assert [r.status for r in http_receiver.requests()] == [status, status, 200]
    assert not (tmp_path / "spool" / "webhook" / DEAD_LETTER_FILE).exists()


def test_webhook_slow_receiver_does_not_block_submit(http_receiver, tmp_path) -> None:
    http_receiver.slow(1.5)
    s = webhook(http_receiver, tmp_path, timeout=30)
    s.start()
    first = make_events("cam1", 1)
    s.submit(first[0])
    http_receiver.wait_for(1)  # the first POST is now being held by the receiver
    evs = first[1:] + make_events("cam2", 3)
    for e in evs:
        s.submit(e)  # returns while the receiver still sits on the first request
    assert s.delivered == 0 and len(s.spool) == len(evs) + 1
    http_receiver.slow(0)
    http_receiver.wait_for(len(evs) + 1, ok_only=True)
    s.stop(5)
    assert delivered_keys(http_receiver) == [(e.id, e.seq) for e in first[:1] + evs]


def test_webhook_timeout_is_retried_and_receiver_can_dedupe(http_receiver, tmp_path) -> None:
    http_receiver.slow(1.0)
    s = webhook(http_receiver, tmp_path, timeout=0.2)
    evs = make_events(n_events=1)
    s.start()
    for e in evs:
        s.submit(e)
    http_receiver.wait_for(1)
    http_receiver.slow(0)
    wait_for(lambda: len(s.spool) == 0, what="spool drained")
    s.stop(5)
    seen: list[tuple[str, int]] = []
    for key in delivered_keys(http_receiver):  # the receiver's dedupe on (id, seq)
        if key not in seen:
            seen.append(key)
    assert seen == [(e.id, e.seq) for e in evs]
    assert s.failures >= 1


def test_webhook_undelivered_events_survive_restart(http_receiver, tmp_path) -> None:
    from tests.fixtures.system import free_port

    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    s1 = webhook(http_receiver, tmp_path, url=dead_url)
    s1.start()
    evs = make_events(n_events=2)
    for e in evs:
        s1.submit(e)
    wait_for(lambda: s1.failures >= 2, what="failed attempts")
    s1.stop(0.2)  # gives up: events stay spooled
    assert len(s1.spool) == len(evs)
    s2 = webhook(http_receiver, tmp_path)  # "after restart", receiver reachable
    s2.start()
    http_receiver.wait_for(len(evs), ok_only=True)
    s2.stop(5)
    assert delivered_keys(http_receiver) == [(e.id, e.seq) for e in evs]
    s3 = webhook(http_receiver, tmp_path)
    assert len(s3.spool) == 0  # nothing is sent twice


def test_webhook_stop_keeps_undeliverable_events(http_receiver, tmp_path) -> None:
    http_receiver.fail(503)
    s = webhook(http_receiver, tmp_path)
    s.start()
    evs = make_events(n_events=1)
    for e in evs:
        s.submit(e)
    http_receiver.wait_for(2)
    s.stop(0.3)
    assert not s.describe()["running"] and len(s.spool) == len(evs)
    assert "HTTP 503" in (s.last_error or "")


def test_webhook_url_credentials_are_redacted(tmp_path) -> None:
    s = create_sink(sink_cfg(type="webhook", url="http://user:pa55word@127.0.0.1:9/x"), tmp_path)
    assert "pa55word" not in json.dumps(s.describe(), default=str) and "pa55word" not in s.target()


# ----------------------------------------------------------------------------------------------- mqtt


@contextlib.contextmanager
def _stopping(sink: Sink) -> Any:
    """Stop the sink even when an assertion fails (no paho threads left behind)."""
    try:
        yield sink
    finally:
        sink.stop(2)


def mqtt_sink(port: int, tmp_path: Path, **kw: Any) -> Sink:
    cfg = sink_cfg(type="mqtt", host="127.0.0.1", port=port, prefix=kw.pop("prefix", "dsanet"), **kw)
    return create_sink(cfg, tmp_path / "spool", None, reconnect_min=0.1, reconnect_max=0.5,
                       backoff_initial=0.05, backoff_max=0.2)


@pytest.mark.system
def test_mqtt_events_scores_and_availability(mqtt_broker, tmp_path) -> None:
    from tests.fixtures.mqtt import MqttCollector

    s = mqtt_sink(mqtt_broker.port, tmp_path, score_interval=1.0)
    with MqttCollector(mqtt_broker.port, "dsanet/#") as sub, _stopping(s):
        s.start()
        avail = sub.wait_for(1, topic="dsanet/available")
        assert avail and avail[-1].payload == b"online" and avail[-1].qos == 1
        evs = make_events("cam1", 2)
        for e in evs:
            s.submit(e)
        got = sub.wait_for(len(evs), topic="dsanet/events")
        assert [m.json() for m in got] == [e.to_dict() for e in evs]
        assert all(m.qos == 1 for m in got)
        for k in range(10):  # a burst: the first goes out, then only the latest after the interval
            s.publish_score("cam1", k / 10, "Fighting", T0 + k)
        scores = sub.wait_for(2, topic="dsanet/cam1/anomaly")
        assert [m.json()["score"] for m in scores] == [0.0, 0.9]
        assert scores[1].json()["category"] == "Fighting" and scores[1].qos == 0
        assert scores[1].json()["time"] == iso_utc(T0 + 9)
        s.stop(5)
        avail = sub.wait_for(2, topic="dsanet/available")
        assert avail[-1].payload == b"offline"
    # availability is retained: a late subscriber learns the state at once
    with MqttCollector(mqtt_broker.port, "dsanet/available") as late:
        m = late.wait_for(1)
        assert m and m[0].payload == b"offline" and m[0].retain


@pytest.mark.system
def test_mqtt_broker_down_then_up_delivers_spooled_events(tmp_path) -> None:
    from tests.fixtures.mqtt import MosquittoBroker, MqttCollector
    from tests.fixtures.system import require

    require("mosquitto")
    broker = MosquittoBroker(work_dir=tmp_path / "broker", persistence=True).start()
    # a persistent subscriber session: the broker queues QoS 1 messages for it while it is away
    sub = MqttCollector(broker.port, "dsanet/events", client_id="test-sub", clean_session=False).start()
    s: Sink | None = None
    try:
        broker.stop()
        s = mqtt_sink(broker.port, tmp_path)
        s.start()  # the broker is down: start must not fail or block
        evs = make_events("cam1", 1)
        for e in evs:
            s.submit(e)
        assert len(s.spool) == len(evs) and s.delivered == 0 and not s.describe()["connected"]
        broker.start()
        got = sub.wait_for(len(evs), timeout=30)
        assert [m.json() for m in got] == [e.to_dict() for e in evs]
        wait_for(lambda: len(s.spool) == 0, what="acks")  # acked only once the broker confirmed
        # the connection drops again later: the client reconnects on its own and catches up
        n_acks = sub.subacks
        broker.stop()
        more = make_events("cam2", 1)
        for e in more:
            s.submit(e)
        broker.start()
        sub.wait_subscribed(n_acks + 1, timeout=30)
        expected = [e.to_dict() for e in evs + more]

        def unique() -> list[dict]:  # QoS 1 may redeliver: a duplicate must not count as the missing one
            out: list[dict] = []
            for m in sub.messages():
                if m.json() not in out:
                    out.append(m.json())
            return out

        wait_for(lambda: len(unique()) >= len(expected), timeout=30, what="every event after the reconnect")
        assert unique() == expected
    finally:
        if s is not None:
            s.stop(2)
        sub.stop()
        broker.stop()


_MQTT_CHILD = """
import sys, time
from stream.config import MqttSinkConfig
from stream.sinks import create_sink
cfg = MqttSinkConfig(type="mqtt", name="mqtt", host="127.0.0.1", port=int(sys.argv[1]), prefix="dsanet",
                     keepalive=30, publish_scores=False, score_interval=1.0, spool_max_events=100,
                     client_id="dsanet-child")
s = create_sink(cfg, sys.argv[2], reconnect_min=0.1, reconnect_max=0.5)
s.start()
while not s.ready():
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.system
def test_mqtt_last_will_marks_offline_when_process_dies(mqtt_broker, tmp_path) -> None:
    import signal
    import subprocess
    import sys

    from tests.fixtures.mqtt import MqttCollector

    repo = Path(__file__).resolve().parent.parent
    with MqttCollector(mqtt_broker.port, "dsanet/available") as sub:
        proc = subprocess.Popen([sys.executable, "-c", _MQTT_CHILD, str(mqtt_broker.port), str(tmp_path / "sp")],
                                stdout=subprocess.PIPE, text=True, cwd=repo)
        try:
            assert proc.stdout.readline().strip() == "ready"
            online = sub.wait_for(1)
            assert [m.payload for m in online] == [b"online"]
            proc.send_signal(signal.SIGKILL)  # no clean shutdown: only the last will can say "offline"
            msgs = sub.wait_for(2)
            assert [m.payload for m in msgs] == [b"online", b"offline"]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            proc.stdout.close()
