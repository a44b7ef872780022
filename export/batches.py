"""What the trainer feeds the model: validation split, per-epoch batch plans and batch loading.

UCF takes 64 normal then 64 anomalous videos per step (both pools shuffled, ``drop_last``), XD 96 videos
from the whole list (last batch kept); every crop row of a list is an independent sample. Plans are
deterministic per seed and epoch, so ``--resume`` continues with exactly the batches a straight run
would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from export.data import FeatureDataset, ListRow, batch_labels
from export.train_config import TrainConfig


def split_validation(rows: Sequence[ListRow], preset: str, fraction: float, seed: int) -> tuple[list[ListRow], list[ListRow]]:
    """(train rows, validation rows): whole videos held out, normal and anomalous in proportion; one
    crop per validation video is kept (crops of one video are near-duplicates)."""
    from export.data import is_normal

    videos: dict[str, list[ListRow]] = {}
    for r in rows:
        videos.setdefault(r.video, []).append(r)
    rng = np.random.default_rng([seed, 7])
    held: set[str] = set()
    for want_normal in (True, False):
        names = sorted(v for v, rs in videos.items() if is_normal(rs[0].label, preset) == want_normal)
        n = max(1, int(round(len(names) * fraction))) if len(names) > 1 else 0
        held.update(rng.permutation(names)[:n].tolist())
    train = [r for r in rows if r.video not in held]
    val = [videos[v][0] for v in sorted(held)]
    return train, val


def plan_epoch(cfg: TrainConfig, normal: list[ListRow], abnormal: list[ListRow], everything: list[ListRow],
               epoch: int) -> list[list[ListRow]]:
    """Shuffle and cut one epoch into batches (deterministic per seed and epoch, so --resume matches)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    if cfg.batch.composition == "balanced":
        bn, ba = min(cfg.batch.normal, len(normal)), min(cfg.batch.abnormal, len(abnormal))
        pn, pa = rng.permutation(len(normal)), rng.permutation(len(abnormal))
        steps = min(len(normal) // bn, len(abnormal) // ba)
        return [[normal[j] for j in pn[i * bn:(i + 1) * bn]] + [abnormal[j] for j in pa[i * ba:(i + 1) * ba]]
                for i in range(steps)]
    bs = min(cfg.batch.size, len(everything))
    perm = rng.permutation(len(everything))
    return [[everything[j] for j in perm[i:i + bs]] for i in range(0, len(everything), bs)]


def planned_iterations(cfg: TrainConfig, n_normal: int, n_abnormal: int, n_all: int, epochs: int) -> int:
    """SGNM schedule length: the config value, else the official formula on this data set."""
    if cfg.optim.sgnm.planned_iterations is not None:
        return cfg.optim.sgnm.planned_iterations
    if cfg.batch.composition == "balanced":
        per_epoch = n_normal // min(cfg.batch.normal, n_normal) + n_abnormal // min(cfg.batch.abnormal, n_abnormal)
    else:
        per_epoch = math.ceil(n_all / min(cfg.batch.size, n_all))
    return max(1, epochs * per_epoch)


def resolve_path(data_root: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else data_root / path


def load_batch(rows: Sequence[ListRow], max_len: int, preset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [B, L, D], labels [B, C], lengths [B]) with VadCLIP's training length handling."""
    ds = FeatureDataset(rows, max_len)
    items = [ds[i] for i in range(len(ds))]
    x = torch.from_numpy(np.stack([it[0] for it in items]))
    labels = torch.from_numpy(batch_labels([it[1] for it in items], preset))
    lengths = torch.tensor([it[2] for it in items], dtype=torch.long)
    return x, labels, lengths
