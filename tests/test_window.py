"""Window and lookahead math: the live read-out (threads, batching across cameras) equals the pure offline
function, every snippet is scored exactly once, and each score comes from the window it should."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stream.scoring import DropOldestQueue, HeadWorker
from stream.types import SnippetEmbedding
from stream.window import (
    DEFAULT_LOOKAHEAD,
    EmbeddingWindow,
    iter_jobs,
    offline_scores,
    pad_batch,
    streaming_scores,
)

D, C = 8, 4


def fake_head(features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A non-causal, length-aware stand-in for the head: each row's score depends on its own row, on its
    position, on the mean of every valid row (future included) and on the window length. Padding rows
    must not influence valid ones (as in the real head)."""
    b, t, _ = features.shape
    scores = np.zeros((b, t), np.float32)
    probs = np.zeros((b, t, C), np.float32)
    for i in range(b):
        n = int(lengths[i])
        x = features[i, :n].astype(np.float64)
        ctx = x.mean(axis=0)
        pos = np.arange(n) / 256.0
        logit = x @ np.linspace(-1, 1, D) + 0.5 * (x @ ctx) + pos + 0.01 * n
        scores[i, :n] = 1 / (1 + np.exp(-logit))
        z = x[:, :C] + ctx[:C]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs[i, :n] = e / e.sum(axis=1, keepdims=True)
    return scores, probs


