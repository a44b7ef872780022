"""What the live service keeps for feedback: a bounded embedding ring per camera, the capture of each
ended event (its rows plus ``context_snippets`` before and after), and calm-window samples, all written
by one thread of their own (``feedback-writer``) so the encoder and head threads never touch the disk.

Threads: the encoder worker calls :meth:`FeedbackRecorder.on_embedding` (a ring append under the ring's
lock); the head worker calls :meth:`FeedbackRecorder.on_score` and :meth:`FeedbackRecorder.on_events`
(bookkeeping, and a capture request put on a bounded queue: when full the oldest request is dropped and
counted as ``dsanet_dropped_total{stage="feedback"}``). The writer waits until a request's after-context
has arrived (or the camera stopped, or ``context_snippets`` snippet durations plus a margin passed), cuts
the rows from the ring and hands them to :class:`stream.feedback.store.SiteData`.

A mark given while its event is still open (:meth:`FeedbackRecorder.capture_open`) also asks for a
*partial* capture at once: the event's rows so far with their before-context, kept on disk next to the
waiting mark, so the mark survives a crash before the event ends (it is then applied at the next start
from those rows, ``truncated: true``, ``partial: true``); the end's capture replaces it as usual.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream.config import FeedbackConfig
from stream.events import Event
from stream.feedback.store import Capture, SiteData
from stream.redact import redact
from stream.scoring import DropOldestQueue
from stream.types import SnippetEmbedding

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between the writer's looks at waiting captures and calm runs


@dataclass(frozen=True)
class Row:
    index: int
    start: float
    end: float
    vec: np.ndarray


class EmbeddingRing:
    """The last ``size`` snippet embeddings of one camera (written by the encoder thread)."""

    def __init__(self, size: int) -> None:
        self.rows: deque[Row] = deque(maxlen=size)
        self.lock = threading.Lock()
        self.closed = False
        self.touched = time.monotonic()

    def push(self, e: SnippetEmbedding) -> None:
        with self.lock:
            self.rows.append(Row(e.index, e.start_time, e.end_time, e.embedding))
            self.touched = time.monotonic()

    def snapshot(self) -> list[Row]:
        with self.lock:
            return list(self.rows)


@dataclass(frozen=True)
class CaptureRequest:
    event_id: str
    camera: str
    start: float
    end: float
    predicted: str
    bundle: str | None
    asked: float  # monotonic
    partial: bool = False  # the rows so far of an event still open (a mark waits for it)


@dataclass
class Calm:
    """A camera's current run of calm scores (all below off_threshold, no event open)."""

    run_start: int | None = None
    last_index: int = -1
    last_sample: float = 0.0  # monotonic


