"""``mqtt`` sink (paho-mqtt 2.x): Frigate-style topics that Home Assistant / Node-RED automate against.

- ``<prefix>/events``: every event as JSON, QoS 1. An event leaves the spool only when the broker has
  confirmed it (PUBACK via ``on_publish``); unconfirmed events are published again after backoff, so a
  subscriber may see an ``(id, seq)`` twice but never misses one.
- ``<prefix>/<camera>/anomaly``: the current score ``{"score", "category", "time"}``, QoS 0, not spooled,
  at most one message per ``score_interval`` per camera (the latest value wins).
- ``<prefix>/available``: retained ``online`` once connected, ``offline`` on a clean stop, and the broker
  publishes ``offline`` (the last will) if the process dies.
- ``home_assistant: true`` (opt-in): Home Assistant MQTT discovery, retained, for every camera the sink
  sees (again after each reconnect): ``<discovery_prefix>/binary_sensor/dsanet_<slug>/anomaly/config``
  (state ``<prefix>/<camera>/alarm``, retained ``ON`` from a confirmed start until its end, then ``OFF``)
  and ``<discovery_prefix>/sensor/dsanet_<slug>/{score,category}/config`` (from the score topic), one
  device per camera, available while ``<prefix>/available`` is ``online``.
- ``<prefix>/feedback/set`` (``commands: true`` and feedback on): operator marks, JSON
  ``{"event_id", "mark": "false_alarm"|"confirmed", "category"?}`` (docs/feedback.md); each gets an answer
  on ``<prefix>/feedback/result`` (QoS 1): the stored mark, or ``{"ok": false, "error", "status"}``.
paho's own network thread reconnects with capped backoff; the spool worker waits while disconnected.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.config import MqttSinkConfig
from stream.events import iso_utc
from stream.metrics import Metrics
from stream.sinks import register_sink
from stream.sinks.base import Result, Sink, safe_name
from stream.sinks.spool import SpoolItem

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
PUBACK_TIMEOUT = 10.0  # seconds to wait for the broker's confirmation before publishing again


def _secret(v: Any) -> str | None:
    if v is None:
        return None
    get = getattr(v, "get_secret_value", None)
    return get() if callable(get) else str(v)


@register_sink("mqtt")
class MqttSink(Sink):
    def __init__(self, cfg: MqttSinkConfig, spool_dir: str | Path | None, metrics: Metrics | None = None, *,
                 reconnect_min: float = 1.0, reconnect_max: float = 30.0,
                 puback_timeout: float = PUBACK_TIMEOUT, **kw: Any) -> None:
        kw.setdefault("backoff_initial", 1.0)
        kw.setdefault("backoff_max", 30.0)
        super().__init__(cfg, spool_dir, metrics, **kw)
        self.mqtt_cfg = cfg
        self.host = cfg.host
        self.port = cfg.port
        self.prefix = cfg.prefix.rstrip("/")
        self.events_topic = f"{self.prefix}/events"
        self.available_topic = f"{self.prefix}/available"
        self.publish_scores = cfg.publish_scores
        self.score_interval = cfg.score_interval
        self.keepalive = cfg.keepalive
        self.client_id = cfg.client_id or f"dsanet-{socket.gethostname()}-{safe_name(self.name)}"
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.puback_timeout = puback_timeout
        self._client: Any = None
        self._connected = threading.Event()
        self._ack_lock = threading.Lock()
        self._acked: set[int] = set()
        self._abandoned: set[int] = set()
        self._last_score: dict[str, float] = {}  # camera -> monotonic time of the last score message
        self._pending_scores: dict[str, bytes] = {}
        self._score_lock = threading.Lock()
        self._conn_error_logged = False
        self.scores_published = 0
        self.home_assistant = bool(cfg.home_assistant)
        self.discovery_prefix = str(cfg.discovery_prefix).rstrip("/")
        self._announced: set[str] = set()  # cameras whose discovery went out on the current connection
        self._known: set[str] = set()
        self._alarms: dict[str, str] = {}  # camera -> ON/OFF, republished with the discovery
        self.feedback_topic = f"{self.prefix}/feedback/set"
        self.feedback_result_topic = f"{self.prefix}/feedback/result"
        self._feedback: Callable[[bytes], dict[str, Any]] | None = None
        self.commands_handled = 0

    def set_feedback_handler(self, handler: Callable[[bytes], dict[str, Any]]) -> None:
        """Subscribe to ``<prefix>/feedback/set`` and answer each message with ``handler(payload)``."""
        if self.mqtt_cfg.commands:
            self._feedback = handler

    def score_topic(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/anomaly"

    def alarm_topic(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/alarm"

    def discovery(self, camera: str) -> list[tuple[str, dict[str, Any]]]:
        """Home Assistant discovery messages (topic, payload) of one camera."""
        slug = re.sub(r"[^a-z0-9]+", "_", camera.lower()).strip("_") or "camera"
        node = f"dsanet_{slug}"
        common = {"availability_topic": self.available_topic, "payload_available": ONLINE,
                  "payload_not_available": OFFLINE,
                  "device": {"identifiers": [node], "name": camera, "manufacturer": "dsanet-stream",
                             "model": "DSANet anomaly detector"}}
        score_topic = self.score_topic(camera)
        return [
            (f"{self.discovery_prefix}/binary_sensor/{node}/anomaly/config",
             {"name": "Anomaly", "unique_id": f"{node}_anomaly", "state_topic": self.alarm_topic(camera),
              "payload_on": "ON", "payload_off": "OFF", "device_class": "problem", **common}),
            (f"{self.discovery_prefix}/sensor/{node}/score/config",
             {"name": "Anomaly score", "unique_id": f"{node}_score", "state_topic": score_topic,
              "value_template": "{{ value_json.score }}", "state_class": "measurement", **common}),
            (f"{self.discovery_prefix}/sensor/{node}/category/config",
             {"name": "Anomaly category", "unique_id": f"{node}_category", "state_topic": score_topic,
              "value_template": "{{ value_json.category }}", "icon": "mdi:cctv", **common}),
        ]

    def _announce(self, camera: str) -> None:
        """Publish a camera's discovery once per connection (retained, QoS 1; paho queues, never blocks)."""
        if not self.home_assistant:
            return
        c = self._client
        with self._score_lock:
            self._known.add(camera)
            if camera in self._announced or c is None or not self._connected.is_set():
                return
            self._announced.add(camera)
            state = self._alarms.setdefault(camera, "OFF")
        for topic, payload in self.discovery(camera):
            c.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)
        c.publish(self.alarm_topic(camera), state, qos=1, retain=True)

    def target(self) -> str:
        return f"mqtt://{self.host}:{self.port}/{self.events_topic}"

    # ------------------------------------------------------------------ connection

    def open(self) -> None:
        import paho.mqtt.client as mqtt  # imported here: only deployments with an MQTT sink pay for it

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv311, clean_session=True)
        if self.mqtt_cfg.username:
            c.username_pw_set(self.mqtt_cfg.username, _secret(self.mqtt_cfg.password))
        if self.mqtt_cfg.tls:
            c.tls_set()
        c.will_set(self.available_topic, OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(min_delay=self.reconnect_min, max_delay=max(self.reconnect_min, self.reconnect_max))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        self._client = c
        try:
            c.connect_async(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:  # bad host name etc.; paho keeps retrying from its thread
            log.error("sink %s: cannot connect to MQTT broker %s:%d (%s)", self.name, self.host, self.port, exc)
        c.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            if not self._conn_error_logged:
                self._conn_error_logged = True
                log.error("sink %s: MQTT broker %s:%d refused the connection: %s", self.name, self.host,
                          self.port, reason_code)
            return
        self._conn_error_logged = False
        self.last_error = None
        self._connected.set()  # before "online": whoever sees "online" may rely on scores flowing
        client.publish(self.available_topic, ONLINE, qos=1, retain=True)
        if self._feedback is not None:
            client.subscribe(self.feedback_topic, qos=1)
        if self.home_assistant:
            with self._score_lock:
                self._announced.clear()
                known = sorted(self._known)
            for camera in known:
                self._announce(camera)
        log.info("sink %s: connected to MQTT broker %s:%d", self.name, self.host, self.port)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        """A feedback command (paho's thread): handled at once, answered on the result topic."""
        handler = self._feedback
        if handler is None or msg.topic != self.feedback_topic:
            return
        try:
            res = handler(bytes(msg.payload))
        except Exception as exc:  # the handler answers errors itself; this is a bug's last resort
            log.error("sink %s: feedback command failed: %s", self.name, exc)
            res = {"ok": False, "error": f"internal error: {type(exc).__name__}", "status": 500}
        self.commands_handled += 1
        client.publish(self.feedback_result_topic, json.dumps(res, separators=(",", ":"), ensure_ascii=False),
                       qos=1, retain=False)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self.last_error = f"cannot reach MQTT broker {self.host}:{self.port}"
        if not self._conn_error_logged:
            self._conn_error_logged = True
            log.error("sink %s: cannot reach MQTT broker %s:%d; retrying in the background (events are spooled)",
                      self.name, self.host, self.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stop.is_set():
            log.warning("sink %s: lost the MQTT broker %s:%d (%s); reconnecting", self.name, self.host,
                        self.port, reason_code)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._ack_lock:  # never held while calling into paho (paho calls us with its own lock held)
            if mid in self._abandoned:
                self._abandoned.discard(mid)
            else:
                self._acked.add(mid)

    def ready(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        c, self._client = self._client, None
        if c is None:
            return
        try:
            if self._connected.is_set():
                info = c.publish(self.available_topic, OFFLINE, qos=1, retain=True)
                info.wait_for_publish(timeout=2.0)
            c.disconnect()
        except (OSError, RuntimeError, ValueError):
            pass
        finally:
            c.loop_stop()
            self._connected.clear()

    # ------------------------------------------------------------------ events

    def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
        c = self._client
        if c is None or not self._connected.is_set():
            return Result.RETRY, "not connected"
        body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        info = c.publish(self.events_topic, body, qos=1, retain=False)
        if info.rc != 0:
            # not sent; paho may still queue it for the next connection, so forget its confirmation
            self._abandon(info.mid)
            return Result.RETRY, f"publish failed (rc {info.rc})"
        end = time.monotonic() + self.puback_timeout
        while True:
            with self._ack_lock:
                if info.mid in self._acked:
                    self._acked.discard(info.mid)
                    self._alarm(item.payload)
                    return Result.DELIVERED, None
            if time.monotonic() >= end or self._stopping_expired():
                break
            time.sleep(0.002)
        if self._abandon(info.mid):
            self._alarm(item.payload)
            return Result.DELIVERED, None
        return Result.RETRY, f"no PUBACK within {self.puback_timeout:g}s"

    def _alarm(self, payload: Any) -> None:
        """Home Assistant's binary sensor: ON from a delivered start/update, OFF from its end (retained)."""
        if not self.home_assistant or not isinstance(payload, dict) or self._client is None:
            return
        camera = str(payload.get("camera"))
        state = "OFF" if payload.get("type") == "end" else "ON"
        with self._score_lock:
            self._alarms[camera] = state
        self._announce(camera)
        self._client.publish(self.alarm_topic(camera), state, qos=1, retain=True)

    def _abandon(self, mid: int) -> bool:
        """Stop waiting for ``mid``; True if its confirmation had in fact just arrived."""
        with self._ack_lock:
            if mid in self._acked:
                self._acked.discard(mid)
                return True
            self._abandoned.add(mid)
            return False

    # ------------------------------------------------------------------ live scores

    def publish_score(self, camera: str, score: float, category: str | None = None,
                      time_s: float | None = None) -> None:
        """Latest score of a camera, QoS 0, rate limited to one per ``score_interval`` (latest wins)."""
        self._announce(camera)
        if not self.publish_scores:
            return
        payload = json.dumps({"camera": camera, "score": round(float(score), 4), "category": category,
                              "time": iso_utc(time_s)}, separators=(",", ":"), ensure_ascii=False).encode()
        now = time.monotonic()
        with self._score_lock:
            last = self._last_score.get(camera)
            if last is not None and now - last < self.score_interval:
                self._pending_scores[camera] = payload  # sent by idle() once the interval has passed
                return
            self._last_score[camera] = now
            self._pending_scores.pop(camera, None)
        self._send_score(camera, payload)

    def _send_score(self, camera: str, payload: bytes) -> None:
        c = self._client
        if c is None or not self._connected.is_set():
            return  # best effort: scores are not spooled
        info = c.publish(self.score_topic(camera), payload, qos=0, retain=False)
        if info.rc == 0:
            self.scores_published += 1

    def idle(self) -> None:
        if not self._pending_scores:
            return
        now = time.monotonic()
        due: list[tuple[str, bytes]] = []
        with self._score_lock:
            for cam, payload in list(self._pending_scores.items()):
                if now - self._last_score.get(cam, 0.0) >= self.score_interval:
                    due.append((cam, payload))
                    del self._pending_scores[cam]
                    self._last_score[cam] = now
        for cam, payload in due:
            self._send_score(cam, payload)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"connected": self._connected.is_set(), "client_id": self.client_id,
                  "scores_published": self.scores_published})
        return d
