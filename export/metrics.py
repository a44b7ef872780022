"""The paper's evaluation metrics: frame-level AUC / AP and VadCLIP's fine-grained detection mAP.

Both reproduce the official evaluation (``ucf_test.py`` / ``xd_test.py`` and
``ucf_detectionMAP.py`` / ``xd_detectionMAP.py``, identical in VadCLIP and DSANet) so our figures
are comparable with the published tables. Our own implementation, with the same arithmetic:

Frame AUC / AP: each snippet score is repeated 16 times (one per frame) and all frames of all test
videos are pooled into one ``roc_auc_score`` / ``average_precision_score``.

Detection mAP (per IoU threshold th):

1. Each video's class-probability matrix [T, C] is repeated 16x to frames [16T, C].
2. Video-class score ``c_s[c]`` = mean of the top ``int(16T / 16)`` = T frame values of column c; a column
   whose ``c_s <= 0`` is zeroed.
3. Per class c and video: threshold ``max - 0.6 * (max - min)`` of the column; runs of frames strictly
   above it, at least 2 frames long, are proposals ``[s, e)`` scored ``max(P[s:e, c]) + 0.7 * c_s[c]``;
   proposals are sorted by score and suppressed per video at IoU > 0.6 (continuous-length IoU).
4. All proposals of class c, sorted by score, are matched greedily to unmatched GT segments of the same
   video and class with integer-frame IoU >= th (best IoU wins, first on ties); AP_c = sum of the
   precision at each true positive / number of GT segments of class c (0 when nothing matches).
5. mAP = 100 * mean over all C classes.

Quirks reproduced on purpose (the published numbers contain them):

* a GT label that is not in the class list never matches: UCF-Crime's normal videos are labelled ``A``
  while its class list says ``Normal``, so the normal class has AP 0 and UCF mAP = 13/14 of the
  anomaly-class mean;
* if any class has no proposal in any video, the mAP at that IoU is 0 (the official loop returns 0);
* sorting uses NumPy's default (unstable) ``argsort`` on the same arrays, so ties order as they do there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import DataError
from engine.snippet_contract import DEFAULT_SNIPPET_FRAMES

SNIPPET_FRAMES = DEFAULT_SNIPPET_FRAMES  # frames per ground-truth row
IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)
THRESHOLD_RATIO = 0.6  # np.arange(0.6, 0.7, 0.1) == [0.6] in the official code
NMS_IOU = 0.6
CLASS_SCORE_WEIGHT = 0.7

UCF_CLASSLIST = ["Normal", "Abuse", "Arrest", "Arson", "Assault", "Burglary", "Explosion", "Fighting",
                 "RoadAccidents", "Robbery", "Shooting", "Shoplifting", "Stealing", "Vandalism"]
XD_CLASSLIST = ["A", "B1", "B2", "B4", "B5", "B6", "G"]


def frame_auc_ap(scores_per_video: Sequence[np.ndarray], frame_gt: np.ndarray,
                 repeat: int = SNIPPET_FRAMES) -> tuple[float, float]:
    """Frame-level ROC AUC and average precision over all test videos pooled (snippet scores x16)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(scores_per_video) == 0:
        raise DataError("no test videos to evaluate")
    pred = np.repeat(np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_per_video]), repeat)
    gt = np.asarray(frame_gt).reshape(-1)
    if pred.shape[0] != gt.shape[0]:
        raise DataError(f"frame ground truth has {gt.shape[0]} frames but the scores cover {pred.shape[0]} "
                        f"({pred.shape[0] // repeat} snippets x {repeat}): GT and test list do not match")
    if np.unique(gt).size < 2:
        raise DataError("frame ground truth holds only one class (all normal or all abnormal): AUC is undefined")
    return float(roc_auc_score(gt, pred)), float(average_precision_score(gt, pred))


