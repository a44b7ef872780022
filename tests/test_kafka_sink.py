"""The kafka sink against a real Kafka-protocol broker (tansu on loopback)."""

from __future__ import annotations

import logging
import uuid

import pytest

from stream.config import ConfigError, parse_config
from stream.sinks import SinkError, create_sink
from stream.sinks.kafka import security_settings
from tests.fixtures.kafka import TansuBroker, consume, require_kafka
from tests.fixtures.system import free_port
from tests.test_sinks import RecordingMetrics, make_events, sink_cfg, wait_for


def _topic() -> str:
    return f"events-{uuid.uuid4().hex[:8]}"


def test_events_arrive_keyed_by_camera_in_order_and_leave_the_spool(tmp_path, kafka_broker):
    topic = _topic()
    metrics = RecordingMetrics()
    sink = create_sink(sink_cfg(type="kafka", brokers=kafka_broker.bootstrap, topic=topic, timeout=5),
                       tmp_path / "spool", metrics)
    events = make_events("cam-a", 2) + make_events("cam-b", 2)
    sink.start()
    try:
        for ev in events:
            sink.submit(ev)
        wait_for(lambda: len(sink.spool) == 0, 30, "the spool to drain")
    finally:
        sink.stop()
    assert sink.delivered == len(events) and metrics.count("delivered") == len(events)
    got = consume(kafka_broker.bootstrap, topic, lambda m: len(m) >= len(events))
    assert sorted((m["value"]["id"], m["value"]["seq"]) for m in got) == sorted((e.id, e.seq) for e in events)
    for m in got:
        assert m["key"] == m["value"]["camera"]  # keyed by camera
    for cam in ("cam-a", "cam-b"):
        mine = [m for m in got if m["key"] == cam]
        assert len({m["partition"] for m in mine}) == 1  # one partition per camera: its order is kept
        mine.sort(key=lambda m: m["offset"])
        assert [(m["value"]["id"], m["value"]["seq"]) for m in mine] == [(e.id, e.seq) for e in events
                                                                          if e.camera == cam]


def test_broker_down_events_stay_spooled_then_arrive_when_it_comes_up(tmp_path):
    require_kafka()
    port = free_port()
    topic = _topic()
    metrics = RecordingMetrics()
    cfg = sink_cfg(type="kafka", brokers=f"127.0.0.1:{port}", topic=topic, timeout=1, backoff_initial=0.2,
                   backoff_max=0.5)
    sink = create_sink(cfg, tmp_path / "spool", metrics)
    events = make_events("cam-x", 2)
    sink.start()
    broker = TansuBroker(port=port, work_dir=tmp_path / "tansu")
    try:
        for ev in events:
            sink.submit(ev)
        wait_for(lambda: sink.failures >= 2, 30, "failed deliveries while the broker is down")
        assert sink.delivered == 0 and len(sink.spool) == len(events)  # nothing acked without the broker
        assert metrics.count("failed") >= 2
        broker.start()
        wait_for(lambda: len(sink.spool) == 0, 60, "delivery once the broker is up")
    finally:
        sink.stop()
    got = consume(broker.bootstrap, topic, lambda m: len(m) >= len(events))
    broker.stop()
    ids = [(m["value"]["id"], m["value"]["seq"]) for m in got]
    assert set(ids) == {(e.id, e.seq) for e in events}  # at-least-once: every event, duplicates allowed


def test_spooled_events_survive_a_restart_of_the_worker(tmp_path, kafka_broker):
    topic = _topic()
    cfg = sink_cfg(type="kafka", brokers=kafka_broker.bootstrap, topic=topic)
    events = make_events("cam-r", 1)
    first = create_sink(cfg, tmp_path / "spool")
    for ev in events:  # never started: as if the process died before delivering
        first.submit(ev)
    first.stop()
    second = create_sink(cfg, tmp_path / "spool")
    assert len(second.spool) == len(events)
    second.start()
    try:
        wait_for(lambda: len(second.spool) == 0, 30, "the reloaded spool to drain")
    finally:
        second.stop()
    got = consume(kafka_broker.bootstrap, topic, lambda m: len(m) >= len(events))
    assert [(m["value"]["id"], m["value"]["seq"]) for m in sorted(got, key=lambda m: m["offset"])] == \
        [(e.id, e.seq) for e in events]


def test_security_settings_come_from_the_environment_and_never_show(tmp_path, monkeypatch, caplog):
    require_kafka()
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
           "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "hunter2-secret", "KAFKA_SSL_CA_LOCATION": ""}
    assert security_settings(env) == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                                      "sasl.username": "svc", "sasl.password": "hunter2-secret"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    sink = create_sink(sink_cfg(type="kafka", brokers="127.0.0.1:9", topic="t"), tmp_path / "spool")
    conf = sink.producer_config()
    assert conf["sasl.password"] == "hunter2-secret" and conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    desc = sink.describe()
    assert "hunter2" not in repr(desc) and "sasl.username" in desc["security"]
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "carrier-pigeon")
    bad = create_sink(sink_cfg(type="kafka", brokers="127.0.0.1:9", topic="t"), tmp_path / "spool2")
    with caplog.at_level(logging.DEBUG), pytest.raises(SinkError) as info:
        bad.start()
    assert "security.protocol" in str(info.value) and "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text


def test_kafka_sink_config_is_checked(tmp_path):
    base = "cameras: [{name: c, url: 'file:///x.mp4'}]\nmodel: {bundle: /b}\n"
    cfg = parse_config(base + "sinks: [{type: kafka, brokers: 'k1:9092,k2:9092', topic: dsanet.events}]\n")
    assert cfg.sinks[0].type == "kafka" and cfg.sinks[0].brokers == "k1:9092,k2:9092"
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.brokers .*required"):
        parse_config(base + "sinks: [{type: kafka}]\n")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.topic"):
        parse_config(base + "sinks: [{type: kafka, brokers: 'k:1', topic: 'bad topic/'}]\n")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.sasl_password .*unknown key"):
        parse_config(base + "sinks: [{type: kafka, brokers: 'k:1', sasl_password: x}]\n")
