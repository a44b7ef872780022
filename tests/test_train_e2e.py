"""End to end: synthetic features -> ``dsanet train`` (tiny CLIP) -> ``dsanet eval`` -> reload, resume.

The presets run with smaller shapes through ``--set`` overrides (64-snippet sequences, 8 + 8 videos per
step, 2 decoder layers) so the whole file stays around a minute on a CPU; the code paths are the
official ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.errors import CheckpointError  # noqa: E402
from export.batches import plan_epoch, planned_iterations  # noqa: E402
from export.checkpoint import load_checkpoint, load_weights_into, read_checkpoint_info  # noqa: E402
from export.data import ListRow  # noqa: E402
from export.model_eval import score_videos  # noqa: E402
from export.train_config import load_train_config  # noqa: E402
from stream.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UCF = str(ROOT / "configs" / "train" / "ucf.yaml")
SMALL = ["--set", "batch.normal=8", "--set", "batch.abnormal=8", "--set", "model.visual_length=64",
         "--set", "model.decoder_depth=2", "--set", "model.visual_layers=1", "--set", "optim.main.lr=1e-4",
         "--set", "optim.sgnm.planned_iterations=20", "--set", "optim.sgnm.warmup_iters=5",
         "--set", "eval.every_steps=1", "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):  # noqa: ANN001, ANN201
    """A synthetic UCF-layout data set and a DSANET_CACHE so that ``--clip tiny`` builds in a tmp dir."""
    base = tmp_path_factory.mktemp("e2e")
    old = os.environ.get("DSANET_CACHE")
    os.environ["DSANET_CACHE"] = str(base / "cache")
    data = base / "data"
    assert main(["synth-features", "--out", str(data), "--preset", "ucf", "--videos", "48", "--seed", "1",
                 "--crops", "1"]) == 0
    yield {"base": base, "data": data}
    if old is None:
        os.environ.pop("DSANET_CACHE", None)
    else:
        os.environ["DSANET_CACHE"] = old


def _train(env, out: Path, *extra: str) -> int:  # noqa: ANN001
    return main(["train", "-c", UCF, "--data-root", str(env["data"]), "--clip", "tiny", "--out", str(out),
                 *SMALL, *extra])


@pytest.fixture(scope="module")
def run(env):  # noqa: ANN001, ANN201
    """A straight two-epoch run (2 steps per epoch, one evaluation inside each epoch)."""
    out = env["base"] / "run"
    assert _train(env, out, "--epochs", "2") == 0
    return out


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_train_writes_checkpoints_logs_and_metadata(run: Path) -> None:
    for name in ("best.safetensors", "last.safetensors", "last_optim.pt", "config.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    events = _events(run)
    evals = [e for e in events if e["event"] == "eval"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 2 and len(evals) == 2 and all(e["step"] == 1 for e in evals)
    assert {"bce", "align", "separation", "event", "background", "consistency", "gather", "total"} <= set(evals[0]["losses"])
    # the training loss goes down on this easy data set
    assert epochs[-1]["losses"]["total"] < epochs[0]["losses"]["total"]
    info = read_checkpoint_info(run / "best.safetensors")
    assert info.dsanet_config.preset == "ucf" and info.dsanet_config.visual_length == 64
    assert info.clip == "tiny" and info.snippet_frames == 16 and info.snippet_fps == 30.0
    assert info.train_config["epochs"] == 2 and info.train_config["batch"]["normal"] == 8
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    assert keys and not any(k.startswith("text.clip.") for k in keys)
    assert any(k.startswith("text.adapters.") for k in keys)


def test_eval_auc_and_reload_gives_identical_scores(env, run: Path, tiny_clip_dir) -> None:  # noqa: ANN001
    out_json = env["base"] / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "-c", UCF, "--data-root", str(env["data"]),
                 "--clip", "tiny", "--json", str(out_json), "--no-progress"]) == 0
    res = json.loads(out_json.read_text())
    assert res["auc"] >= 0.95
    assert set(res["map"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "avg"} and "map_13" in res
    # the reloaded checkpoint scores exactly as the model did when it was selected during training
    best = max((e for e in _events(run) if e["event"] == "eval"), key=lambda e: e["value"])
    assert res["auc"] == pytest.approx(best["auc"], abs=1e-9)
    assert res["ap"] == pytest.approx(best["ap"], abs=1e-9)
    # and a second load, and its inference head, give the same per-video scores
    from export.data import read_list

    rows = read_list(env["data"] / "list" / "ucf_CLIP_rgbtest.csv", env["data"])
    m1 = load_checkpoint(run / "best.safetensors", os.environ["DSANET_CACHE"] + "/tiny-clip")
    m2 = load_checkpoint(run / "best.safetensors", os.environ["DSANET_CACHE"] + "/tiny-clip")
    s1, p1 = score_videos(m1, rows[:4])
    s2, p2 = score_videos(m2, rows[:4])
    for a, b in zip(s1 + p1, s2 + p2, strict=True):
        np.testing.assert_array_equal(a, b)
    head = m1.inference_head()
    t = min(len(s1[0]), 64)
    from export.data import load_features

    x = torch.from_numpy(load_features(rows[0].path)[:t][None])
    with torch.no_grad():
        hs, hp = head(x, torch.tensor([t]))
    if len(s1[0]) <= 64:  # a whole short video: the head sees exactly what the evaluation saw
        np.testing.assert_allclose(hs[0].numpy(), s1[0], atol=1e-6)
        np.testing.assert_allclose(hp[0].numpy(), p1[0], atol=1e-6)


def test_wrong_preset_or_shape_names_the_file(env, run: Path) -> None:  # noqa: ANN001
    clip = os.environ["DSANET_CACHE"] + "/tiny-clip"
    with pytest.raises(CheckpointError, match="best.safetensors.*'ucf'"):
        load_checkpoint(run / "best.safetensors", clip, expect_preset="xd")
    from engine.model import DSANetConfig, build_model

    info = read_checkpoint_info(run / "best.safetensors")
    other = DSANetConfig.from_dict({**info.dsanet_config.to_dict(), "decoder_depth": 3})
    with pytest.raises(CheckpointError, match="best.safetensors"):
        load_weights_into(build_model(other, clip), run / "best.safetensors")
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "-c", "xd", "--data-root",
                 str(env["data"]), "--clip", "tiny", "--no-progress"]) == 2
    with pytest.raises(CheckpointError, match="not a DSANet checkpoint|not a readable"):
        bogus = env["base"] / "bogus.safetensors"
        bogus.write_bytes(b"not a checkpoint")
        read_checkpoint_info(bogus)


def test_resume_continues_exactly_where_a_straight_run_would_be(env, run: Path, capsys) -> None:  # noqa: ANN001
    out = env["base"] / "resumed"
    assert _train(env, out, "--resume", "--epochs", "1") == 2  # nothing to resume yet
    assert "does not exist" in capsys.readouterr().err
    assert _train(env, out, "--epochs", "1") == 0
    assert _train(env, out, "--epochs", "1") == 2  # refuses to overwrite a run without --resume
    assert _train(env, out, "--resume", "--epochs", "2") == 0
    from safetensors.torch import load_file

    a, b = load_file(str(run / "last.safetensors")), load_file(str(out / "last.safetensors"))
    assert a.keys() == b.keys()
    # same data order, optimiser moments, schedules and best-weight reload: bit-identical on this CPU
    # (the SGNM schedule length is pinned: with planned_iterations null it depends on --epochs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    best3 = [e["value"] for e in _events(run) if e["event"] == "eval"]
    best2 = [e["value"] for e in _events(out) if e["event"] == "eval"]
    assert best2 == pytest.approx(best3, abs=1e-6)


def _rows(n: int, label: str) -> list[ListRow]:
    return [ListRow(path=Path(f"{label}{i}__0.npy"), label=label) for i in range(n)]


def test_plan_epoch_uses_what_there_is_on_small_data() -> None:
    ucf = load_train_config(UCF)
    normal, abnormal = _rows(20, "Normal"), _rows(100, "Abuse")
    plan = plan_epoch(ucf, normal, abnormal, normal + abnormal, 0)
    assert len(plan) == 1 and len(plan[0]) == 20 + 64
    assert all(r.label == "Normal" for r in plan[0][:20]) and all(r.label == "Abuse" for r in plan[0][20:])
    # official size: 8000 / 64 = 125 steps with drop_last; normal first in every step
    big = plan_epoch(ucf, _rows(8000, "Normal"), _rows(8100, "Abuse"), [], 0)
    assert len(big) == 125 and all(len(s) == 128 and s[63].label == "Normal" and s[64].label == "Abuse" for s in big)
    assert plan_epoch(ucf, normal, abnormal, [], 0) == plan  # deterministic per seed and epoch
    assert plan_epoch(ucf, normal, abnormal, [], 1) != plan
    xd = load_train_config(ROOT / "configs" / "train" / "xd.yaml")
    mixed = _rows(50, "A") + _rows(60, "B1-0-0")
    plan = plan_epoch(xd, [], [], mixed, 0)
    assert [len(s) for s in plan] == [96, 14]  # last batch kept
    assert len(plan_epoch(xd, [], [], mixed[:30], 0)) == 1


def test_planned_iterations_official_values_and_formula() -> None:
    ucf = load_train_config(UCF)
    assert planned_iterations(ucf, 8000, 8100, 16100, 10) == 2510
    auto = load_train_config(UCF, ["optim.sgnm.planned_iterations=null"])
    assert planned_iterations(auto, 8000, 8100, 16100, 10) == 10 * (125 + 126)
    xd = load_train_config(ROOT / "configs" / "train" / "xd.yaml", ["optim.sgnm.planned_iterations=null"])
    assert planned_iterations(xd, 0, 0, 39540, 10) == 4120


def test_validation_split_holds_out_whole_videos_of_both_kinds() -> None:
    from export.batches import split_validation

    rows = [ListRow(path=Path(f"Abuse{i:03d}_x264__{k}.npy"), label="Abuse") for i in range(10) for k in range(10)]
    rows += [ListRow(path=Path(f"Normal{i:03d}__{k}.npy"), label="Normal") for i in range(10) for k in range(10)]
    train, val = split_validation(rows, "ucf", 0.2, 234)
    held = {r.video for r in val}
    assert len(val) == len(held) == 4  # 2 normal + 2 anomalous videos, one crop each
    assert {r.label for r in val} == {"Abuse", "Normal"}
    assert not held & {r.video for r in train} and len(train) == 160
    assert split_validation(rows, "ucf", 0.2, 234)[1] == val  # deterministic per seed
