"""DSANet losses against values worked out by hand on tiny tensors, and against loop references."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from engine.model.dsanet import DSANetOutput, dcsa_weights, hierarchical_probs  # noqa: E402
from export.losses import (  # noqa: E402
    LossWeights,
    background_loss,
    background_target,
    consistency_loss,
    dsanet_loss,
    event_loss,
    gather_loss,
    mil_align_loss,
    mil_bce_loss,
    mil_k,
    separation_loss,
    topk_mean,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_mil_k_is_floor_n_over_16_plus_1() -> None:
    assert mil_k(torch.tensor([1, 15, 16, 17, 31, 32, 256])).tolist() == [1, 1, 2, 2, 2, 3, 17]


def test_topk_mean_ignores_padding_and_uses_k() -> None:
    # video 0: n=3 -> k=1, the padded 9.0 must not win; video 1: n=17 -> k=2 -> mean(5, 4)
    v = torch.zeros(2, 20)
    v[0, :4] = torch.tensor([0.1, 0.9, 0.5, 9.0])
    v[1, :17] = torch.arange(17, dtype=torch.float32) * -1.0
    v[1, 3], v[1, 7] = 5.0, 4.0
    out = topk_mean(v, torch.tensor([3, 17]))
    assert out.tolist() == pytest.approx([0.9, 4.5])


def test_topk_mean_matches_a_per_video_topk_loop_with_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    vals = torch.randn(5, 64, 3, generator=g, requires_grad=True)
    lengths = torch.tensor([64, 1, 17, 33, 40])
    ours = topk_mean(vals, lengths)
    ref = torch.stack([torch.topk(vals[i, :n], k=int(n / 16 + 1), dim=0).values.mean(0)
                       for i, n in enumerate(lengths.tolist())])
    assert torch.allclose(ours, ref)
    (g1,) = torch.autograd.grad(ours.sum(), vals)
    (g2,) = torch.autograd.grad(ref.sum(), vals)
    assert torch.allclose(g1, g2)


def test_mil_bce_by_hand() -> None:
    # normal video (y=0), n=2: probs 0.2, 0.6 (+ a padded 0.99 that must be ignored) -> top1 0.6 -> -ln(0.4)
    # anomalous video (y=1), n=17 -> k=2: top two 0.9, 0.7 -> mean 0.8 -> -ln(0.8)
    s = torch.full((2, 20), logit(0.1))
    s[0, 0], s[0, 1], s[0, 2] = logit(0.2), logit(0.6), logit(0.99)
    s[1, 4], s[1, 9] = logit(0.9), logit(0.7)
    labels = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    loss = mil_bce_loss(s, labels, torch.tensor([2, 17]))
    assert loss.item() == pytest.approx((-math.log(0.4) - math.log(0.8)) / 2, rel=1e-5)


def test_mil_align_by_hand() -> None:
    # one video with labels {1, 2}: target (0, 1/2, 1/2); n=2 -> k=1 -> per-class max z = (0, 0, ln 2)
    # softmax = (1/4, 1/4, 1/2) -> loss = -(1/2 ln 1/4 + 1/2 ln 1/2) = 1.5 ln 2
    a = torch.tensor([[[0.0, -3.0, math.log(2)], [-1.0, 0.0, -5.0], [50.0, 50.0, 50.0]]])
    loss = mil_align_loss(a, torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([2]))
    assert loss.item() == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_separation_by_hand() -> None:
    # t0 = e1, t1 = (e1 + e2) (cos 1/sqrt 2), t2 = -3 e1 (cos -1, abs 1) -> (1/sqrt2 + 1) / 2
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-3.0, 0.0]])
    assert separation_loss(t).item() == pytest.approx((1 / math.sqrt(2) + 1) / 2, rel=1e-6)


def test_event_loss_by_hand() -> None:
    # C=4, eps=0.1, label class 1 -> target (0.025, 0.925, 0.025, 0.025); logits (0, ln3, 0, 0)
    # softmax (1/6, 1/2, 1/6, 1/6) -> loss = 0.925 ln 2 + 0.075 ln 6
    z = torch.tensor([[0.0, math.log(3), 0.0, 0.0]])
    loss = event_loss(z, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), 0.1)
    assert loss.item() == pytest.approx(0.925 * math.log(2) + 0.075 * math.log(6), rel=1e-6)


def test_event_loss_multilabel_splits_the_mass() -> None:
    # labels {1, 2} of C=2+1: target (eps/3, 0.45 + eps/3, 0.45 + eps/3); uniform logits -> ln 3
    loss = event_loss(torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 1.0]]), 0.1)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)


def test_background_target_matches_the_spec_numbers() -> None:
    ucf = background_target(14)
    xd = background_target(7)
    assert ucf[0].item() == pytest.approx(0.8036, abs=1e-4) and ucf[1].item() == pytest.approx(0.0151, abs=1e-4)
    assert xd[0].item() == pytest.approx(0.8633, abs=1e-4) and xd[3].item() == pytest.approx(0.0228, abs=1e-4)
    assert ucf.sum().item() == pytest.approx(1.0)


def test_background_loss_by_hand() -> None:
    # C=2: u = (1, 0.01)/1.01, r = 0.9 u + 0.05 = (0.941089.., 0.058911..); logits (ln 3, 0) -> softmax (3/4, 1/4)
    r0 = 0.9 / 1.01 + 0.05
    r1 = 0.9 * 0.01 / 1.01 + 0.05
    loss = background_loss(torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]]), 0.1, 0.01)
    assert loss.item() == pytest.approx(-(r0 * math.log(0.75) + r1 * math.log(0.25)), rel=1e-6)


def test_consistency_by_hand() -> None:
    # sigmoid(0) = 0.5 everywhere; errors (1 - cos)/2: pos0 orthogonal 0.5, pos1 equal 0, pos2 opposite 1 (padding)
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    xh = torch.tensor([[[0.0, 2.0], [3.0, 0.0], [-1.0, 0.0]]])
    loss = consistency_loss(torch.zeros(1, 3), x, xh, torch.tensor([2]))
    assert loss.item() == pytest.approx((0.0 + 0.25) / 2, rel=1e-6)
    # with all three valid the opposite vector adds (0.5 - 1)^2
    assert consistency_loss(torch.zeros(1, 3), x, xh, torch.tensor([3])).item() == pytest.approx(0.5 / 3, rel=1e-6)


def test_gather_by_hand() -> None:
    # queries e1, e2; prototypes e1, (e1+e2): q0 -> 0, q1 -> min(1, 1 - 1/sqrt2)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert gather_loss(q, p).item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, rel=1e-6)
    # weights keep the first query only
    assert gather_loss(q, p, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-7)


def test_dcsa_weights_by_hand() -> None:
    evt, bkg = dcsa_weights(torch.tensor([[0.0, 1.0, 0.5]]), 10.0)
    e5 = math.exp(5) - 1
    total_e = (math.exp(10) - 1) + e5
    assert evt[0].tolist() == pytest.approx([0.0, (math.exp(10) - 1) / total_e, e5 / total_e], rel=1e-6)
    assert bkg[0].tolist() == pytest.approx([(math.exp(10) - 1) / total_e, 0.0, e5 / total_e], rel=1e-6)
    # padding masked out (opt-in): the third position gets no weight
    evt_m, _ = dcsa_weights(torch.tensor([[0.0, 1.0, 0.5]]), 10.0, torch.tensor([[True, True, False]]))
    assert evt_m[0].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_hierarchical_probs_by_hand() -> None:
    # s = 0 -> q = 0.5; align (9, ln 1, ln 3) / tau=1 -> anomaly classes share 0.5 as 1:3
    p = hierarchical_probs(torch.tensor([0.0]), torch.tensor([[9.0, 0.0, math.log(3)]]), 1.0)
    assert p[0].tolist() == pytest.approx([0.5, 0.125, 0.375], rel=1e-6)
    # tau divides both logits: s = 2, tau = 2 -> q = sigmoid(1)
    p2 = hierarchical_probs(torch.tensor([2.0]), torch.tensor([[0.0, 0.0, 0.0]]), 2.0)
    q = 1 / (1 + math.exp(-1))
    assert p2[0].tolist() == pytest.approx([1 - q, q / 2, q / 2], rel=1e-6)


def _fake_output(sgnm: bool) -> DSANetOutput:
    g = torch.Generator().manual_seed(1)
    b, t, c, d = 3, 20, 4, 6
    return DSANetOutput(
        text_features=torch.randn(c, d, generator=g), logits=torch.randn(b, t, generator=g),
        align_logits=torch.randn(b, t, c, generator=g), event_logits=torch.randn(b, c, generator=g),
        background_logits=torch.randn(b, c, generator=g), features=torch.randn(b, t, d, generator=g),
        reconstructed=torch.randn(b, t, d, generator=g) if sgnm else None,
        gather_loss=torch.tensor(0.25) if sgnm else None)


def test_total_loss_is_the_weighted_sum_of_the_terms() -> None:
    out = _fake_output(True)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 1.0]])
    lengths = torch.tensor([20, 5, 17])
    w = LossWeights(align=1.1, separation=2.0, event=3.0, background=0.5, consistency=4.0, gather=0.1)
    total, parts = dsanet_loss(out, labels, lengths, w)
    expected = (parts["bce"] + 1.1 * parts["align"] + 2.0 * parts["separation"] + 3.0 * parts["event"]
                + 0.5 * parts["background"] + 4.0 * parts["consistency"] + 0.1 * 0.25)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["gather"] == pytest.approx(0.25)
    assert parts["bce"] == pytest.approx(mil_bce_loss(out.logits, labels, lengths).item())


def test_total_without_sgnm_uses_align_weight_one_like_the_official_code() -> None:
    out = _fake_output(False)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0]])
    total, parts = dsanet_loss(out, labels, torch.tensor([20, 20, 20]), LossWeights(align=5.0))
    assert "consistency" not in parts and "gather" not in parts
    expected = parts["bce"] + parts["align"] + parts["separation"] + parts["event"] + parts["background"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
