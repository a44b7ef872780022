"""Score a model's test outputs the way the papers report them (torch-free).

``evaluate_outputs`` takes, per test video in test-list order, the snippet anomaly scores [T] and the
class-probability matrix [T, C] (column 0 = normal), and returns the headline figures:

* ``auc``, ``ap``: frame-level ROC AUC and AP as fractions in [0, 1] (VadCLIP prints them so; UCF-Crime's
  headline is AUC, XD-Violence's is AP);
* ``map``: detection mAP in percent at IoU "0.1" ... "0.5" and their mean "avg" (all C classes, as
  published: for UCF-Crime this includes the normal class's AP of 0);
* ``map_13`` (UCF-Crime only): the same mAP averaged over the 13 anomaly classes only, the more
  meaningful figure (the "no proposals => 0" rule then applies to those 13 classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import DataError
from export.data import check_preset, class_names, raw_classes
from export.gt import SEGMENT_NORMAL_LABEL, GroundTruth
from export.metrics import IOUS, UCF_CLASSLIST, XD_CLASSLIST, detection_maps, frame_auc_ap

CLASSLISTS = {"ucf": UCF_CLASSLIST, "xd": XD_CLASSLIST, "demo": raw_classes("demo")}
HEADLINE = {"ucf": "auc", "xd": "ap", "demo": "auc"}


def evaluate_outputs(scores: Sequence[np.ndarray], class_probs: Sequence[np.ndarray], gt: GroundTruth,
                     preset: str, novel_classes: Sequence[str] | None = None) -> dict:
    """Frame AUC/AP and detection mAP of per-video outputs against ``gt`` (see the module docstring);
    with ``novel_classes``, also ``base`` and ``novel`` figures (:func:`base_novel_split`)."""
    check_preset(preset)
    n_cls = len(class_names(preset))
    if len(scores) != len(class_probs) or len(scores) != len(gt.segments):
        raise DataError(f"evaluation: {len(scores)} score arrays, {len(class_probs)} class-probability arrays and "
                        f"{len(gt.segments)} ground-truth videos must all be one per test video")
    for i, (s, p) in enumerate(zip(scores, class_probs, strict=True)):
        s, p = np.asarray(s), np.asarray(p)
        if p.ndim != 2 or p.shape[1] != n_cls or p.shape[0] != s.reshape(-1).shape[0]:
            raise DataError(f"evaluation: video {i} has scores {s.shape} and class probabilities {p.shape}; "
                            f"expected [T] and [T, {n_cls}]")
        if gt.lengths and gt.lengths[i] != p.shape[0]:
            raise DataError(f"evaluation: video {i} ({gt.videos[i] if gt.videos else ''}) has {p.shape[0]} snippets of "
                            f"output but {gt.lengths[i]} in its features")
    auc, ap = frame_auc_ap(scores, gt.frame_gt)
    classlist = CLASSLISTS[preset]
    groups: dict = {"map": None}
    if preset == "ucf":
        groups["map_13"] = range(1, len(classlist))
    maps = detection_maps(class_probs, gt.segments, gt.labels, classlist, groups)
    full = maps["map"]
    result: dict = {
        "preset": preset,
        "auc": auc,
        "ap": ap,
        "map": {k: full[k] for k in [f"{t:.1f}" for t in IOUS] + ["avg"]},
        "map_per_class": full["per_class"],
        "n_videos": len(scores),
        "n_snippets": int(sum(np.asarray(s).size for s in scores)),
    }
    if "map_13" in maps:
        result["map_13"] = {k: maps["map_13"][k] for k in [f"{t:.1f}" for t in IOUS] + ["avg"]}
    if novel_classes:
        result.update(base_novel_split(scores, gt, novel_classes, preset))
    return result


def novel_codes(names: Sequence[str], preset: str) -> set[str]:
    """Raw label codes of ``names`` (a raw code such as ``B1`` or a class word such as ``Fighting``,
    case-insensitive); ``DataError`` naming an unknown one or the normal class."""
    raw, words = raw_classes(preset), class_names(preset)
    by_name = {r.lower(): r for r in raw} | {w.lower(): r for w, r in zip(words, raw, strict=True)}
    out = set()
    for n in names:
        code = by_name.get(str(n).strip().lower())
        if code is None:
            raise DataError(f"--novel-classes: {n!r} is not a {preset} class (classes: {', '.join(words[1:])})")
        if code == raw[0]:
            raise DataError(f"--novel-classes: {n!r} is the normal class; name anomaly classes only")
        out.add(code)
    return out


def base_novel_split(scores: Sequence[np.ndarray], gt: GroundTruth, novel_classes: Sequence[str],
                     preset: str) -> dict:
    """Frame AUC/AP on base and on novel classes, as open-vocabulary VAD reports them: each subset is
    every normal test video plus the anomalous videos whose labels include a novel class (``novel``) or
    do not (``base``). A video with base and novel labels (XD-Violence multi-label) counts as novel."""
    novel = novel_codes(novel_classes, preset)
    normal_codes = {raw_classes(preset)[0], SEGMENT_NORMAL_LABEL}
    bounds = np.cumsum([0] + [16 * int(np.asarray(s).size) for s in scores])
    subsets: dict[str, list[int]] = {"base": [], "novel": []}
    for i, labels in enumerate(gt.labels):
        codes = {str(lab) for lab in labels} - normal_codes
        if not codes:
            subsets["base"].append(i)
            subsets["novel"].append(i)
        else:
            subsets["novel" if codes & novel else "base"].append(i)
    out: dict = {"novel_classes": sorted(novel)}
    for name, idx in subsets.items():
        frame_gt = np.concatenate([gt.frame_gt[bounds[i]:bounds[i + 1]] for i in idx])
        auc, ap = frame_auc_ap([scores[i] for i in idx], frame_gt)
        anomalous = sum(1 for i in idx if set(map(str, gt.labels[i])) - normal_codes)
        out[name] = {"auc": auc, "ap": ap, "n_videos": len(idx), "n_anomalous_videos": anomalous}
    return out


def format_table(result: dict) -> str:
    """A plain-text table of ``evaluate_outputs``'s result (AUC/AP in percent, mAP per IoU)."""
    keys = [f"{t:.1f}" for t in IOUS] + ["avg"]
    preset = result.get("preset", "")
    head = HEADLINE.get(preset)
    lines = [f"{'AUC':>8}: {100 * result['auc']:6.2f}%" + ("  <- headline" if head == "auc" else ""),
             f"{'AP':>8}: {100 * result['ap']:6.2f}%" + ("  <- headline" if head == "ap" else ""),
             "mAP@IoU   " + "  ".join(f"{k:>6}" for k in keys)]
    rows = [("all", result["map"])]
    if "map_13" in result:
        rows.append(("13 cls", result["map_13"]))
    for name, m in rows:
        lines.append(f"{name:>8}  " + "  ".join(f"{m[k]:6.2f}" for k in keys))
    for name in ("base", "novel"):
        if name in result:
            r = result[name]
            lines.append(f"{name:>8}: AUC {100 * r['auc']:6.2f}%  AP {100 * r['ap']:6.2f}%  "
                         f"({r['n_anomalous_videos']} anomalous + {r['n_videos'] - r['n_anomalous_videos']} normal videos)")
    if "novel_classes" in result:
        lines.append(f"   novel: {', '.join(result['novel_classes'])}")
    return "\n".join(lines)
