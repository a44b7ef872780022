"""Batching workers: one encoder worker for the snippets of all cameras, one head worker for their windows.

Batching across cameras is what makes many cameras affordable: a batch of 16 images costs far less
than 16 calls. Each worker takes what is queued, waits at most ``max_wait`` seconds for a batch to fill
(bounded extra latency), and runs one model call.

Overload policy: queues are bounded (:class:`DropOldestQueue`). When a producer finds its queue full,
the *oldest* item is dropped and counted (``dsanet_dropped_total{stage,camera}``): old work is the least
useful (its score would arrive late anyway), and dropping it keeps the lag bounded by the queue size
instead of growing without limit. Producers never block, so a slow model never stalls a camera reader.
A model call that raises drops its batch (counted as ``<stage>_error``) and the worker carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from stream.gate import StillGate
from stream.redact import redact
from stream.types import Snippet, SnippetEmbedding, WindowScore
from stream.window import WindowJob, score_jobs

log = logging.getLogger(__name__)

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A bounded FIFO whose ``put`` never blocks: when full, the oldest item is evicted (and reported)."""

    def __init__(self, maxsize: int, on_drop: Callable[[T], None] | None = None, name: str = "queue"):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize, self.name = maxsize, name
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._on_drop = on_drop
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> bool:
        """Append; returns False if an old item had to be dropped to make room (or the queue is closed)."""
        evicted: list[T] = []
        with self._cond:
            if self._closed:
                evicted.append(item)
            else:
                while len(self._items) >= self.maxsize:
                    evicted.append(self._items.popleft())
                self._items.append(item)
                self.put_count += 1
                self._cond.notify()
            self.dropped += len(evicted)
        for old in evicted:  # outside the lock: the callback may touch metrics
            if self._on_drop is not None:
                self._on_drop(old)
        return not evicted

    def get_batch(self, max_items: int, max_wait: float, timeout: float = 0.5) -> list[T]:
        """Wait up to ``timeout`` for a first item, then up to ``max_wait`` more for the batch to fill.

        Returns [] on timeout. After :meth:`close`, returns what is left without waiting ([] when empty).
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return []
            deadline = time.monotonic() + max_wait
            while len(self._items) < max_items and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def close(self) -> None:
        """No more puts (they are dropped); waiting getters wake up and drain what is left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> list[T]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items


class WorkerMetrics:
    """What the workers report; :class:`stream.metrics.Metrics` implements it (duck-typed)."""

    def inference_done(self, model: str, seconds: float, batch: int) -> None: ...

    def dropped(self, stage: str, camera: str = "", n: int = 1) -> None: ...

    def embedding_reused(self, camera: str, n: int = 1) -> None: ...

    def queue(self, name: str, depth: int) -> None: ...