def _nms_keep(dets: np.ndarray, thresh: float = NMS_IOU) -> list[int]:
    """Greedy 1-D NMS over score-sorted ``dets`` [N, 2] (start, end); IoU from continuous lengths."""
    if len(dets) == 0:
        return []
    by_start = dets[np.argsort(dets[:, 0], kind="stable")]
    if np.all(by_start[1:, 0] >= by_start[:-1, 1]):
        return list(range(len(dets)))  # pairwise disjoint (always so for threshold runs): IoU 0, nothing dropped
    order = np.arange(len(dets))
    x1, x2 = dets[:, 0], dets[:, 1]
    lengths = x2 - x1
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        inter = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ovr = inter / (lengths[i] + lengths[rest] - inter)
        order = rest[ovr <= thresh]
    return keep


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every run of True in ``mask``."""
    diff = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(diff == 1), np.flatnonzero(diff == -1)


def _proposals(predictions: list[np.ndarray], c_scores: list[np.ndarray], c: int) -> np.ndarray:
    """All per-video-NMS'd proposals of class c as rows [video, start, end, score], sorted by score."""
    collected: list[np.ndarray] = []
    for i, p in enumerate(predictions):
        col = p[:, c]
        hi, lo = np.max(col), np.min(col)
        threshold = hi - (hi - lo) * THRESHOLD_RATIO
        starts, ends = _runs(col > threshold)
        long = (ends - starts) >= 2
        starts, ends = starts[long], ends[long]
        if len(starts) == 0:
            continue
        # run maxima (exact); the score keeps the official scalar arithmetic and dtypes
        maxima = np.maximum.reduceat(np.append(col, col[:1]), np.stack([starts, ends], 1).reshape(-1))[::2]
        cs = c_scores[i][c]
        rows = [[i, s, e, maxima[k] + CLASS_SCORE_WEIGHT * cs]
                for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))]
        if rows:
            arr = np.array(rows)
            arr = arr[np.argsort(-arr[:, -1])]
            keep = _nms_keep(arr[:, 1:-1])
            collected.extend(list(arr[keep]))
    if not collected:
        return np.zeros((0, 4))
    out = np.array(collected)
    return out[np.argsort(-out[:, 3])]


def _class_ap(props: np.ndarray, gt_by_video: dict[int, list[tuple[int, int]]], n_gt: int, th: float) -> float:
    """Greedy matching of score-sorted proposals to GT segments; AP = sum(precision at TPs) / n_gt."""
    remaining = {v: list(segs) for v, segs in gt_by_video.items()}
    tp_arr = np.zeros(len(props))
    # proposals in videos without truth of this class are false positives: only the rest need matching
    candidates = np.flatnonzero(np.isin(props[:, 0].astype(np.int64), np.array(list(remaining), dtype=np.int64)))
    for k, (vid, s, e, _score) in zip(candidates.tolist(), props[candidates].tolist(), strict=True):
        ps, pe = int(s), int(e)
        best_iou, best_j = 0.0, -1
        flag = 0.0
        cands = remaining[int(vid)]
        for j, (gs, ge) in enumerate(cands):
            # IoU of the integer frame sets range(gs, ge) and range(ps, pe)
            inter = max(0, min(ge, pe) - max(gs, ps))
            union = max(0, ge - gs) + (pe - ps) - inter
            iou = float(inter) / float(union)
            if iou >= th:
                flag = 1.0
                if iou > best_iou:
                    best_iou, best_j = iou, j
        if flag > 0:
            del cands[best_j]
        tp_arr[k] = flag
    if tp_arr.sum() == 0:
        return 0.0
    tp_c = np.cumsum(tp_arr)
    fp_c = np.cumsum(1.0 - tp_arr)
    return float(np.sum((tp_c / (fp_c + tp_c)) * tp_arr) / n_gt)


