"""``dsanet score``: offline scoring of a file goes through the live snippet cutting, windowing, lookahead and
event logic, writes CSV / JSONL / PNG whose *content* is right, and refuses bad input with exit 2.

Whether a model scores the clip's loud segment high is not asserted: the fixtures' briefly trained bundle
learned synthetic features, not these rendered scenes, and on them it orders event and calm arbitrarily
(measured: event mean 0.039 < calm mean 0.074 on a 20 s clip), so such a check would test luck.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.events import Event, EventMachine, EventSettings, parse_iso_utc
from stream.feedback.swap import BundleIds
from stream.offline import ScoreResult, format_mmss, score_video
from stream.types import WindowScore
from stream.window import streaming_scores

FPS, SECONDS, EVENT = 25, 8.0, (3.0, 6.0)
WIDTH, HEIGHT = 320, 240
LIVE_KEYS = ["schema", "id", "seq", "type", "camera", "category", "category_key", "category_score", "score",
             "peak_score", "start_time", "end_time", "updated_time", "snippets", "model", "evidence", "reason",
             "bundle"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``dsanet`` in-process; returns (exit code, stdout, stderr)."""
    from stream.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.clips import make_clip

    return make_clip(tmp_path_factory.mktemp("score-clip") / "yard.mp4", WIDTH, HEIGHT, FPS, SECONDS, event=EVENT)


@pytest.fixture(scope="module")
def models(tiny_bundle_dir: Path) -> tuple[Any, Any, Any]:
    from engine.runtime import load_models

    return load_models(tiny_bundle_dir, runtime="onnxruntime", device="cpu", threads=1)


@pytest.fixture(scope="module")
def scored(clip: Path, models: tuple[Any, Any, Any]) -> ScoreResult:
    return score_video(clip, models)


