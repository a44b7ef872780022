"""Opt-in INT8 head: quantisation, the accuracy gate on test features, the refusal, the runtime's pick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

WIDTH, LENGTH = 32, 32


@pytest.fixture(scope="module")
def tiny_heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fp32 head.onnx, INT8 head.int8.onnx) of a small random DSANet head (fast to export)."""
    from engine.model.backbone import VadClipBackbone
    from engine.model.config import DSANetConfig
    from engine.model.head import DSANetHead
    from export.onnx_export import export_head_onnx, quantize_head_int8

    torch.manual_seed(0)
    cfg = DSANetConfig(embed_dim=WIDTH, visual_width=WIDTH, visual_length=LENGTH, attn_window=8, text_width=WIDTH)
    text = torch.nn.functional.normalize(torch.randn(cfg.num_classes, WIDTH), dim=-1)
    head = DSANetHead(cfg, VadClipBackbone(cfg), text).eval()
    out = tmp_path_factory.mktemp("int8-head")
    export_head_onnx(head, out / "head.onnx", WIDTH, LENGTH, max_batch=8)
    quantize_head_int8(out / "head.onnx", out / "head.int8.onnx")
    return out / "head.onnx", out / "head.int8.onnx"


@pytest.fixture(scope="module")
def gate_data(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Four test videos (one longer than the window: chunked) with frame labels of both classes."""
    from export.data import ListRow
    from export.gt import GroundTruth
    from export.head_int8 import GateData

    root = tmp_path_factory.mktemp("int8-data")
    rng = np.random.default_rng(3)
    rows, frame_gt = [], []
    for i, t in enumerate((45, 20, 32, 9)):
        path = root / f"v{i}__0.npy"
        np.save(path, rng.standard_normal((t, WIDTH)).astype(np.float32))
        rows.append(ListRow(path, "Normal" if i % 2 else "Abuse"))
        frame_gt.append(np.repeat((rng.random(t) < 0.4).astype(np.float64), 16))
    gt = GroundTruth(np.concatenate(frame_gt), [[] for _ in rows], [[] for _ in rows])
    return GateData(tuple(rows), gt, "ucf", "synthetic test list")


@pytest.mark.parametrize(("score_tol", "auc_tol", "passed", "named"), [
    (1.0, 1.0, True, None),
    (0.0, 1.0, False, "max |score - fp32 score|"),
    (1.0, -1.0, False, "frame AUC"),
])
def test_gate_measures_the_int8_head_and_refuses_beyond_tolerance(tiny_heads, gate_data, score_tol, auc_tol,
                                                                  passed, named) -> None:  # noqa: ANN001
    from export.head_int8 import HeadInt8GateError, check_gate, gate
    from stream.cli import exit_code

    fp32, int8 = tiny_heads
    figures = gate(fp32, int8, gate_data, WIDTH, LENGTH, score_tolerance=score_tol, auc_tolerance=auc_tol)
    assert figures["videos"] == 4 and figures["snippets"] == 45 + 20 + 32 + 9
    assert figures["scores_max_abs"] > 0.0  # the INT8 graph really differs from fp32
    assert 0.0 <= figures["auc_fp32"] <= 1.0 and figures["auc_delta"] == abs(figures["auc_int8"] - figures["auc_fp32"])
    assert figures["passed"] is passed
    if passed:
        check_gate(figures)
        return
    with pytest.raises(HeadInt8GateError) as info:
        check_gate(figures)
    assert named in str(info.value) and "synthetic test list" in str(info.value)
    assert exit_code(info.value) == 2


def test_int8_graph_is_smaller_and_keeps_the_interface(tiny_heads) -> None:  # noqa: ANN001
    from engine.bundle import onnx_io

    fp32, int8 = tiny_heads
    assert int8.stat().st_size < fp32.stat().st_size
    assert onnx_io(int8) == onnx_io(fp32)


def _with_int8_head(bundle_dir: Path) -> Path:
    from engine.bundle import HEAD_INT8_ONNX, file_entries
    from export.onnx_export import quantize_head_int8

    quantize_head_int8(bundle_dir / "head.onnx", bundle_dir / HEAD_INT8_ONNX)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["head"]["int8_file"] = HEAD_INT8_ONNX
    meta["files"].update({k: v.model_dump() for k, v in file_entries(bundle_dir, [HEAD_INT8_ONNX]).items()})
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    return bundle_dir


@pytest.mark.parametrize(("head_int8", "file", "precision"), [
    (True, "head.int8.onnx", "int8-dynamic"),
    (False, "head.onnx", "fp32"),
])
def test_runtime_picks_the_int8_head_unless_told_not_to(tiny_bundle_dir, copy_bundle, head_int8, file,
                                                        precision) -> None:  # noqa: ANN001
    from engine.runtime import load_models

    bundle_dir = _with_int8_head(copy_bundle(tiny_bundle_dir))
    feats = np.random.default_rng(0).standard_normal((2, 64, 512), dtype=np.float32)
    _, _, ref = load_models(tiny_bundle_dir, runtime="onnxruntime")
    bundle, _, head = load_models(bundle_dir, runtime="onnxruntime", head_int8=head_int8)
    assert bundle.head.int8_file == "head.int8.onnx" and "INT8 head.int8.onnx" in bundle.describe()
    assert head.describe()["file"] == file and head.describe()["precision"] == precision
    diff = np.abs(head.score(feats, [64, 20])[0] - ref.score(feats, [64, 20])[0]).max()
    assert (diff > 0.0) if head_int8 else (diff == 0.0)


def test_model_config_head_int8_default_and_strictness() -> None:
    from pydantic import ValidationError

    from stream.config import ModelConfig

    assert ModelConfig(bundle="b").head_int8 is True
    assert ModelConfig(bundle="b", head_int8=False).head_int8 is False
    with pytest.raises(ValidationError):
        ModelConfig(bundle="b", head_int8="sometimes")


def test_export_head_int8_without_test_features_exits_2(tmp_path, tiny_clip_dir, capsys) -> None:  # noqa: ANN001
    from engine.model import DSANetConfig, build_model, text_width_of
    from export.checkpoint import save_checkpoint
    from stream.cli import main

    torch.manual_seed(0)
    model = build_model(DSANetConfig(text_width=text_width_of(tiny_clip_dir)), tiny_clip_dir).eval()
    ckpt = save_checkpoint(tmp_path / "best.safetensors", model, None, clip=str(tiny_clip_dir))
    rc = main(["export", "--checkpoint", str(ckpt), "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "b"),
               "--head-int8"])
    err = capsys.readouterr().err
    assert rc == 2 and "--data-root" in err and "best.safetensors" in err
    assert not (tmp_path / "b").exists()
