"""Scoring a model on feature lists during and after training: test-set figures and the validation metric.

``score_videos`` runs the official test chunking (``visual_length`` chunks with per-chunk lengths) and
``evaluate_model`` turns its outputs into AUC / AP / mAP with :mod:`export.evaluate`. When the
selection split is held-out *training* videos (no frame labels), ``video_level_metric`` scores each
video by its MIL video score instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.errors import DataError
from engine.model import DSANet
from export.data import FeatureDataset, ListRow, batch_labels, load_features, process_split
from export.losses import topk_mean


@torch.no_grad()
def score_videos(model: DSANet, rows: Sequence[ListRow], device: str | torch.device = "cpu", batch_size: int = 32,
                 progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per test video: (scores [T], class probabilities [T, C]) with the official chunking.

    Each video is cut into ``visual_length`` chunks with per-chunk lengths (``process_split``); chunks
    of several videos share a forward (videos are independent in the model) and every video keeps the
    first T rows of its concatenated chunk outputs.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    length = model.config.visual_length
    dev = next(model.parameters()).device if device is None else torch.device(device)
    scores: list[list[np.ndarray]] = [[] for _ in rows]
    probs: list[list[np.ndarray]] = [[] for _ in rows]
    totals: list[int] = []
    pending: list[tuple[int, np.ndarray, int]] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack([c for _, c, _ in pending])).to(dev)
        lens = torch.tensor([n for _, _, n in pending], dtype=torch.long, device=dev)
        s, p = model.infer(x, lens)
        s, p = s.cpu().numpy(), p.cpu().numpy()
        for j, (vid, _, _) in enumerate(pending):
            scores[vid].append(s[j])
            probs[vid].append(p[j])
        pending.clear()

    for vid, row in enumerate(tqdm(rows, desc="eval", leave=False, disable=not progress)):
        feat = load_features(row.path)
        totals.append(int(feat.shape[0]))
        chunks, lens = process_split(feat, length)
        for c, n in zip(chunks, lens, strict=True):
            pending.append((vid, c, n))
            if len(pending) >= batch_size:
                flush()
    if pending:
        flush()
    model.train(was_training)
    out_s = [np.concatenate(s)[:t].astype(np.float32) for s, t in zip(scores, totals, strict=True)]
    out_p = [np.concatenate(p)[:t].astype(np.float32) for p, t in zip(probs, totals, strict=True)]
    return out_s, out_p


def evaluate_model(model: DSANet, rows: Sequence[ListRow], gt: Any, preset: str, device: str | torch.device = "cpu",
                   batch_size: int = 32, progress: bool = False,
                   novel_classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Score the test list and compute AUC / AP / mAP with ``export.evaluate`` (base/novel with
    ``novel_classes``)."""
    from export.evaluate import evaluate_outputs

    scores, probs = score_videos(model, rows, device, batch_size, progress)
    return evaluate_outputs(scores, probs, gt, preset, novel_classes)


@torch.no_grad()
def video_level_metric(model: DSANet, rows: Sequence[ListRow], preset: str, metric: str,
                       device: str | torch.device = "cpu", batch_size: int = 32) -> float:
    """Selection metric on held-out training videos: AUC/AP of the MIL video score (top-k mean of
    sigmoid(s)) against the video's normal/anomalous label (training videos have no frame labels)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    was_training = model.training
    model.eval()
    ds = FeatureDataset(rows, model.config.visual_length)
    video_scores: list[float] = []
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(device)
        lens = torch.tensor([it[2] for it in items], dtype=torch.long, device=device)
        s, _ = model.infer(x, lens)
        video_scores.extend(topk_mean(s, lens).cpu().tolist())
    model.train(was_training)
    y = 1.0 - batch_labels([r.label for r in rows], preset)[:, 0]
    if np.unique(y).size < 2:
        raise DataError("the validation split holds only normal or only anomalous videos; raise eval.val_fraction")
    fn = roc_auc_score if metric == "auc" else average_precision_score
    return float(fn(y, np.asarray(video_scores)))
