"""ONNX export: parity with torch, the `dsanet export` / `dsanet bundle-info` commands, failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import load_bundle, sha256_file
from engine.runtime import load_models


def _cli(argv: list[str]) -> int:
    """Run a subcommand as the ``dsanet`` script does, with its one error-to-exit-status mapping."""
    from stream.cli import main

    return main(argv)


def _ort(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def seed0_model(tiny_clip_dir):
    """The model ``build_tiny_bundle`` exported (same seed, same tiny CLIP)."""
    import torch

    from engine.model import DSANetConfig, build_model, text_width_of

    torch.manual_seed(0)
    return build_model(DSANetConfig(text_width=text_width_of(tiny_clip_dir)), tiny_clip_dir).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, seed0_model, tiny_clip_dir) -> Path:
    from export.checkpoint import save_checkpoint

    run = tmp_path_factory.mktemp("run")
    return save_checkpoint(run / "best.safetensors", seed0_model, None, clip=str(tiny_clip_dir))


def test_parity_figures_are_recorded(tiny_bundle_dir):
    parity = load_bundle(tiny_bundle_dir).parity
    cases = {(c["batch"], c["window"]) for c in parity["head"]["cases"]}
    assert cases == {(b, t) for b in (1, 4) for t in (16, 64, 256)}
    assert all(c["scores_max_abs"] <= 1e-4 and c["class_probs_max_abs"] <= 1e-4 for c in parity["head"]["cases"])
    assert parity["encoder"]["min_cosine"] >= 0.9999 and parity["encoder"]["images"] >= 4


def test_bundle_holds_the_model_it_was_built_from(tiny_bundle_dir, seed0_model, tiny_clip_dir):
    """Independent of the exporter's own check: new shapes (T=1, 100, 256; B=3) against a rebuilt model."""
    import torch

    from engine.clip import load_vision_model
    from export.parity import parity_images

    head = seed0_model.inference_head()
    sess = _ort(tiny_bundle_dir / "head.onnx")
    rng = np.random.default_rng(7)
    for t in (1, 100, 256):
        feats = rng.standard_normal((3, t, 512), dtype=np.float32)
        lengths = np.array([t, max(1, t // 2), 1], dtype=np.int64)
        with torch.no_grad():
            ref_s, ref_p = (x.numpy() for x in head(torch.from_numpy(feats), torch.from_numpy(lengths)))
        got_s, got_p = sess.run(["scores", "class_probs"], {"features": feats, "lengths": lengths})
        assert np.abs(got_s - ref_s).max() <= 1e-4 and np.abs(got_p - ref_p).max() <= 1e-4
    vision = load_vision_model(tiny_clip_dir)
    images = parity_images(224, n=5, seed=3)
    with torch.no_grad():
        ref = vision(pixel_values=torch.from_numpy(images)).image_embeds.numpy()
    got = _ort(tiny_bundle_dir / "encoder.onnx").run(["image_embeds"], {"pixel_values": images})[0]
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.9999


def test_torch_weights_in_the_bundle_rebuild_the_head(tiny_bundle_dir, seed0_model):
    import torch

    from engine.runtimes.torch import load_head_module

    rebuilt = load_head_module(tiny_bundle_dir / "head.safetensors")
    original = seed0_model.inference_head()
    feats, lengths = torch.randn(2, 30, 512), torch.tensor([30, 11])
    with torch.no_grad():
        for a, b in zip(rebuilt(feats, lengths), original(feats, lengths), strict=True):
            assert torch.equal(a, b)


def test_cli_export_int8_and_bundle_info(tmp_path, checkpoint, tiny_clip_dir, tiny_bundle_dir, capsys):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"auc": 0.5, "note": "synthetic"}))
    out = tmp_path / "bundle"
    rc = _cli(["export", "--checkpoint", str(checkpoint), "--clip", str(tiny_clip_dir), "--out", str(out),
               "--encoder-int8", "--evaluation", str(evaluation), "--name", "int8-test"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    b = load_bundle(out)
    assert b.name == "int8-test" and b.encoder.quantization == "int8-dynamic"
    assert b.parity["encoder_int8"]["passed"] and b.parity["encoder_int8"]["min_cosine"] >= 0.995
    assert b.parity["encoder"]["min_cosine"] >= 0.9999  # the fp32 graph was checked before quantising
    assert b.source.checkpoint == "best.safetensors" and b.source.checkpoint_sha256 == sha256_file(checkpoint)
    assert b.evaluation == {"auc": 0.5, "note": "synthetic"}
    assert b.snippet_fps == 30.0 and b.source.tiny_clip
    assert not list(tmp_path.glob(".bundle.*"))  # no temporary directory left behind
    assert "encoder_int8 min cosine" in printed

    # the INT8 encoder really is quantised and still close to torch
    _, enc, _ = load_models(out, runtime="auto", precision="int8")
    assert enc.describe()["precision"] == "int8-dynamic" and enc.describe()["runtime"] == "onnxruntime"
    assert (out / "encoder.onnx").stat().st_size < (tiny_bundle_dir / "encoder.onnx").stat().st_size

    assert _cli(["bundle-info", str(out)]) == 0
    info = capsys.readouterr().out
    for expected in ("int8-test", "Road accident", "encoder_int8 min cosine", "B=4 T=256", "head.onnx", "auc 0.5"):
        assert expected in info, info
    assert _cli(["bundle-info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["parity"]["head"]["passed"] is True


def test_parity_failure_exits_nonzero_with_figures(tmp_path, tiny_clip_dir, tiny_bundle_dir, capsys, monkeypatch):
    """A graph that does not compute what the checkpoint computes must never become a bundle.

    The checkpoint holds a seed-1 model while the "exporter" writes the seed-0 head graph of the shared
    bundle: a real, valid ONNX file of the same architecture, just not this model.
    """
    import shutil

    import torch

    import export.onnx_export as onnx_export
    from engine.model import DSANetConfig, build_model, text_width_of
    from export.checkpoint import save_checkpoint

    torch.manual_seed(1)
    other = build_model(DSANetConfig(text_width=text_width_of(tiny_clip_dir)), tiny_clip_dir)
    ckpt = save_checkpoint(tmp_path / "other.safetensors", other, None, clip=str(tiny_clip_dir))

    def wrong_graph(head, path, *args, **kwargs):
        shutil.copyfile(tiny_bundle_dir / "head.onnx", path)
        return path

    monkeypatch.setattr(onnx_export, "export_head_onnx", wrong_graph)
    out = tmp_path / "bundle"
    rc = _cli(["export", "--checkpoint", str(ckpt), "--clip", str(tiny_clip_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "parity check failed for head" in err
    figures = json.loads(err[err.index("{"):])
    assert figures["head"]["passed"] is False and figures["head"]["scores_max_abs"] > 1e-4
    assert len(figures["head"]["cases"]) == 6
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))


def test_export_refuses_to_overwrite(tmp_path, checkpoint, tiny_clip_dir, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = _cli(["export", "--checkpoint", str(checkpoint), "--clip", str(tiny_clip_dir), "--out", str(out)])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_export_rejects_a_non_checkpoint(tmp_path, tiny_clip_dir, capsys):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    rc = _cli(["export", "--checkpoint", str(bogus), "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "b")])
    assert rc == 2 and str(bogus) in capsys.readouterr().err
    rc = _cli(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--clip", str(tiny_clip_dir),
               "--out", str(tmp_path / "b")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_bundle_info_on_a_damaged_bundle(tiny_bundle_dir, copy_bundle, capsys):
    d = copy_bundle(tiny_bundle_dir)
    (d / "head.onnx").unlink()
    assert _cli(["bundle-info", str(d)]) == 2
    assert "head.onnx: missing" in capsys.readouterr().err


@pytest.mark.slow
def test_bundle_from_a_trained_checkpoint(trained_tiny_bundle_dir):
    """The real path: trainer checkpoint -> export -> service models, with the training figures recorded."""
    b = load_bundle(trained_tiny_bundle_dir)
    assert b.source.checkpoint == "best.safetensors" and b.source.preset == "ucf"
    assert b.evaluation and "auc" in b.evaluation and b.evaluation["source"].startswith("checkpoint metadata")
    _, enc, head = load_models(trained_tiny_bundle_dir, runtime="onnxruntime")
    _, _, head_t = load_models(trained_tiny_bundle_dir, runtime="torch")
    feats = np.random.default_rng(0).standard_normal((2, 64, 512), dtype=np.float32)
    s1, p1 = head.score(feats, [64, 20])
    s2, p2 = head_t.score(feats, [64, 20])
    assert np.abs(s1 - s2).max() <= 1e-4 and np.abs(p1 - p2).max() <= 1e-4
    assert enc.embed(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 512)
