"""The live service: one :class:`stream.camera.CameraPipeline` per camera in a registry, the two shared
batching workers, the event path (evidence stage -> delivery -> sinks), metrics, runtime control
(``stream.control.ServiceControl``) and the ordered shutdown.

Data flow and threads (one way; docs/architecture.md has the diagram)::

    reader thread per camera --(SnippetCutter, in that thread)--> encoder queue (bounded, drop oldest)
      --> encoder worker --(camera's EmbeddingWindow)--> head queue (bounded, drop oldest)
      --> head worker --(camera's EventMachine)--> events --> evidence stage (holds ends; own thread)
      --> EventDelivery --> sinks (own spool + worker each); scores and events also go to the listener
      queue (bounded, drop oldest) and its thread

Every hand-over is non-blocking, so a stuck camera, a slow model or a dead webhook only ever costs
its own work (dropped and counted), never another camera's.

Shutdown (SIGINT/SIGTERM, ``--duration``, or every file source ended) runs in this order, each step with
a deadline so the whole takes at most ``shutdown_timeout`` (10 s), with one exception: a worker caught
inside a model call when its share runs out is waited for (up to ``IN_FLIGHT_JOIN``), because exiting
under a running ONNX Runtime call aborts the process:

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
passes the evidence stage (peak frame) before the event machine, and an ``end`` event is held by the
evidence worker until its snapshot and clip are written (at most ``post_roll`` of capture time later);
starts and updates pass straight on.

Open events are also journalled on disk (``stream.events.OpenEventJournal`` under the spool directory), so
after a crash the next start ends them with ``reason: restart_recovery``.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from engine.errors import DsanetError
from stream import __version__
from stream.calibrator import Calibrator
from stream.camera import CameraPipeline, CameraRegistry, CameraStatus
from stream.config import CameraConfig, DeploymentConfig, EventsConfig
from stream.control import Listener
from stream.delivery import EventDelivery
from stream.events import (
    REASON_CAMERA_DISABLED,
    REASON_CAMERA_REMOVED,
    REASON_SHUTDOWN,
    Event,
    EventMachine,
    OpenEventJournal,
)
from stream.feedback.swap import BundleIds, SwapError, check_compatible, run_niced, try_models
from stream.gate import StillGate
from stream.listeners import ListenerHub
from stream.metrics import Metrics, MetricsServer
from stream.models import Models
from stream.reader import CameraReader, make_reader_settings
from stream.redact import redact
from stream.scoring import DropOldestQueue, EncoderWorker, HeadWorker
from stream.sinks.base import Sink
from stream.snippets import SnippetCutter, SnippetSpec
from stream.stride import StrideController
from stream.types import CameraSnapshot, ScoreRecord, Snippet, SnippetEmbedding, WindowJob, WindowScore
from stream.window import EmbeddingWindow

if TYPE_CHECKING:
    from engine.categories import CategoryEdit, CategorySet
    from stream.evidence import EvidenceManager
    from stream.feedback.recorder import FeedbackRecorder

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0
IN_FLIGHT_JOIN = 30.0  # seconds: one model call on a loaded CPU, the most a stopping worker is waited for
STATUS_INTERVAL = 5.0
REMOVE_JOIN_TIMEOUT = 2.0  # a removed camera's reader gets this long to leave a blocking read

__all__ = ["CameraStatus", "Models", "Service"]


class Service:
    """One running deployment; implements ``stream.control.ServiceControl``. ``run()`` blocks until
    stopped and returns the exit code."""

    def __init__(self, cfg: DeploymentConfig, models: Models | None = None, metrics: Metrics | None = None,
                 out: TextIO | None = None, status_interval: float = STATUS_INTERVAL,
                 shutdown_timeout: float = SHUTDOWN_TIMEOUT, sinks: Sequence[Sink] | None = None):
        self.cfg = cfg
        self.out = out if out is not None else sys.stdout
        self.status_interval = status_interval
        self.shutdown_timeout = shutdown_timeout
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._print_lock = threading.Lock()
        self._control = threading.RLock()  # one control call at a time (add/remove/enable)
        self._started = False
        self._shut = False
        self.server: MetricsServer | None = None

        if not cfg.enabled_cameras:
            raise DsanetError("no enabled camera in the config: enable at least one under 'cameras'")
        self.models = models or Models.load(cfg.model)
        self.metrics.set_model_loaded(True)
        b = self.models.bundle
        self.spec = SnippetSpec.from_bundle(b)
        self.max_window = int(b.max_window)
        self.metrics.build_info(__version__, str(b.name), self.models.runtime)
        self.bundle_ids = BundleIds.of(b)
        # bundle hot-swap (swap_bundle): which Models embedded / scored the batch in hand (encoder / head
        # thread only), cameras whose windows restart after an encoder change, and the swap's lock
        self._swap_lock = threading.Lock()
        self._embedded_by: Models = self.models
        self._scored_by: Models = self.models
        self._stale_before: dict[str, float] = {}
        self._encoder_of: dict[str, str | None] = {}
        self._last_frame: dict[str, int] = {}
        self.swaps = 0
        self._categories_edit: CategoryEdit | None = None  # the last set_categories edit, kept across swaps

        m = cfg.model
        self.encoder_queue: DropOldestQueue[Snippet] = DropOldestQueue(
            m.queue_size, on_drop=lambda s: self.metrics.dropped("encoder", s.camera), name="encoder")
        self.head_queue: DropOldestQueue[WindowJob] = DropOldestQueue(
            m.queue_size, on_drop=lambda j: self.metrics.dropped("head", j.camera), name="head")
        self.encoder = EncoderWorker(self.encoder_queue, self._embed, self._preprocess_batch,
                                     self._on_embeddings, max_batch=max(1, min(m.encoder_batch,
                                                                               self.models.encoder_max_batch)),
                                     max_wait=m.encoder_max_wait, metrics=self.metrics, gate_for=self._gate_for)
        self.head = HeadWorker(self.head_queue, self._score, self._on_scores,
                               max_batch=max(1, min(m.head_batch, self.models.head_max_batch)),
                               max_wait=m.head_max_wait, metrics=self.metrics)
        self.model_info = {"name": b.name, "hash": _short_hash(b)}
        self.calibrator = Calibrator(self.spec.seconds, self.set_thresholds, self.model_info["hash"])
        self._calibration_listening = False

        # the event path, built from its end: sinks <- delivery <- evidence stage <- camera machines
        spool_dir = Path(cfg.spool.directory)
        self.journal = OpenEventJournal(spool_dir / "open-events")
        if sinks is None:
            from stream.sinks import create_sink

            sinks = [create_sink(s, spool_dir, self.metrics) for s in cfg.sinks]
        self.sinks = list(sinks)
        self.cameras = CameraRegistry()
        self.listeners = ListenerHub(self.metrics)
        echo = None if any(s.type_name == "stdout" for s in self.sinks) else self._print
        self.delivery = EventDelivery(self.sinks, self.journal, self.metrics, self.cameras, self.listeners, echo)
        self.evidence: EvidenceManager | None = None
        self._emit: Callable[[Event], None] = self.delivery.submit
        if cfg.evidence.enabled:
            from stream.evidence import EvidenceManager

            ev_mgr = EvidenceManager(cfg.evidence, self.delivery.submit, self.metrics)
            self.evidence = ev_mgr
            self._emit = ev_mgr.submit
            self.metrics.add_liveness("evidence", lambda: ev_mgr.heartbeat if ev_mgr._thread is not None
                                      and ev_mgr._thread.is_alive() else time.monotonic())

        self.feedback: FeedbackRecorder | None = None
        if cfg.feedback.enabled:
            from stream.feedback.control import FeedbackCommandSink, command_handler

            self.feedback = self._make_feedback()
            for sink in self.sinks:
                if isinstance(sink, FeedbackCommandSink):  # the MQTT sink's <prefix>/feedback/set
                    sink.set_feedback_handler(command_handler(self))
        for cam in cfg.cameras:
            self.cameras.add(self._build(cam, cfg.events_for(cam), enabled=cam.enabled))
        self.metrics.add_liveness("encoder", lambda: self.encoder.heartbeat)
        self.metrics.add_liveness("head", lambda: self.head.heartbeat)

    @property
    def events(self) -> deque[Event]:
        """The most recent events of this run (bounded: ``stream.delivery.RECENT_EVENTS``)."""
        return self.delivery.recent

    # ------------------------------------------------------------------------------------- wiring
    def _build(self, cam: CameraConfig, ecfg: EventsConfig, enabled: bool) -> CameraPipeline:
        """One camera's pipeline; its metrics and liveness are registered only when it is enabled."""
        for d in (self._stale_before, self._encoder_of, self._last_frame):  # its snippet indices restart
            d.pop(cam.name, None)
        wcfg = self.cfg.window_for(cam)
        if wcfg.length > self.max_window:
            raise DsanetError(f"camera {cam.name!r}: window.length {wcfg.length} is longer than the bundle's "
                              f"max_window {self.max_window}")
        scfg, gcfg = self.cfg.scoring_for(cam), self.cfg.still_gate_for(cam)
        if wcfg.lookahead + scfg.adaptive_stride > wcfg.length:
            raise DsanetError(f"camera {cam.name!r}: scoring.adaptive_stride {scfg.adaptive_stride} plus lookahead "
                              f"{wcfg.lookahead} is more than window.length {wcfg.length}")
        if enabled:
            ecfg = self._calibrated(cam, ecfg)
        window = EmbeddingWindow(wcfg.length, wcfg.lookahead, camera=cam.name, max_window=self.max_window,
                                 max_stride=scfg.adaptive_stride)
        cutter = SnippetCutter(cam.name, self.spec, self._snippet_emitter(cam.name), prepare=self._prepare)
        ring = None
        if self.evidence is not None and enabled:
            ring = self.evidence.add_camera(cam.name, ecfg.on_threshold,
                                            ring_seconds=self._ring_seconds(ecfg, wcfg.lookahead))
        reader = CameraReader(make_reader_settings(cam, self.cfg.ingest), cutter, self.metrics, packets=ring)
        keys, names = self.models.current_classes()
        machine = EventMachine(cam.name, ecfg, list(keys), list(names), model_info=self.model_info)
        machine.bundle = self.bundle_ids.short
        pipeline = CameraPipeline(cam, ecfg, reader, cutter, window, machine, stride=StrideController(scfg),
                                  gate=StillGate(gcfg) if gcfg.enabled else None)
        pipeline.enabled = enabled
        if enabled:
            self.metrics.register_camera(cam.name)
            self.metrics.thresholds(cam.name, ecfg.on_threshold, ecfg.off_threshold)
            # a reader whose thread has ended (file finished) is not stuck: it counts as live
            def progress(r: CameraReader = reader) -> float:
                return r.heartbeat if r.alive else time.monotonic()

            self.metrics.add_liveness(f"reader:{cam.name}", progress)
        return pipeline

    def _calibrated(self, cam: CameraConfig, ecfg: EventsConfig) -> EventsConfig:
        """Track the camera's calibration (stream.calibrator); its learned thresholds when it has a file."""
        out = self.calibrator.track(cam.name, self.cfg.calibration_for(cam), ecfg)
        if self.calibrator.active and not self._calibration_listening:
            self._calibration_listening = True  # scores reach the calibrator off the head thread
            self.listeners.add(self.calibrator.on_record)
        return out

    def _gate_for(self, camera: str) -> StillGate | None:
        """Encoder worker: the camera's still-scene gate, if it has one."""
        cam = self.cameras.get(camera)
        return cam.gate if cam is not None else None

    def _ring_seconds(self, ecfg: EventsConfig, lookahead: int) -> float:
        """Seconds of packets a camera keeps: the pre-roll plus how late a start event can be known
        (``min_duration``, the window's lookahead, a few seconds of queueing)."""
        return self.cfg.evidence.pre_roll + ecfg.min_duration + (lookahead + 2) * self.spec.seconds + 5.0

    def _make_feedback(self) -> FeedbackRecorder:
        from stream.feedback.labels import raw_labels
        from stream.feedback.recorder import FeedbackRecorder
        from stream.feedback.store import SiteData

        fcfg = self.cfg.feedback

        def labels() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
            bundle = self.models.bundle
            keys = tuple(bundle.class_names)
            source = getattr(bundle, "source", None)
            return keys, tuple(bundle.display_names or keys), raw_labels(keys, getattr(source, "preset", None))

        store = SiteData(fcfg.directory, max_bytes=fcfg.max_bytes, pending_events=fcfg.pending_events,
                         normal_per_camera=fcfg.normal_samples_per_camera, snippet_frames=self.spec.frames,
                         snippet_fps=self.spec.fps, snippet_seconds=self.spec.seconds, labels=labels)
        return FeedbackRecorder(fcfg, store, self.spec.seconds, lambda: self.bundle_ids.head,
                                on_drop=lambda cam: self.metrics.dropped("feedback", cam))

    # ------------------------------------------------------------------------------ model calls
    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        """Encoder thread: embed with the models in effect now, remembering which (a swap may come)."""
        m = self.models
        self._embedded_by = m
        return m.encoder.embed(pixels)

    def _preprocess_batch(self, images: list[np.ndarray]) -> np.ndarray:
        return self.models.preprocess(images)

    def _score(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head thread: score with the models in effect now; ``_on_scores`` reads which it was."""
        m = self.models
        self._scored_by = m
        return m.score(features, lengths)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """One frame -> encoder input [3,S,S]; runs in the camera's reader thread."""
        return np.asarray(self.models.preprocess([image]))[0]  # float32, or uint8 crops for a Triton encoder

    def _snippet_emitter(self, camera: str) -> Callable[[Snippet], None]:
        def emit(s: Snippet) -> None:
            self.metrics.snippet(camera)
            self.encoder_queue.put(s)

        return emit

    def _on_embeddings(self, embeddings: list[SnippetEmbedding]) -> None:
        """Encoder worker: each embedding into its camera's window; full windows to the head queue.

        After a swap to a bundle with another encoder, a batch the old encoder embedded is dropped, and
        each camera's window restarts empty with its first embedding from the new one."""
        now = time.monotonic()
        with self._swap_lock:
            by = self._embedded_by
            current = BundleIds.of(by.bundle).encoder
            if by is not self.models and current != self.bundle_ids.encoder:
                for e in embeddings:
                    self.metrics.dropped("swap", e.camera)
                return
            for e in embeddings:
                cam = self.cameras.get(e.camera)
                if cam is None or not cam.enabled:
                    continue  # removed or disabled while its snippets were queued
                if self._encoder_of.setdefault(e.camera, current) != current:
                    last = self._last_frame.get(e.camera)
                    if e.frame is not None and last is not None and e.frame.index == last:
                        self.metrics.dropped("swap", e.camera)  # the old encoder's vector, reused for a filled snippet
                        continue
                    self._reset_window(cam)
                    self._encoder_of[e.camera] = current
                    self._stale_before[e.camera] = e.index
                if e.frame is not None:
                    self._last_frame[e.camera] = e.frame.index
                if self.feedback is not None:
                    self.feedback.on_embedding(e)
                job = cam.push_embedding(e, now)
                if job is not None:
                    self.head_queue.put(job)

    def _reset_window(self, cam: CameraPipeline) -> None:
        """Encoder thread: the camera's window restarts empty (its rows came from another encoder)."""
        w = cam.window
        cam.window = EmbeddingWindow(w.length, w.lookahead, camera=cam.name, max_window=self.max_window,
                                     max_stride=w.max_stride)
        if cam.gate is not None:
            cam.gate.reset()  # its last embedding came from the old encoder
        log.info("camera %s: window restarted after the encoder changed", cam.name)

    def _on_scores(self, scores: Sequence[WindowScore]) -> None:
        """Head worker: metrics, score feeds, evidence (peak frame), the camera's machine, then events."""
        now = time.time()
        models = self._scored_by
        keys, names = models.scored_classes()
        bundle_id = self.bundle_ids.short if models is self.models else BundleIds.of(models.bundle).short
        for ws in scores:
            cam = self.cameras.get(ws.camera)
            if cam is None or not cam.enabled:
                continue
            if ws.newest_index < self._stale_before.get(ws.camera, -1):
                self.metrics.dropped("swap", ws.camera)  # a window of the old encoder's rows
                continue
            if cam.machine.class_names != list(keys):  # categories changed: between two batches
                with cam.lock:
                    cam.machine.set_classes(keys, names)
            if cam.machine.bundle != bundle_id:  # a bundle swap: events say which bundle scored them
                with cam.lock:
                    cam.machine.bundle = bundle_id
                    cam.machine.model_info = {**cam.machine.model_info, "name": models.bundle.name,
                                              "hash": _short_hash(models.bundle)}
            lag = now - ws.newest_end_time
            self.metrics.scored(ws.camera, ws.score, lag)
            category, category_score = models.category(ws.class_probs)
            for sink in self.sinks:
                try:
                    sink.publish_score(ws.camera, ws.score, category, ws.end_time)
                except Exception as exc:  # best effort by contract; never let a sink break scoring
                    log.debug("sink %s: publish_score failed: %s", sink.name, redact(exc))
            if self.listeners.active:
                self.listeners.publish(ScoreRecord(ws.camera, ws.index, ws.start_time, ws.end_time, ws.score,
                                                   category, category_score))
            if self.evidence is not None:
                self.evidence.observe(ws)  # before the machine: the score that starts an event may be its peak
            try:
                events = cam.push_score(ws)
            except DsanetError as exc:
                log.error("camera %s: event machine rejected a score: %s", ws.camera, exc)
                events = []
            for ev in events:
                self._emit(ev)
            if self.feedback is not None:
                self.feedback.on_score(ws.camera, ws.index, ws.score, cam.events.off_threshold,
                                       cam.machine.open_event_id is not None)
                if events:
                    self.feedback.on_events(events)
            cam.note_score(ws, category, lag)

    def _print(self, line: str) -> None:
        with self._print_lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (OSError, ValueError):  # closed stdout (pipe gone): status is best effort
                pass

    # ------------------------------------------------------------------------------ runtime control
    def camera_snapshots(self) -> list[CameraSnapshot]:
        now = time.monotonic()
        return [cam.snapshot(now) for cam in self.cameras.values()]

    def add_camera(self, camera: CameraConfig) -> None:
        with self._control:
            if self._shut:
                raise RuntimeError("the service is shutting down")
            if camera.name in self.cameras or any(n.lower() == camera.name.lower() for n in self.cameras):
                raise ValueError(f"camera {camera.name!r}: a camera of that name is already watched")
            ecfg = self.cfg.events_for(camera)
            pipeline = self._build(camera, ecfg, enabled=camera.enabled)
            self.cameras.add(pipeline)
            if self._started and pipeline.enabled:
                pipeline.reader.start()
            log.info("camera %s: added", camera.name)

    def remove_camera(self, name: str) -> None:
        with self._control:
            cam = self.cameras.pop(name)
            self._stop_camera(cam, REASON_CAMERA_REMOVED)
            self.calibrator.forget(name)
            if self.evidence is not None:
                self.evidence.remove_camera(name)
            log.info("camera %s: removed", name)

    def set_camera_enabled(self, name: str, enabled: bool) -> None:
        with self._control:
            cam = self.cameras.get_camera(name)
            if cam.enabled == enabled:
                return
            if not enabled:
                self._stop_camera(cam, REASON_CAMERA_DISABLED)
                cam.enabled = False
                log.info("camera %s: disabled", name)
                return
            fresh = self._build(cam.cfg, cam.events, enabled=True)  # a reader thread cannot restart
            self.cameras.replace(fresh)
            if self._started:
                fresh.reader.start()
            log.info("camera %s: enabled", name)

    def set_thresholds(self, name: str, on_threshold: float | None, off_threshold: float | None) -> None:
        cam = self.cameras.get_camera(name)
        new = cam.set_thresholds(on_threshold, off_threshold)
        self.metrics.thresholds(name, new.on_threshold, new.off_threshold)
        if self.evidence is not None:
            self.evidence.set_threshold(name, new.on_threshold)

    def set_categories(self, edit: CategoryEdit) -> CategorySet:
        """Change the class list at runtime (add/rename/drop in words) without restarting cameras.

        The edit applies to the bundle's own list (as ``model.categories`` does at start), not to the
        previous edit. The head thread scores its next batch against the new class features and moves
        every camera's event machine to the new list before feeding it (``EventMachine.set_classes``).
        Raises ``CategoryError`` naming the problem; the running list is then unchanged.
        """
        cats = self.models.set_categories(edit)
        self._categories_edit = edit
        log.info("categories now: %s", ", ".join(cats.names))
        return cats

    # --------------------------------------------------------------------- feedback and bundle swap
    def mark_event(self, event_id: str, kind: str, category: str | None = None) -> dict[str, Any]:
        """Store an operator's mark of an event (``stream.feedback.FeedbackControl``; last mark wins)."""
        from stream.feedback import FeedbackError

        if self.feedback is None:
            raise FeedbackError("feedback is off in this deployment (feedback.enabled: false)", status=409)
        res = self.feedback.store.mark(event_id, kind, category)
        if res.state == "waiting":  # keep its rows so far on disk: the mark then survives a crash
            self.feedback.capture_open(event_id)
        log.info("feedback: event %s marked %s (%s)%s%s", event_id, kind, res.label,
                 "; replaces the earlier mark " + str(res.replaced) if res.replaced else "",
                 "; applied when the event ends" if res.state == "waiting" else "")
        return res.to_dict()

    def feedback_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.feedback is not None, "bundle": self.bundle_ids.to_dict(),
                               "swaps": self.swaps}
        fb = self.feedback
        if fb is not None:
            out.update(fb.store.stats())
            out.update(captured=fb.captured, lost=fb.lost, normal_samples_taken=fb.samples,
                       queue_dropped=fb.queue.dropped)
        return out

    def _load_and_try(self, mcfg: Any, windows: list[tuple[str, int]]) -> Models:
        try:
            new = Models.load(mcfg)
            if self._categories_edit is not None:
                new.set_categories(self._categories_edit)
        except DsanetError as exc:
            raise SwapError(f"bundle {mcfg.bundle}: {exc}") from None
        except Exception as exc:  # a runtime's own error types: the bundle is refused all the same
            raise SwapError(f"bundle {mcfg.bundle}: cannot load it ({type(exc).__name__}: {redact(exc)})") from None
        check_compatible(self.models.bundle, new.bundle, windows)
        try_models(new, max((n for _, n in windows), default=1))
        return new

    def swap_bundle(self, path: str) -> dict[str, Any]:
        """Switch every camera to another bundle without restarting them (docs/feedback.md).

        The new bundle is loaded with the running model settings, warmed up and tried (``stream.feedback.
        swap``) while the old one keeps scoring; then one assignment switches both workers at their next
        batch. With another encoder, every window restarts empty (rows of two encoders never mix) and the
        old encoder's batches and windows still in flight are dropped (``dsanet_dropped_total{stage="swap"}``).
        Raises ``SwapError`` naming the problem; the running bundle is then unchanged.
        """
        with self._control:
            if self._shut:
                raise SwapError("the service is shutting down")
            t0 = time.monotonic()
            mcfg = self.cfg.model.model_copy(update={"bundle": str(path)})
            windows = [(c.name, c.window.length) for c in self.cameras.values()]
            new = run_niced(lambda: self._load_and_try(mcfg, windows))
            ids, old = BundleIds.of(new.bundle), self.bundle_ids
            same_encoder = ids.encoder is not None and ids.encoder == old.encoder
            with self._swap_lock:
                self.models = new
                self.bundle_ids = ids
                self.cfg = self.cfg.model_copy(update={"model": mcfg})
                self.model_info.update(name=new.bundle.name, hash=_short_hash(new.bundle))
                self.metrics.build_info(__version__, str(new.bundle.name), new.runtime)
                self.swaps += 1
                if not same_encoder:
                    for name in self.cameras:
                        self._stale_before[name] = math.inf  # until its first row from the new encoder
                    if self.feedback is not None:
                        self.feedback.reset()
            # thresholds calibrated on the old bundle's scores do not hold for the new one's (stream.calibrator)
            recalibrating = self.calibrator.rebase(self.model_info["hash"])
            took = time.monotonic() - t0
            log.info("bundle: now %s (head %s) after %.2f s of loading and trying it%s", ids.name, ids.short,
                     took, "" if same_encoder else "; the encoder differs, so every camera's window restarts")
            return {"bundle": ids.to_dict(), "previous": old.to_dict(), "encoder_changed": not same_encoder,
                    "windows_reset": not same_encoder, "load_seconds": round(took, 3),
                    "recalibrating": recalibrating}

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        return self.listeners.add(listener)

    def _stop_camera(self, cam: CameraPipeline, reason: str) -> None:
        """Stop the reader, end the open event with ``reason`` and take the camera off the health checks."""
        cam.reader.stop()
        if not cam.reader.join(REMOVE_JOIN_TIMEOUT):
            log.warning("camera %s: reader still blocked in a read; leaving it", cam.name)
        self.metrics.remove_liveness(f"reader:{cam.name}")
        ev = cam.close(reason)
        if ev is not None:
            self._emit(ev)
        if self.feedback is not None:
            if ev is not None:
                self.feedback.on_events([ev])
            self.feedback.forget_camera(cam.name)

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        met = self.cfg.metrics
        if met.enabled:
            try:
                self.server = self.metrics.serve(met.host, met.port)
            except OSError as exc:
                raise DsanetError(f"metrics: cannot listen on {met.host}:{met.port} ({exc.strerror or exc}); "
                                  f"change metrics.port or set metrics.enabled: false") from None
            log.info("metrics on %s/metrics (also /healthz, /readyz)", self.server.url)
        for sink in self.sinks:
            sink.start()
        self.delivery.start()
        if self.evidence is not None:
            self.evidence.start()
        for ev in self.journal.recover(now=time.time()):
            log.warning("camera %s: event %s was left open by a previous run; ending it", ev.camera, ev.id)
            self.delivery.submit(ev)
        if self.feedback is not None:
            self.feedback.start()
        self.encoder.start()
        self.head.start()
        self.calibrator.start()
        with self._control:
            cams = [c for c in self.cameras.values() if c.enabled]
            for cam in cams:
                cam.reader.start()
        self._print(f"dsanet-stream {__version__}: watching {len(cams)} camera(s); model "
                    f"{self.models.bundle.name} on {self.models.runtime}"
                    + (f"; metrics {self.server.url}/metrics" if self.server else ""))

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _all_sources_ended(self) -> bool:
        live = [c for c in self.cameras.values() if c.enabled]
        return bool(live) and all(c.reader.finished or not c.reader.alive for c in live)

    def wait(self, duration: float | None = None) -> None:
        """Block until stop is requested, ``duration`` passes, or every source has ended; print status."""
        t_end = None if duration is None else time.monotonic() + duration
        next_status = time.monotonic() + self.status_interval
        while not self._stop.is_set():
            now = time.monotonic()
            if t_end is not None and now >= t_end:
                self.request_stop(f"duration of {duration:g} s reached")
                break
            if self._all_sources_ended():
                self.request_stop("every source has ended")
                break
            if self.status_interval > 0 and now >= next_status:
                self.print_status()
                next_status = now + self.status_interval
            wake = min(x for x in (next_status, t_end, now + 0.5) if x is not None)
            self._stop.wait(max(0.01, wake - now))

    def print_status(self) -> None:
        for cam in self.cameras.values():
            self._print(cam.status_line(self.status_interval))

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
                for signum, h in previous.items():
                    signal.signal(signum, h)
        return 0

    @staticmethod
    def _join_in_flight(worker: threading.Thread) -> None:
        """Wait for the model call a worker is inside of, past the budget if need be.

        Its queue is closed and emptied, so the worker ends after this one batch. Leaving it running
        would let the interpreter exit while a daemon thread is inside ONNX Runtime, which aborts the
        process (seen under heavy load: exit -6, "terminate called without an active exception").
        """
        worker.join(IN_FLIGHT_JOIN)
        if worker.is_alive():
            log.warning("%s: still inside a model call %.0f s after shutdown asked it to stop",
                        worker.name, IN_FLIGHT_JOIN)

    def shutdown(self) -> dict[str, float]:
        """Ordered stop (see the module docstring). Returns seconds spent per step."""
        with self._control:
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
        cams = self.cameras.values()
        for cam in cams:
            cam.reader.stop()
        readers_until = time.monotonic() + min(2.0, self.shutdown_timeout / 4)  # one budget for all readers
        for cam in cams:
            if not cam.reader.join(max(0.0, readers_until - time.monotonic())):
                log.warning("camera %s: reader still blocked in a read at shutdown; leaving it", cam.name)
        t = mark("readers", t)
        if self._started:
            # the encoder drains what is queued within its share; what is left is dropped and counted
            if not self.encoder.stop(left(max(3.0, deadline - time.monotonic() - 5.0))):
                lost = self.encoder_queue.clear()
                for s in lost:
                    self.metrics.dropped("shutdown", s.camera)
                self._join_in_flight(self.encoder)
            t = mark("encoder", t)
            now = time.monotonic()
            for cam in cams:
                if cam.enabled:
                    job = cam.window.flush(now)
                    if job is not None:
                        self.head_queue.put(job)
            if not self.head.stop(left(max(1.5, deadline - time.monotonic() - 3.0))):
                for j in self.head_queue.clear():
                    self.metrics.dropped("shutdown", j.camera)
                self._join_in_flight(self.head)
            t = mark("head", t)
        for cam in cams:
            ev = cam.close(REASON_SHUTDOWN)
            if ev is not None:
                self._emit(ev)
                if self.feedback is not None:
                    self.feedback.on_events([ev])
        t = mark("events", t)
        if self.feedback is not None:
            self.feedback.stop(timeout=left(1.0))  # waiting captures are cut from what the rings hold
            t = mark("feedback", t)
        if self.evidence is not None:
            # keep ~1 s of the budget for the sinks; held ends not written by then go out without evidence
            self.evidence.stop(timeout=max(0.5, deadline - time.monotonic() - 1.0))
            t = mark("evidence", t)
        self.calibrator.stop(timeout=0.1)
        self.listeners.stop(timeout=left(0.5))
        self.delivery.stop(timeout=max(0.5, deadline - time.monotonic() - 1.0))  # queued events reach the spools
        t = mark("event_writer", t)
        n = max(1, len(self.sinks))
        for sink in self.sinks:
            try:
                sink.stop(timeout=max(0.1, (deadline - time.monotonic() - 0.5) / n))
            except Exception as exc:
                log.error("sink %s: error while stopping: %s", sink.name, redact(exc))
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
