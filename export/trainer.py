"""DSANet trainer and evaluator, following the official training scripts (``ucf_train.py``, ``xd_train.py``).

Loop (per preset file): UCF takes 64 normal then 64 anomalous videos per step (both pools shuffled,
``drop_last``), XD 96 videos from the whole list (last batch kept). Every crop row of the list is an
independent sample. Two optimisers step together after one backward: AdamW on everything outside
SGNM (cosine annealing stepped per epoch) and StableAdamW on SGNM (warm-up cosine stepped per
iteration, over the official planned-iteration count). The model is evaluated every N steps (UCF) or
once per epoch (XD), the best weights by AUC (UCF) / AP (XD) are kept, and after every epoch the best
weights are reloaded into the model (optimiser state kept), as the official code does.

Fixes relative to the official scripts: no hard-coded CUDA (``--device``); the text-feature cache is
dropped whenever the model changes mode or weights, so in-training evaluations never use stale text
features; the class text features are computed once per step, not per loss; a data set smaller than
one batch trains with what there is; an epoch shorter than the evaluation interval is evaluated at its
end (the official loop would never evaluate it and then fail to reload a best checkpoint).

Run directory: ``best.safetensors`` / ``last.safetensors`` (trainable weights only; metadata
``dsanet_config``, ``train_config``, ``clip``, snippet timing), ``last_optim.pt`` (optimiser,
scheduler and loop state for ``--resume``, loaded with ``weights_only=True``), ``config.json`` and
``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import CheckpointError, DataError, DsanetError
from engine.model import DSANet, DSANetConfig, ModelConfigError, build_model, text_width_of
from engine.model.config import UCF_PROMPTS, XD_PROMPTS
from export.data import (
    FeatureDataset,
    ListRow,
    batch_labels,
    class_names,
    load_features,
    process_split,
    read_list,
    snippet_info,
    split_normal,
)
from export.losses import LossWeights, dsanet_loss, topk_mean
from export.optim import StableAdamW, WarmupCosine
from export.train_config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dsanet-checkpoint/1"
BEST = "best.safetensors"
LAST = "last.safetensors"
LAST_OPTIM = "last_optim.pt"


# ---------------------------------------------------------------------------------------------------
# model config and checkpoints


def model_config_for(cfg: TrainConfig, text_width: int, snippet: dict[str, Any] | None = None) -> DSANetConfig:
    """The ``DSANetConfig`` a training preset describes (class list from the data preset)."""
    m = cfg.model
    frames = int(snippet["snippet_frames"]) if snippet else cfg.data.snippet_frames
    fps = float(snippet["snippet_fps"]) if snippet else cfg.data.snippet_fps
    prompts = UCF_PROMPTS if cfg.preset == "ucf" else XD_PROMPTS
    return DSANetConfig(
        preset=cfg.preset, class_names=class_names(cfg.preset), class_prompts=[list(p) for p in prompts],
        embed_dim=m.visual_width, visual_length=m.visual_length, visual_width=m.visual_width,
        visual_heads=m.visual_heads, visual_layers=m.visual_layers, attn_window=m.attn_window,
        num_prototypes=m.num_prototypes, decoder_depth=m.decoder_depth, normal_selection_ratio=m.normal_selection_ratio,
        use_sgnm=m.use_sgnm, text_width=text_width, text_adapt_until=m.text_adapt_until,
        text_adapter_weight=m.text_adapter_weight, dcsa_scale=m.dcsa_scale, tau=m.tau, mask_padding=m.mask_padding,
        snippet_frames=frames, snippet_fps=fps)


@dataclass
class CheckpointInfo:
    """What a checkpoint's metadata says, read without building the model."""

    path: Path
    dsanet_config: DSANetConfig
    train_config: dict[str, Any] | None
    clip: str
    snippet_frames: int
    snippet_fps: float | None
    metadata: dict[str, str] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], model: DSANet, train_config: TrainConfig | dict[str, Any] | None,
                    clip: str, state: dict[str, torch.Tensor] | None = None, **extra: Any) -> Path:
    """Write trainable weights (or ``state``) + metadata to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in (state or model.trainable_state_dict()).items()}
    tc = train_config.model_dump(mode="json") if isinstance(train_config, TrainConfig) else train_config
    meta = {"format": CHECKPOINT_FORMAT, "dsanet_config": model.config.to_json(),
            "train_config": json.dumps(tc, sort_keys=True) if tc is not None else "null", "clip": str(clip),
            "snippet_frames": str(model.config.snippet_frames),
            "snippet_fps": "" if model.config.snippet_fps is None else str(model.config.snippet_fps)}
    meta.update({k: json.dumps(v) for k, v in extra.items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Metadata of a checkpoint (config, CLIP source, snippet timing) without loading any weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "dsanet_config" not in meta:
        raise CheckpointError(f"checkpoint {path} is not a DSANet checkpoint (metadata format "
                              f"{meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    try:
        config = DSANetConfig.from_json(meta["dsanet_config"], source=f"checkpoint {path}")
        train_cfg = json.loads(meta.get("train_config", "null"))
    except (ModelConfigError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad metadata: {exc}") from exc
    fps = meta.get("snippet_fps") or None
    return CheckpointInfo(path=path, dsanet_config=config, train_config=train_cfg, clip=meta.get("clip", ""),
                          snippet_frames=int(meta.get("snippet_frames", config.snippet_frames)),
                          snippet_fps=float(fps) if fps else None, metadata=meta)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def load_weights_into(model: DSANet, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint's weights into an existing model; mismatches name the file."""
    path = Path(path)
    try:
        model.load_trainable_state_dict(_load_tensors(path))
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({exc.args[0]}): it was made for "
                              "another preset or architecture") from None