@pytest.fixture(scope="module")
def cli_run(clip: Path, tiny_bundle_dir: Path, scored: ScoreResult,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One CLI run writing all three outputs, with thresholds that make the random head fire (the median
    score starts an event at once; min_duration 0), so the events file has content to check."""
    out = tmp_path_factory.mktemp("score-out")
    on = float(np.quantile(scored.scores, 0.5))
    off = float(np.quantile(scored.scores, 0.25))
    rc, stdout, stderr = run_cli(
        "score", str(clip), "-b", str(tiny_bundle_dir), "--runtime", "onnxruntime", "-q",
        "--csv", str(out / "s.csv"), "--events", str(out / "e.jsonl"), "--plot", str(out / "t.png"),
        "--window", "8", "--lookahead", "3", "--on-threshold", f"{on}", "--off-threshold", f"{off}",
        "--min-duration", "0", "--hold", "1.0", "--cooldown", "0", "--update-interval", "1")
    assert rc == 0, stderr
    return {"dir": out, "stdout": stdout, "on": on, "off": off}


def expected_snippets(n_frames: int, fps: float, snippet_seconds: float) -> int:
    """Snippets the live cutter makes: frame i at i/fps falls in floor(t / D); the partial last one counts."""
    return int(math.floor((n_frames - 1) / fps / snippet_seconds + 1e-5)) + 1


# --------------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("seconds,decimals,text", [
    (0, 0, "00:00"), (5.4, 0, "00:05"), (59.4, 0, "00:59"), (59.6, 0, "01:00"), (75, 0, "01:15"),
    (600, 0, "10:00"), (3599.4, 0, "59:59"), (3600, 0, "1:00:00"), (3723.5, 1, "1:02:03.5"),
    (12.346, 2, "00:12.35"), (-5, 0, "-00:05"), (float("nan"), 0, "--:--"),
])
def test_format_mmss(seconds: float, decimals: int, text: str) -> None:
    assert format_mmss(seconds, decimals) == text


def test_time_ticks_are_round_and_cover_the_video() -> None:
    from stream.plot import time_ticks

    for duration, step in [(10.0, 1), (12.0, 2), (20.0, 2), (95.0, 10), (3600.0, 600), (7 * 3600.0, 3600)]:
        t = time_ticks(duration)
        assert t[0] == 0 and t[-1] <= duration + 1e-9 and duration - t[-1] < step
        assert np.allclose(np.diff(t), step) and len(t) <= 12


# ----------------------------------------------------------------------------- shared live logic


def test_snippets_cut_by_presentation_time_like_live(scored: ScoreResult, models: tuple[Any, Any, Any],
                                                     clip: Path) -> None:
    """Rows follow the bundle's snippet duration on the video's own timestamps, and each row embeds the
    middle frame of its snippet (checked against an independent decode + group + embed)."""
    import av

    bundle, encoder, _ = models
    d = bundle.snippet_frames / bundle.snippet_fps
    n_frames = round(FPS * SECONDS)
    n = expected_snippets(n_frames, FPS, d)
    assert scored.n_snippets == n == 15
    assert scored.frames_decoded == n_frames
    assert np.allclose(scored.start_s, np.arange(n) * d) and np.allclose(scored.end_s, scored.start_s + d)
    assert scored.frames_per_snippet.sum() == n_frames and scored.frames_per_snippet.min() >= 1

    groups: dict[int, list[np.ndarray]] = {}
    with av.open(str(clip)) as c:
        frames = list(c.decode(video=0))
        t0 = frames[0].time
        for f in frames:
            groups.setdefault(int(math.floor((f.time - t0) / d + 1e-5)), []).append(f)
        middle = [groups[k][len(groups[k]) // 2].to_ndarray(format="rgb24") for k in sorted(groups)]
    assert [len(groups[k]) for k in sorted(groups)] == scored.frames_per_snippet.tolist()
    want = np.concatenate([encoder.embed(bundle.preprocessing(middle[i:i + 8])) for i in range(0, n, 8)])
    np.testing.assert_allclose(scored.embeddings, want, atol=1e-4, rtol=1e-4)


def test_scores_equal_live_streaming_scores(scored: ScoreResult, models: tuple[Any, Any, Any],
                                            cli_run: dict[str, Any]) -> None:
    """The per-snippet scores are the live read-out: stream.window.streaming_scores on the same embeddings,
    with the default window (as the live default config) and with an 8-snippet window sliding over the
    clip (the CLI run: --window 8 --lookahead 3)."""
    from stream.config import WindowConfig

    head = models[2]
    assert (scored.window, scored.lookahead) == (WindowConfig().length, WindowConfig().lookahead)
    s, p = streaming_scores(scored.embeddings, head.score, scored.window, scored.lookahead)
    np.testing.assert_allclose(scored.scores, s, atol=1e-5)
    np.testing.assert_allclose(scored.class_probs, p, atol=1e-5)

    table = np.asarray(list(csv.reader((cli_run["dir"] / "s.csv").open()))[1:], dtype=np.float64)
    s8, p8 = streaming_scores(scored.embeddings, head.score, 8, 3)
    np.testing.assert_allclose(table[:, 3], s8, atol=2e-6)
    np.testing.assert_allclose(table[:, 4:], p8, atol=2e-6)
    assert np.abs(s8 - s).max() > 1e-4  # the window really slid: not the same as the full-clip window


def test_events_come_from_the_live_event_machine(clip: Path, models: tuple[Any, Any, Any],
                                                 scored: ScoreResult) -> None:
    """score_video's events are what a fresh live EventMachine makes of its scores (window, lookahead and
    event settings passed through; an event open at the end closed with reason end_of_file)."""
    s, _ = streaming_scores(scored.embeddings, models[2].score, 4, 0)  # what the 4/0 run will score
    settings = EventSettings(on_threshold=float(np.quantile(s, 0.5)), off_threshold=float(np.quantile(s, 0.2)),
                             min_duration=0.5, hold=1.0)
    res = score_video(clip, models, window=4, lookahead=0, events=settings, camera="cam-1")
    assert (res.window, res.lookahead, res.settings) == (4, 0, settings) and res.events
    np.testing.assert_allclose(res.scores, s, atol=1e-5)
    machine = EventMachine("cam-1", settings, list(res.class_names), list(res.display_names),
                           model_info={"name": res.bundle_name, "hash": res.bundle_hash})
    machine.bundle = BundleIds.of(models[0]).short
    want = machine.push_many([
        WindowScore("cam-1", i, float(res.start_s[i]), float(res.end_s[i]), float(res.scores[i]),
                    tuple(map(float, res.class_probs[i])), i, float(res.end_s[i])) for i in range(res.n_snippets)])
    last = machine.close("end_of_file")
    want += [last] if last is not None else []
    assert res.events == want
    assert all(e.camera == "cam-1" for e in res.events)


# --------------------------------------------------------------------------------------- CLI outputs


def test_csv_rows_times_and_probabilities(cli_run: dict[str, Any], models: tuple[Any, Any, Any]) -> None:
    bundle = models[0]
    with (cli_run["dir"] / "s.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header == ["index", "start_s", "end_s", "score", *bundle.display_names]
    d = bundle.snippet_seconds
    assert len(body) == expected_snippets(round(FPS * SECONDS), FPS, d)
    table = np.asarray(body, dtype=np.float64)
    assert table[:, 0].tolist() == list(range(len(body)))
    start, end = table[:, 1], table[:, 2]
    assert start[0] == 0 and np.all(np.diff(start) > 0) and np.all(end > start)
    assert np.allclose(np.diff(start), d, atol=2e-3) and np.allclose(end - start, d, atol=2e-3)
    assert end[-1] == pytest.approx(len(body) * d, abs=2e-3) and end[-1] >= SECONDS - 1 / FPS
    probs = table[:, 3:]
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(table[:, 4:].sum(axis=1), 1.0, atol=1e-4)


def test_events_jsonl_live_schema_and_semantics(cli_run: dict[str, Any], clip: Path) -> None:
    lines = (cli_run["dir"] / "e.jsonl").read_text().splitlines()
    assert lines, "the median threshold must produce events"
    table = np.asarray(list(csv.reader((cli_run["dir"] / "s.csv").open()))[1:], dtype=np.float64)
    start_s, end_s, score = table[:, 1], table[:, 2], table[:, 3]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        d = json.loads(line)
        assert list(d)[: len(LIVE_KEYS)] == LIVE_KEYS and list(d)[len(LIVE_KEYS):] == ["video"]
        ev = Event.from_dict(d)  # the live parser accepts it
        assert isinstance(d["bundle"], str) and len(d["bundle"]) == 12 and int(d["bundle"], 16) >= 0
        assert ev.camera == clip.stem and d["model"]["name"].startswith("tiny")
        # ISO times are epoch 0 + seconds into the video; "video" carries the same seconds
        assert d["start_time"].startswith("1970-01-01T00:0")
        assert d["video"]["name"] == clip.name
        assert d["video"]["start_s"] == pytest.approx(parse_iso_utc(d["start_time"]), abs=1e-3)
        assert d["video"]["updated_s"] == pytest.approx(parse_iso_utc(d["updated_time"]), abs=1e-3)
        by_id.setdefault(d["id"], []).append(d)
    for msgs in by_id.values():
        assert [m["seq"] for m in msgs] == list(range(len(msgs)))
        assert msgs[0]["type"] == "start" and msgs[-1]["type"] == "end"
        assert all(m["type"] == "update" for m in msgs[1:-1])
        end = msgs[-1]
        assert end["reason"] in ("score_below_threshold", "end_of_file")
        s, e = end["video"]["start_s"], end["video"]["end_s"]
        assert 0 <= s < e <= end_s[-1] + 1e-3
        first = int(np.argmin(np.abs(start_s - s)))
        last = int(np.argmin(np.abs(end_s - e)))
        assert abs(start_s[first] - s) < 2e-3 and abs(end_s[last] - e) < 2e-3  # snippet boundaries
        assert score[first] >= cli_run["on"] - 1e-4  # it started on a snippet at or over the on threshold
        assert score[last] >= cli_run["off"] - 1e-4  # and ended after the last one still over the off one
        assert end["snippets"] <= last - first + 1
        assert end["peak_score"] == pytest.approx(score[first:last + 1].max(), abs=1e-3)


def test_summary_names_events_in_mmss(cli_run: dict[str, Any]) -> None:
    out = cli_run["stdout"]
    n_lines = len({json.loads(x)["id"] for x in (cli_run["dir"] / "e.jsonl").read_text().splitlines()})
    assert "15 snippets" in out and "window 8, lookahead 3" in out
    assert f"events: {n_lines}" in out
    spans = [ln for ln in out.splitlines() if ln.startswith("  ") and "peak" in ln]
    assert len(spans) == n_lines
    for ln in spans:
        a, b = ln.split()[0].split("-")
        assert len(a) == len(b) == 5 and a[2] == ":" and a <= b


def test_plot_is_a_readable_image(cli_run: dict[str, Any]) -> None:
    from matplotlib import image

    path = cli_run["dir"] / "t.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = image.imread(str(path))
    h, w = img.shape[:2]
    assert 500 <= h <= 800 and 1000 <= w <= 1600
    assert path.stat().st_size < 300_000
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not blank
    # the event spans are shaded in colour (red-ish tab10), not only greys and the score's blue
    reddish = (rgb[..., 0] > rgb[..., 1] + 0.08) & (rgb[..., 0] > rgb[..., 2] + 0.08)
    assert reddish.mean() > 0.005


def test_plot_edge_cases(scored: ScoreResult, tmp_path: Path) -> None:
    """No event and a one-snippet video still give a valid plot."""
    from matplotlib import image

    from stream.plot import plot_timeline

    quiet = ScoreResult(**{**scored.__dict__, "events": []})
    one = ScoreResult(**{**scored.__dict__, "events": [], "start_s": scored.start_s[:1], "end_s": scored.end_s[:1],
                         "scores": scored.scores[:1], "class_probs": scored.class_probs[:1]})
    for name, res in (("quiet.png", quiet), ("one.png", one)):
        img = image.imread(str(plot_timeline(res, tmp_path / "sub" / name)))
        assert img.shape[0] > 300 and img[..., :3].std() > 0.05


# --------------------------------------------------------------------------------------- bad input


def test_bad_inputs_exit_2_with_clear_messages(tmp_path: Path, clip: Path, tiny_bundle_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    b = ["-b", str(tiny_bundle_dir), "--runtime", "onnxruntime", "-q"]
    missing = tmp_path / "nope.mp4"
    rc, _, err = run_cli("score", str(missing), *b)
    assert rc == 2 and f"video {missing} does not exist" in err

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rc, _, err = run_cli("score", str(junk), *b)
    assert rc == 2 and "cannot open video" in err and str(junk) in err and "Traceback" not in err

    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # moov atom lost
    rc, _, err = run_cli("score", str(truncated), *b)
    assert rc == 2 and str(truncated) in err

    rc, _, err = run_cli("score", str(tmp_path), *b)
    assert rc == 2 and "is not a file" in err

    rc, _, err = run_cli("score", str(clip), "-b", str(tmp_path / "no-bundle"), "-q")
    assert rc == 2 and "no-bundle" in err

    rc, _, err = run_cli("score", str(clip), "-q")
    assert rc == 2 and "-b/--bundle" in err

    rc, _, err = run_cli("score", str(clip), *b, "--window", "8", "--lookahead", "8")
    assert rc == 2 and "--lookahead 8" in err

    rc, _, err = run_cli("score", str(clip), *b, "--window", "300")
    assert rc == 2 and "--window 300" in err

    rc, _, err = run_cli("score", str(clip), *b, "--on-threshold", "0.3", "--off-threshold", "0.5")
    assert rc == 2 and "off_threshold" in err

    rc, _, err = run_cli("score", str(clip), *b, "--start-at", "yesterday")
    assert rc == 2 and "yesterday" in err

    rc, _, err = run_cli("score", str(clip), *b, "--csv", str(clip))
    assert rc == 2 and "refusing to overwrite" in err

    rc, _, err = run_cli("score", str(clip), *b, "--events", str(junk / "e.jsonl"))  # a folder that is a file
    assert rc == 2 and "e.jsonl" in err and "Traceback" not in err

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the 'train' extra were not installed
    rc, _, err = run_cli("score", str(clip), *b, "--plot", str(tmp_path / "x.png"))
    assert rc == 2 and "pip install 'dsanet-stream[train]'" in err and "matplotlib" in err
    assert not (tmp_path / "x.png").exists()


def test_config_settings_and_start_at(tmp_path: Path, clip: Path, tiny_bundle_dir: Path,
                                      scored: ScoreResult, models: tuple[Any, Any, Any]) -> None:
    """-c takes window and events from the deployment (camera overrides applied); --start-at anchors the
    ISO event times while CSV and 'video' times stay relative to the file."""
    s, _ = streaming_scores(scored.embeddings, models[2].score, 6, 1)  # what the yard camera will score
    on = float(np.quantile(s, 0.5))
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(
        f"cameras:\n  - name: yard\n    url: file://{clip}\n    window: {{length: 6, lookahead: 1}}\n"
        f"    events: {{on_threshold: {on}, off_threshold: 0.0, min_duration: 0}}\n"
        f"  - name: gate\n    url: file://{clip}\n"
        f"model:\n  bundle: {tiny_bundle_dir}\n  runtime: onnxruntime\n")
    rc, out, err = run_cli("score", str(clip), "-c", str(cfg), "--camera", "yard", "-q",
                           "--start-at", "2026-11-29T07:00:00Z", "--events", str(tmp_path / "e.jsonl"))
    assert rc == 0, err
    assert "window 6, lookahead 1" in out and f"on {on:g}" in out
    lines = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert lines and all(d["camera"] == "yard" for d in lines)
    d = lines[0]
    assert d["start_time"].startswith("2026-11-29T07:00:")
    assert parse_iso_utc(d["start_time"]) - parse_iso_utc("2026-11-29T07:00:00Z") == pytest.approx(
        d["video"]["start_s"], abs=1e-3)
    rc, _, err = run_cli("score", str(clip), "-c", str(cfg), "--camera", "porch", "-q")
    assert rc == 2 and "no camera named 'porch'" in err and "yard, gate" in err


def test_model_categories_apply_to_score(tmp_path: Path, clip: Path, tiny_bundle_dir: Path, scored: ScoreResult,
                                         models: tuple[Any, Any, Any]) -> None:
    """model.categories of -c reaches `dsanet score` as it reaches the live service: names and keys in the
    CSV and events, and the class probabilities of head_open.onnx against the edited class features."""
    from engine.categories import AddedCategory, CategoryEdit, OpenHeadModel, build

    edit = CategoryEdit(add=(AddedCategory("Person falling", ("a person falls down",)),),
                        rename={"Fighting": "Brawl"}, drop=("Arrest",))
    cats = build(models[0], edit)
    mine = score_video(clip, models, categories=edit, window=6, lookahead=1)
    assert mine.class_names == cats.keys and mine.display_names == cats.names
    _, want = streaming_scores(mine.embeddings, OpenHeadModel(models[0], cats).score, 6, 1)
    np.testing.assert_allclose(mine.class_probs, want, atol=1e-6)
    renamed = score_video(clip, models, categories=CategoryEdit(rename={"Fighting": "Brawl"}))
    np.testing.assert_array_equal(renamed.class_probs, scored.class_probs)  # a rename keeps the baked head
    assert renamed.class_names == models[0].class_names and "Brawl" in renamed.display_names

    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(f"cameras:\n  - name: yard\n    url: file://{clip}\nmodel:\n  bundle: {tiny_bundle_dir}\n"
                   f"  runtime: onnxruntime\n  categories:\n    add:\n      - name: Person falling\n"
                   f"        prompts: [\"a person falls down\"]\n    rename: {{Fighting: Brawl}}\n    drop: [Arrest]\n"
                   f"window: {{length: 6, lookahead: 1}}\n")
    rc, _, err = run_cli("score", str(clip), "-c", str(cfg), "-q", "--csv", str(tmp_path / "s.csv"))
    assert rc == 0, err
    with (tmp_path / "s.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "start_s", "end_s", "score", *cats.names]
    np.testing.assert_allclose(np.asarray(rows[1:], dtype=np.float64)[:, 4:], want, atol=1e-5)