def detection_maps(class_probs_per_video: Sequence[np.ndarray], segments: Sequence[Sequence[Sequence[int]]],
                   labels: Sequence[Sequence[str]], classlist: Sequence[str],
                   groups: dict[str, Sequence[int] | None], ious: Sequence[float] = IOUS,
                   repeat: int = SNIPPET_FRAMES) -> dict[str, dict]:
    """:func:`detection_map` for several class subsets at the cost of one (proposals and APs are shared).

    ``groups``: name -> class indices to average (None = all classes). Returns name -> result.
    """
    n_cls = len(classlist)
    if len(class_probs_per_video) != len(segments) or len(segments) != len(labels):
        raise DataError(f"detection mAP: {len(class_probs_per_video)} predictions, {len(segments)} segment lists and "
                        f"{len(labels)} label lists must all be one per test video")
    predictions: list[np.ndarray] = []
    c_scores: list[np.ndarray] = []
    for i, probs in enumerate(class_probs_per_video):
        p = np.asarray(probs)
        if p.ndim != 2 or p.shape[1] != n_cls or p.shape[0] == 0:
            raise DataError(f"detection mAP: video {i} class probabilities have shape {p.shape}, expected [T>0, {n_cls}]")
        p = np.repeat(p, repeat, axis=0)
        top = -np.sort(-p, axis=0)  # every column sorted descending
        c_s = np.mean(top[: int(p.shape[0] / repeat), :], axis=0)  # top T frames (official: int(16T / 16))
        c_scores.append(c_s)
        predictions.append(p * (c_s > 0.0))
    subsets = {name: list(range(n_cls)) if cls is None else [int(c) for c in cls] for name, cls in groups.items()}
    for name, cls in subsets.items():
        if not cls or any(not 0 <= c < n_cls for c in cls):
            raise DataError(f"detection mAP: class subset {name!r} = {cls} is empty or outside 0..{n_cls - 1}")
    used = sorted({c for cls in subsets.values() for c in cls})
    index = {name: k for k, name in enumerate(classlist)}
    gts: dict[int, tuple[dict[int, list[tuple[int, int]]], int]] = {}
    for c in used:
        by_video: dict[int, list[tuple[int, int]]] = {}
        n = 0
        for v, (segs, labs) in enumerate(zip(segments, labels, strict=True)):
            for seg, lab in zip(segs, labs, strict=True):
                if index.get(str(lab)) == c:  # labels outside the class list never match (UCF's 'A')
                    by_video.setdefault(v, []).append((int(seg[0]), int(seg[1])))
                    n += 1
        gts[c] = (by_video, n)
    props = {c: _proposals(predictions, c_scores, c) for c in used}
    keys = [f"{th:.1f}" for th in ious]
    aps = {key: {c: _class_ap(props[c], gts[c][0], gts[c][1], th) for c in used if len(props[c])}
           for key, th in zip(keys, ious, strict=True)}
    results: dict[str, dict] = {}
    for name, cls in subsets.items():
        result: dict = {"per_class": {}}
        values = []
        for key in keys:
            if any(len(props[c]) == 0 for c in cls):  # the official loop returns 0 for this IoU
                value, per = 0.0, {}
            else:
                value = float(100 * np.mean([aps[key][c] for c in cls]))
                per = {classlist[c]: 100 * aps[key][c] for c in cls}
            result[key] = value
            result["per_class"][key] = per
            values.append(value)
        result["avg"] = float(np.mean(values)) if values else 0.0
        results[name] = result
    return results


def detection_map(class_probs_per_video: Sequence[np.ndarray], segments: Sequence[Sequence[Sequence[int]]],
                  labels: Sequence[Sequence[str]], classlist: Sequence[str], ious: Sequence[float] = IOUS,
                  repeat: int = SNIPPET_FRAMES, average_over: Sequence[int] | None = None) -> dict:
    """VadCLIP's fine-grained detection mAP (percent) at each IoU, plus their mean.

    ``class_probs_per_video``: per test video a snippet-level [T, C] matrix (C = len(classlist)), in
    test-list order; ``segments`` / ``labels``: the segment GT (frames, class codes). ``average_over``:
    class indices to average (default all, as the paper; e.g. 1..13 for UCF without the normal class);
    the "no proposals for a class => 0" rule applies to those classes.

    Returns ``{"0.1": mAP, ..., "avg": mean, "per_class": {"0.1": {class: AP%}, ...}}``.
    """
    return detection_maps(class_probs_per_video, segments, labels, classlist, {"map": average_over}, ious,
                          repeat)["map"]
