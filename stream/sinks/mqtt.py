"""``mqtt`` sink (paho-mqtt 2.x): Frigate-style topics that Home Assistant / Node-RED automate against.

- ``<prefix>/events``: every event as JSON, QoS 1. An event leaves the spool only when the broker has
  confirmed it (PUBACK via ``on_publish``); unconfirmed events are published again after backoff, so a
  subscriber may see an ``(id, seq)`` twice but never misses one.
- ``<prefix>/<camera>/anomaly``: the current score ``{"score", "category", "time"}``, QoS 0, not spooled,
  at most one message per ``score_interval`` per camera (the latest value wins).
- ``<prefix>/available``: retained ``online`` once connected, ``offline`` on a clean stop, and the broker
  publishes ``offline`` (the last will) if the process dies.
paho's own network thread reconnects with capped backoff; the spool worker waits while disconnected.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
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

    def score_topic(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/anomaly"

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
        log.info("sink %s: connected to MQTT broker %s:%d", self.name, self.host, self.port)

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
                    return Result.DELIVERED, None
            if time.monotonic() >= end or self._stopping_expired():
                break
            time.sleep(0.002)
        if self._abandon(info.mid):
            return Result.DELIVERED, None
        return Result.RETRY, f"no PUBACK within {self.puback_timeout:g}s"

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
