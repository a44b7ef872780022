"""``dsanet finetune``: site data in, a guarded, checked, lineage-carrying bundle out (or a refusal).

One fine-tune of the session's tiny bundle is shared by the tests that look at its result (it runs the
trainer step and the real exporter, the slow part); the refusal and bad-input cases stop before export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

WIDTH = 512
PATTERN_SEED, EVENT_SEED = 11, 12


def _pattern(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(WIDTH).astype(np.float32)


def write_site(root: Path, head_sha: str, items: list[tuple[str, str, np.ndarray, float]],
               snippet: tuple[int, float] = (16, 30.0)) -> Path:
    """A site-data folder in the contract layout: items are (kind, label, base pattern, start)."""
    from export.data import write_list, write_snippet_info

    rng = np.random.default_rng(0)
    rows, lines = [], []
    for i, (kind, label, base, start) in enumerate(items):
        ex_id = f"ex{i:03d}"
        feats = (base[None] + 0.1 * rng.standard_normal((16, WIDTH))).astype(np.float32)
        path = root / "features" / "cam1" / f"{ex_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
        rows.append((f"features/cam1/{ex_id}.npy", label))
        lines.append(json.dumps({"id": ex_id, "camera": "cam1", "kind": kind, "label": label, "event_id": None,
                                 "start": start, "end": start + 8.5, "bundle": head_sha, "marked_at": start + 60}))
    write_list(root / "list.csv", rows)
    write_snippet_info(root, *snippet)
    (root / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _head_sha(bundle_dir: Path) -> str:
    return json.loads((bundle_dir / "bundle.json").read_text())["files"]["head.onnx"]["sha256"]


def onnx_scores(bundle_dir: Path, feats: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle_dir / "head.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(["scores"], {"features": feats[None].astype(np.float32),
                                "lengths": np.asarray([len(feats)], dtype=np.int64)})
    return out[0][0]


def live_onnx_scores(bundle_dir: Path, feats: np.ndarray, lookahead: int = 4) -> np.ndarray:
    """The rows' scores as the service reports them: stream's live window over the ONNX head."""
    import onnxruntime as ort

    from engine.bundle import load_bundle
    from stream.window import streaming_scores

    sess = ort.InferenceSession(str(bundle_dir / "head.onnx"), providers=["CPUExecutionProvider"])

    def fn(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, p = sess.run(["scores", "class_probs"], {"features": x.astype(np.float32), "lengths": lengths})
        return s, p

    length = min(64, load_bundle(bundle_dir).max_window)
    return streaming_scores(feats, fn, length, lookahead)[0]


@pytest.fixture(scope="module")
def finetuned(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from export.finetune import FinetuneOptions, finetune

    work = tmp_path_factory.mktemp("finetune")
    fa, ev = _pattern(PATTERN_SEED), _pattern(EVENT_SEED)
    items = [("false_alarm", "Normal", fa, 1000.0 + 60 * i) for i in range(4)]
    items += [("confirmed", "Fighting", ev, 1030.0 + 60 * i) for i in range(3)]
    site = write_site(work / "site", _head_sha(tiny_bundle_dir), items)
    bundle, report = finetune(tiny_bundle_dir, site, work / "b2", FinetuneOptions(steps=3, lr=3e-4), force=False)
    return {"bundle": bundle, "report": report, "site": site, "fa": fa, "work": work}


def test_finetune_moves_marked_false_alarms_toward_normal(finetuned: dict[str, Any], tiny_bundle_dir: Path) -> None:
    site: Path = finetuned["site"]
    rows = [json.loads(x) for x in (site / "examples.jsonl").read_text().splitlines()]
    fa_files = [site / "features" / "cam1" / f"{r['id']}.npy" for r in rows if r["kind"] == "false_alarm"]
    before = np.mean([onnx_scores(tiny_bundle_dir, np.load(p)).mean() for p in fa_files])
    after = np.mean([onnx_scores(finetuned["bundle"].root, np.load(p)).mean() for p in fa_files])
    assert after < before * 0.8, (before, after)


def test_finetuned_bundle_passes_parity_and_records_lineage(finetuned: dict[str, Any], tiny_bundle_dir: Path) -> None:
    from engine.bundle import load_bundle, sha256_file

    bundle = load_bundle(finetuned["bundle"].root)  # sha256 of every file, graph widths
    assert bundle.parity["head"]["passed"] and bundle.parity["encoder"]["passed"]
    parent = load_bundle(tiny_bundle_dir)
    if parent.text is not None:  # categories stay editable: text tower reused, open head re-exported
        assert bundle.parity["head_open"]["passed"]
        assert sha256_file(bundle.path("text.onnx")) == sha256_file(parent.path("text.onnx"))
    lineage = bundle.extra["finetune"]
    assert lineage["parent"]["head_sha256"] == parent.files["head.onnx"].sha256
    assert lineage["parent"]["content_hash"] == parent.content_hash
    report = finetuned["report"]
    # latest 25% of each kind held out: 4 false alarms -> 1, 3 confirmed -> at least 1
    assert lineage["learned_from"] == {"Normal": 3, "Fighting": 2} == report.train_counts
    assert lineage["held_out"] == {"false_alarm": 1, "confirmed": 1}
    assert bundle.files["head.onnx"].sha256 != parent.files["head.onnx"].sha256


def test_refuses_a_head_worse_on_held_out_true_events(tiny_bundle_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The held-out confirmed event looks exactly like the marked false alarms: learning them as normal
    must lose it, and the command must say so and write nothing."""
    from stream.cli import main

    fa = _pattern(PATTERN_SEED)
    items = [("false_alarm", "Normal", fa, 1000.0 + 60 * i) for i in range(3)]
    items += [("confirmed", "Fighting", _pattern(EVENT_SEED), 1100.0), ("confirmed", "Fighting", fa, 2000.0)]
    site = write_site(tmp_path / "site", _head_sha(tiny_bundle_dir), items)
    held_out = np.load(site / "features" / "cam1" / "ex004.npy")
    # the parent detects it here, scored as the service scores it (live window, lookahead 4)
    threshold = float(live_onnx_scores(tiny_bundle_dir, held_out).max()) * 0.9
    out = tmp_path / "b2"
    code = main(["finetune", "--bundle", str(tiny_bundle_dir), "--site-data", str(site), "--out", str(out),
                 "--steps", "3", "--lr", "3e-4", "--holdout", "0.3", "--on-threshold", f"{threshold:.6g}",
                 "--min-duration", "0", "--max-event-drop", "1.0"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "detects 0 of 1 held-out true events, the parent 1" in err and "no bundle written" in err
    assert not out.exists()


@pytest.mark.parametrize(("damage", "names"), [
    ("no_examples", "examples.jsonl: missing"),
    ("bad_json", "examples.jsonl line 2: not JSON"),
    ("unknown_label", "examples.jsonl line 1: label 'Flag' is not a class"),
    ("missing_key", "examples.jsonl line 1: missing keys start"),
    ("wrong_width", "ex001.npy has width 8"),
    ("orphan_row", "list.csv: features/cam1/extra.npy has no example"),
    ("kind_label_mismatch", "examples.jsonl line 1: kind confirmed with label 'Normal'"),
    ("event_rows_outside", "examples.jsonl line 1: event_rows [3, 16] must be [first, last] row numbers"),
])
def test_bad_site_data_is_a_clear_error_naming_the_file(tiny_bundle_dir: Path, tmp_path: Path, damage: str, names: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    site = write_site(tmp_path / "site", _head_sha(tiny_bundle_dir),
                      [("false_alarm", "Normal", _pattern(1), 1000.0), ("confirmed", "Fighting", _pattern(2), 1100.0)])
    ex = site / "examples.jsonl"
    lines = ex.read_text().splitlines()
    first = json.loads(lines[0])
    if damage == "no_examples":
        ex.unlink()
    elif damage == "bad_json":
        ex.write_text(lines[0] + "\n{not json\n")
    elif damage == "unknown_label":
        ex.write_text(json.dumps({**first, "label": "Flag"}) + "\n" + lines[1] + "\n")
    elif damage == "missing_key":
        ex.write_text(json.dumps({k: v for k, v in first.items() if k != "start"}) + "\n" + lines[1] + "\n")
    elif damage == "wrong_width":
        np.save(site / "features" / "cam1" / "ex001.npy", np.zeros((4, 8), np.float32))
    elif damage == "orphan_row":
        np.save(site / "features" / "cam1" / "extra.npy", np.zeros((4, WIDTH), np.float32))
        with (site / "list.csv").open("a") as fh:
            fh.write("features/cam1/extra.npy,Normal\n")
    elif damage == "kind_label_mismatch":
        ex.write_text(json.dumps({**first, "kind": "confirmed"}) + "\n" + lines[1] + "\n")
    elif damage == "event_rows_outside":  # the files hold 16 rows
        ex.write_text(json.dumps({**first, "event_rows": [3, 16]}) + "\n" + lines[1] + "\n")
    code = main(["finetune", "--bundle", str(tiny_bundle_dir), "--site-data", str(site), "--out", str(tmp_path / "b2")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert names in err and "Traceback" not in err
    assert not (tmp_path / "b2").exists()


@pytest.mark.parametrize(("kinds", "fraction", "held"), [
    ({"false_alarm": 4, "confirmed": 3}, 0.25, {"false_alarm": 1, "confirmed": 1}),  # >= 2 events: one held out
    ({"false_alarm": 1, "confirmed": 1}, 0.5, {}),  # a kind is never held out whole
    ({"false_alarm": 10, "normal_sample": 4}, 0.3, {"false_alarm": 3, "normal_sample": 1}),
    ({"confirmed": 2}, 0.0, {"confirmed": 1}),
])
def test_split_holds_out_the_latest_of_each_kind(kinds: dict[str, int], fraction: float, held: dict[str, int]) -> None:
    from export.finetune import SiteExample, split_by_time

    exs = []
    for kind, n in kinds.items():
        label = "Fighting" if kind == "confirmed" else "Normal"
        for i in range(n):  # starts interleaved and out of order
            exs.append(SiteExample(f"{kind}{i}", "c", kind, label, float((7 * i) % n) + 0.1 * len(exs), 0.0, None,
                                   Path("x.npy")))
    train, out = split_by_time(exs, fraction)
    got: dict[str, int] = {}
    for e in out:
        got[e.kind] = got.get(e.kind, 0) + 1
    assert got == held
    for kind in kinds:  # everything held out is later than everything trained on, per kind
        tr = [e.start for e in train if e.kind == kind]
        ho = [e.start for e in out if e.kind == kind]
        if tr and ho:
            assert max(tr) <= min(ho)


class _RowHead:
    """A stand-in head: each row scores its own first feature (what a well-behaved head does)."""

    def eval(self) -> _RowHead:
        return self

    def __call__(self, feats: Any, lengths: Any) -> tuple[Any, Any]:
        import torch

        s = feats[..., 0].clamp(0, 1)
        return s, torch.stack([1 - s, s], dim=-1)


def test_held_out_check_reads_the_event_rows_with_the_start_rule(tmp_path: Path) -> None:
    """The check scores the stored rows through the live window and asks whether a live event would start
    in the event's own rows: a blip too short for min_duration is not a detection, a high score in the
    context is not the event's, and too little context before the event is counted."""
    from export.finetune import LiveCheck, SiteExample, held_out_figures

    def example(name: str, values: list[float], rows: tuple[int, int] | None, kind: str = "confirmed") -> SiteExample:
        feats = np.zeros((len(values), 4), np.float32)
        feats[:, 0] = values
        np.save(tmp_path / f"{name}.npy", feats)
        return SiteExample(name, "c", kind, "Fighting" if kind == "confirmed" else "Normal", 0.0, 1.0, None,
                           tmp_path / f"{name}.npy", rows)

    ctx = [0.0] * 30
    held = [example("held", ctx + [0.9, 0.9, 0.9] + [0.0] * 8, (30, 32)),  # detected
            example("blip", ctx + [0.9, 0.1, 0.9] + [0.0] * 8, (30, 32)),  # never 2 in a row: missed
            example("context", [0.9] * 30 + [0.1, 0.1] + [0.0] * 8, (30, 31)),  # high only in its context
            example("short", [0.0, 0.9, 0.9, 0.0], (1, 2)),  # detected, but with 1 row of context
            example("fa", ctx + [0.95, 0.95] + [0.0] * 8, (30, 31), kind="false_alarm")]
    check = LiveCheck(window=16, lookahead=4, on_threshold=0.6, run=2)
    got = held_out_figures(_RowHead(), held, check, width=4)
    assert (got.events, got.events_detected, got.false, got.false_flagged) == (4, 2, 1, 1)
    assert got.short_context == 1
    assert got.event_mean_score == pytest.approx(np.mean([0.9, 0.9, 0.1, 0.9]))
