"""Which windows the live service scores, as pure arithmetic: shared by the service and by the trainer side.

The live path (``stream.window.EmbeddingWindow``) keeps the last ``length`` snippet embeddings of a
camera and, after every new snippet, scores the whole window and reports the row ``lookahead`` behind
the newest; at the end of a stream the last ``lookahead`` rows are read out from the final window. This
module states the same plan without the ring buffer, frames or timing, so that code which must not import
``stream`` (``export.finetune``'s held-out check) scores stored embeddings exactly the way the service
would have scored them. ``tests/test_window.py`` checks the plan against ``EmbeddingWindow`` job for job.

Only stride 1 (every snippet read out, the calm-camera stride saving off) is described here: that is
what a camera with an event in view runs at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_WINDOW = 64
"""Snippets in a camera's live window unless the deployment says otherwise (``window.length``)."""

DEFAULT_LOOKAHEAD = 4
"""Snippets behind the newest at which a score is reported (``window.lookahead``; why 4: stream/window.py)."""

ScoreFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(features [B,T,D] float32, lengths [B] int64) -> (scores [B,T], class_probs [B,T,C])``."""


def check_window(length: int, lookahead: int, max_window: int | None = None) -> None:
    """``ValueError`` unless ``1 <= length <= max_window`` and ``0 <= lookahead < length``."""
    if length < 1 or (max_window is not None and length > max_window):
        raise ValueError(f"window length must be in 1..{max_window if max_window is not None else 'max'}, "
                         f"got {length}")
    if not 0 <= lookahead < length:
        raise ValueError(f"lookahead must be in 0..{length - 1} (smaller than the window), got {lookahead}")


def live_jobs(n: int, length: int, lookahead: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """The live jobs for ``n`` snippets pushed one by one: ``(lo, hi, rows)`` per job, in order.

    The window holds snippets ``lo .. hi-1`` and the job reports the snippets ``rows`` (absolute
    indices). Every snippet is reported exactly once.
    """
    check_window(length, lookahead)
    jobs: list[tuple[int, int, tuple[int, ...]]] = [
        (max(0, i - length + 1), i + 1, (i - lookahead,)) for i in range(lookahead, n)]
    rest = min(lookahead, n)
    if rest:
        jobs.append((max(0, n - length), n, tuple(range(n - rest, n))))
    return jobs


def pad_windows(windows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack [T_i, D] windows into ``features [B, max T, D]`` (zero padded) and ``lengths [B]`` int64."""
    if not windows:
        raise ValueError("empty batch")
    t_max = max(int(w.shape[0]) for w in windows)
    d = int(windows[0].shape[1])
    feats = np.zeros((len(windows), t_max, d), dtype=np.float32)
    for b, w in enumerate(windows):
        feats[b, : w.shape[0]] = w
    lengths = np.asarray([w.shape[0] for w in windows], dtype=np.int64)
    return feats, lengths


def live_scores(embeddings: np.ndarray, score_fn: ScoreFn, length: int, lookahead: int = DEFAULT_LOOKAHEAD,
                batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-snippet ``(scores [N], class_probs [N, C])`` of ``embeddings [N, D]`` as the live service reports
    them: snippet ``j`` from the window ending at ``j + lookahead`` (the last ones from the final window).
    Windows are scored ``batch`` jobs at a time, as the service's head worker batches them."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
    n = emb.shape[0]
    scores = np.full(n, np.nan, dtype=np.float32)
    probs: np.ndarray | None = None
    jobs = live_jobs(n, length, lookahead)
    for s in range(0, len(jobs), max(1, batch)):
        chunk = jobs[s: s + max(1, batch)]
        feats, lengths = pad_windows([emb[lo:hi] for lo, hi, _ in chunk])
        sc, pr = score_fn(feats, lengths)
        sc, pr = np.asarray(sc), np.asarray(pr)
        if probs is None:
            probs = np.full((n, pr.shape[-1]), np.nan, dtype=np.float32)
        for b, (lo, _hi, rows) in enumerate(chunk):
            for r in rows:
                scores[r] = sc[b, r - lo]
                probs[r] = pr[b, r - lo]
    if probs is None:
        probs = np.zeros((n, 0), dtype=np.float32)
    return scores, probs


def min_snippets(min_duration: float, snippet_seconds: float) -> int:
    """Consecutive snippets at or above the on-threshold that the event machine needs to start an event
    (``events.min_duration``: from the first one's start to the last one's end)."""
    if snippet_seconds <= 0:
        raise ValueError(f"snippet_seconds must be > 0, got {snippet_seconds}")
    return max(1, int(np.ceil(min_duration / snippet_seconds - 1e-9)))


def fires(scores: np.ndarray, on_threshold: float, run: int) -> bool:
    """Whether ``scores`` hold ``run`` consecutive values ``>= on_threshold`` (what starts a live event)."""
    k = 0
    for v in np.asarray(scores, dtype=np.float64):
        k = k + 1 if v >= on_threshold else 0
        if k >= run:
            return True
    return False
