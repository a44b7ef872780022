"""StableAdamW (AMSGrad, update clipping) and the warm-up cosine schedule, by hand and by reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.optim import StableAdamW, WarmupCosine, warmup_cosine_lr  # noqa: E402


def test_one_step_by_hand() -> None:
    # p=1, g=0.5, lr=0.1, wd=0.1: decay -> 0.99; m=0.05, v=0.00025; bias-corrected denom = 0.5;
    # RMS(g/denom) = 1 -> no clipping; step = lr / (1 - 0.9) = 1 -> p = 0.99 - 0.05 / 0.5 = 0.89
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = StableAdamW([p], lr=0.1, weight_decay=0.1, eps=1e-8)
    p.grad = torch.tensor([0.5])
    opt.step()
    assert p.item() == pytest.approx(0.89, abs=1e-6)


def test_update_clipping_by_hand() -> None:
    # same step with clip_threshold 0.5: RMS 1 / 0.5 = 2 -> step halved -> 0.99 - 0.05 = 0.94
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = StableAdamW([p], lr=0.1, weight_decay=0.1, eps=1e-8, clip_threshold=0.5)
    p.grad = torch.tensor([0.5])
    opt.step()
    assert p.item() == pytest.approx(0.94, abs=1e-6)


def _reference(grads: list[np.ndarray], p0: np.ndarray, lr: float, wd: float, eps: float, amsgrad: bool,
               clip: float, b1: float = 0.9, b2: float = 0.999) -> np.ndarray:
    """Independent float64 transcription of the algorithm in the module docstring."""
    p = p0.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p *= 1 - lr * wd
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        second = vmax if amsgrad else v
        denom = np.sqrt(second) / math.sqrt(1 - b2 ** t) + eps
        rms = np.sqrt(np.mean((g / denom) ** 2))
        p -= lr / (1 - b1 ** t) / max(1.0, rms / clip) * m / denom
    return p


@pytest.mark.parametrize("amsgrad", [True, False])
def test_matches_reference_over_steps_with_shrinking_and_jumping_grads(amsgrad: bool) -> None:
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3)).astype(np.float32)
    scales = [1.0, 0.1, 0.01, 5.0, 0.5, 0.05]  # a sudden jump exercises clipping, the decay exercises AMSGrad
    grads = [(rng.normal(size=(4, 3)) * s).astype(np.float32) for s in scales]
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = StableAdamW([p], lr=0.01, weight_decay=1e-4, eps=1e-10, amsgrad=amsgrad)
    for g in grads:
        p.grad = torch.from_numpy(g)
        opt.step()
    ref = _reference([g.astype(np.float64) for g in grads], p0, 0.01, 1e-4, 1e-10, amsgrad, 1.0)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_amsgrad_changes_the_result_when_gradients_shrink() -> None:
    def run(amsgrad: bool) -> torch.Tensor:
        p = torch.nn.Parameter(torch.ones(3))
        opt = StableAdamW([p], lr=0.01, weight_decay=0.0, eps=1e-10, amsgrad=amsgrad)
        for s in (1.0, 0.01, 0.01, 0.01):
            p.grad = torch.full((3,), s)
            opt.step()
        return p.detach().clone()

    assert not torch.allclose(run(True), run(False))


def test_state_dict_round_trip_with_weights_only(tmp_path) -> None:  # noqa: ANN001
    p = torch.nn.Parameter(torch.ones(2))
    opt = StableAdamW([p], lr=0.01, amsgrad=True)
    p.grad = torch.ones(2)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = StableAdamW([q], lr=0.01, amsgrad=True)
    opt2.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    for o, prm in ((opt, p), (opt2, q)):
        prm.grad = torch.full((2,), 0.3)
        o.step()
    assert torch.equal(p, q)


def _official_schedule(base: float, final: float, total: int, warmup: int) -> np.ndarray:
    """The warm-up cosine schedule as an array, built the way the official scheduler builds it."""
    warm = np.linspace(0.0, base, warmup)
    iters = np.arange(total - warmup)
    return np.concatenate((warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))))


def test_schedule_matches_the_official_array_and_clamps_after_total() -> None:
    base, total, warmup = 7e-5, 2510, 100
    ref = _official_schedule(base, 0.1 * base, total, warmup)
    ours = np.array([warmup_cosine_lr(i, base, 0.1 * base, total, warmup) for i in range(total + 5)])
    np.testing.assert_allclose(ours[:total], ref, rtol=1e-12, atol=0)
    assert ours[0] == 0.0  # the very first SGNM update uses lr 0
    assert ours[99] == pytest.approx(base) and ours[100] == pytest.approx(base)
    assert np.all(ours[total:] == pytest.approx(0.1 * base))
    # UCF runs 1,250 of the 2,510 planned iterations: the lr ends near 0.58 lr
    assert ours[1250] / base == pytest.approx(0.582, abs=2e-3)


def test_scheduler_drives_the_optimizer_and_resumes() -> None:
    p = torch.nn.Parameter(torch.ones(1))
    opt = StableAdamW([p], lr=1.0)
    sched = WarmupCosine(opt, base=1.0, final=0.1, total=10, warmup=3)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(12):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert seen[3] == pytest.approx(1.0) and seen[-1] == pytest.approx(0.1)
    assert seen[4] < seen[3]
    opt2 = StableAdamW([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    sched2 = WarmupCosine(opt2, base=1.0, final=0.1, total=10, warmup=3)
    state = WarmupCosine(opt, 1.0, 0.1, 10, 3)
    state.iteration = 5
    sched2.load_state_dict(state.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(warmup_cosine_lr(5, 1.0, 0.1, 10, 3))