def emb(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def test_constructor_rejects_bad_sizes():
    with pytest.raises(ValueError):
        EmbeddingWindow(0, 0)
    with pytest.raises(ValueError):
        EmbeddingWindow(300, 2)
    with pytest.raises(ValueError):
        EmbeddingWindow(8, 8)  # lookahead must be < length
    assert 0 < DEFAULT_LOOKAHEAD < 8


@pytest.mark.parametrize("n,length,lookahead", [(1, 8, 2), (5, 8, 2), (40, 8, 0), (40, 8, 7), (40, 16, 4),
                                                 (300, 64, 4)])
def test_every_snippet_scored_once_from_the_right_window(n, length, lookahead):
    e = emb(n, n + length)
    jobs = list(iter_jobs(e, length, lookahead))
    reported = [r.index for j in jobs for r in j.rows]
    assert reported == list(range(n))  # once each, in order
    for j in jobs:
        newest = j.newest_index
        assert j.length == min(length, newest + 1)
        for pos, row in zip(j.readout, j.rows, strict=True):
            # the row sits `pos` rows into a window that ends at `newest`
            assert row.index == newest - (j.length - 1 - pos)
            np.testing.assert_array_equal(j.features[pos], e[row.index])
            if newest < n - 1:  # not the final flush: exactly `lookahead` rows behind the newest
                assert row.index == newest - lookahead
        # the window is the last `length` embeddings up to the newest
        np.testing.assert_array_equal(j.features, e[newest - j.length + 1: newest + 1])


def test_streaming_scores_match_manual_windows():
    n, length, lookahead = 30, 8, 3
    e = emb(n, 1)
    scores, probs = streaming_scores(e, fake_head, length, lookahead, batch=5)
    assert scores.shape == (n,) and probs.shape == (n, C)
    for j in range(n):
        newest = min(j + lookahead, n - 1)
        start = max(0, newest - length + 1)
        w = e[start: newest + 1]
        s, p = fake_head(w[None], np.array([len(w)]))
        assert scores[j] == pytest.approx(float(s[0, j - start]), abs=1e-6)
        np.testing.assert_allclose(probs[j], p[0, j - start], atol=1e-6)


def test_batch_size_does_not_change_scores():
    e = emb(50, 2)
    a = streaming_scores(e, fake_head, 16, 4, batch=1)
    b = streaming_scores(e, fake_head, 16, 4, batch=32)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_lookahead_covering_the_whole_video_equals_offline():
    """When no snippet is reported before the end, the flush reads everything from the one full window,
    which is exactly the offline score of the whole video."""
    e = emb(10, 3)
    s_stream, p_stream = streaming_scores(e, fake_head, 16, 12)
    s_off, p_off = offline_scores(e, fake_head)
    np.testing.assert_allclose(s_stream, s_off, atol=1e-6)
    np.testing.assert_allclose(p_stream, p_off, atol=1e-6)


def test_pad_batch_keeps_rows_and_lengths():
    ws = [emb(3, 4), emb(7, 5)]
    f, lengths = pad_batch(ws)
    assert f.shape == (2, 7, D) and lengths.tolist() == [3, 7]
    np.testing.assert_array_equal(f[0, :3], ws[0])
    assert not f[0, 3:].any()
    # padding does not change the fake head's valid rows (the property the real head has too)
    s_pad, _ = fake_head(f, lengths)
    s_one, _ = fake_head(ws[0][None], np.array([3]))
    np.testing.assert_allclose(s_pad[0, :3], s_one[0], atol=1e-6)


def test_frames_kept_only_for_rows_still_to_report():
    win = EmbeddingWindow(32, 2, camera="c")
    for i in range(40):
        win.push(SnippetEmbedding("c", i, i, i + 1, emb(1, i)[0], frame=None))
    assert len(win) == 32
    assert win._frames.maxlen == 3  # not a full window of full-size images


def test_live_head_worker_across_cameras_matches_offline_function():
    """Three cameras with different window settings interleaved through one batching head worker: each
    camera's reported scores equal ``streaming_scores`` of its own embeddings."""
    settings = {"a": (8, 2, 37), "b": (16, 4, 23), "c": (5, 0, 41)}
    data = {cam: emb(n, ord(cam)) for cam, (_, _, n) in settings.items()}
    windows = {cam: EmbeddingWindow(length, la, camera=cam) for cam, (length, la, _) in settings.items()}
    got: dict[str, list] = {cam: [] for cam in settings}
    lock = threading.Lock()

    def on_scores(scores):
        with lock:
            for ws in scores:
                got[ws.camera].append(ws)

    q = DropOldestQueue(10_000, name="head")
    worker = HeadWorker(q, fake_head, on_scores, max_batch=7, max_wait=0.001)
    worker.start()
    longest = max(n for *_, n in settings.values())
    for i in range(longest):
        for cam, (_, _, n) in settings.items():
            if i < n:
                job = windows[cam].push(SnippetEmbedding(cam, i, float(i), float(i + 1), data[cam][i]))
                if job is not None:
                    q.put(job)
    for w in windows.values():
        job = w.flush()
        if job is not None:
            q.put(job)
    assert worker.stop(timeout=30)
    assert q.dropped == 0
    assert worker.batches < sum(n for *_, n in settings.values())  # batching across cameras happened
    for cam, (length, la, n) in settings.items():
        idx = [ws.index for ws in got[cam]]
        assert idx == list(range(n))
        expected, expected_p = streaming_scores(data[cam], fake_head, length, la)
        np.testing.assert_allclose([ws.score for ws in got[cam]], expected, atol=1e-6)
        np.testing.assert_allclose([ws.class_probs for ws in got[cam]], expected_p, atol=1e-6)
        assert all(ws.newest_index - ws.index <= la for ws in got[cam])


@pytest.mark.parametrize("n,length,lookahead", [(1, 8, 2), (2, 8, 2), (3, 8, 2), (5, 8, 2), (40, 8, 0),
                                                 (40, 8, 7), (40, 16, 4), (70, 32, 4), (300, 64, 4)])
def test_engine_read_out_plan_is_the_live_windows(n, length, lookahead):
    """``engine.live_window`` (what ``dsanet finetune``'s held-out check runs, without importing stream)
    states the same jobs as ``EmbeddingWindow`` and gives the same scores as ``streaming_scores``."""
    from engine.live_window import live_jobs, live_scores

    x = emb(n, seed=n + length)
    live = list(iter_jobs(x, length, lookahead))
    plan = live_jobs(n, length, lookahead)
    assert len(plan) == len(live)
    for (lo, hi, rows), job in zip(plan, live, strict=True):
        np.testing.assert_array_equal(x[lo:hi], job.features)
        assert rows == tuple(r.index for r in job.rows)
    for batch in (1, 16):
        want_s, want_p = streaming_scores(x, fake_head, length, lookahead, batch=batch)
        got_s, got_p = live_scores(x, fake_head, length, lookahead, batch=batch)
        np.testing.assert_array_equal(got_s, want_s)
        np.testing.assert_array_equal(got_p, want_p)


def test_engine_start_rule_counts_consecutive_snippets():
    from engine.live_window import fires, min_snippets

    assert min_snippets(1.0, 16 / 30) == 2 and min_snippets(0.0, 0.5) == 1 and min_snippets(1.0, 0.5) == 2
    s = np.asarray([0.9, 0.1, 0.9, 0.1, 0.9])
    assert fires(s, 0.6, 1) and not fires(s, 0.6, 2)
    assert fires(np.asarray([0.1, 0.6, 0.61, 0.2]), 0.6, 2)


@pytest.mark.parametrize("min_duration", [0.0, 1.0, 2.0])
def test_engine_start_rule_agrees_with_the_event_machine(min_duration):
    """``fires`` + ``min_snippets`` start an event exactly when the live event machine would."""
    from engine.live_window import fires, min_snippets
    from stream.events import EventMachine, EventSettings
    from stream.types import WindowScore

    snip = 16 / 30
    rng = np.random.default_rng(int(min_duration * 10))
    for trial in range(60):
        s = np.where(rng.random(12) < 0.6, 0.8, 0.2)
        m = EventMachine("c", EventSettings(min_duration=min_duration), ["Normal", "X"], ["Normal", "X"])
        started = any(e.type == "start" for i, v in enumerate(s) for e in m.push(WindowScore(
            "c", i, 100 + i * snip, 100 + (i + 1) * snip, float(v), (1 - float(v), float(v)), i, 0.0)))
        assert started == fires(s, 0.6, min_snippets(min_duration, snip)), (trial, s)
