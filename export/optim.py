"""Optimiser and schedule of DSANet's SGNM branch, written for this project.

``StableAdamW``: AdamW with decoupled weight decay, optional AMSGrad, and *update clipping*: the step
of each parameter tensor is divided by max(1, RMS(g / denom) / clip_threshold), which bounds the
update when the current gradient is large relative to the second-moment estimate (the
"StableAdamW" idea of Wortsman et al., 2023). DSANet runs it with AMSGrad on, eps 1e-10,
weight decay 1e-4.

``WarmupCosine``: per-iteration schedule, linear warm-up from ``start`` to ``base`` over ``warmup``
iterations (both ends included, so the first update uses lr = start = 0), then a cosine from ``base``
to ``final`` over the remaining ``total - warmup`` planned iterations, then ``final``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class StableAdamW(torch.optim.Optimizer):
    """AdamW + AMSGrad option + per-tensor update clipping by the RMS of g / denom."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 clip_threshold: float = 1.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if clip_threshold <= 0:
            raise ValueError("clip_threshold must be > 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, clip_threshold=clip_threshold))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 - torch's optimiser signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("StableAdamW does not support sparse gradients")
                p.mul_(1.0 - lr * wd)  # decoupled decay, before the moment update
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                second = v
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(1.0 - beta2 ** t)).add_(group["eps"])
                ratio = grad / denom
                rms = float(ratio.norm(2)) / math.sqrt(ratio.numel())
                clip = max(1.0, rms / group["clip_threshold"])
                p.addcdiv_(m, denom, value=-lr / (1.0 - beta1 ** t) / clip)
        return loss


def warmup_cosine_lr(iteration: int, base: float, final: float, total: int, warmup: int, start: float = 0.0) -> float:
    """Learning rate at a 0-based ``iteration`` (see module docstring)."""
    if iteration >= total:
        return final
    if iteration < warmup:
        return start if warmup == 1 else start + (base - start) * iteration / (warmup - 1)
    n = total - warmup
    j = iteration - warmup
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * j / n))


class WarmupCosine:
    """Sets every group's lr per iteration; call ``step()`` after each optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base: float, final: float, total: int,
                 warmup: int = 0, start: float = 0.0) -> None:
        if total < 1 or warmup < 0 or warmup > total:
            raise ValueError(f"need 0 <= warmup ({warmup}) <= total ({total}) and total >= 1")
        self.optimizer = optimizer
        self.base, self.final, self.total, self.warmup, self.start = base, final, total, warmup, start
        self.iteration = 0
        self._apply()

    def lr(self) -> float:
        return warmup_cosine_lr(self.iteration, self.base, self.final, self.total, self.warmup, self.start)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "base": self.base, "final": self.final, "total": self.total,
                "warmup": self.warmup, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self._apply()
