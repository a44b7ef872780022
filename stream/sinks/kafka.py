"""``kafka`` sink (confluent-kafka / librdkafka): every event on one topic, keyed by camera.

Keyed by camera, so all events of a camera land in one partition, in order; consumers that scale out by
partition still see each camera's start/update/end sequence in order. The same rules as every sink:
``submit`` writes the durable spool, one worker delivers the oldest event and acks it only when the
broker has acknowledged it (``acks=all``); on failure the same event is sent again after backoff, so
a consumer may see an ``(id, seq)`` twice but never misses one (at-least-once). The producer is
idempotent, so librdkafka's own internal retries never duplicate a message; a retry of ours after a
reported failure may (dedupe on ``(id, seq)``).

``message.timeout.ms`` is the sink's ``timeout``: librdkafka reports every produced message as
delivered or failed within it, so a message is never in flight twice because of us.

Security settings come from the environment only (the config file never holds credentials):
``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``,
``KAFKA_SSL_CA_LOCATION``, ``KAFKA_SSL_CERTIFICATE_LOCATION``, ``KAFKA_SSL_KEY_LOCATION``,
``KAFKA_SSL_KEY_PASSWORD``, ``KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stream.config import KafkaSinkConfig
from stream.redact import redact
from stream.sinks import SinkError, register_sink
from stream.sinks.base import Metrics, Result, Sink, safe_name
from stream.sinks.spool import SpoolItem

log = logging.getLogger(__name__)

ENV_SETTINGS = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "ssl.certificate.location",
    "KAFKA_SSL_KEY_LOCATION": "ssl.key.location",
    "KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "ssl.endpoint.identification.algorithm",
}
SECRET_SETTINGS = ("sasl.password", "ssl.key.password")
# errors a retry cannot fix: the event is set aside (dead letter) instead of blocking the spool forever
PERMANENT = ("MSG_SIZE_TOO_LARGE", "INVALID_MSG", "INVALID_MSG_SIZE", "RECORD_LIST_TOO_LARGE")


def security_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka security settings from ``KAFKA_*`` environment variables (unset or empty: left out)."""
    env = os.environ if env is None else env
    return {key: env[name] for name, key in ENV_SETTINGS.items() if env.get(name)}


def _import_kafka() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:
        raise SinkError("the kafka sink needs confluent-kafka: pip install 'dsanet-stream[kafka]'") from exc
    return confluent_kafka


@register_sink("kafka")
class KafkaSink(Sink):
    def __init__(self, cfg: KafkaSinkConfig, spool_dir: str | Path | None, metrics: Metrics | None = None,
                 **kw: Any) -> None:
        kw.setdefault("backoff_initial", cfg.backoff_initial)
        kw.setdefault("backoff_max", cfg.backoff_max)
        super().__init__(cfg, spool_dir, metrics, **kw)
        self.kafka_cfg = cfg
        self.brokers = cfg.brokers
        self.topic = cfg.topic
        self.timeout = cfg.timeout
        self.client_id = cfg.client_id or f"dsanet-{socket.gethostname()}-{safe_name(self.name)}"
        self._producer: Any = None
        self._kafka = _import_kafka()
        self._error_logged = False

    def target(self) -> str:
        return f"kafka://{self.brokers}/{self.topic}"

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka configuration (security settings included; never log this dict)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            "client.id": self.client_id,
            "enable.idempotence": True,  # implies acks=all and ordered, deduplicated internal retries
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": max(1, int(self.timeout * 1000)),
            "socket.connection.setup.timeout.ms": max(1000, int(self.timeout * 1000)),
            "reconnect.backoff.max.ms": 5000,
            "error_cb": self._on_error,
            "logger": log,
        }
        conf.update(security_settings())
        return conf

    def open(self) -> None:
        try:
            self._producer = self._kafka.Producer(self.producer_config())
        except self._kafka.KafkaException as exc:  # a bad setting (e.g. unknown security.protocol)
            raise SinkError(f"sink {self.name}: cannot create the Kafka producer: {redact(exc)}") from None

    def _on_error(self, err: Any) -> None:
        self.last_error = redact(str(err))
        if not self._error_logged:
            self._error_logged = True
            log.warning("sink %s: Kafka %s: %s (events stay spooled and are retried)", self.name, self.brokers,
                        self.last_error)

    def close(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            left = p.flush(2.0)
            if left:
                log.info("sink %s: %d message(s) still unconfirmed at close; they stay spooled", self.name, left)

    def deliver(self, item: SpoolItem) -> tuple[Result, str | None]:
        p = self._producer
        if p is None:
            return Result.RETRY, "producer not open"
        payload = item.payload
        key = str(payload.get("camera", "")).encode("utf-8")
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def on_delivery(err: Any, msg: Any) -> None:
            outcome["err"] = err
            done.set()

        try:
            p.produce(self.topic, value=body, key=key, on_delivery=on_delivery)
        except BufferError:
            p.poll(0.1)
            return Result.RETRY, "producer queue full"
        except self._kafka.KafkaException as exc:
            return Result.RETRY, f"produce failed: {redact(exc)}"
        # librdkafka reports every message within message.timeout.ms; the grace covers its timer tick
        end = time.monotonic() + self.timeout + 5.0
        while not done.is_set():
            p.poll(0.05)
            if time.monotonic() >= end:
                return Result.RETRY, f"no acknowledgement within {self.timeout:g}s"
        err = outcome.get("err")
        if err is None:
            self._error_logged = False
            return Result.DELIVERED, None
        name = err.name() if hasattr(err, "name") else str(err)
        reason = f"{name}: {redact(err.str() if hasattr(err, 'str') else str(err))}"
        if name in PERMANENT:
            return Result.DEAD, reason
        return Result.RETRY, reason

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"topic": self.topic, "client_id": self.client_id,
                  "security": sorted(k for k in security_settings() if k not in SECRET_SETTINGS)})
        return d
