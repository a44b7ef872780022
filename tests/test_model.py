"""The torch DSANet: building blocks against loop references, the full-size UCF model on CPU, the
text-feature cache, the inference head against the model's eval path, and its ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.errors import InputError  # noqa: E402
from engine.model import DSANetConfig, ModelConfigError, build_model, text_width_of  # noqa: E402
from engine.model.backbone import distance_adjacency, similarity_adjacency, window_mask  # noqa: E402
from engine.model.sgnm import SGNM, PrototypeBlock  # noqa: E402
from export.losses import LossWeights, dsanet_loss  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tiny_clip_dir):  # noqa: ANN001, ANN201
    return tiny_clip_dir


@pytest.fixture(scope="module")
def ucf_model(clip_dir):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    return build_model(DSANetConfig.ucf(text_width=text_width_of(clip_dir)), clip_dir)


def _loop_window_mask(length: int, window: int) -> torch.Tensor:
    """Transcription of the official loop that fills the block-diagonal mask."""
    mask = torch.full((length, length), float("-inf"))
    for i in range(int(length / window)):
        if (i + 1) * window < length:
            mask[i * window:(i + 1) * window, i * window:(i + 1) * window] = 0
        else:
            mask[i * window:length, i * window:length] = 0
    return mask


@pytest.mark.parametrize("length,window", [(256, 8), (256, 64), (12, 3), (7, 7)])
def test_window_mask_matches_the_loop_builder(length: int, window: int) -> None:
    assert torch.equal(window_mask(length, window), _loop_window_mask(length, window))


def test_window_mask_tail_joins_the_last_window_instead_of_being_fully_masked() -> None:
    m = window_mask(10, 3)
    assert torch.isinf(_loop_window_mask(10, 3)[9]).all()  # the official loop would give NaN rows
    assert (m[9, 6:] == 0).all() and torch.isinf(m[9, :6]).all() and (m[6, 6:] == 0).all()


def test_distance_adjacency_values() -> None:
    a = distance_adjacency(5)
    assert a[0, 0].item() == 1.0 and a[0, 1].item() == pytest.approx(math.exp(-1 / math.e))
    assert a[4, 1].item() == pytest.approx(math.exp(-3 / math.e)) and torch.equal(a, a.t())


def test_similarity_adjacency_matches_a_per_video_loop() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 8, generator=g)
    x = base + 0.6 * torch.randn(3, 12, 8, generator=g)  # similar rows so some survive the 0.7 threshold
    lengths = torch.tensor([12, 5, 1])
    ours = similarity_adjacency(x, lengths, 0.7)
    ref = torch.zeros(3, 12, 12)
    for i, n in enumerate(lengths.tolist()):
        xi = x[i, :n]
        s = xi @ xi.t() / (xi.norm(dim=1, keepdim=True) @ xi.norm(dim=1, keepdim=True).t() + 1e-20)
        s = torch.nn.functional.threshold(s, 0.7, 0)
        ref[i, :n, :n] = torch.softmax(s, dim=1)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert (ours[0] > 0).all() and (ours[0] != ours[0].max()).any()  # thresholded values are 0 before softmax


def test_full_size_ucf_forward_backward_on_cpu(ucf_model) -> None:  # noqa: ANN001
    m = ucf_model.train()
    b = 2
    x = torch.randn(b, 256, 512)
    lengths = torch.tensor([256, 40])
    labels = torch.zeros(b, 14)
    labels[0, 0] = 1
    labels[1, 5] = 1
    out = m(x, lengths)
    assert out.logits.shape == (b, 256) and out.align_logits.shape == (b, 256, 14)
    assert out.event_logits.shape == (b, 14) and out.background_logits.shape == (b, 14)
    assert out.text_features.shape == (14, 512)
    assert torch.allclose(out.text_features.norm(dim=-1), torch.ones(14), atol=1e-5)
    assert out.reconstructed.shape == (b, 256, 512) and out.gather_loss.dim() == 0
    m.zero_grad(set_to_none=True)
    loss, parts = dsanet_loss(out, labels, lengths, LossWeights())
    loss.backward()
    assert math.isfinite(parts["total"])
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    assert all(not n.startswith("text.clip.") for n, _ in trainable)
    assert all(p.grad is None for n, p in m.named_parameters() if n.startswith("text.clip."))
    # the optimiser split: SGNM vs everything else, disjoint and complete
    main_ids = {id(p) for p in m.main_parameters()}
    sgnm_ids = {id(p) for p in m.sgnm_parameters()}
    assert not main_ids & sgnm_ids and main_ids | sgnm_ids == {id(p) for _, p in trainable}
    assert len(sgnm_ids) == len(list(m.sgnm.parameters()))
    m.zero_grad(set_to_none=True)


def test_checkpoint_state_excludes_the_frozen_clip(ucf_model) -> None:  # noqa: ANN001
    keys = ucf_model.trainable_state_dict().keys()
    assert not any(k.startswith("text.clip.") for k in keys)
    assert "text.adapters.0.0.weight" in keys and "text.proj.0.weight" in keys and "sgnm.prototypes" in keys
    assert len([k for k in keys if k.startswith("text.adapters.")]) == 3  # L = 3 adapters for UCF


def test_text_cache_is_kept_in_eval_and_dropped_on_train(ucf_model) -> None:  # noqa: ANN001
    m = ucf_model
    m.eval()
    t1 = m.class_text_features()
    assert m.class_text_features() is t1  # cached
    assert not t1.requires_grad
    # a training update of the adapters (what happens between two in-training evaluations)
    m.train()
    assert m.class_text_features().requires_grad  # recomputed with gradients while training
    with torch.no_grad():
        m.text.adapters[0][0].weight.mul_(-1.0)
    m.eval()
    t2 = m.class_text_features()
    assert t2 is not t1 and not torch.allclose(t1, t2)
    # loading weights in eval mode drops the cache too
    state = m.trainable_state_dict()
    state = {k: v.clone() for k, v in state.items()}
    state["text.proj.0.weight"] = state["text.proj.0.weight"] * 0.5 + 0.01
    m.load_trainable_state_dict(state)
    t3 = m.class_text_features()
    assert not torch.allclose(t2, t3)


def test_adapters_change_the_text_features_with_weight_omega(clip_dir) -> None:  # noqa: ANN001
    width = text_width_of(clip_dir)
    small = dict(text_width=width, use_sgnm=False, visual_layers=1)
    torch.manual_seed(0)
    a = build_model(DSANetConfig.ucf(text_adapter_weight=0.0, **small), clip_dir).eval()
    torch.manual_seed(0)
    b = build_model(DSANetConfig.ucf(text_adapter_weight=0.5, **small), clip_dir).eval()
    # same projection head, omega 0 ignores the adapters, omega 0.5 does not
    b.text.proj.load_state_dict(a.text.proj.state_dict())
    assert not torch.allclose(a.class_text_features(), b.class_text_features())


def test_sgnm_selection_decoder_and_gather_gradients() -> None:
    torch.manual_seed(0)
    sg = SGNM(dim=16, num_prototypes=4, heads=2, decoder_depth=2, normal_selection_ratio=0.8)
    feats = torch.randn(2, 10, 16, requires_grad=True)
    logits = torch.arange(10, dtype=torch.float32).repeat(2, 1)  # lowest probabilities first
    selected, _ = sg.select_normal(feats, logits)
    assert selected.shape == (2, 8, 16) and not selected.requires_grad
    assert torch.equal(selected[0], feats[0, :8].detach())
    recon, g = sg(feats, logits)
    (grad_feats,) = torch.autograd.grad(g, feats, allow_unused=True)
    assert grad_feats is None  # the compactness loss reaches only the prototypes and the aggregator
    assert recon.shape == (2, 10, 16)


def test_prototype_block_has_no_attention_residual_and_no_softmax() -> None:
    torch.manual_seed(0)
    blk = PrototypeBlock(8, 2)
    with torch.no_grad():
        blk.attn.proj.weight.zero_()
        blk.attn.proj.bias.zero_()
    x1, x2 = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    protos = torch.randn(1, 3, 8)
    # attention output zero -> the block forgets its input entirely (no residual around attention)
    assert torch.allclose(blk(x1, protos), blk(x2, protos))
    # ReLU(cos * scale) weights: non-negative, and not normalised to sum 1
    attn = blk.attn
    q = torch.nn.functional.normalize(attn.q(blk.norm1(x1)).reshape(1, 5, 2, 4).transpose(1, 2), dim=-1)
    k = torch.nn.functional.normalize(attn.kv(blk.norm1(protos)).reshape(1, 3, 2, 2, 4).permute(2, 0, 3, 1, 4)[0], dim=-1)
    w = torch.relu(q @ k.transpose(-2, -1) * attn.learn_scale)
    assert (w >= 0).all() and not torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_sgnm_init_is_the_official_truncated_normal() -> None:
    torch.manual_seed(0)
    sg = SGNM(dim=64, num_prototypes=4, heads=8, decoder_depth=1)
    for mod in sg.modules():
        if isinstance(mod, torch.nn.Linear):
            assert mod.weight.abs().max() <= 0.03 and mod.weight.std() < 0.012
            assert torch.count_nonzero(mod.bias) == 0
    assert sg.prototypes.std() > 0.5  # N(0, 1), not re-initialised


def test_head_matches_the_models_eval_path(ucf_model) -> None:  # noqa: ANN001
    m = ucf_model.eval()
    head = m.inference_head()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 256, 512, generator=g)
    lengths = torch.tensor([256, 100, 7])
    with torch.no_grad():
        s_ref, p_ref = m.infer(x, lengths)
        s, p = head(x, lengths)
    assert torch.allclose(s, s_ref, atol=1e-6) and torch.allclose(p, p_ref, atol=1e-6)
    # a window of T < 256 is padded like the official test pads a short video
    t = 100
    short = x[1:2, :t]
    padded = torch.zeros(1, 256, 512)
    padded[0, :t] = short[0]
    with torch.no_grad():
        s1, p1 = head(short, torch.tensor([t]))
        s2, p2 = m.infer(padded, torch.tensor([t]))
    assert s1.shape == (1, t) and p1.shape == (1, t, 14)
    assert torch.allclose(s1, s2[:, :t], atol=1e-6) and torch.allclose(p1, p2[:, :t], atol=1e-6)
    assert torch.allclose(p1.sum(-1), torch.ones(1, t), atol=1e-5)
    assert torch.allclose(p1[..., 0], 1 - torch.sigmoid(torch.logit(s1) / m.config.tau), atol=1e-5)
    with pytest.raises(InputError):
        head(torch.zeros(1, 257, 512), torch.tensor([257]))


def test_head_export_onnx_dynamic_batch_and_time(clip_dir, tmp_path) -> None:  # noqa: ANN001
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(1)
    cfg = DSANetConfig.xd(text_width=text_width_of(clip_dir), mask_padding=True)
    head = build_model(cfg, clip_dir).eval().inference_head()
    path = tmp_path / "head.onnx"
    dims = {"features": {0: torch.export.Dim("B", min=1, max=64), 1: torch.export.Dim("T", min=1, max=256)},
            "lengths": {0: torch.export.Dim("B", min=1, max=64)}}
    torch.onnx.export(head, (torch.randn(2, 64, 512), torch.tensor([64, 30])), str(path), dynamo=True,
                      input_names=["features", "lengths"], output_names=["scores", "class_probs"],
                      dynamic_shapes=dims, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    for b in (1, 4):
        for t in (16, 64, 256):
            x = torch.randn(b, t, 512, generator=g)
            lengths = torch.randint(1, t + 1, (b,), generator=g)
            lengths[0] = t
            with torch.no_grad():
                s, p = head(x, lengths)
            so, po = sess.run(None, {"features": x.numpy(), "lengths": lengths.numpy()})
            assert so.shape == (b, t) and po.shape == (b, t, 7)
            np.testing.assert_allclose(so, s.numpy(), atol=1e-4)
            np.testing.assert_allclose(po, p.numpy(), atol=1e-4)


def test_config_json_round_trip_and_errors() -> None:
    cfg = DSANetConfig.xd(snippet_fps=24.0)
    assert DSANetConfig.from_json(cfg.to_json()) == cfg
    assert cfg.num_classes == 7 and cfg.attn_window == 64 and cfg.tau == 1.0
    with pytest.raises(ModelConfigError, match="unknown DSANet config keys"):
        DSANetConfig.from_dict({**cfg.to_dict(), "extra": 1}, "ckpt.safetensors")
    with pytest.raises(ModelConfigError, match="class_prompts"):
        DSANetConfig(class_names=["normal", "a"], class_prompts=[["normal"]])


def test_build_model_rejects_a_clip_of_another_width(clip_dir) -> None:  # noqa: ANN001
    with pytest.raises(ModelConfigError, match="wide"):
        build_model(DSANetConfig.ucf(text_width=512), clip_dir)


@pytest.mark.parametrize(("length", "window", "heads"), [(256, 8, 1), (10, 3, 1), (32, 32, 1), (64, 8, 4), (20, 6, 2)])
def test_block_attention_equals_the_masked_dense_product(length: int, window: int, heads: int) -> None:
    """Window-by-window attention computes the official masked [L, L] product (tail window included)."""
    from engine.model.backbone import WindowAttention

    torch.manual_seed(length + window)
    attn = WindowAttention(16 * heads, heads, length, window).eval()
    x = torch.randn(3, length, 16 * heads)
    with torch.no_grad():
        block, dense = attn(x), attn.dense_forward(x, window_mask(length, window))
    assert block.shape == dense.shape and (block - dense).abs().max() <= 1e-5
    # and a window really limits what a row sees: changing the first window leaves every later row as it was
    y = x.clone()
    y[:, :window] += 1.0
    with torch.no_grad():
        moved = attn(y)
    assert not torch.allclose(moved[:, :window], block[:, :window], atol=1e-4)
    assert torch.allclose(moved[:, window:], block[:, window:], atol=1e-6)
