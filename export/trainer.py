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

Run directory: the checkpoints and ``last_optim.pt`` (:mod:`export.checkpoint`), ``config.json`` (the
resolved run) and ``metrics.jsonl`` (one line per evaluation and per epoch). Batches come from
:mod:`export.batches`, in-training evaluation from :mod:`export.model_eval`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import atomic_write
from engine.errors import CheckpointError, DataError, DsanetError, RuntimeFailure
from engine.model import DSANet, build_model, text_width_of
from export.batches import load_batch, plan_epoch, planned_iterations, resolve_path, split_validation
from export.checkpoint import (
    BEST,
    LAST,
    LAST_OPTIM,
    load_tensors,
    load_train_state,
    load_weights_into,
    model_config_for,
    save_checkpoint,
    save_train_state,
    torch_device,
)
from export.data import ListRow, read_list, snippet_info, split_normal
from export.losses import LossWeights, dsanet_loss
from export.model_eval import evaluate_model, video_level_metric
from export.optim import StableAdamW, WarmupCosine
from export.train_config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["BEST", "LAST", "LAST_OPTIM", "TrainResult", "model_config_for", "save_checkpoint", "seed_everything",
           "train"]


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


@dataclass
class TrainingData:
    """The lists of one run: training rows (split into normal / anomalous pools), selection and test rows."""

    train_rows: list[ListRow]
    val_rows: list[ListRow]
    test_rows: list[ListRow]
    normal: list[ListRow]
    abnormal: list[ListRow]
    gt: Any  # test ground truth when the selection runs on the test list, else None


def load_training_data(cfg: TrainConfig, data_root: Path) -> TrainingData:
    """Read the preset's lists under ``data_root``; refuse a list that cannot make the preset's batches."""
    preset = cfg.preset
    train_rows = read_list(resolve_path(data_root, cfg.data.train_list), data_root)
    test_rows = read_list(resolve_path(data_root, cfg.data.test_list), data_root)
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
    return TrainingData(train_rows, val_rows, test_rows, normal, abnormal, gt)


class Optimisers:
    """AdamW on everything outside SGNM (cosine, stepped per epoch) and StableAdamW on SGNM (warm-up
    cosine, stepped per iteration); both step together after one backward."""

    def __init__(self, cfg: TrainConfig, model: DSANet, data: TrainingData) -> None:
        m = cfg.optim.main
        self.main = torch.optim.AdamW(model.main_parameters(), lr=m.lr, betas=m.betas, eps=m.eps,
                                      weight_decay=m.weight_decay)
        self.main_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.main, T_max=m.cosine_t_max or cfg.epochs)
        so = cfg.optim.sgnm
        sgnm_params = model.sgnm_parameters()
        self.sgnm: StableAdamW | None = None
        self.sgnm_sched: WarmupCosine | None = None
        if sgnm_params:
            self.sgnm = StableAdamW(sgnm_params, lr=so.lr, betas=so.betas, eps=so.eps, weight_decay=so.weight_decay,
                                    amsgrad=so.amsgrad, clip_threshold=so.clip_threshold)
            total = planned_iterations(cfg, len(data.normal), len(data.abnormal), len(data.train_rows), cfg.epochs)
            self.sgnm_sched = WarmupCosine(self.sgnm, base=so.lr, final=so.lr * so.final_lr_ratio, total=total,
                                           warmup=min(so.warmup_iters, total))

    def step(self, loss: torch.Tensor) -> None:
        self.main.zero_grad(set_to_none=True)
        if self.sgnm is not None:
            self.sgnm.zero_grad(set_to_none=True)
        loss.backward()
        self.main.step()
        if self.sgnm is not None and self.sgnm_sched is not None:
            self.sgnm.step()
            self.sgnm_sched.step()

    def lrs(self) -> tuple[float, float | None]:
        return self.main.param_groups[0]["lr"], self.sgnm.param_groups[0]["lr"] if self.sgnm else None

    def state_dict(self) -> dict[str, Any]:
        return {"main_opt": self.main.state_dict(), "main_sched": self.main_sched.state_dict(),
                "sgnm_opt": self.sgnm.state_dict() if self.sgnm else None,
                "sgnm_sched": self.sgnm_sched.state_dict() if self.sgnm_sched else None}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.main.load_state_dict(saved["main_opt"])
        self.main_sched.load_state_dict(saved["main_sched"])
        if self.sgnm is not None and self.sgnm_sched is not None and saved.get("sgnm_opt") is not None:
            self.sgnm.load_state_dict(saved["sgnm_opt"])
            self.sgnm_sched.load_state_dict(saved["sgnm_sched"])


def loss_weights(cfg: TrainConfig) -> LossWeights:
    c = cfg.loss
    return LossWeights(align=c.align_weight, separation=c.separation_weight, event=c.event_weight,
                       background=c.background_weight, consistency=c.consistency_weight, gather=c.gather_weight,
                       label_smoothing=c.label_smoothing, background_other=c.background_other)


