"""Opt-in INT8 head (``dsanet export --head-int8``): quantise head.onnx and gate it on real test features.

Dynamic INT8 quantisation of the head's MatMul/Gemm weights (ONNX Runtime ``quantize_dynamic``) makes the
CPU head about 2x faster, but it moves scores by far more than the fp32 parity tolerance (1e-4), so it
gets its own accuracy gate, measured on the checkpoint's own test features with the official test
chunking (256-snippet chunks, per-chunk lengths):

* every snippet score within ``SCORE_TOLERANCE`` of the fp32 head.onnx score, and
* frame AUC within ``AUC_TOLERANCE`` of the fp32 head's frame AUC.

The figures are recorded in ``bundle.json`` (``parity.head_int8``); when either fails the export refuses
(``HeadInt8GateError``, exit 2) and writes no bundle. The live runtime then picks ``head.int8.onnx``
when the bundle has one (``model.head_int8``, default true).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_export import ExportError

SCORE_TOLERANCE = 0.05  # max |int8 score - fp32 score| over every test snippet
AUC_TOLERANCE = 0.005  # max |int8 frame AUC - fp32 frame AUC|


class HeadInt8GateError(ExportError):
    """The INT8 head is not accurate enough on the test features (or they cannot be read): no bundle."""


@dataclass(frozen=True)
class GateData:
    """Test videos with frame ground truth: what the gate scores both heads on."""

    rows: tuple[Any, ...]  # export.data.ListRow
    gt: Any  # export.gt.GroundTruth
    preset: str
    source: str  # where they came from, for bundle.json


def load_gate_data(checkpoint: str | os.PathLike[str], data_root: str | os.PathLike[str] | None) -> GateData:
    """The checkpoint's test list and ground truth under ``data_root`` (default: the training data root
    recorded in the checkpoint). Errors name the checkpoint and what is missing."""
    from engine.errors import DsanetError
    from export.batches import resolve_path
    from export.checkpoint import read_checkpoint_info
    from export.data import read_list
    from export.gt import load_ground_truth

    info = read_checkpoint_info(checkpoint)
    train = info.train_config if isinstance(info.train_config, dict) else {}
    test_list = (train.get("data") or {}).get("test_list")
    preset = str(train.get("preset") or info.dsanet_config.preset)
    root = data_root or info.metadata.get("data_root")
    if not test_list or not root:
        raise HeadInt8GateError(f"--head-int8: checkpoint {checkpoint} records no test list or data root; pass "
                                "--data-root DIR (the training data folder) so the INT8 head can be gated on the "
                                "test features")
    root = Path(root)
    try:
        rows = read_list(resolve_path(root, str(test_list)), root)
        gt = load_ground_truth(preset, root, rows)
    except DsanetError as exc:
        raise HeadInt8GateError(f"--head-int8: cannot read the test features of {checkpoint} under {root}: {exc}") from exc
    return GateData(tuple(rows), gt, preset, f"{resolve_path(root, str(test_list))} ({len(rows)} videos)")


def _session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def score_features(session: Any, features: Sequence[np.ndarray], max_window: int, batch: int = 16) -> list[np.ndarray]:
    """Per video scores [T] from a head session, official chunking (``process_split``)."""
    from export.data import process_split

    out = []
    for feat in features:
        chunks, lens = process_split(feat, max_window)
        lengths = np.clip(np.asarray(lens, dtype=np.int64), 1, max_window)
        got = []
        for i in range(0, len(chunks), batch):
            (s,) = session.run(["scores"], {"features": np.ascontiguousarray(chunks[i:i + batch], dtype=np.float32),
                                            "lengths": lengths[i:i + batch]})
            got.append(s.reshape(-1))
        out.append(np.concatenate(got)[: feat.shape[0]])
    return out


def gate(fp32_onnx: Path, int8_onnx: Path, data: GateData, width: int, max_window: int,
         score_tolerance: float = SCORE_TOLERANCE, auc_tolerance: float = AUC_TOLERANCE) -> dict[str, Any]:
    """Both heads on the test features: score differences and frame AUCs, with the verdict."""
    from export.data import load_features
    from export.metrics import frame_auc_ap

    feats = [load_features(r.path, width) for r in data.rows]
    ref = score_features(_session(fp32_onnx), feats, max_window)
    got = score_features(_session(int8_onnx), feats, max_window)
    diff = np.abs(np.concatenate(got) - np.concatenate(ref))
    auc_fp32, _ = frame_auc_ap(ref, data.gt.frame_gt)
    auc_int8, _ = frame_auc_ap(got, data.gt.frame_gt)
    delta = abs(auc_int8 - auc_fp32)
    return {"quantization": "int8-dynamic", "videos": len(feats), "snippets": int(diff.size), "data": data.source,
            "scores_max_abs": float(diff.max()), "scores_mean_abs": float(diff.mean()),
            "score_tolerance": score_tolerance, "auc_fp32": auc_fp32, "auc_int8": auc_int8,
            "auc_delta": float(delta), "auc_tolerance": auc_tolerance,
            "passed": bool(diff.max() <= score_tolerance and delta <= auc_tolerance)}


def check_gate(figures: dict[str, Any]) -> None:
    """Raise ``HeadInt8GateError`` naming the failed criterion when the gate did not pass."""
    if figures["passed"]:
        return
    why = []
    if figures["scores_max_abs"] > figures["score_tolerance"]:
        why.append(f"max |score - fp32 score| {figures['scores_max_abs']:.4f} > {figures['score_tolerance']}")
    if figures["auc_delta"] > figures["auc_tolerance"]:
        why.append(f"frame AUC {figures['auc_int8']:.4f} vs fp32 {figures['auc_fp32']:.4f} "
                   f"(|delta| {figures['auc_delta']:.4f} > {figures['auc_tolerance']})")
    raise HeadInt8GateError(f"--head-int8 refused: the INT8 head is not accurate enough on {figures['data']}: "
                            f"{'; '.join(why)}. Export without --head-int8 (the fp32 head is unaffected).")
