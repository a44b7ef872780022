"""The sliding window of snippet embeddings per camera, and the lookahead read-out (live and offline).

Each camera keeps the last ``W`` snippet embeddings (``window.length``, at most the bundle's
``max_window`` = ``engine.bundle.DEFAULT_MAX_WINDOW``, 256). Every new snippet makes the window a job for the head, which scores all ``T <= W``
rows at once, exactly as the official evaluation scores a video of ``T`` snippets. The head is *not*
causal (local self-attention in blocks of 8 rows, a k=5 convolution, a distance graph
``exp(-|i-j|/e)`` and a similarity graph over the whole window), so the newest row's score has seen no
future at all while rows further back have. The score reported for a snippet is therefore read
``lookahead`` (``L``) rows behind the newest: snippet ``i - L``'s score comes from the window that ends
at snippet ``i``. The price is latency: ``L x snippet_seconds`` (0.53 s per step on UCF geometry).

**Default lookahead: 4 snippets (2.1 s).** Why 4:

* the k=5 temporal convolution needs 2 rows of future to see what it sees offline (``L >= 2``);
* the distance graph's weight on the future decays as ``exp(-d/e)``: rows 1..4 ahead carry 77% of
  the future weight an offline row receives, 8 ahead 95%; past 4 each extra step buys little and costs
  another 0.53 s;
* the local attention runs in fixed 8-row blocks aligned to the window start. With a full window whose
  length is a multiple of 8, the reported row sits at block offset ``7 - L``: with ``L = 4`` it sees 3
  rows before and 4 after inside its block, the same balance an offline row has on average (3.5/3.5).
* measured on the tiny bundle (random DSANet weights, UCF layout, window 64, three 200-snippet smooth
  synthetic videos; correlation of streaming with whole-video offline scores): L=0 0.80, L=2 0.92,
  L=3 0.95, **L=4 0.97**, L=6 0.991, L=8 0.997. L=4 is the knee: most of the agreement for 2.1 s of
  latency; each step beyond buys about 1% or less for another 0.53 s. (Random weights say what the
  architecture can see, not what a trained head attends to: re-measure on a trained bundle.)

The deployment config may set another value per camera; the streaming-vs-offline benchmark measures
the agreement for each ``L``. (The constant itself lives in ``engine.live_window``, with the same
read-out plan as plain arithmetic for code that must not import ``stream``: ``dsanet finetune``'s
held-out check. ``tests/test_window.py`` holds the two to each other.)

Rows are positional: if a snippet was dropped upstream (overload), the window simply holds the ones
that arrived. At the end of a stream (:meth:`EmbeddingWindow.flush`), the last ``L`` rows, which no
later window will cover, are read out from the final window, so every snippet gets exactly one score.

:func:`streaming_scores` runs the very same :class:`EmbeddingWindow` over all embeddings of a video
(``dsanet score`` and the benchmarks use it), so offline and live scores agree by construction up to
batching arithmetic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from engine.bundle import DEFAULT_MAX_WINDOW
from engine.live_window import DEFAULT_LOOKAHEAD, pad_windows
from stream.types import Frame, RowInfo, SnippetEmbedding, WindowJob, WindowScore

__all__ = ["DEFAULT_LOOKAHEAD", "EmbeddingWindow", "iter_jobs", "job_scores", "offline_scores", "pad_batch",
           "score_jobs", "streaming_scores"]

ScoreFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(features [B,T,D] float32, lengths [B] int64) -> (scores [B,T], class_probs [B,T,C])``."""


