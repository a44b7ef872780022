"""A remote encoder (Triton) on the worker's ``/metrics`` and ``/readyz``.

Why: when Triton goes away the worker keeps running (its cameras keep being read, snippets queue and
the oldest are dropped and counted), but it cannot score; an orchestrator must see that (``/readyz``
503 naming Triton, so no traffic or alerts are expected from it) and a dashboard must show how long and
how often (the ``dsanet_remote_encoder_*`` series). Values are read from the runner's
``RemoteHealth`` at scrape time, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CIRCUIT_STATES = ("closed", "open", "half_open")


class _HasHealth(Protocol):
    def health(self) -> Any: ...


class RemoteEncoderCollector(Collector):
    """Prometheus series of one remote encoder, labelled by its target (host:port, no credentials)."""

    def __init__(self, health: Callable[[], Any]) -> None:
        self._health = health

    def collect(self) -> Iterator[Any]:
        h = self._health()
        labels = ["target", "model"]
        values = [h.target, h.model]
        up = GaugeMetricFamily("dsanet_remote_encoder_up", "1 while the remote encoder (Triton) serves requests "
                               "(circuit closed), else 0.", labels=labels)
        up.add_metric(values, 1.0 if h.ready else 0.0)
        yield up
        state = GaugeMetricFamily("dsanet_remote_encoder_circuit", "1 for the circuit breaker's current state.",
                                  labels=[*labels, "state"])
        for s in CIRCUIT_STATES:
            state.add_metric([*values, s], 1.0 if h.circuit == s else 0.0)
        yield state
        outage = GaugeMetricFamily("dsanet_remote_encoder_outage_seconds", "Seconds since the circuit opened "
                                   "(0 while serving).", labels=labels)
        outage.add_metric(values, h.outage_seconds)
        yield outage
        req = CounterMetricFamily("dsanet_remote_encoder_requests", "Inference requests to the remote encoder "
                                  "by result (ok, failed).", labels=[*labels, "result"])
        req.add_metric([*values, "ok"], h.requests_ok)
        req.add_metric([*values, "failed"], h.requests_failed)
        yield req
        for name, doc, value in (
                ("dsanet_remote_encoder_retries", "Retries after a failed request (with backoff).", h.retries),
                ("dsanet_remote_encoder_batches_failed", "Encoder batches given up after max_wait (their snippets "
                 "are also counted in dsanet_dropped{stage=\"encoder_error\"}).", h.batches_failed),
                ("dsanet_remote_encoder_sent_bytes", "Tensor bytes sent to the remote encoder.", h.bytes_sent),
                ("dsanet_remote_encoder_images", "Images embedded by the remote encoder.", h.images)):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            yield c


def watch_remote_encoder(metrics: Any, encoder: Any) -> bool:
    """Put a remote encoder's state on ``metrics`` (collector + readiness); False for a local encoder."""
    from engine.runtimes.triton import TritonEncoderModel

    if not isinstance(encoder, TritonEncoderModel):
        return False
    metrics.registry.register(RemoteEncoderCollector(encoder.health))

    def check() -> str | None:
        h = encoder.health()
        if h.ready:
            return None
        return f"remote encoder {h.target} unavailable for {h.outage_seconds:.0f}s (circuit {h.circuit})"

    metrics.add_readiness("triton", check)
    return True