class _Worker(threading.Thread):
    """Shared loop: batch, process, repeat; exits once its queue is closed and drained."""

    model = "model"

    def __init__(self, queue: DropOldestQueue[Any], max_batch: int, max_wait: float,
                 metrics: Any = None, name: str = "worker"):
        super().__init__(name=name, daemon=True)
        self.queue = queue
        self.max_batch, self.max_wait = max_batch, max_wait
        self.metrics = metrics or WorkerMetrics()
        self.heartbeat = time.monotonic()
        self.batches = 0
        self.items = 0
        self.busy_seconds = 0.0

    def run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            batch = self.queue.get_batch(self.max_batch, self.max_wait, timeout=0.5)
            self.metrics.queue(self.queue.name, len(self.queue))
            if not batch:
                if self.queue.closed:
                    return
                continue
            t0 = time.monotonic()
            try:
                self.process(batch)
            except Exception as exc:  # a failing model call must not kill the service
                log.error("%s: batch of %d failed and was dropped: %s", self.name, len(batch), redact(exc))
                for item in batch:
                    self.metrics.dropped(f"{self.model}_error", getattr(item, "camera", ""))
            self.busy_seconds += time.monotonic() - t0
            self.batches += 1
            self.items += len(batch)

    def process(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def stop(self, timeout: float | None = None) -> bool:
        """Close the queue, let the worker drain it, wait up to ``timeout``. True if it ended."""
        self.queue.close()
        if self.ident is None:  # never started (start-up failed): nothing to wait for
            return True
        self.join(timeout)
        return not self.is_alive()


class EncoderWorker(_Worker):
    """Snippets -> embeddings. ``preprocess(list of HxWx3 uint8) -> [B,3,S,S]``; ``embed([B,3,S,S]) -> [B,D]``.

    A snippet whose frame is the same as the previous snippet's of that camera (a filled snippet, see
    :mod:`stream.snippets`) reuses that embedding instead of running the encoder again. With a
    still-scene gate (``gate_for(camera)`` returns the camera's :class:`stream.gate.StillGate`), a frame
    that matches the camera's last embedded frame reuses its embedding too (counted by
    ``metrics.embedding_reused``).
    """

    model = "encoder"

    def __init__(self, queue: DropOldestQueue[Snippet], embed: Callable[[np.ndarray], np.ndarray],
                 preprocess: Callable[[list[np.ndarray]], np.ndarray],
                 on_embeddings: Callable[[list[SnippetEmbedding]], None], max_batch: int = 16,
                 max_wait: float = 0.05, metrics: Any = None,
                 gate_for: Callable[[str], StillGate | None] | None = None):
        super().__init__(queue, max_batch, max_wait, metrics, name="encoder-worker")
        self.embed, self.preprocess, self.on_embeddings = embed, preprocess, on_embeddings
        self.gate_for = gate_for
        self._last: dict[str, tuple[int, np.ndarray]] = {}  # camera -> (frame index, embedding)
        self.reused = 0  # repeated frames (filled snippets)
        self.gated = 0  # still-scene reuses

    def process(self, batch: list[Snippet]) -> None:
        todo: list[Snippet] = []
        # per snippet, where its vector comes from: ("new", position in todo) or ("old", vector)
        source: list[tuple[str, Any]] = []
        # camera -> (frame index, source) of its latest snippet so far, this batch included
        cur: dict[str, tuple[int, tuple[str, Any]]] = {
            cam: (idx, ("old", vec)) for cam, (idx, vec) in self._last.items()}
        gated: list[str] = []
        pending_refs: list[tuple[StillGate, np.ndarray]] = []
        for s in batch:
            prev = cur.get(s.camera)
            if prev is not None and prev[0] == s.frame.index:
                self.reused += 1
                src = prev[1]
            else:
                gate = self.gate_for(s.camera) if self.gate_for is not None else None
                reuse, thumb = gate.still(s.frame.image) if gate is not None else (False, None)
                if reuse and prev is not None:
                    gated.append(s.camera)
                    src = prev[1]
                else:
                    if gate is not None and thumb is not None:
                        gate.embedded(thumb)
                        pending_refs.append((gate, thumb))
                    src = ("new", len(todo))
                    todo.append(s)
            cur[s.camera] = (s.frame.index, src)
            source.append(src)
        if todo:
            if all(s.pixels is not None for s in todo):  # prepared in the readers' threads
                pixels = np.stack([s.pixels for s in todo if s.pixels is not None])
            else:
                pixels = self.preprocess([s.frame.image for s in todo])
            t0 = time.monotonic()
            try:
                emb = np.asarray(self.embed(pixels), dtype=np.float32)
            except Exception:
                for gate, _ in pending_refs:  # those references have no embedding: forget them
                    gate.reset()
                raise
            self.metrics.inference_done(self.model, time.monotonic() - t0, len(todo))
        else:
            emb = np.zeros((0, 0), dtype=np.float32)
        self.gated += len(gated)
        for cam in gated:
            self.metrics.embedding_reused(cam)
        now = time.monotonic()
        out: list[SnippetEmbedding] = []
        for s, (kind, ref) in zip(batch, source, strict=True):
            vec = emb[ref] if kind == "new" else ref
            self._last[s.camera] = (s.frame.index, vec)
            out.append(SnippetEmbedding(camera=s.camera, index=s.index, start_time=s.start_time,
                                        end_time=s.end_time, embedding=vec, frame=s.frame, encoded_monotonic=now))
        self.on_embeddings(out)


class HeadWorker(_Worker):
    """Window jobs (any cameras, any lengths) -> :class:`WindowScore` s, one head call per batch."""

    model = "head"

    def __init__(self, queue: DropOldestQueue[WindowJob],
                 score: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 on_scores: Callable[[Sequence[WindowScore]], None], max_batch: int = 16,
                 max_wait: float = 0.02, metrics: Any = None):
        super().__init__(queue, max_batch, max_wait, metrics, name="head-worker")
        self.score, self.on_scores = score, on_scores

    def process(self, batch: list[WindowJob]) -> None:
        t0 = time.monotonic()
        scores = score_jobs(batch, self.score)
        self.metrics.inference_done(self.model, time.monotonic() - t0, len(batch))
        self.on_scores(scores)
