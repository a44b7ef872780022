"""``dsanet synth-features``: VadCLIP layout, ground-truth consistency, re-rooting and learnable classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DataError
from export.data import (
    FeatureDataset,
    batch_labels,
    default_lists,
    feature_length,
    load_features,
    read_list,
    snippet_info,
    split_normal,
)
from export.gt import load_ground_truth, parse_ucf_annotations
from export.synth import synth_features
from stream.cli import main


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ucf"
    return synth_features(out, "ucf", videos=20, seed=3)


def test_ucf_layout_and_lists(ucf):
    out = ucf.out
    assert (out / "list" / "Temporal_Anomaly_Annotation.txt").is_file()
    for name in ("gt_ucf.npy", "gt_segment_ucf.npy", "gt_label_ucf.npy"):
        assert (out / "list" / name).is_file()
    train_csv, test_csv = default_lists("ucf", out)
    assert (train_csv, test_csv) == (ucf.train_csv, ucf.test_csv)
    assert train_csv.read_text().splitlines()[0] == "path,label"
    train = read_list(train_csv, data_root=out)
    test = read_list(test_csv, data_root=out)
    # train: 10 crops __0..__9 per video, anomalous first grouped by class, then Normal
    by_video: dict[str, list[int]] = {}
    for r in train:
        by_video.setdefault(r.video, []).append(r.crop)
    assert all(sorted(c) == list(range(10)) for c in by_video.values())
    labels = [r.label for r in train]
    first_normal = labels.index("Normal")
    assert set(labels[first_normal:]) == {"Normal"}
    anomalous = labels[:first_normal]
    assert anomalous == sorted(anomalous, key=["Abuse", "Arrest", "Arson", "Assault", "Burglary", "Explosion",
                                              "Fighting", "RoadAccidents", "Robbery", "Shooting", "Shoplifting",
                                              "Stealing", "Vandalism"].index)
    # test: crop __5 only; both groups non-empty in both splits
    assert {r.crop for r in test} == {5}
    for rows in (train, test):
        normal, abnormal = split_normal(rows, "ucf")
        assert normal and abnormal
    assert not {r.video for r in train} & {r.video for r in test}
    for r in train[:3] + test[:3]:
        f = load_features(r.path)
        assert f.dtype == np.float32 and f.shape[1] == 512
    batch_labels([r.label for r in train + test], "ucf")  # every label is a known class


def test_lengths_exercise_pooling_and_chunking(ucf):
    train = read_list(ucf.train_csv)
    test = read_list(ucf.test_csv)
    train_t = [feature_length(r.path) for r in train]
    test_t = [feature_length(r.path) for r in test]
    assert max(train_t) > 256 and min(train_t) < 256
    assert max(test_t) > 256 and 256 in test_t
    long_test = next(i for i, t in enumerate(test_t) if t > 256)
    x, _, lengths = FeatureDataset(test, test_mode=True)[long_test]
    assert x.shape[0] == 2 and sum(lengths) == test_t[long_test]


def test_ground_truth_consistent_with_features_and_annotations(ucf, tmp_path):
    test = read_list(ucf.test_csv)
    gt = load_ground_truth("ucf", ucf.out, test)
    lengths = [feature_length(r.path) for r in test]
    assert gt.lengths == lengths and gt.frame_gt.size == 16 * sum(lengths)
    ann = parse_ucf_annotations(ucf.out / "list" / "Temporal_Anomaly_Annotation.txt")
    offset = 0
    for r, t, segs, labs in zip(test, lengths, gt.segments, gt.labels, strict=True):
        frames = gt.frame_gt[offset: offset + 16 * t]
        offset += 16 * t
        if r.label == "Normal":
            assert segs == [(0, 16 * t)] and labs == ["A"] and not frames.any()
        else:
            cls, ann_segs = ann[r.video]
            assert cls == r.label and segs == ann_segs and labs == [cls] * len(segs)
            assert 1 <= len(segs) <= 2 and frames.sum() == sum(e - s for s, e in segs)
    # the saved files equal what the annotations rebuild
    copy = tmp_path / "copy"
    shutil.copytree(ucf.out / "list", copy / "list")
    for name in ("gt_ucf.npy", "gt_segment_ucf.npy", "gt_label_ucf.npy"):
        (copy / "list" / name).unlink()
    rebuilt = load_ground_truth("ucf", copy, test)
    assert np.array_equal(rebuilt.frame_gt, gt.frame_gt) and rebuilt.segments == gt.segments


def test_moved_data_set_still_resolves(tmp_path):
    first = tmp_path / "a"
    synth_features(first, "ucf", videos=6, seed=1, crops=2)
    moved = tmp_path / "elsewhere" / "b"
    shutil.move(str(first), str(moved))
    train_csv, test_csv = default_lists("ucf", moved)
    rows = read_list(train_csv)  # relative to the data set folder
    assert all(moved in r.path.parents for r in rows)
    assert read_list(test_csv, data_root=moved)[0].path.is_file()
    gt = load_ground_truth("ucf", moved, read_list(test_csv, data_root=moved))
    assert len(gt.segments) == len(read_list(test_csv))


def test_deterministic_per_seed(tmp_path):
    a = synth_features(tmp_path / "a", "xd", videos=8, seed=5, crops=1)
    b = synth_features(tmp_path / "b", "xd", videos=8, seed=5, crops=1)
    c = synth_features(tmp_path / "c", "xd", videos=8, seed=6, crops=1)
    assert a.train_csv.read_text() == b.train_csv.read_text()
    rel = Path(a.train_csv.read_text().splitlines()[1].split(",")[0])
    assert np.array_equal(np.load(a.out / rel), np.load(b.out / rel))
    assert (a.out / "list" / "annotations.txt").read_text() == (b.out / "list" / "annotations.txt").read_text()
    other = c.out / rel
    assert not other.exists() or not np.array_equal(np.load(a.out / rel), np.load(other))


def test_xd_layout_multilabels_and_ground_truth(tmp_path):
    s = synth_features(tmp_path / "xd", "xd", videos=24, seed=2)
    names = {p.name for p in (s.out / "list").iterdir()}
    assert {"xd_CLIP_rgb.csv", "xd_CLIP_rgbtest.csv", "annotations.txt", "annotations_multiclasses.txt",
            "gt.npy", "gt_segment.npy", "gt_label.npy"} <= names
    train = read_list(s.train_csv)
    test = read_list(s.test_csv)
    assert {r.crop for r in test} == {0}
    assert all(r.label == "A" or len(r.label.split("-")) == 3 for r in train + test)
    assert any(sum(t != "0" for t in r.label.split("-")) == 2 for r in train + test)  # multi-label videos
    targets = batch_labels([r.label for r in train], "xd")
    assert targets.sum(1).min() >= 1
    gt = load_ground_truth("xd", s.out, test)
    for r, labs in zip(test, gt.labels, strict=True):
        expected = {t for t in r.label.split("-") if t != "0"}
        assert set(labs) == expected  # every class of the name has its own segment
    assert snippet_info(s.out)["snippet_fps"] == 24.0


def test_class_is_learnable_from_segment_features(tmp_path):
    """Nearest class-centroid on the annotated snippets: train centroids classify test segments."""
    s = synth_features(tmp_path / "u", "ucf", videos=60, seed=4, crops=1)
    info = {v.name: v for v in s.videos}

    def segment_means(rows):
        xs, ys = [], []
        for r in rows:
            v = info[r.video]
            f = load_features(r.path)
            for code, a, b in v.segments:
                xs.append(f[a:b].mean(0))
                ys.append(code)
            if not v.segments:
                xs.append(f.mean(0))
                ys.append("Normal")
        return np.stack(xs), ys

    xtr, ytr = segment_means(read_list(s.train_csv))
    xte, yte = segment_means(read_list(s.test_csv))
    classes = sorted(set(ytr))
    cent = np.stack([xtr[[y == c for y in ytr]].mean(0) for c in classes])
    pred = [classes[i] for i in np.argmin(((xte[:, None] - cent[None]) ** 2).sum(-1), axis=1)]
    known = [i for i, y in enumerate(yte) if y in classes]
    acc = np.mean([pred[i] == yte[i] for i in known])
    assert acc >= 0.9


def test_too_few_videos_and_cli(tmp_path, capsys):
    with pytest.raises(DataError, match="at least 4"):
        synth_features(tmp_path / "x", "ucf", videos=3)
    assert main(["synth-features", "--out", str(tmp_path / "cli"), "--preset", "xd", "--videos", "6",
                 "--seed", "0", "--crops", "1"]) == 0
    assert "test list" in capsys.readouterr().out
    assert main(["synth-features", "--out", str(tmp_path / "bad"), "--videos", "2"]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert snippet_info(tmp_path / "cli")["snippet_frames"] == 16


def test_oracle_outputs_on_synthetic_test_set_score_perfectly(tmp_path):
    """Outputs built from the synthetic truth: AUC/AP 1 and AP 100 for every event class in the test set."""
    from export.evaluate import evaluate_outputs
    from export.metrics import XD_CLASSLIST

    s = synth_features(tmp_path / "xd", "xd", videos=40, seed=7, crops=1)
    test = read_list(s.test_csv)
    gt = load_ground_truth("xd", s.out, test)
    info = {v.name: v for v in s.videos}
    rng = np.random.default_rng(0)
    scores, probs = [], []
    for r, t in zip(test, gt.lengths, strict=True):
        p = np.full((t, 7), 0.01, np.float32)
        p[:, 0] = 0.9
        for code, a, b in info[r.video].segments:
            p[a:b, 0] = 0.01
            p[a:b, XD_CLASSLIST.index(code)] = 0.9
        p += rng.uniform(0, 0.005, p.shape).astype(np.float32)  # every column varies: proposals everywhere
        probs.append(p)
        scores.append(1 - p[:, 0])
    res = evaluate_outputs(scores, probs, gt, "xd")
    assert res["auc"] == 1.0 and res["ap"] == 1.0
    present = {lab for labs in gt.labels for lab in labs} - {"A"}
    assert present
    for iou in ("0.1", "0.5"):
        for code in present:
            assert res["map_per_class"][iou][code] == pytest.approx(100.0)