class EmbeddingWindow:
    """Ring buffer of the last ``length`` embeddings of one camera, with the lookahead read-out.

    Not thread-safe: one owner (the encoder worker's callback, or an offline loop).
    """

    def __init__(self, length: int, lookahead: int = DEFAULT_LOOKAHEAD, camera: str = "",
                 max_window: int = DEFAULT_MAX_WINDOW, max_stride: int = 1):
        if not 1 <= length <= max_window:
            raise ValueError(f"window length must be in 1..{max_window}, got {length}")
        if not 0 <= lookahead < length:
            raise ValueError(f"lookahead must be in 0..{length - 1} (smaller than the window), got {lookahead}")
        if not 1 <= max_stride <= length - lookahead:
            raise ValueError(f"adaptive_stride must be in 1..{length - lookahead} (window length minus lookahead), "
                             f"got {max_stride}")
        self.length, self.lookahead, self.camera = length, lookahead, camera
        self.max_stride = max_stride
        self._stride = 1
        self._emb: deque[np.ndarray] = deque(maxlen=length)
        self._info: deque[RowInfo] = deque(maxlen=length)
        # frames only for rows still to be reported: full-size images for a whole window would be large
        self._frames: deque[Frame | None] = deque(maxlen=lookahead + max_stride)
        self._unreported = 0  # newest rows not yet reported (< lookahead + stride between pushes)
        self.pushed = 0
        self.jobs = 0  # head jobs made (one per head pass this camera costs)

    @property
    def stride(self) -> int:
        """Rows a job reads out while the camera is calm (1 = every snippet). Set from the head thread
        (``stream.stride.StrideController``), read at the next push: a plain int, so no lock is needed."""
        return self._stride

    @stride.setter
    def stride(self, k: int) -> None:
        self._stride = max(1, min(int(k), self.max_stride))

    def __len__(self) -> int:
        return len(self._emb)

    def features(self) -> np.ndarray:
        return np.stack(self._emb).astype(np.float32, copy=False)

    def push(self, embedding: SnippetEmbedding | np.ndarray, index: int | None = None,
             start_time: float = 0.0, end_time: float = 0.0, frame: Frame | None = None,
             now: float = 0.0) -> WindowJob | None:
        """Add the newest snippet; returns the job reporting the row ``lookahead`` behind, if there is one."""
        if isinstance(embedding, SnippetEmbedding):
            e = embedding
            vec, index, start_time, end_time = e.embedding, e.index, e.start_time, e.end_time
            frame = e.frame if frame is None else frame
        else:
            vec = embedding
            index = self.pushed if index is None else index
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if self._emb and vec.shape != self._emb[0].shape:
            raise ValueError(f"camera {self.camera!r}: embedding width {vec.shape[0]} != {self._emb[0].shape[0]}")
        self._emb.append(vec)
        self._info.append(RowInfo(int(index), float(start_time), float(end_time)))
        self._frames.append(frame)
        self.pushed += 1
        self._unreported += 1
        if self._unreported < self.lookahead + self._stride:
            return None
        # every row older than the lookahead is read out now: one row at stride 1, k rows at stride k, and
        # all that were waiting when the stride has just dropped back to 1 (so none is skipped or repeated)
        n_out = self._unreported - self.lookahead
        self._unreported = self.lookahead
        last = len(self._emb) - 1 - self.lookahead
        return self._job(tuple(range(last - n_out + 1, last + 1)), now)

    def flush(self, now: float = 0.0) -> WindowJob | None:
        """Report the rows no later window will cover (end of stream / shutdown)."""
        if not self._unreported or not self._emb:
            return None
        n = len(self._emb)
        positions = tuple(range(n - self._unreported, n))
        self._unreported = 0
        return self._job(positions, now)

    def _job(self, positions: tuple[int, ...], now: float) -> WindowJob:
        n = len(self._emb)
        frames = list(self._frames)
        # frames deque holds the last len(frames) rows; map a row position to it
        def frame_at(pos: int) -> Frame | None:
            k = pos - (n - len(frames))
            return frames[k] if 0 <= k < len(frames) else None

        newest = self._info[-1]
        self.jobs += 1
        return WindowJob(camera=self.camera, features=self.features(), readout=positions,
                         rows=tuple(self._info[p] for p in positions),
                         frames=tuple(frame_at(p) for p in positions),
                         newest_index=newest.index, newest_end_time=newest.end_time, created_monotonic=now)


