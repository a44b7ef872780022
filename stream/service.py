"""The live service: wires readers, snippet cutters, the two batching workers, windows, event machines,
sinks and metrics, and shuts them down in order.

Data flow and threads::

    reader thread per camera --(SnippetCutter, in that thread)--> encoder queue (bounded, drop oldest)
      --> encoder worker --(EmbeddingWindow per camera)--> head queue (bounded, drop oldest)
      --> head worker --> metrics, status, EventMachine per camera --> sinks (own spool + worker each)

Every hand-over is non-blocking, so a stuck camera, a slow model or a dead webhook only ever costs
its own work (dropped and counted), never another camera's.

Shutdown (SIGINT/SIGTERM, ``--duration``, or every file source ended) runs in this order, each step with
a deadline so the whole takes at most ``shutdown_timeout`` (10 s):

1. stop the readers (they flush their last partial snippet);
2. drain the encoder queue (the rest is dropped and counted as ``shutdown`` if the deadline passes);
3. flush every window: the last ``lookahead`` snippets of each camera are scored from the final window;
4. drain the head queue, so those scores reach the event machines;
5. end open events with ``type: end, reason: shutdown`` and hand them to the sinks;
5b. with evidence on: write the snapshots and clips of the ends held so far (from what is buffered) and
   send those ends (``stream.evidence``);
6. stop the sinks (each delivers what it can in its share of the time; the rest stays in its spool);
7. stop the metrics endpoint.

Evidence (``evidence.enabled``): each reader also feeds a bounded ring of compressed packets, every score
passes the evidence manager (peak frame) before the event machine, and an ``end`` event is held by the
evidence worker until its snapshot and clip are written (at most ``post_roll`` of capture time later);
starts and updates are never delayed.

Open events are also journalled on disk (``stream.events.OpenEventJournal`` under the spool directory), so
after a crash the next start ends them with ``reason: restart_recovery``.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from engine.errors import DsanetError
from stream import __version__
from stream.metrics import Metrics, MetricsServer
from stream.reader import CameraReader, CameraState, make_reader_settings
from stream.redact import redact
from stream.scoring import DropOldestQueue, EncoderWorker, HeadWorker
from stream.snippets import SnippetCutter, SnippetSpec
from stream.types import Snippet, SnippetEmbedding, WindowScore
from stream.window import EmbeddingWindow, WindowJob

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0
STATUS_INTERVAL = 5.0


@dataclass
class Models:
    """What the service needs from a bundle; ``load_models`` provides it, tests may pass fakes.

    ``bundle`` needs ``snippet_frames``, ``snippet_fps``, ``class_names``, ``display_names``,
    ``max_window`` and ``name``; ``encoder.embed`` and ``head.score`` as in ``engine.runtime``.
    """

    bundle: Any
    encoder: Any
    head: Any
    preprocess: Callable[[list[np.ndarray]], np.ndarray]
    runtime: str = "unknown"
    encoder_max_batch: int = 64
    head_max_batch: int = 64

    @classmethod
    def load(cls, model_cfg: Any) -> Models:
        from engine.runtime import load_models

        if model_cfg.encoder is not None:  # the encoder on a Triton server, the head here
            from engine.runtimes.triton import load_with_remote_encoder

            bundle, encoder, head = load_with_remote_encoder(model_cfg)
            return cls(bundle=bundle, encoder=encoder, head=head, preprocess=encoder.preprocess,
                       runtime=f"triton+{head.describe()['runtime']}", encoder_max_batch=encoder.max_batch,
                       head_max_batch=head.max_batch)
        bundle, encoder, head = load_models(model_cfg.bundle, runtime=model_cfg.runtime, device=model_cfg.device,
                                            precision=model_cfg.precision, threads=model_cfg.threads)
        desc = head.describe() if hasattr(head, "describe") else {}
        runtime = str(desc.get("runtime") or desc.get("name") or model_cfg.runtime) if isinstance(desc, dict) \
            else model_cfg.runtime
        return cls(bundle=bundle, encoder=encoder, head=head, preprocess=bundle.preprocessing, runtime=runtime,
                   encoder_max_batch=encoder.max_batch, head_max_batch=head.max_batch)


@dataclass
class CameraStatus:
    """Live per-camera numbers for the status line (written by the head worker, read by the status loop)."""

    score: float | None = None
    category: str | None = None
    lag: float | None = None
    scored: int = 0
    open_event: str | None = None
    last_alert: str | None = None
    frames_at_last_status: int = 0
    fps: float = 0.0


@dataclass
class _Camera:
    name: str
    reader: CameraReader
    cutter: SnippetCutter
    window: EmbeddingWindow
    machine: Any
    status: CameraStatus = field(default_factory=CameraStatus)


class Service:
    """One running deployment. ``run()`` blocks until stopped and returns the exit code."""

    def __init__(self, cfg: Any, models: Models | None = None, metrics: Metrics | None = None,
                 out: TextIO | None = None, status_interval: float = STATUS_INTERVAL,
                 shutdown_timeout: float = SHUTDOWN_TIMEOUT, sinks: Sequence[Any] | None = None):
        self.cfg = cfg
        self.out = out if out is not None else sys.stdout
        self.status_interval = status_interval
        self.shutdown_timeout = shutdown_timeout
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._print_lock = threading.Lock()
        self.events: list[Any] = []  # every event emitted in this run (status, tests)
        self._events_lock = threading.Lock()
        self._started = False
        self._shut = False
        self.server: MetricsServer | None = None

        cameras_cfg = [c for c in cfg.cameras if getattr(c, "enabled", True)]
        if not cameras_cfg:
            raise DsanetError("no enabled camera in the config: enable at least one under 'cameras'")
        self.models = models or Models.load(cfg.model)
        self.metrics.set_model_loaded(True)
        b = self.models.bundle
        self.spec = SnippetSpec.from_bundle(b)
        self.metrics.build_info(__version__, str(getattr(b, "name", "bundle")), self.models.runtime)

        m = cfg.model
        self.encoder_queue: DropOldestQueue[Snippet] = DropOldestQueue(
            m.queue_size, on_drop=lambda s: self.metrics.dropped("encoder", s.camera), name="encoder")
        self.head_queue: DropOldestQueue[WindowJob] = DropOldestQueue(
            m.queue_size, on_drop=lambda j: self.metrics.dropped("head", j.camera), name="head")
        self.encoder = EncoderWorker(self.encoder_queue, self.models.encoder.embed, self.models.preprocess,
                                     self._on_embeddings, max_batch=max(1, min(m.encoder_batch,
                                                                               self.models.encoder_max_batch)),
                                     max_wait=m.encoder_max_wait, metrics=self.metrics)
        self.head = HeadWorker(self.head_queue, self.models.head.score, self._on_scores,
                               max_batch=max(1, min(m.head_batch, self.models.head_max_batch)),
                               max_wait=m.head_max_wait, metrics=self.metrics)

        from stream.events import EventMachine, OpenEventJournal

        model_info = {"name": getattr(b, "name", None), "hash": _short_hash(b)}
        self.cameras: dict[str, _Camera] = {}
        self.evidence: Any = None
        ev_cfg = getattr(cfg, "evidence", None)
        if ev_cfg is not None and getattr(ev_cfg, "enabled", False):
            from stream.evidence import EvidenceManager

            self.evidence = EvidenceManager(ev_cfg, self._dispatch, self.metrics)
        max_window = int(getattr(b, "max_window", 256))
        for cam in cameras_cfg:
            wcfg = cfg.window_for(cam) if hasattr(cfg, "window_for") else cfg.window
            length = int(wcfg.length)
            if length > max_window:
                raise DsanetError(f"camera {cam.name!r}: window.length {length} is longer than the bundle's "
                                  f"max_window {max_window}")
            window = EmbeddingWindow(length, int(wcfg.lookahead), camera=cam.name, max_window=max_window)
            cutter = SnippetCutter(cam.name, self.spec, self._snippet_emitter(cam.name), prepare=self._prepare)
            ecfg = cfg.events_for(cam) if hasattr(cfg, "events_for") else cfg.events
            ring = None
            if self.evidence is not None:
                ring = self.evidence.add_camera(cam.name, float(getattr(ecfg, "on_threshold", 0.6)),
                                                ring_seconds=self._ring_seconds(ecfg, int(wcfg.lookahead)))
            reader = CameraReader(make_reader_settings(cam, cfg.ingest), cutter, self.metrics, packets=ring)
            machine = EventMachine(cam.name, ecfg, list(b.class_names), list(getattr(b, "display_names", b.class_names)),
                                   model_info=model_info)
            self.cameras[cam.name] = _Camera(cam.name, reader, cutter, window, machine)
            self.metrics.register_camera(cam.name)
            # a reader whose thread has ended (file finished) is not stuck: it counts as live
            self.metrics.add_liveness(f"reader:{cam.name}",
                                      lambda r=reader: r.heartbeat if r.alive else time.monotonic())
        if self.evidence is not None:
            ev_mgr = self.evidence
            self.metrics.add_liveness("evidence", lambda: ev_mgr.heartbeat if ev_mgr._thread is not None
                                      and ev_mgr._thread.is_alive() else time.monotonic())
        self.metrics.add_liveness("encoder", lambda: self.encoder.heartbeat)
        self.metrics.add_liveness("head", lambda: self.head.heartbeat)

        spool_dir = Path(cfg.spool.directory)
        self.journal = OpenEventJournal(spool_dir / "open-events")
        if sinks is None:
            from stream.sinks import create_sink

            sinks = [create_sink(s, spool_dir, self.metrics) for s in cfg.sinks]
        self.sinks = list(sinks)
        self._echo_alerts = not any(getattr(s, "type_name", "") == "stdout" for s in self.sinks)

    # ------------------------------------------------------------------------------------- wiring
    def _ring_seconds(self, ecfg: Any, lookahead: int) -> float:
        """Seconds of packets a camera keeps: the pre-roll plus how late a start event can be known
        (``min_duration``, the window's lookahead, a few seconds of queueing)."""
        pre = float(self.cfg.evidence.pre_roll)
        return pre + float(getattr(ecfg, "min_duration", 1.0)) + (lookahead + 2) * self.spec.seconds + 5.0

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """One frame -> encoder input [3,S,S]; runs in the camera's reader thread."""
        return np.asarray(self.models.preprocess([image]))[0]  # float32, or uint8 crops for a Triton encoder

    def _snippet_emitter(self, camera: str) -> Callable[[Snippet], None]:
        def emit(s: Snippet) -> None:
            self.metrics.snippet(camera)
            self.encoder_queue.put(s)

        return emit

    def _on_embeddings(self, embeddings: list[SnippetEmbedding]) -> None:
        now = time.monotonic()
        for e in embeddings:
            cam = self.cameras.get(e.camera)
            if cam is None:
                continue
            job = cam.window.push(e, now=now)
            if job is not None:
                self.head_queue.put(job)

    def _on_scores(self, scores: Sequence[WindowScore]) -> None:
        now = time.time()
        for ws in scores:
            cam = self.cameras.get(ws.camera)
            if cam is None:
                continue
            lag = now - ws.newest_end_time
            self.metrics.scored(ws.camera, ws.score, lag)
            category = self._category(ws.class_probs)
            for sink in self.sinks:
                try:
                    sink.publish_score(ws.camera, ws.score, category, ws.end_time)
                except Exception as exc:  # best effort by contract; never let a sink break scoring
                    log.debug("sink %s: publish_score failed: %s", getattr(sink, "name", "?"), redact(exc))
            if self.evidence is not None:
                self.evidence.observe(ws)  # before the machine: the score that starts an event may be its peak
            try:
                events = cam.machine.push(ws)
            except DsanetError as exc:
                log.error("camera %s: event machine rejected a score: %s", ws.camera, exc)
                events = []
            for ev in events:
                self._emit(ev)
            # status last, so a status line showing this score never precedes the alert it caused
            st = cam.status
            st.score, st.lag, st.scored, st.category = ws.score, lag, st.scored + 1, category

    def _category(self, probs: Sequence[float]) -> str | None:
        if len(probs) < 2:
            return None
        i = int(np.argmax(np.asarray(probs[1:]))) + 1
        names = getattr(self.models.bundle, "display_names", None) or self.models.bundle.class_names
        return str(names[i])

    def _emit(self, ev: Any) -> None:
        """An event from a machine: the evidence manager may hold an end until its files exist."""
        if self.evidence is not None:
            try:
                if self.evidence.handle(ev):
                    return
            except Exception:  # evidence must never cost an alert
                log.exception("camera %s: evidence failed for event %s", ev.camera, ev.id)
        self._dispatch(ev)

    def _dispatch(self, ev: Any) -> None:
        with self._events_lock:
            self.events.append(ev)
        cam = self.cameras.get(ev.camera)
        if ev.type == "start":
            self.metrics.event(ev.camera, ev.category)
        if cam is not None:
            cam.status.open_event = None if ev.type == "end" else ev.category
            cam.status.last_alert = ev.short() if hasattr(ev, "short") else str(ev)
        for sink in self.sinks:
            try:
                sink.submit(ev)
            except Exception as exc:  # a sink must never take the pipeline down
                log.error("sink %s: could not queue event %s: %s", getattr(sink, "name", "?"), ev.id, redact(exc))
        self.journal.observe(ev)
        if self._echo_alerts:
            self._print("ALERT " + (ev.short() if hasattr(ev, "short") else str(ev)))

    def _print(self, line: str) -> None:
        with self._print_lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (OSError, ValueError):  # closed stdout (pipe gone): status is best effort
                pass

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        met = self.cfg.metrics
        if getattr(met, "enabled", False):
            try:
                self.server = self.metrics.serve(met.host, met.port)
            except OSError as exc:
                raise DsanetError(f"metrics: cannot listen on {met.host}:{met.port} ({exc.strerror or exc}); "
                                  f"change metrics.port or set metrics.enabled: false") from None
            log.info("metrics on %s/metrics (also /healthz, /readyz)", self.server.url)
        for sink in self.sinks:
            sink.start()
        if self.evidence is not None:
            self.evidence.start()
        for ev in self.journal.recover(now=time.time()):
            log.warning("camera %s: event %s was left open by a previous run; ending it", ev.camera, ev.id)
            self._dispatch(ev)
        self.encoder.start()
        self.head.start()
        for cam in self.cameras.values():
            cam.reader.start()
        self._print(f"dsanet-stream {__version__}: watching {len(self.cameras)} camera(s); model "
                    f"{getattr(self.models.bundle, 'name', '?')} on {self.models.runtime}"
                    + (f"; metrics {self.server.url}/metrics" if self.server else ""))

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, duration: float | None = None) -> None:
        """Block until stop is requested, ``duration`` passes, or every source has ended; print status."""
        t_end = None if duration is None else time.monotonic() + duration
        next_status = time.monotonic() + self.status_interval
        while not self._stop.is_set():
            now = time.monotonic()
            if t_end is not None and now >= t_end:
                self.request_stop(f"duration of {duration:g} s reached")
                break
            if all(c.reader.finished or not c.reader.alive for c in self.cameras.values()):
                self.request_stop("every source has ended")
                break
            if self.status_interval > 0 and now >= next_status:
                self.print_status()
                next_status = now + self.status_interval
            wake = min(x for x in (next_status, t_end, now + 0.5) if x is not None)
            self._stop.wait(max(0.01, wake - now))

    def print_status(self) -> None:
        for name, cam in self.cameras.items():
            st = cam.status
            frames = cam.reader.stats.frames
            fps = (frames - st.frames_at_last_status) / self.status_interval if self.status_interval > 0 else 0.0
            st.frames_at_last_status, st.fps = frames, fps
            score = "  -  " if st.score is None else f"{st.score:.3f}"
            lag = "  -  " if st.lag is None else f"{st.lag:.2f}s"
            extra = f" EVENT {st.open_event}" if st.open_event else ""
            err = f" ({cam.reader.stats.last_error})" if cam.reader.state != CameraState.STREAMING and \
                cam.reader.stats.last_error else ""
            self._print(f"[{name}] {cam.reader.state.value:11s} score={score} lag={lag} fps={fps:4.1f} "
                        f"snippets={cam.cutter.emitted} reconnects={cam.reader.stats.reconnects}{extra}{err}")

    def run(self, duration: float | None = None, install_signals: bool = True) -> int:
        """Start, wait, shut down; returns 0 on a clean stop."""
        previous: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
                if self._stop.is_set():  # second signal: the user insists
                    raise KeyboardInterrupt
                self.request_stop(f"signal {signal.Signals(signum).name}")

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        try:
            self.start()
            self.wait(duration)
        finally:
            try:
                self.shutdown()
            finally:
                for sig, h in previous.items():
                    signal.signal(sig, h)
        return 0

    def shutdown(self) -> dict[str, float]:
        """Ordered stop (see the module docstring). Returns seconds spent per step."""
        if self._shut:
            return {}
        self._shut = True
        self.request_stop(self.stop_reason or "shutdown")
        log.info("shutting down: %s", self.stop_reason)
        t0 = time.monotonic()
        deadline = t0 + self.shutdown_timeout
        steps: dict[str, float] = {}

        def left(share: float) -> float:
            return max(0.05, min(share, deadline - time.monotonic()))

        def mark(step: str, since: float) -> float:
            now = time.monotonic()
            steps[step] = now - since
            return now

        t = time.monotonic()
        for cam in self.cameras.values():
            cam.reader.stop()
        readers_until = time.monotonic() + min(2.0, self.shutdown_timeout / 4)  # one budget for all readers
        for cam in self.cameras.values():
            if not cam.reader.join(max(0.0, readers_until - time.monotonic())):
                log.warning("camera %s: reader still blocked in a read at shutdown; leaving it", cam.name)
        t = mark("readers", t)
        if self._started:
            if not self.encoder.stop(left(3.0)):
                lost = self.encoder_queue.clear()
                for s in lost:
                    self.metrics.dropped("shutdown", s.camera)
                self.encoder.join(left(1.0))
            t = mark("encoder", t)
            now = time.monotonic()
            for cam in self.cameras.values():
                job = cam.window.flush(now)
                if job is not None:
                    self.head_queue.put(job)
            if not self.head.stop(left(1.5)):
                for j in self.head_queue.clear():
                    self.metrics.dropped("shutdown", j.camera)
                self.head.join(left(0.5))
            t = mark("head", t)
        for cam in self.cameras.values():
            ev = cam.machine.close("shutdown")
            if ev is not None:
                self._emit(ev)
        t = mark("events", t)
        if self.evidence is not None:
            # keep ~1 s of the budget for the sinks; held ends not written by then go out without evidence
            self.evidence.stop(timeout=max(0.5, deadline - time.monotonic() - 1.0))
            t = mark("evidence", t)
        n = max(1, len(self.sinks))
        for sink in self.sinks:
            try:
                sink.stop(timeout=max(0.1, (deadline - time.monotonic() - 0.5) / n))
            except Exception as exc:
                log.error("sink %s: error while stopping: %s", getattr(sink, "name", "?"), redact(exc))
        t = mark("sinks", t)
        if self.server is not None:
            self.server.close()
        steps["total"] = time.monotonic() - t0
        log.info("stopped in %.2f s (%s)", steps["total"],
                 ", ".join(f"{k} {v:.2f}s" for k, v in steps.items() if k != "total"))
        return steps


def _short_hash(bundle: Any) -> str | None:
    try:
        h = bundle.content_hash
    except Exception:  # fakes and bundles without file hashes
        return None
    return str(h)[:12] if h else None
