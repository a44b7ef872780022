"""The ``demo`` data preset (normal + the demo camera's three classes, UCF layout) end to end: labels,
training preset, model classes and prompts, synthetic lists, ground truth and evaluation. Fast: no
training (tests/test_demo.py trains and exports the real demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.demo_paths import TRAIN_PRESET_DIR
from engine.errors import DataError
from export.data import LABEL_MAPS, batch_labels, class_names, layout, raw_classes, read_list

DEMO_RAW = ["Normal", "Explosion", "Fighting", "RoadAccidents"]


def test_the_demo_preset_is_the_demo_cameras_classes_in_ucf_layout() -> None:
    from export.demo import EVENT_CLASSES

    assert raw_classes("demo") == DEMO_RAW == ["Normal", *EVENT_CLASSES]
    assert class_names("demo") == [LABEL_MAPS["ucf"][c] for c in DEMO_RAW]  # the same class words as UCF
    assert layout("demo") == "ucf" and layout("xd") == "xd"


@pytest.mark.parametrize("labels, hot", [
    (["Normal"], [0]), (["Fighting"], [2]), (["RoadAccidents", "Explosion"], [3, 1]),
])
def test_demo_labels_are_one_hot_over_four_classes(labels: list[str], hot: list[int]) -> None:
    y = batch_labels(labels, "demo")
    assert y.shape == (len(labels), 4)
    assert [int(i) for i in y.argmax(1)] == hot and np.all(y.sum(1) == 1)


@pytest.mark.parametrize("label", ["Abuse", "B1", "normal"])
def test_a_label_outside_the_demo_classes_is_refused_naming_the_preset(label: str) -> None:
    with pytest.raises(DataError, match=f"unknown demo label '{label}'"):
        batch_labels([label], "demo")


def test_the_demo_training_preset_builds_a_four_class_model_config() -> None:
    from export.checkpoint import model_config_for
    from export.train_config import load_train_config

    cfg = load_train_config(TRAIN_PRESET_DIR / "demo.yaml")
    assert cfg.preset == "demo"
    model = model_config_for(cfg, text_width=64)
    assert model.preset == "demo" and model.class_names == class_names("demo")
    assert model.class_prompts == [[c.lower()] for c in class_names("demo")]
    assert model.tau == cfg.model.tau


def test_demo_synthetic_lists_ground_truth_and_evaluation(tmp_path: Path) -> None:
    from export.evaluate import evaluate_outputs
    from export.gt import load_ground_truth
    from export.synth import synth_features

    summary = synth_features(tmp_path, preset="demo", videos=12, seed=3, crops=1)
    train = read_list(summary.train_csv)
    assert {r.label for r in train} <= set(DEMO_RAW) and "Normal" in {r.label for r in train}
    test = read_list(summary.test_csv)
    gt = load_ground_truth("demo", tmp_path, test)
    rng = np.random.default_rng(0)
    lengths = gt.lengths or [len(np.load(r.path)) for r in test]
    probs = [rng.dirichlet(np.ones(4), size=t) for t in lengths]
    res = evaluate_outputs([1 - p[:, 0] for p in probs], probs, gt, "demo")
    assert res["preset"] == "demo" and 0.0 <= res["auc"] <= 1.0
    assert all(list(per) == DEMO_RAW for per in res["map_per_class"].values())  # mAP over the 4 classes