class _Run:
    """One training run's moving parts and loop state; ``train`` drives it epoch by epoch."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, model: DSANet, opt: Optimisers, out: Path,
                 clip: str, dev: torch.device) -> None:
        self.cfg, self.data, self.model, self.opt, self.out, self.clip, self.dev = cfg, data, model, opt, out, clip, dev
        self.weights = loss_weights(cfg)
        self.metrics_log = _MetricsLog(out / "metrics.jsonl")
        self.state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_metric": 0.0, "best_epoch": None,
                                      "best_step": None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_eval: dict[str, Any] | None = None
        # extra loss term added before backward (``dsanet finetune``'s anchor toward the parent weights)
        self.penalty: Callable[[], torch.Tensor] | None = None

    def step(self, rows: list[ListRow], epoch: int, i: int) -> dict[str, float]:
        """One optimisation step on one batch; returns the loss parts."""
        x, labels, lengths = load_batch(rows, self.cfg.model.visual_length, self.cfg.preset)
        x, labels, lengths = x.to(self.dev), labels.to(self.dev), lengths.to(self.dev)
        loss, parts = dsanet_loss(self.model(x, lengths), labels, lengths, self.weights)
        if self.penalty is not None:
            extra = self.penalty()
            loss = loss + extra
            parts["penalty"] = float(extra.detach())
            parts["total"] = float(loss.detach())
        if not math.isfinite(parts["total"]):
            raise RuntimeFailure(f"training diverged: loss is {parts['total']} at epoch {epoch + 1} step {i}")
        self.opt.step(loss)
        self.state["global_step"] += 1
        return parts

    def evaluate(self, epoch: int, step: int, running: dict[str, float]) -> None:
        """Selection metric now; keep (and save) the weights when they improve on the best so far."""
        cfg, state = self.cfg, self.state
        t0 = time.monotonic()
        if cfg.eval.selection == "test":
            res = evaluate_model(self.model, self.data.test_rows, self.data.gt, cfg.preset, self.dev,
                                 cfg.eval.batch_size)
            value = float(res[cfg.eval.metric])
            summary = {"auc": res["auc"], "ap": res["ap"], "map_avg": res["map"]["avg"]}
            if "map_13" in res:
                summary["map_13_avg"] = res["map_13"]["avg"]
        else:
            value = video_level_metric(self.model, self.data.val_rows, cfg.preset, cfg.eval.metric, self.dev,
                                       cfg.eval.batch_size)
            summary = {f"val_video_{cfg.eval.metric}": value}
        improved = value > state["best_metric"]
        if improved:
            state.update(best_metric=value, best_epoch=epoch, best_step=state["global_step"])
            self.best_state = {k: v.detach().clone() for k, v in self.model.trainable_state_dict().items()}
            save_checkpoint(self.out / BEST, self.model, cfg, self.clip, state=self.best_state, epoch=epoch,
                            step=state["global_step"], metric={cfg.eval.metric: value, **summary})
        self.last_eval = summary
        losses = " ".join(f"{k} {v:.4f}" for k, v in running.items())
        figures = " ".join(f"{k} {v:.4f}" for k, v in summary.items())
        log.info("epoch %d step %d | %s | %s%s (%.1fs)", epoch + 1, step, losses, figures,
                 " <- best" if improved else "", time.monotonic() - t0)
        self.metrics_log.write({"event": "eval", "epoch": epoch + 1, "step": step,
                                "global_step": state["global_step"], "selected_on": cfg.eval.metric, "value": value,
                                "best": improved, **summary, "losses": running})

    def epoch(self, epoch: int, show: bool | None, on_step: Callable[[int, dict[str, float]], None] | None) -> None:
        """Train one epoch (evaluating every N steps or at its end), then save and reload as the official loop."""
        from tqdm import tqdm

        cfg = self.cfg
        self.model.train()
        plan = plan_epoch(cfg, self.data.normal, self.data.abnormal, self.data.train_rows, epoch)
        sums: dict[str, float] = {}
        evaluated = False
        every = cfg.eval.every_steps
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=show, leave=False)
        for i, rows in enumerate(bar):
            parts = self.step(rows, epoch, i)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            running = {k: v / (i + 1) for k, v in sums.items()}
            bar.set_postfix({k: f"{running[k]:.3f}" for k in ("total", "bce", "align")})
            if on_step is not None:
                on_step(self.state["global_step"], parts)
            if every is not None and i % every == 0 and i != 0:
                self.evaluate(epoch, i, running)
                evaluated = True
        bar.close()
        running = {k: v / max(len(plan), 1) for k, v in sums.items()}
        if every is not None and not evaluated:
            self.evaluate(epoch, len(plan) - 1, running)  # epoch shorter than the interval
        self.opt.main_sched.step()
        if every is None:
            self.evaluate(epoch, len(plan) - 1, running)
        self._end_epoch(epoch, len(plan), running)

    def _end_epoch(self, epoch: int, steps: int, running: dict[str, float]) -> None:
        cfg, state = self.cfg, self.state
        save_checkpoint(self.out / LAST, self.model, cfg, self.clip, epoch=epoch + 1, step=state["global_step"])
        if cfg.eval.reload_best and self.best_state is not None:
            self.model.load_trainable_state_dict(self.best_state)
        state["epoch"] = epoch + 1
        save_train_state(self.out / LAST_OPTIM, {"state": state, **self.opt.state_dict(),
                                                 "train_config": json.dumps(cfg.model_dump(mode="json"),
                                                                            sort_keys=True)})
        lr_main, lr_sgnm = self.opt.lrs()
        self.metrics_log.write({"event": "epoch", "epoch": epoch + 1, "global_step": state["global_step"],
                                "steps": steps, "losses": running, "lr_main": lr_main, "lr_sgnm": lr_sgnm,
                                "best_metric": state["best_metric"]})
        log.info("epoch %d done: %d steps, loss %.4f, best %s %.4f (epoch %s)", epoch + 1, steps,
                 running.get("total", float("nan")), cfg.eval.metric, state["best_metric"],
                 None if state["best_epoch"] is None else state["best_epoch"] + 1)

    def resume(self) -> None:
        """Restore loop, optimiser and scheduler state; the model continues from what the next epoch would
        have started with (the best weights when reload_best is on, else the last)."""
        out, cfg = self.out, self.cfg
        saved = load_train_state(out / LAST_OPTIM)
        mine = json.loads(json.dumps(cfg.model_dump(mode="json"), sort_keys=True))
        theirs = json.loads(saved.get("train_config", "{}"))
        diff = sorted(k for k in set(mine) | set(theirs) if k != "epochs" and mine.get(k) != theirs.get(k))
        if diff:
            raise CheckpointError(f"--resume: the run in {out} used a different training config (sections {diff} "
                                  "differ)")
        self.state = dict(saved["state"])
        if self.state.get("best_epoch") is not None and (out / BEST).is_file():
            self.best_state = load_tensors(out / BEST)
        load_weights_into(self.model, out / LAST)
        if cfg.eval.reload_best and self.best_state is not None:
            self.model.load_trainable_state_dict(self.best_state)
        self.opt.load_state_dict(saved)
        log.info("resuming %s after epoch %d (best %s %.4f)", out, self.state["epoch"], cfg.eval.metric,
                 self.state["best_metric"])

    def result(self) -> TrainResult:
        s = self.state
        return TrainResult(out_dir=self.out, best_metric=s["best_metric"] if s["best_epoch"] is not None else None,
                           best_epoch=s["best_epoch"], best_step=s["best_step"], last_eval=self.last_eval,
                           epochs_run=s["epoch"])


def train(cfg: TrainConfig, data_root: str | os.PathLike[str], clip: str, out_dir: str | os.PathLike[str],
          device: str = "cpu", resume: bool = False, progress: bool | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train DSANet as the official scripts do; see the module docstring. Returns the best metric."""
    from engine.clip import TINY, resolve_clip_dir

    data_root = Path(data_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch_device(device)
    if str(clip) == TINY:
        log.warning("--clip tiny: the text tower is a tiny RANDOM CLIP, not a real CLIP; use it for tests only")
    clip_dir = resolve_clip_dir(clip)
    seed_everything(cfg.seed, cfg.deterministic)

    data = load_training_data(cfg, data_root)
    mcfg = model_config_for(cfg, text_width_of(clip_dir), snippet_info(data_root))
    model = build_model(mcfg, clip_dir).to(dev)
    run = _Run(cfg, data, model, Optimisers(cfg, model, data), out, clip, dev)
    if resume:
        run.resume()
    elif (out / LAST_OPTIM).exists():
        raise DsanetError(f"{out} already holds a training run ({LAST_OPTIM}); pass --resume to continue it "
                          f"or choose another --out")
    else:
        (out / "metrics.jsonl").write_text("")

    atomic_write(out / "config.json", json.dumps({
        "train_config": cfg.model_dump(mode="json"), "dsanet_config": mcfg.to_dict(), "data_root": str(data_root),
        "clip": str(clip), "clip_dir": str(clip_dir), "device": str(dev), "resumed": bool(resume),
        "train_videos": len(data.train_rows), "normal": len(data.normal), "abnormal": len(data.abnormal),
        "val_videos": len(data.val_rows), "test_videos": len(data.test_rows)}, indent=2, sort_keys=True) + "\n")
    log.info("training %s: %d train rows (%d normal, %d anomalous), %d test videos, %d epochs, device %s -> %s",
             cfg.preset, len(data.train_rows), len(data.normal), len(data.abnormal), len(data.test_rows), cfg.epochs,
             dev, out)
    show = None if progress is None else not progress  # None: bars only on a terminal
    for epoch in range(run.state["epoch"], cfg.epochs):
        run.epoch(epoch, show, on_step)
    return run.result()