class FeedbackRecorder:
    def __init__(self, cfg: FeedbackConfig, store: SiteData, snippet_seconds: float,
                 bundle_id: Callable[[], str | None], on_drop: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.snippet_seconds = float(snippet_seconds)
        self._bundle_id = bundle_id
        self._rings: dict[str, EmbeddingRing] = {}
        self._rings_lock = threading.Lock()
        self._calm: dict[str, Calm] = {}
        self._calm_lock = threading.Lock()
        self.queue: DropOldestQueue[CaptureRequest] = DropOldestQueue(
            cfg.queue_size, on_drop=self._dropped, name="feedback")
        self._on_drop = on_drop
        self._waiting: list[CaptureRequest] = []
        self._open: dict[str, tuple[str, float, str]] = {}  # open event id -> camera, start, category key
        self._open_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.captured = 0
        self.lost = 0
        self.samples = 0
        self.heartbeat = time.monotonic()
        self._started = time.monotonic()

    def _dropped(self, req: CaptureRequest) -> None:
        if req.partial:  # only the crash insurance of a waiting mark is lost; the end's capture still comes
            log.warning("camera %s: event %s: the capture of its rows so far was dropped (queue full)",
                        req.camera, req.event_id)
        else:
            self.store.forget_open(req.event_id)
        if self._on_drop is not None:
            self._on_drop(req.camera)

    # -------------------------------------------------------------------------- pipeline hooks
    def ring(self, camera: str) -> EmbeddingRing:
        with self._rings_lock:
            r = self._rings.get(camera)
            if r is None or r.closed:
                r = self._rings[camera] = EmbeddingRing(self.cfg.ring_snippets)
            return r

    def on_embedding(self, e: SnippetEmbedding) -> None:
        """Encoder thread: one row into the camera's ring."""
        self.ring(e.camera).push(e)

    def reset(self) -> None:
        """The encoder changed (bundle swap): rows of the old encoder must not mix with new ones."""
        with self._rings_lock:
            for r in self._rings.values():
                with r.lock:
                    r.rows.clear()
        with self._calm_lock:
            for c in self._calm.values():
                c.run_start = None

    def forget_camera(self, camera: str) -> None:
        """The camera stopped: waiting captures of it are cut from what its ring holds now."""
        with self._rings_lock:
            r = self._rings.get(camera)
            if r is not None:
                r.closed = True
        with self._calm_lock:
            self._calm.pop(camera, None)

    def on_score(self, camera: str, index: int, score: float, off_threshold: float, event_open: bool) -> None:
        """Head thread: the calm-run bookkeeping behind the normal samples."""
        with self._calm_lock:
            c = self._calm.get(camera)
            if c is None:
                c = self._calm[camera] = Calm(last_sample=time.monotonic())
            if event_open or score >= off_threshold:
                c.run_start = None
            elif c.run_start is None or index != c.last_index + 1:  # a gap (dropped snippets) starts a new run
                c.run_start = index
            c.last_index = index

    def on_events(self, events: Sequence[Event]) -> None:
        """Head thread: note open events; an end asks the writer for its capture."""
        for ev in events:
            if ev.type != "end":
                self.store.note_open(ev.id, ev.camera, ev.category_key)
                with self._open_lock:
                    self._open[ev.id] = (ev.camera, ev.start_time, ev.category_key)
                continue
            with self._open_lock:
                self._open.pop(ev.id, None)
            self.store.note_open(ev.id, ev.camera, ev.category_key)
            self.queue.put(CaptureRequest(ev.id, ev.camera, ev.start_time, ev.end_time or ev.updated_time,
                                          ev.category_key, self._bundle_id(), time.monotonic()))

    def capture_open(self, event_id: str) -> bool:
        """A mark waits for this open event: ask the writer for its rows so far (see the module docstring).
        Returns whether the event is open here (False: it has ended, its capture is on the way)."""
        with self._open_lock:
            known = self._open.get(event_id)
        if known is None:
            return False
        camera, start, category = known
        self.queue.put(CaptureRequest(event_id, camera, start, math.inf, category, self._bundle_id(),
                                      time.monotonic(), partial=True))
        return True

    # -------------------------------------------------------------------------- writer thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Cut every waiting capture from what the rings hold now, then end the thread."""
        self._stop.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("feedback: the writer is still busy %.1f s after shutdown asked it to stop", timeout)
        else:
            self._drain(final=True)

    def _run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            stopping = self._stop.is_set()
            try:
                self._waiting.extend(self.queue.get_batch(64, 0.0, timeout=TICK))
                self._drain(final=stopping)
                if not stopping:
                    self._sample_calm()
            except Exception as exc:  # never let a disk problem end the thread
                log.error("feedback: writer error: %s", redact(exc))
                time.sleep(TICK)
            if stopping and not self._waiting and not len(self.queue):
                return

    def _drain(self, final: bool) -> None:
        self._waiting.extend(self.queue.clear() if final else [])
        still: list[CaptureRequest] = []
        grace = (self.cfg.context_snippets + 4) * self.snippet_seconds + 10.0
        for req in self._waiting:
            ring = self.ring_if_any(req.camera)
            rows = ring.snapshot() if ring is not None else []
            after = sum(1 for r in rows if r.start >= req.end - 1e-6)
            done = (req.partial or final or after >= self.cfg.context_snippets or ring is None or ring.closed
                    or time.monotonic() - req.asked > grace)
            if not done:
                still.append(req)
                continue
            self._capture(req, rows)
        self._waiting = still

    def ring_if_any(self, camera: str) -> EmbeddingRing | None:
        with self._rings_lock:
            return self._rings.get(camera)

    def _capture(self, req: CaptureRequest, rows: list[Row]) -> None:
        inside = [i for i, r in enumerate(rows) if r.end > req.start + 1e-6 and r.start < req.end - 1e-6]
        if not inside and req.partial:
            return  # nothing of it in memory yet (or any more): the end's capture decides
        if not inside:
            self.lost += 1
            self.store.forget_open(req.event_id)
            log.warning("camera %s: event %s: its embeddings are no longer in memory (feedback.ring_snippets "
                        "%d); it cannot be marked", req.camera, req.event_id, self.cfg.ring_snippets)
            return
        c = self.cfg.context_snippets
        lo, hi = max(0, inside[0] - c), min(len(rows), inside[-1] + 1 + c)
        part = rows[lo:hi]
        feats = np.stack([r.vec for r in part]).astype(np.float32, copy=False)
        truncated = inside[0] == 0 and rows[0].start > req.start + self.snippet_seconds
        cap = Capture(req.event_id, req.camera, feats, part[0].start, part[-1].end, req.bundle, req.predicted,
                      (inside[0] - lo, inside[-1] - lo), truncated, partial=req.partial)
        state = self.store.add_capture(cap)
        if req.partial:
            log.debug("camera %s: open event %s: %d rows kept for its waiting mark (%s)", req.camera, req.event_id,
                      len(part), state)
            return
        self.captured += 1
        log.debug("camera %s: event %s captured (%d rows, %s)", req.camera, req.event_id, len(part), state)

    def _sample_calm(self) -> None:
        interval = self.cfg.normal_sample_interval
        n = self.cfg.normal_sample_snippets
        if interval <= 0 or self.cfg.normal_samples_per_camera <= 0:
            return
        now = time.monotonic()
        due: list[tuple[str, int, int]] = []
        with self._calm_lock:
            for cam, c in self._calm.items():
                if c.run_start is None or now - c.last_sample < interval or c.last_index - c.run_start + 1 < n:
                    continue
                due.append((cam, c.last_index - n + 1, c.last_index))
                c.last_sample = now
        for cam, lo, hi in due:
            ring = self.ring_if_any(cam)
            if ring is None:
                continue
            part = [r for r in ring.snapshot() if lo <= r.index <= hi]
            if len(part) < n:  # the ring was reset (bundle swap) or rows were dropped upstream
                continue
            feats = np.stack([r.vec for r in part]).astype(np.float32, copy=False)
            if self.store.add_normal(cam, feats, part[0].start, part[-1].end, self._bundle_id()) is not None:
                self.samples += 1
