"""Score a model's test outputs the way the papers report them (torch-free).

``evaluate_outputs`` takes, per test video in test-list order, the snippet anomaly scores [T] and the
class-probability matrix [T, C] (column 0 = normal), and returns the headline figures:

* ``auc``, ``ap``: frame-level ROC AUC and AP as fractions in [0, 1] (VadCLIP prints them so; UCF-Crime's
  headline is AUC, XD-Violence's is AP);
* ``map``: detection mAP in percent at IoU "0.1" ... "0.5" and their mean "avg" (all C classes, as
  published: for UCF-Crime this includes the normal class's AP of 0);
* ``map_13`` (UCF-Crime only): the same mAP averaged over the 13 anomaly classes only, the more
  meaningful figure (the "no proposals => 0" rule then applies to those 13 classes);
* ``top1``: top-1 classification accuracy of the anomalous test videos (:func:`top1_accuracy`), the
  open-vocabulary papers' classification figure; with ``novel_classes`` also per base and novel subset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from engine.errors import DataError
from export.data import check_preset, class_names, raw_classes
from export.gt import SEGMENT_NORMAL_LABEL, GroundTruth
from export.metrics import IOUS, SNIPPET_FRAMES, UCF_CLASSLIST, XD_CLASSLIST, detection_maps, frame_auc_ap

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
    result["top1"] = top1_accuracy(class_probs, gt, preset, novel_classes)
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


# How a video's predicted class is read from its class probabilities [T, C] (column 0 = normal).
TOP1_RULES = {
    "video": "per class the mean of the video's top floor(T/16)+1 snippet probabilities (the MIL pooling the "
             "model is trained with), then the anomaly class with the highest; needs no frame labels",
    "span": "the anomaly class with the highest mean probability over the snippets that overlap the annotated "
            "anomaly (an oracle on where the anomaly is, for reading classification apart from localisation)",
}


def video_class_scores(class_probs: np.ndarray) -> np.ndarray:
    """[C]: per class, the mean of the top ``floor(T/16) + 1`` of the video's T snippet probabilities, the
    video-level pooling of training's MIL-align loss (``export.losses.topk_mean``)."""
    p = np.asarray(class_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise DataError(f"class probabilities must be [T>=1, C], got shape {list(p.shape)}")
    k = p.shape[0] // SNIPPET_FRAMES + 1
    return -np.sort(-p, axis=0)[:k].mean(axis=0)


def _top1_summary(rows: Sequence[tuple[str, str, str | None]]) -> dict:
    spans = [r for r in rows if r[2] is not None]
    return {
        "n_videos": len(rows),
        "video": sum(r[0] == r[1] for r in rows) / len(rows) if rows else None,
        "span": sum(r[0] == r[2] for r in spans) / len(spans) if spans else None,
        "n_span_videos": len(spans),
    }


def top1_accuracy(class_probs: Sequence[np.ndarray], gt: GroundTruth, preset: str,
                  novel_classes: Sequence[str] | None = None) -> dict:
    """Top-1 class accuracy of the anomalous test videos under both :data:`TOP1_RULES`.

    Only the anomaly classes compete (the video is known to be anomalous; the question is which class the
    model names, as an event's category does). A video annotated with several anomaly classes (XD-Violence
    multi-label) has no single right answer and is left out, counted in ``n_multi_class_skipped`` (OVVAD
    excluded such XD-Violence videos too). With ``novel_classes`` the videos split into ``base`` and
    ``novel`` by their class, and each subset says how often the video rule named a class of the other
    subset (``video_into_novel`` / ``video_into_base``: the "categorization confusion" of novel videos).
    ``per_class`` and ``confusion`` (true class -> predicted class -> videos, video rule) use raw codes.
    """
    raw = raw_classes(preset)
    normal_codes = {raw[0], SEGMENT_NORMAL_LABEL}
    novel = novel_codes(novel_classes, preset) if novel_classes else set()
    if len(class_probs) != len(gt.labels):
        raise DataError(f"top-1: {len(class_probs)} class-probability arrays for {len(gt.labels)} ground-truth videos")
    frame_gt = np.asarray(gt.frame_gt).reshape(-1)
    start = 0
    rows: list[tuple[str, str, str | None]] = []
    skipped = 0
    for i, (probs, labels) in enumerate(zip(class_probs, gt.labels, strict=True)):
        p = np.asarray(probs, dtype=np.float64)
        t = p.shape[0] if p.ndim == 2 else 0
        stop = start + SNIPPET_FRAMES * t
        if p.ndim != 2 or t < 1 or p.shape[1] != len(raw) or stop > frame_gt.shape[0]:
            raise DataError(f"top-1: video {i} has class probabilities {list(p.shape)} but the frame ground truth "
                            f"and the {preset} classes need [T>=1, {len(raw)}] within {frame_gt.shape[0]} frames")
        inside = frame_gt[start:stop].reshape(t, SNIPPET_FRAMES).max(axis=1) > 0
        start = stop
        codes = {str(lab) for lab in labels} - normal_codes
        if not codes:
            continue
        if len(codes) > 1:
            skipped += 1
            continue
        (code,) = codes
        by_video = raw[1 + int(np.argmax(video_class_scores(p)[1:]))]
        by_span = raw[1 + int(np.argmax(p[inside, 1:].mean(axis=0)))] if inside.any() else None
        rows.append((code, by_video, by_span))
    out: dict = {"rules": dict(TOP1_RULES), "all": _top1_summary(rows), "n_multi_class_skipped": skipped}
    if novel_classes:
        for name, is_novel, other in (("base", False, "video_into_novel"), ("novel", True, "video_into_base")):
            sub = [r for r in rows if (r[0] in novel) == is_novel]
            out[name] = _top1_summary(sub)
            out[name][other] = sum((r[1] in novel) != is_novel for r in sub) / len(sub) if sub else None
    per_class: dict = {}
    confusion: dict = {}
    for code in raw[1:]:
        sub = [r for r in rows if r[0] == code]
        if sub:
            per_class[code] = _top1_summary(sub)
            counts = Counter(r[1] for r in sub)
            confusion[code] = {c: counts[c] for c in raw[1:] if counts[c]}
    out["per_class"] = per_class
    out["confusion"] = confusion
    return out


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:6.2f}%"


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
    top1 = result.get("top1")
    if top1:
        skipped = top1.get("n_multi_class_skipped", 0)
        note = f"; {skipped} with several classes not counted" if skipped else ""
        for name in ("all", "base", "novel"):
            if name not in top1:
                continue
            r = top1[name]
            extra = ""
            if name == "base" and r.get("video_into_novel") is not None:
                extra = f"; {_pct(r['video_into_novel']).strip()} named a novel class"
            if name == "novel" and r.get("video_into_base") is not None:
                extra = f"; {_pct(r['video_into_base']).strip()} named a base class"
            lines.append(f"{'top-1 ' + name:>11}: video {_pct(r['video'])}  span {_pct(r['span'])}  "
                         f"({r['n_videos']} anomalous videos{extra}{note if name == 'all' else ''})")
    return "\n".join(lines)
