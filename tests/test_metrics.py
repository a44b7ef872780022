"""Frame AUC/AP and VadCLIP's detection mAP against hand-worked cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.errors import DataError
from export.evaluate import evaluate_outputs, format_table
from export.gt import GroundTruth
from export.metrics import UCF_CLASSLIST, XD_CLASSLIST, _nms_keep, detection_map, frame_auc_ap

KEYS = ["0.1", "0.2", "0.3", "0.4", "0.5"]


def probs_from_runs(t: int, runs: dict[int, list[tuple[int, int]]], n_cls: int, hi: float = 0.9) -> np.ndarray:
    """[T, C] rows: class c gets ``hi`` on its snippet runs, class 0 elsewhere; the rest share the remainder."""
    p = np.zeros((t, n_cls), dtype=np.float32)
    owner = np.zeros(t, dtype=int)
    for c, spans in runs.items():
        for s, e in spans:
            owner[s:e] = c
    lo = (1.0 - hi) / (n_cls - 1)
    p[:] = lo
    p[np.arange(t), owner] = hi
    return p


# ------------------------------------------------------------------------------------ frame AUC / AP


def test_frame_auc_ap_repeats_each_snippet_16_times():
    scores = [np.array([0.1, 0.9]), np.array([0.2])]
    gt = np.concatenate([np.zeros(16), np.ones(16), np.zeros(16)])
    auc, ap = frame_auc_ap(scores, gt)
    assert auc == 1.0 and ap == 1.0


def test_frame_auc_ap_matches_sklearn_on_frames_with_mixed_snippets():
    scores = [np.array([0.9, 0.1, 0.5])]
    gt = np.concatenate([np.zeros(8), np.ones(8), np.zeros(16), np.ones(16)])  # first snippet half abnormal
    auc, ap = frame_auc_ap(scores, gt)
    frames = np.repeat(scores[0], 16)
    assert auc == pytest.approx(roc_auc_score(gt, frames))
    assert ap == pytest.approx(average_precision_score(gt, frames))
    assert auc < 1.0  # the half-abnormal snippet's frames cannot all rank correctly


def test_frame_auc_ap_length_mismatch_is_a_clear_error():
    with pytest.raises(DataError, match="frame ground truth has 40 frames"):
        frame_auc_ap([np.array([0.1, 0.9])], np.r_[np.zeros(20), np.ones(20)])
    with pytest.raises(DataError, match="only one class"):
        frame_auc_ap([np.array([0.1, 0.9])], np.zeros(32))


# ------------------------------------------------------------------------------------ detection mAP


def test_perfect_single_video_detection_scores_100_at_every_iou():
    # classes A (normal) and B1; B1 on snippets 3..6 of 10, normal elsewhere; GT says exactly that.
    p = probs_from_runs(10, {1: [(3, 7)]}, 2)
    segs = [[(0, 48), (48, 112), (112, 160)]]
    labels = [["A", "B1", "A"]]
    res = detection_map([p], segs, labels, ["A", "B1"])
    assert [res[k] for k in KEYS] == [100.0] * 5
    assert res["avg"] == 100.0
    assert res["per_class"]["0.5"] == {"A": 100.0, "B1": 100.0}


def test_missed_segment_gives_zero_for_that_class():
    p = probs_from_runs(10, {1: [(3, 7)]}, 2)
    segs = [[(0, 48), (0, 32), (112, 160)]]  # B1 truth [0, 32) does not overlap the B1 detection [48, 112)
    res = detection_map([p], segs, [["A", "B1", "A"]], ["A", "B1"])
    assert [res[k] for k in KEYS] == [50.0] * 5  # A perfect, B1 zero


def test_iou_threshold_decides_the_match():
    # B1 detection [48, 112) vs truth [48, 304): IoU 64 / 256 = 0.25 -> matches at 0.1 and 0.2 only
    p = probs_from_runs(10, {1: [(3, 7)]}, 2)
    res = detection_map([p], [[(0, 48), (48, 304), (112, 160)]], [["A", "B1", "A"]], ["A", "B1"])
    assert [res[k] for k in KEYS] == [100.0, 100.0, 50.0, 50.0, 50.0]
    assert res["avg"] == pytest.approx(70.0)


def test_false_positive_ranked_first_halves_the_precision():
    # video 0: confident B1 run but its truth is normal; video 1: weaker B1 run that is right.
    p0 = probs_from_runs(8, {1: [(2, 5)]}, 2, hi=0.95)
    p1 = probs_from_runs(8, {1: [(2, 5)]}, 2, hi=0.8)
    segs = [[(0, 128)], [(32, 80)]]
    labels = [["A"], ["B1"]]
    res = detection_map([p0, p1], segs, labels, ["A", "B1"], average_over=[1])
    # ranking: v0 (0.95 + 0.7 * 0.95) before v1 (0.8 + 0.7 * 0.8); TP at rank 2 -> AP = 1/2
    assert [res[k] for k in KEYS] == [50.0] * 5


def test_one_detection_matches_one_truth_best_iou_first_on_ties():
    # one B1 run [32, 112) against two B1 truths [32, 64) and [80, 112): IoU 0.4 with each
    p = probs_from_runs(10, {1: [(2, 7)]}, 2)
    segs = [[(32, 64), (80, 112)]]
    res = detection_map([p], segs, [["B1", "B1"]], ["A", "B1"], average_over=[1])
    assert [res[k] for k in KEYS] == [50.0, 50.0, 50.0, 50.0, 0.0]  # 1 TP of 2 truths up to IoU 0.4


def test_nms_suppresses_only_above_iou_06():
    dets = np.array([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [4.0, 10.0]])
    # [1,10) vs [0,10): IoU 0.9 -> dropped; [4,10) vs [0,10): IoU 0.6 -> kept (<= 0.6 survives)
    assert _nms_keep(dets) == [0, 2, 3]
    assert _nms_keep(np.zeros((0, 2))) == []


def test_ucf_normal_class_scores_zero_because_its_truth_is_labelled_A():
    # classlist says 'Normal' but normal truth segments say 'A' (VadCLIP's quirk): normal AP is 0
    p_normal = probs_from_runs(8, {1: [(6, 8)]}, 2, hi=0.6)  # normal video whose columns still vary
    p_anom = probs_from_runs(10, {1: [(3, 7)]}, 2)
    segs = [[(0, 128)], [(48, 112)]]
    labels = [["A"], ["X"]]
    res = detection_map([p_normal, p_anom], segs, labels, ["Normal", "X"])
    assert res["per_class"]["0.1"]["Normal"] == 0.0
    only_x = detection_map([p_normal, p_anom], segs, labels, ["Normal", "X"], average_over=[1])
    for k in KEYS:
        assert res[k] == pytest.approx(only_x[k] / 2)


def test_a_class_without_any_proposal_zeroes_the_whole_map():
    p = probs_from_runs(10, {1: [(3, 7)]}, 3)
    p[:, 2] = 0.05  # class B2: a constant column never crosses its threshold -> no proposals anywhere
    segs = [[(0, 48), (48, 112), (112, 160)]]
    res = detection_map([p], segs, [["A", "B1", "A"]], ["A", "B1", "B2"])
    assert [res[k] for k in KEYS] == [0.0] * 5 and res["avg"] == 0.0
    # without B2 in the average the same outputs are perfect
    res2 = detection_map([p], segs, [["A", "B1", "A"]], ["A", "B1", "B2"], average_over=[0, 1])
    assert [res2[k] for k in KEYS] == [100.0] * 5


def test_multi_class_xd_video_with_two_event_classes():
    cl = ["A", "B1", "G"]
    p = probs_from_runs(12, {1: [(2, 4)], 2: [(7, 10)]}, 3)
    segs = [[(0, 32), (32, 64), (64, 112), (112, 160), (160, 192)]]
    labels = [["A", "B1", "A", "G", "A"]]
    res = detection_map([p], segs, labels, cl)
    assert [res[k] for k in KEYS] == [100.0] * 5
    # swapping the two event classes in the truth makes both wrong: only A stays right
    wrong = detection_map([p], segs, [["A", "G", "A", "B1", "A"]], cl)
    assert [wrong[k] for k in KEYS] == pytest.approx([100.0 / 3] * 5)


def test_runs_shorter_than_two_frames_are_not_proposals_but_one_snippet_is_16_frames():
    # a single high snippet still spans 16 frames, so it is a proposal
    p = probs_from_runs(6, {1: [(2, 3)]}, 2)
    res = detection_map([p], [[(0, 32), (32, 48), (48, 96)]], [["A", "B1", "A"]], ["A", "B1"])
    assert res["0.5"] == 100.0
    # with no 16x repeat, one frame is too short: B1 has no proposal -> 0
    res1 = detection_map([p], [[(0, 2), (2, 3), (3, 6)]], [["A", "B1", "A"]], ["A", "B1"], repeat=1)
    assert res1["0.1"] == 0.0


def test_detection_map_rejects_mismatched_inputs():
    p = probs_from_runs(10, {1: [(3, 7)]}, 2)
    with pytest.raises(DataError, match="one per test video"):
        detection_map([p, p], [[(0, 10)]], [["A"]], ["A", "B1"])
    with pytest.raises(DataError, match="expected"):
        detection_map([p[:, :1]], [[(0, 10)]], [["A"]], ["A", "B1"])


# ------------------------------------------------------------------------------------ evaluate_outputs


def _random_case(n_videos: int, classlist: list[str], normal_label: str, seed: int):
    rng = np.random.default_rng(seed)
    probs, scores, segs, labels, lengths, frames = [], [], [], [], [], []
    for v in range(n_videos):
        t = int(rng.integers(8, 40))
        logits = rng.normal(size=(t, len(classlist)))
        gt = np.zeros(16 * t, np.float32)
        if v % 2:
            c = 1 + v % (len(classlist) - 1)
            s = int(rng.integers(0, t - 4))
            logits[s:s + 4, c] += 3.0
            segs.append([(16 * s, 16 * (s + 4))])
            labels.append([classlist[c]])
            gt[16 * s:16 * (s + 4)] = 1
        else:
            segs.append([(0, 16 * t)])
            labels.append([normal_label])
        e = np.exp(logits)
        pr = (e / e.sum(1, keepdims=True)).astype(np.float32)
        probs.append(pr)
        scores.append(1 - pr[:, 0])
        lengths.append(t)
        frames.append(gt)
    gt = GroundTruth(frame_gt=np.concatenate(frames), segments=segs, labels=labels, lengths=lengths)
    return scores, probs, gt


def test_evaluate_outputs_ucf_reports_published_map_and_13_class_map():
    scores, probs, gt = _random_case(60, UCF_CLASSLIST, "A", seed=1)
    res = evaluate_outputs(scores, probs, gt, "ucf")
    assert 0.5 < res["auc"] <= 1.0 and 0.0 < res["ap"] <= 1.0
    assert set(res["map"]) == set(KEYS) | {"avg"}
    assert res["map"]["0.1"] > 0  # random columns propose in every class
    alone = detection_map(probs, gt.segments, gt.labels, UCF_CLASSLIST, average_over=range(1, 14))
    for k in KEYS + ["avg"]:
        # normal class is always 0, so the published mean is 13/14 of the anomaly-class mean
        assert res["map"][k] == pytest.approx(res["map_13"][k] * 13 / 14)
        assert res["map_13"][k] == alone[k]
    table = format_table(res)
    assert "AUC" in table and "13 cls" in table and f"{100 * res['auc']:6.2f}" in table


def test_evaluate_outputs_xd_scores_the_normal_class():
    scores, probs, gt = _random_case(40, XD_CLASSLIST, "A", seed=2)
    res = evaluate_outputs(scores, probs, gt, "xd")
    assert "map_13" not in res
    assert res["map_per_class"]["0.1"]["A"] > 0  # 'A' truth matches class A for XD


def test_evaluate_outputs_checks_shapes_against_ground_truth():
    scores, probs, gt = _random_case(4, XD_CLASSLIST, "A", seed=3)
    with pytest.raises(DataError, match=r"expected \[T\] and \[T, 7\]"):
        evaluate_outputs(scores, [p[:, :5] for p in probs], gt, "xd")
    with pytest.raises(DataError, match="one per test video"):
        evaluate_outputs(scores[:3], probs[:3], gt, "xd")
    short = [p[:-1] for p in probs]
    with pytest.raises(DataError, match="snippets of output"):
        evaluate_outputs([s[:-1] for s in scores], short, gt, "xd")
