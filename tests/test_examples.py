"""The receiver examples in docs/examples de-duplicate at-least-once deliveries on ``(id, seq)``.

(The webhook receiver, with its signature and replay checks, is tested in tests/test_security.py.)
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

from stream.config import parse_config

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "examples" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _event(eid: str, seq: int) -> Any:
    from stream.events import Event

    return Event(id=eid, seq=seq, type="start" if seq == 0 else "update", camera="c", category="Fighting",
                 category_key="Fighting", category_score=0.8, score=0.9, peak_score=0.9, start_time=1000.0,
                 end_time=None, updated_time=1000.0 + seq, snippets=1)


def test_mqtt_example_handles_each_event_once_when_the_sink_redelivers(mqtt_broker, tmp_path):
    """The real MQTT sink publishes every event, some of them twice (a redelivery after a crash looks
    exactly like this on the wire); the example subscriber hands each ``(id, seq)`` to its handler once."""
    from stream.sinks import create_sink

    mod = _load("mqtt_subscriber")
    handled: list[tuple[str, int]] = []
    done = threading.Event()

    def handle(e: dict) -> None:
        handled.append((e["id"], e["seq"]))
        if len(handled) == 3:
            done.set()

    client = mod.subscribe("127.0.0.1", mqtt_broker.port, "ex", handle, client_id=f"ex-{time.monotonic_ns()}")
    cfg = parse_config(json.dumps({"cameras": [{"name": "c", "url": "file:///x.mp4"}], "model": {"bundle": "b"},
                                   "sinks": [{"type": "mqtt", "port": mqtt_broker.port, "prefix": "ex",
                                              "publish_scores": False}]}))
    sink = create_sink(cfg.sinks[0], tmp_path / "spool")
    sent = [_event("a", 0), _event("a", 1), _event("a", 1), _event("b", 0), _event("a", 0)]
    try:
        time.sleep(1.0)  # the subscriber's SUBSCRIBE reaches the broker before the first PUBLISH
        sink.start()
        for e in sent:
            sink.submit(e)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and client.dedup.duplicates < 2:
            time.sleep(0.05)
    finally:
        sink.stop(5)
        client.loop_stop()
        client.disconnect()
    assert done.is_set()
    assert handled == [("a", 0), ("a", 1), ("b", 0)]
    assert client.dedup.duplicates == 2  # both repeats arrived, and were recognised