def pad_batch(windows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack [T_i, D] windows into ``features [B, max T, D]`` (zero padded) and ``lengths [B]`` int64."""
    return pad_windows(windows)


def job_scores(job: WindowJob, scores: np.ndarray, class_probs: np.ndarray) -> list[WindowScore]:
    """Turn the head's output rows for one window (``scores [T]``, ``class_probs [T, C]``) into records."""
    out = []
    after = max(job.readout) + 1 if job.readout else job.length
    ahead = float(np.max(scores[after: job.length])) if after < job.length else None
    for pos, info, frame in zip(job.readout, job.rows, job.frames, strict=True):
        out.append(WindowScore(camera=job.camera, index=info.index, start_time=info.start_time,
                               end_time=info.end_time, score=float(scores[pos]),
                               class_probs=tuple(float(x) for x in class_probs[pos]),
                               newest_index=job.newest_index, newest_end_time=job.newest_end_time,
                               frame=frame, ahead_max=ahead))
    return out


def score_jobs(jobs: Sequence[WindowJob], score_fn: ScoreFn) -> list[WindowScore]:
    """Score a batch of windows (any cameras, any lengths) in one head call; results in job order."""
    feats, lengths = pad_batch([j.features for j in jobs])
    scores, probs = score_fn(feats, lengths)
    scores, probs = np.asarray(scores), np.asarray(probs)
    out: list[WindowScore] = []
    for b, job in enumerate(jobs):
        out.extend(job_scores(job, scores[b], probs[b]))
    return out


def iter_jobs(embeddings: np.ndarray | Iterable[np.ndarray], length: int, lookahead: int = DEFAULT_LOOKAHEAD,
              camera: str = "") -> Iterable[WindowJob]:
    """Every window job the live path would create for this sequence of embeddings, flush included."""
    win = EmbeddingWindow(length, lookahead, camera=camera)
    for i, e in enumerate(embeddings):
        job = win.push(np.asarray(e), index=i, start_time=float(i), end_time=float(i + 1))
        if job is not None:
            yield job
    last = win.flush()
    if last is not None:
        yield last


def streaming_scores(embeddings: np.ndarray, score_fn: ScoreFn, length: int,
                     lookahead: int = DEFAULT_LOOKAHEAD, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-snippet scores of a whole video as the live service reports them.

    ``embeddings``: [N, D]. Returns ``scores [N]`` and ``class_probs [N, C]``; snippet ``j``'s values
    come from the window ending at snippet ``j + lookahead`` (or the last window for the final rows).
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
    n = emb.shape[0]
    scores = np.full(n, np.nan, dtype=np.float32)
    probs: np.ndarray | None = None
    pending: list[WindowJob] = []

    def run() -> None:
        nonlocal probs
        for ws in score_jobs(pending, score_fn):
            if probs is None:
                probs = np.full((n, len(ws.class_probs)), np.nan, dtype=np.float32)
            scores[ws.index] = ws.score
            probs[ws.index] = ws.class_probs
        pending.clear()

    for job in iter_jobs(emb, length, lookahead):
        pending.append(job)
        if len(pending) >= batch:
            run()
    if pending:
        run()
    if probs is None:
        probs = np.zeros((n, 0), dtype=np.float32)
    return scores, probs


def offline_scores(embeddings: np.ndarray, score_fn: ScoreFn, max_window: int = DEFAULT_MAX_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the whole video scored at once (in chunks of ``max_window`` like the official test code)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    outs_s, outs_p = [], []
    for s in range(0, emb.shape[0], max_window):
        chunk = emb[s: s + max_window]
        sc, pr = score_fn(chunk[None], np.asarray([chunk.shape[0]], dtype=np.int64))
        outs_s.append(np.asarray(sc)[0, : chunk.shape[0]])
        outs_p.append(np.asarray(pr)[0, : chunk.shape[0]])
    return np.concatenate(outs_s), np.concatenate(outs_p)