def load_checkpoint(path: str | os.PathLike[str], clip_dir: str | os.PathLike[str], device: str = "cpu",
                    expect_preset: str | None = None) -> DSANet:
    """Rebuild a trained DSANet (eval mode) from a checkpoint and the CLIP folder it was trained with."""
    info = read_checkpoint_info(path)
    cfg = info.dsanet_config
    if expect_preset is not None and cfg.preset != expect_preset:
        raise CheckpointError(f"checkpoint {info.path} was trained for preset {cfg.preset!r} "
                              f"({cfg.num_classes} classes), not {expect_preset!r}")
    width = text_width_of(clip_dir)
    if width != cfg.text_width:
        raise CheckpointError(f"checkpoint {info.path} was trained with a CLIP text tower {cfg.text_width} wide "
                              f"({info.clip}); the CLIP in {clip_dir} is {width} wide")
    model = build_model(cfg, clip_dir)
    load_weights_into(model, info.path)
    return model.to(_device(device)).eval()


# ---------------------------------------------------------------------------------------------------
# evaluation


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
                   batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Score the test list and compute AUC / AP / mAP with ``export.evaluate``."""
    from export.evaluate import evaluate_outputs

    scores, probs = score_videos(model, rows, device, batch_size, progress)
    return evaluate_outputs(scores, probs, gt, preset)


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


# ---------------------------------------------------------------------------------------------------
# training


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DsanetError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True  # as the official scripts
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


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


def _resolve(data_root: Path, p: str) -> Path:
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


@dataclass
class TrainResult:
    out_dir: Path
    best_metric: float | None
    best_epoch: int | None
    best_step: int | None
    last_eval: dict[str, Any] | None
    epochs_run: int


class _MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def train(cfg: TrainConfig, data_root: str | os.PathLike[str], clip: str, out_dir: str | os.PathLike[str],
          device: str = "cpu", resume: bool = False, progress: bool | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train DSANet as the official scripts do; see the module docstring. Returns the best metric."""
    from tqdm import tqdm

    from engine.clip import TINY, resolve_clip_dir

    data_root = Path(data_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    if str(clip) == TINY:
        log.warning("--clip tiny: the text tower is a tiny RANDOM CLIP, not a real CLIP; use it for tests only")
    clip_dir = resolve_clip_dir(clip)
    seed_everything(cfg.seed, cfg.deterministic)

    preset = cfg.preset
    length = cfg.model.visual_length
    train_rows = read_list(_resolve(data_root, cfg.data.train_list), data_root)
    test_rows = read_list(_resolve(data_root, cfg.data.test_list), data_root)
    val_rows: list[ListRow] = []
    if cfg.eval.selection == "val":
        train_rows, val_rows = split_validation(train_rows, preset, cfg.eval.val_fraction, cfg.seed)
    normal, abnormal = split_normal(train_rows, preset)
    if cfg.batch.composition == "balanced" and (not normal or not abnormal):
        raise DataError(f"training list {cfg.data.train_list} needs both normal and anomalous videos for balanced "
                        f"batches (found {len(normal)} normal, {len(abnormal)} anomalous)")
    gt = None
    if cfg.eval.selection == "test":
        from export.gt import load_ground_truth

        gt = load_ground_truth(preset, data_root, test_rows)

    snippet = snippet_info(data_root)
    mcfg = model_config_for(cfg, text_width_of(clip_dir), snippet)
    model = build_model(mcfg, clip_dir).to(dev)
    main_opt = torch.optim.AdamW(model.main_parameters(), lr=cfg.optim.main.lr, betas=cfg.optim.main.betas,
                                 eps=cfg.optim.main.eps, weight_decay=cfg.optim.main.weight_decay)
    main_sched = torch.optim.lr_scheduler.CosineAnnealingLR(main_opt, T_max=cfg.optim.main.cosine_t_max or cfg.epochs)
    so = cfg.optim.sgnm
    sgnm_params = model.sgnm_parameters()
    sgnm_opt = sgnm_sched = None
    if sgnm_params:
        sgnm_opt = StableAdamW(sgnm_params, lr=so.lr, betas=so.betas, eps=so.eps, weight_decay=so.weight_decay,
                               amsgrad=so.amsgrad, clip_threshold=so.clip_threshold)
        total = planned_iterations(cfg, len(normal), len(abnormal), len(train_rows), cfg.epochs)
        sgnm_sched = WarmupCosine(sgnm_opt, base=so.lr, final=so.lr * so.final_lr_ratio, total=total,
                                  warmup=min(so.warmup_iters, total))
    weights = LossWeights(align=cfg.loss.align_weight, separation=cfg.loss.separation_weight,
                          event=cfg.loss.event_weight, background=cfg.loss.background_weight,
                          consistency=cfg.loss.consistency_weight, gather=cfg.loss.gather_weight,
                          label_smoothing=cfg.loss.label_smoothing, background_other=cfg.loss.background_other)

    state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_metric": 0.0, "best_epoch": None, "best_step": None}
    best_state: dict[str, torch.Tensor] | None = None
    metrics_log = _MetricsLog(out / "metrics.jsonl")
    if resume:
        state, best_state = _resume(out, cfg, model, main_opt, main_sched, sgnm_opt, sgnm_sched)
    elif (out / LAST_OPTIM).exists():
        raise DsanetError(f"{out} already holds a training run ({LAST_OPTIM}); pass --resume to continue it "
                          f"or choose another --out")
    else:
        (out / "metrics.jsonl").write_text("")

    (out / "config.json").write_text(json.dumps({
        "train_config": cfg.model_dump(mode="json"), "dsanet_config": mcfg.to_dict(), "data_root": str(data_root),
        "clip": str(clip), "clip_dir": str(clip_dir), "device": str(dev), "resumed": bool(resume),
        "train_videos": len(train_rows), "normal": len(normal), "abnormal": len(abnormal),
        "val_videos": len(val_rows), "test_videos": len(test_rows)}, indent=2, sort_keys=True) + "\n")
    log.info("training %s: %d train rows (%d normal, %d anomalous), %d test videos, %d epochs, device %s -> %s",
             preset, len(train_rows), len(normal), len(abnormal), len(test_rows), cfg.epochs, dev, out)

    last_eval: dict[str, Any] | None = None

    def evaluate(epoch: int, step: int, running: dict[str, float]) -> None:
        nonlocal best_state, last_eval
        t0 = time.monotonic()
        if cfg.eval.selection == "test":
            res = evaluate_model(model, test_rows, gt, preset, dev, cfg.eval.batch_size)
            value = float(res[cfg.eval.metric])
            summary = {"auc": res["auc"], "ap": res["ap"], "map_avg": res["map"]["avg"]}
            if "map_13" in res:
                summary["map_13_avg"] = res["map_13"]["avg"]
        else:
            value = video_level_metric(model, val_rows, preset, cfg.eval.metric, dev, cfg.eval.batch_size)
            summary = {f"val_video_{cfg.eval.metric}": value}
        improved = value > state["best_metric"]
        if improved:
            state.update(best_metric=value, best_epoch=epoch, best_step=state["global_step"])
            best_state = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
            save_checkpoint(out / BEST, model, cfg, clip, state=best_state, epoch=epoch, step=state["global_step"],
                            metric={cfg.eval.metric: value, **summary})
        last_eval = summary
        losses = " ".join(f"{k} {v:.4f}" for k, v in running.items())
        figures = " ".join(f"{k} {v:.4f}" for k, v in summary.items())
        log.info("epoch %d step %d | %s | %s%s (%.1fs)", epoch + 1, step, losses, figures,
                 " <- best" if improved else "", time.monotonic() - t0)
        metrics_log.write({"event": "eval", "epoch": epoch + 1, "step": step, "global_step": state["global_step"],
                           "selected_on": cfg.eval.metric, "value": value, "best": improved, **summary,
                           "losses": running})

    show = None if progress is None else not progress  # None: bars only on a terminal
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        plan = plan_epoch(cfg, normal, abnormal, train_rows, epoch)
        sums: dict[str, float] = {}
        evaluated = False
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=show, leave=False)
        for i, rows in enumerate(bar):
            x, labels, lengths = load_batch(rows, length, preset)
            x, labels, lengths = x.to(dev), labels.to(dev), lengths.to(dev)
            out_ = model(x, lengths)
            loss, parts = dsanet_loss(out_, labels, lengths, weights)
            if not math.isfinite(parts["total"]):
                raise DsanetError(f"training diverged: loss is {parts['total']} at epoch {epoch + 1} step {i}")
            main_opt.zero_grad(set_to_none=True)
            if sgnm_opt is not None:
                sgnm_opt.zero_grad(set_to_none=True)
            loss.backward()
            main_opt.step()
            if sgnm_opt is not None:
                sgnm_opt.step()
                sgnm_sched.step()
            state["global_step"] += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            running = {k: v / (i + 1) for k, v in sums.items()}
            bar.set_postfix({k: f"{running[k]:.3f}" for k in ("total", "bce", "align")})
            if on_step is not None:
                on_step(state["global_step"], parts)
            every = cfg.eval.every_steps
            if every is not None and i % every == 0 and i != 0:
                evaluate(epoch, i, running)
                evaluated = True
        bar.close()
        running = {k: v / max(len(plan), 1) for k, v in sums.items()}
        if cfg.eval.every_steps is not None and not evaluated:
            evaluate(epoch, len(plan) - 1, running)  # epoch shorter than the interval
        main_sched.step()
        if cfg.eval.every_steps is None:
            evaluate(epoch, len(plan) - 1, running)
        save_checkpoint(out / LAST, model, cfg, clip, epoch=epoch + 1, step=state["global_step"])
        if cfg.eval.reload_best and best_state is not None:
            model.load_trainable_state_dict(best_state)
        state["epoch"] = epoch + 1
        torch.save({"state": state, "main_opt": main_opt.state_dict(), "main_sched": main_sched.state_dict(),
                    "sgnm_opt": sgnm_opt.state_dict() if sgnm_opt else None,
                    "sgnm_sched": sgnm_sched.state_dict() if sgnm_sched else None,
                    "train_config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True)}, out / LAST_OPTIM)
        metrics_log.write({"event": "epoch", "epoch": epoch + 1, "global_step": state["global_step"],
                           "steps": len(plan), "losses": running, "lr_main": main_opt.param_groups[0]["lr"],
                           "lr_sgnm": sgnm_opt.param_groups[0]["lr"] if sgnm_opt else None,
                           "best_metric": state["best_metric"]})
        log.info("epoch %d done: %d steps, loss %.4f, best %s %.4f (epoch %s)", epoch + 1, len(plan),
                 running.get("total", float("nan")), cfg.eval.metric, state["best_metric"],
                 None if state["best_epoch"] is None else state["best_epoch"] + 1)
    return TrainResult(out_dir=out, best_metric=state["best_metric"] if state["best_epoch"] is not None else None,
                       best_epoch=state["best_epoch"], best_step=state["best_step"], last_eval=last_eval,
                       epochs_run=state["epoch"])


def _resume(out: Path, cfg: TrainConfig, model: DSANet, main_opt: torch.optim.Optimizer, main_sched: Any,
            sgnm_opt: torch.optim.Optimizer | None, sgnm_sched: WarmupCosine | None
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore loop, optimiser and scheduler state; the model continues from what the next epoch would
    have started with (the best weights when reload_best is on, else the last)."""
    opt_path = out / LAST_OPTIM
    if not opt_path.is_file():
        raise CheckpointError(f"--resume: {opt_path} does not exist (no finished epoch to resume from)")
    try:
        saved = torch.load(opt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"--resume: cannot read {opt_path}: {exc}") from exc
    mine = json.loads(json.dumps(cfg.model_dump(mode="json"), sort_keys=True))
    theirs = json.loads(saved.get("train_config", "{}"))
    diff = sorted(k for k in set(mine) | set(theirs) if k != "epochs" and mine.get(k) != theirs.get(k))
    if diff:
        raise CheckpointError(f"--resume: the run in {out} used a different training config (sections {diff} differ)")
    state = dict(saved["state"])
    best_state = None
    if state.get("best_epoch") is not None and (out / BEST).is_file():
        best_state = _load_tensors(out / BEST)
    load_weights_into(model, out / LAST)
    if cfg.eval.reload_best and best_state is not None:
        model.load_trainable_state_dict(best_state)
    main_opt.load_state_dict(saved["main_opt"])
    main_sched.load_state_dict(saved["main_sched"])
    if sgnm_opt is not None and saved.get("sgnm_opt") is not None:
        sgnm_opt.load_state_dict(saved["sgnm_opt"])
        sgnm_sched.load_state_dict(saved["sgnm_sched"])
    log.info("resuming %s after epoch %d (best %s %.4f)", out, state["epoch"], cfg.eval.metric, state["best_metric"])
    return state, best_state
