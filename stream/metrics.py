"""Prometheus metrics of the live service, plus ``/healthz`` and ``/readyz`` on the same port.

One :class:`Metrics` object per service, with its *own* ``CollectorRegistry`` (so tests can build many,
and no process-global default collectors leak in). Components call small methods on it
(``frame_decoded``, ``dropped``, ``sink_delivered`` ...) instead of touching prometheus objects, which
keeps label names in one place. Every label value that could carry a URL is a camera or sink *name*,
never a URL, so credentials cannot reach the metrics page.

Endpoints (``serve``; binds 127.0.0.1 unless the config says otherwise):

* ``/metrics``: the registry in the Prometheus text format (clean under ``promtool check metrics``);
* ``/healthz``: 200 when every registered loop (readers, workers) made progress within
  ``stale_after`` seconds, else 503 naming the stuck loops: liveness, for a supervisor to restart us;
* ``/readyz``: 200 when the model is loaded and at least one camera is streaming, else 503 saying why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from stream.reader import CameraState

log = logging.getLogger(__name__)

# Inference takes 1 ms (tiny head) to seconds (ViT-B/16 batch on a CPU).
_INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_STALE_AFTER = 30.0


class Metrics:
    """All service metrics, health and readiness state."""

    def __init__(self, registry: CollectorRegistry | None = None, stale_after: float = DEFAULT_STALE_AFTER):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.stale_after = stale_after
        r = self.registry
        self.camera_up = Gauge("dsanet_camera_up", "1 while the camera is streaming frames, else 0.",
                               ["camera"], registry=r)
        self.camera_state_g = Gauge("dsanet_camera_state", "1 for the camera's current reader state, 0 for the others.",
                                    ["camera", "state"], registry=r)
        self.frames = Counter("dsanet_frames_decoded", "Frames decoded per camera.", ["camera"], registry=r)
        self.snippets = Counter("dsanet_snippets", "Snippets cut per camera (including filled ones).",
                                ["camera"], registry=r)
        self.dropped_c = Counter("dsanet_dropped", "Work items dropped because a stage could not keep up or failed "
                                 "(stage: encoder, head, encoder_error, head_error, ...).",
                                 ["stage", "camera"], registry=r)
        self.reconnects = Counter("dsanet_reconnects", "Reconnect attempts per camera.", ["camera"], registry=r)
        self.decode_errors = Counter("dsanet_decode_errors", "Packets the decoder rejected per camera.", ["camera"],
                                     registry=r)
        self.frames_lost_c = Counter("dsanet_frames_lost", "Frames missing from a camera's stream (gaps in "
                                     "presentation time).", ["camera"], registry=r)
        self.lag = Gauge("dsanet_stream_lag_seconds", "Now minus the capture time of the newest snippet in the "
                         "latest scored window.", ["camera"], registry=r)
        self.anomaly = Gauge("dsanet_anomaly_score", "Latest reported anomaly score per camera (0..1).", ["camera"],
                             registry=r)
        self.inference = Histogram("dsanet_inference_seconds", "Seconds per model call (one batch).", ["model"],
                                   buckets=_INFERENCE_BUCKETS, registry=r)
        self.batch = Histogram("dsanet_batch_size", "Items per model call.", ["model"], buckets=_BATCH_BUCKETS,
                               registry=r)
        self.events = Counter("dsanet_events", "Alert events emitted per camera and category (start events).",
                              ["camera", "category"], registry=r)
        self.sink_deliveries = Counter("dsanet_sink_deliveries", "Sink delivery attempts by result (ok, retry, "
                                       "dropped, ...).", ["sink", "result"], registry=r)
        self.spool = Gauge("dsanet_sink_spool_depth", "Events waiting in a sink's on-disk spool.", ["sink"], registry=r)
        self.build = Gauge("dsanet_build_info", "Build and model information (value is always 1).",
                           ["version", "bundle", "runtime"], registry=r)
        self.queue_depth = Gauge("dsanet_queue_depth", "Items waiting in a work queue.", ["queue"], registry=r)
        self.evidence_c = Counter("dsanet_evidence", "Evidence files per camera, kind (snapshot, clip) and result "
                                  "(ok, failed, dropped).", ["camera", "kind", "result"], registry=r)
        self.threshold_g = Gauge("dsanet_threshold", "A camera's event thresholds now in force (kind: on, off); "
                                 "calibration or the API may change them.", ["camera", "kind"], registry=r)
        self.reused_c = Counter("dsanet_embeddings_reused", "Snippets whose frame matched the camera's last "
                                "embedded frame (still-scene gate) and reused its embedding instead of the "
                                "encoder.", ["camera"], registry=r)
        self._lock = threading.Lock()
        self._liveness: dict[str, Callable[[], float]] = {}
        self._states: dict[str, CameraState] = {}
        self._model_loaded = False
        self._readiness: dict[str, Callable[[], str | None]] = {}

    # -------------------------------------------------------------------------------- camera side
    def register_camera(self, camera: str) -> None:
        """Create the camera's series at zero so dashboards see it before the first frame."""
        self.frames.labels(camera)
        self.snippets.labels(camera)
        self.reconnects.labels(camera)
        self.decode_errors.labels(camera)
        self.frames_lost_c.labels(camera)
        self.reused_c.labels(camera)
        self.camera_state(camera, CameraState.STOPPED)

    def thresholds(self, camera: str, on: float, off: float) -> None:
        self.threshold_g.labels(camera, "on").set(on)
        self.threshold_g.labels(camera, "off").set(off)

    def camera_state(self, camera: str, state: CameraState) -> None:
        with self._lock:
            self._states[camera] = state
        for s in CameraState:
            self.camera_state_g.labels(camera, s.value).set(1.0 if s == state else 0.0)
        self.camera_up.labels(camera).set(1.0 if state == CameraState.STREAMING else 0.0)

    def frame_decoded(self, camera: str, n: int = 1) -> None:
        self.frames.labels(camera).inc(n)

    def decode_error(self, camera: str, n: int = 1) -> None:
        self.decode_errors.labels(camera).inc(n)

    def frames_lost(self, camera: str, n: int) -> None:
        self.frames_lost_c.labels(camera).inc(n)

    def reconnect(self, camera: str) -> None:
        self.reconnects.labels(camera).inc()

    def snippet(self, camera: str, n: int = 1) -> None:
        self.snippets.labels(camera).inc(n)

    def dropped(self, stage: str, camera: str = "", n: int = 1) -> None:
        self.dropped_c.labels(stage, camera).inc(n)

    def embedding_reused(self, camera: str, n: int = 1) -> None:
        self.reused_c.labels(camera).inc(n)

    # ---------------------------------------------------------------------------------- model side
    def inference_done(self, model: str, seconds: float, batch: int) -> None:
        self.inference.labels(model).observe(seconds)
        self.batch.labels(model).observe(batch)

    def scored(self, camera: str, score: float, lag_seconds: float) -> None:
        self.anomaly.labels(camera).set(score)
        self.lag.labels(camera).set(lag_seconds)

    def queue(self, name: str, depth: int) -> None:
        self.queue_depth.labels(name).set(depth)

    def build_info(self, version: str, bundle: str, runtime: str) -> None:
        """One series only: the bundle (and runtime) scoring now; a hot swap replaces the previous one."""
        self.build.clear()
        self.build.labels(version, bundle, runtime).set(1)

    def set_model_loaded(self, loaded: bool = True) -> None:
        self._model_loaded = loaded

    # ------------------------------------------------------------------------- events and sinks side
    def event(self, camera: str, category: str) -> None:
        self.events.labels(camera, category).inc()

    def evidence(self, camera: str, kind: str, result: str) -> None:
        """One evidence file written (``ok``), failed, or skipped because the evidence queue was full."""
        self.evidence_c.labels(camera, kind, result).inc()

    def sink_delivered(self, sink: str, result: Any, n: int = 1) -> None:
        self.sink_deliveries.labels(sink, _label(result)).inc(n)

    def spool_depth(self, sink: str, n: int) -> None:
        self.spool.labels(sink).set(n)

    # ---------------------------------------------------------------------------- health / readiness
    def add_liveness(self, name: str, last_progress: Callable[[], float]) -> None:
        """Register a loop; ``last_progress()`` returns the ``time.monotonic()`` of its latest progress."""
        with self._lock:
            self._liveness[name] = last_progress

    def remove_liveness(self, name: str) -> None:
        with self._lock:
            self._liveness.pop(name, None)

    def health(self, now: float | None = None) -> tuple[bool, str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            probes = list(self._liveness.items())
        stuck = []
        for name, fn in probes:
            try:
                age = now - fn()
            except Exception:  # a broken probe counts as stuck, never as a crash of the endpoint
                age = float("inf")
            if age > self.stale_after:
                stuck.append(f"{name} ({age:.0f}s)")
        if stuck:
            return False, "stuck: " + ", ".join(stuck)
        return True, f"ok ({len(probes)} loops)"

    def add_readiness(self, name: str, check: Callable[[], str | None]) -> None:
        """Register a dependency for ``/readyz``: ``check()`` returns None when usable, else why not."""
        with self._lock:
            self._readiness[name] = check

    def readiness(self) -> tuple[bool, str]:
        if not self._model_loaded:
            return False, "model not loaded"
        with self._lock:
            checks = list(self._readiness.items())
        for name, check in checks:
            try:
                why = check()
            except Exception as exc:  # a broken check counts as not ready, never as a crash of the endpoint
                why = f"check failed: {type(exc).__name__}"
            if why:
                return False, f"{name}: {why}"
        with self._lock:
            streaming = [c for c, s in self._states.items() if s == CameraState.STREAMING]
        if not streaming:
            return False, "no camera streaming"
        return True, f"ok ({len(streaming)} streaming)"

    def camera_states(self) -> dict[str, CameraState]:
        with self._lock:
            return dict(self._states)

    # ------------------------------------------------------------------------------------- output
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        return MetricsServer(self, host, port)


def _label(value: Any) -> str:
    """Label text of a value; str-valued enums (sink results) give their value, not ``Result.DELIVERED``."""
    return str(getattr(value, "value", value))


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics  # set on the subclass made per server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/metrics", "/metrics/"):
            self._send(200, self.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, detail = self.metrics.health()
            self._send(200 if ok else 503, (detail + "\n").encode())
        elif path == "/readyz":
            ok, detail = self.metrics.readiness()
            self._send(200 if ok else 503, (detail + "\n").encode())
        elif path == "/":
            self._send(200, b"dsanet-stream: /metrics /healthz /readyz\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes every few seconds: keep quiet
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """The HTTP endpoint in a daemon thread; :meth:`close` stops it."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0):
        handler = type("MetricsHandler", (_Handler,), {"metrics": metrics})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)


def metric_names(metrics: Metrics) -> Iterable[str]:
    """Names of the families in the registry (for tests and docs)."""
    return [m.name for m in metrics.registry.collect()]
