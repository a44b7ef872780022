"""The arithmetic behind ``bench/feedback.py``'s table: what counts as a false alarm and a recalled event,
how marks are cut the way the service keeps them, and that the site data it writes is what
``dsanet finetune`` reads. The full bench trains a model (minutes); these parts run on hand-made inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH.parent))

from bench import feedback as fb  # noqa: E402

ORIGIN = 1_000.0
TRUTH = [("Explosion", 25.0, 31.0), ("Fighting", 85.0, 91.0), ("RoadAccidents", 145.0, 151.0)]


@pytest.mark.parametrize("label, spans, window, fa, recalled, per_class", [
    ("nothing fired", [], (0.0, 180.0), 0, 0, {"Explosion": (0, 1), "Fighting": (0, 1), "RoadAccidents": (0, 1)}),
    ("one hit, one false", [(26.0, 30.0), (50.0, 55.0)], (0.0, 180.0), 1, 1,
     {"Explosion": (1, 1), "Fighting": (0, 1), "RoadAccidents": (0, 1)}),
    # an event starting within the 1 s slack after the scripted end still counts as that event
    ("late start inside the slack", [(31.5, 36.0)], (0.0, 180.0), 0, 1,
     {"Explosion": (1, 1), "Fighting": (0, 1), "RoadAccidents": (0, 1)}),
    ("just past the slack is false", [(32.5, 36.0)], (0.0, 180.0), 1, 0,
     {"Explosion": (0, 1), "Fighting": (0, 1), "RoadAccidents": (0, 1)}),
    # the evaluation window: events and false alarms of the history half are not counted
    ("second half only", [(26.0, 30.0), (50.0, 55.0), (100.0, 104.0), (146.0, 150.0)], (90.0, 180.0), 1, 1,
     {"Explosion": (0, 0), "Fighting": (0, 0), "RoadAccidents": (1, 1)}),
])
def test_tally_counts_false_alarms_and_recall_in_the_window(label, spans, window, fa, recalled, per_class) -> None:
    got = fb.tally([(ORIGIN + a, ORIGIN + b) for a, b in spans], TRUTH, window, ORIGIN)
    assert got["fa"] == fa, label
    assert got["recalled"] == recalled, label
    assert got["per_class"] == per_class, label
    assert got["fa_per_hour"] == pytest.approx(fa / ((window[1] - window[0]) / 3600.0))


def test_marks_hold_the_event_and_its_context_as_the_service_keeps_them() -> None:
    from stream.config import FeedbackConfig

    sec = 0.5
    n = 400  # 200 s of snippets; the history is the first 150 s
    feats = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    scores = np.full(n, 0.1, np.float32)
    spans = [(ORIGIN + 26.0, ORIGIN + 30.0), (ORIGIN + 60.0, ORIGIN + 64.0), (ORIGIN + 146.0, ORIGIN + 152.0),
             (ORIGIN + 160.0, ORIGIN + 163.0)]  # the last starts after the history: never a mark
    marks, calm = fb.make_marks(feats, sec, ORIGIN, spans, TRUTH, 150.0, scores, off=0.4)
    assert [(m["kind"], m["label"]) for m in marks] == [
        ("confirmed", "Explosion"), ("false_alarm", "Normal"), ("confirmed", "RoadAccidents")]
    ctx = FeedbackConfig().context_snippets
    limit = int(150.0 / sec)
    for m, (s, e) in zip(marks, spans, strict=False):
        first, last = m["event_rows"]
        # the event's own rows, located inside the stored example
        assert m["i0"] + first == int(round((s - ORIGIN) / sec))
        assert m["i0"] + last <= min(limit - 1, int(np.ceil((e - ORIGIN) / sec)) - 1)
        assert first == min(ctx, int(round((s - ORIGIN) / sec)))  # context before, cut at the stream's start
        assert m["i1"] <= limit  # nothing of the evaluation half is stored
    assert marks[0]["i0"] == 0 and marks[1]["i0"] == int(60.0 / sec) - ctx
    assert marks[2]["i1"] == limit  # its after-context is cut at the end of the history
    assert calm == []  # 150 s of history is shorter than one normal_sample_interval


def test_calm_samples_are_low_scored_windows_clear_of_events_one_per_interval() -> None:
    from stream.config import FeedbackConfig

    cfg = FeedbackConfig()
    sec = 0.5
    history = 3.5 * cfg.normal_sample_interval
    n = int(history / sec) + 100
    feats = np.zeros((n, 4), np.float32)
    scores = np.full(n, 0.1, np.float32)
    every = int(round(cfg.normal_sample_interval / sec))
    # the second interval's window holds an event, the third's a high score: only the first stays calm
    ev = (ORIGIN + (2 * every - 10) * sec, ORIGIN + (2 * every - 5) * sec)
    scores[3 * every - 3] = 0.9
    _, calm = fb.make_marks(feats, sec, ORIGIN, [ev], [], history, scores, off=0.4)
    assert [(c["i0"], c["i1"]) for c in calm] == [(every - cfg.normal_sample_snippets, every)]
    assert all(c["kind"] == "normal_sample" and c["label"] == "Normal" and c["event_rows"] is None for c in calm)


def test_no_calm_sample_where_the_scores_are_high() -> None:
    sec = 0.5
    feats = np.zeros((400, 4), np.float32)
    scores = np.full(400, 0.9, np.float32)  # the benign pattern everywhere: nothing is calm
    _, calm = fb.make_marks(feats, sec, ORIGIN, [], TRUTH, 150.0, scores, off=0.4)
    assert calm == []


def test_site_data_the_bench_writes_is_what_finetune_reads(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    from engine.bundle import load_bundle
    from export.finetune import read_site_data

    bundle = load_bundle(tiny_bundle_dir)
    sec = bundle.snippet_seconds
    n = 600
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, bundle.embedding_width)).astype(np.float32)
    scores = np.full(n, 0.1, np.float32)
    history = n * sec * 0.75
    spans = [(ORIGIN + 26.0, ORIGIN + 30.0), (ORIGIN + 60.0, ORIGIN + 64.0)]
    marks, calm = fb.make_marks(feats, sec, ORIGIN, spans, TRUTH, history, scores, off=0.4)
    root = fb.write_site_data(tmp_path / "site", feats, marks + calm, bundle)
    site = read_site_data(root, "ucf", bundle.embedding_width)
    assert sorted(e.kind for e in site.examples) == sorted(x["kind"] for x in marks + calm)
    assert site.snippet_seconds == pytest.approx(sec)
    by_start = {round(e.start, 6): e for e in site.examples}
    for m in marks:
        ex = by_start[round(m["start"], 6)]
        assert ex.label == m["label"] and ex.event_rows == tuple(m["event_rows"])
        np.testing.assert_array_equal(np.load(ex.path), feats[m["i0"]:m["i1"]])


@pytest.mark.parametrize("name", fb.Benign.NAMES)
def test_every_benign_pattern_changes_the_frame_and_stays_in_range(name: str) -> None:
    calm = np.full((fb.SIZE[1], fb.SIZE[0], 3), 0.4, np.float32)
    out = fb.Benign(name, fb.SIZE, seed=1).draw(calm.copy(), t=2.0, u=0.5)
    assert out.shape == calm.shape
    assert float(np.abs(out - calm).mean()) > 0.02, f"{name} leaves the frame as it was"
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1.0 + 1e-6


def test_an_unknown_benign_pattern_is_named() -> None:
    with pytest.raises(ValueError, match="unknown benign pattern 'rain'; expected one of flare, headlights"):
        fb.Benign("rain", fb.SIZE, seed=0)
