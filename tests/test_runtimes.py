"""engine.runtime: registry, auto selection, input validation, runtime agreement, torch-free ORT path."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.bundle import load_bundle
from engine.errors import InputError, RuntimeUnavailable
from engine.runtime import (
    EncoderModel,
    HeadModel,
    ModelPart,
    Runner,
    available_runtimes,
    create_auto,
    create_runner,
    load_models,
    register_runtime,
    registered_runtimes,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ort_models(tiny_bundle_dir):
    return load_models(tiny_bundle_dir, runtime="onnxruntime", device="cpu", threads=1)


@pytest.fixture(scope="module")
def torch_models(tiny_bundle_dir):
    return load_models(tiny_bundle_dir, runtime="torch", device="cpu")


@pytest.fixture
def no_gpu(monkeypatch):
    """Make the GPU probes see no NVIDIA driver even on a GPU machine (what CI boxes look like)."""
    monkeypatch.setenv("DSANET_ASSUME_NO_GPU", "1")


def _windows(b: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((b, t, 512), dtype=np.float32)
    lengths = np.array([t, max(1, t // 3), 1, t][:b], dtype=np.int64)
    return feats, np.resize(lengths, b)


# --- registry ----------------------------------------------------------------------------------
def test_registry_knows_the_three_runtimes():
    assert {"onnxruntime", "torch", "tensorrt"} <= set(registered_runtimes())
    cpu = available_runtimes("cpu")
    assert "onnxruntime" in cpu and "torch" in cpu
    assert "tensorrt" not in cpu  # TensorRT never runs on a CPU device


def test_every_available_runtime_runs_both_parts(tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir)
    feats, lengths = _windows(2, 20)
    images = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    results = {}
    for name in available_runtimes("cpu"):
        enc = create_runner(name, ModelPart(bundle, "encoder"), device="cpu")
        head = create_runner(name, tiny_bundle_dir, kind="head", device="cpu")
        for runner in (enc, head):
            d = runner.describe()
            assert d["runtime"] == name and d["device"] == "cpu" and d["precision"] in ("fp32", "int8-dynamic")
        emb = enc.run({"pixel_values": images})["image_embeds"]
        out = head.run({"features": feats, "lengths": lengths})
        assert emb.shape == (3, 512) and emb.dtype == np.float32
        assert out["scores"].shape == (2, 20) and out["class_probs"].shape == (2, 20, 14)
        np.testing.assert_allclose(out["class_probs"].sum(-1), 1.0, atol=1e-5)
        results[name] = (emb, out["scores"])
    ref_emb, ref_scores = results["onnxruntime"]
    for emb, scores in results.values():
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
        cos = (emb * ref_emb).sum(-1) / np.linalg.norm(emb, axis=-1) / np.linalg.norm(ref_emb, axis=-1)
        assert cos.min() >= 0.9999


def test_register_a_runtime_by_name(tiny_bundle_dir):
    calls: list[str] = []

    @register_runtime("test-echo")
    class Echo(Runner):
        def _build(self) -> None:
            calls.append("build")

        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            calls.append("run")
            feats = inputs["features"]
            return {"scores": feats[..., 0], "class_probs": np.repeat(feats[..., :1], 14, -1) * 0 + 1 / 14}

        def describe(self) -> dict[str, Any]:
            return {"runtime": self.name}

    from engine import runtime as rt

    try:
        assert "test-echo" in available_runtimes("cpu")
        runner = create_runner("test-echo", tiny_bundle_dir, kind="head")
        assert calls[:3] == ["build", "run", "run"]  # built, then warmed up on creation
        assert runner.describe() == {"runtime": "test-echo"}
        with pytest.raises(ValueError, match="already registered"):
            register_runtime("test-echo")(type("Other", (Echo,), {}))
    finally:
        rt._REGISTRY.pop("test-echo", None)
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'test-echo'"):
        create_runner("test-echo", tiny_bundle_dir, kind="head")


# --- auto ----------------------------------------------------------------------------------------
def test_auto_on_a_cpu_machine_picks_onnxruntime_and_says_why(tiny_bundle_dir, no_gpu, caplog):
    caplog.set_level(logging.INFO, logger="engine.runtime")
    part = ModelPart(load_bundle(tiny_bundle_dir), "head")
    runner, choice = create_auto(part, device="auto")
    assert (choice.runtime, choice.device) == ("onnxruntime", "cpu")
    assert runner.describe()["providers"] == ["CPUExecutionProvider"]
    skipped = {(n, d): why for n, d, why in choice.skipped}
    assert set(skipped) == {("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda")}
    assert "dsanet-stream[tensorrt]" in skipped[("tensorrt", "cuda")]
    text = caplog.text
    for expected in ("skipped tensorrt on cuda", "skipped onnxruntime on cuda", "skipped torch on cuda",
                     "using onnxruntime on cpu"):
        assert expected in text, text


def test_auto_with_device_cpu_skips_gpu_runtimes(tiny_bundle_dir, caplog):
    caplog.set_level(logging.INFO, logger="engine.runtime")
    bundle, enc, head = load_models(tiny_bundle_dir, runtime="auto", device="cpu")
    assert enc.describe()["runtime"] == head.describe()["runtime"] == "onnxruntime"
    assert caplog.text.count("device=cpu was requested") == 6  # three GPU options x two parts


def test_auto_with_device_cuda_never_falls_back_to_cpu(tiny_bundle_dir, no_gpu):
    with pytest.raises(RuntimeUnavailable, match=r"no inference runtime can run .*a GPU is required"):
        load_models(tiny_bundle_dir, runtime="auto", device="cuda")


def test_auto_cpu_fallback_runs_fp32_when_fp16_is_asked(tiny_bundle_dir, no_gpu, caplog):
    part = ModelPart(load_bundle(tiny_bundle_dir), "encoder")
    runner, choice = create_auto(part, device="auto", precision="fp16")
    assert choice.runtime == "onnxruntime" and runner.describe()["precision"] == "fp32"
    assert "running fp32" in caplog.text


# --- tensorrt guard ------------------------------------------------------------------------------
def test_tensorrt_guard_names_the_extra(tiny_bundle_dir, monkeypatch):
    from engine.runtimes import tensorrt as trt_rt

    with pytest.raises(RuntimeUnavailable, match=r"pip install 'dsanet-stream\[tensorrt\]'"):
        create_runner("tensorrt", tiny_bundle_dir, kind="head", device="cuda")
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'dsanet-stream\[tensorrt\]'"):
        load_models(tiny_bundle_dir, runtime="tensorrt", device="cuda")
    # the import guard itself, also when the wheel is present but its libraries are not
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match=r"torch-tensorrt cannot be imported.*dsanet-stream\[tensorrt\]"):
        trt_rt.import_torch_tensorrt()
    with pytest.raises(RuntimeUnavailable, match="dsanet-stream"):  # building bypassing the probe hits the guard
        trt_rt.TensorRTRunner(ModelPart(load_bundle(tiny_bundle_dir), "head"), device="cuda", precision="fp16")


def test_tensorrt_engine_cache_key():
    from engine.runtimes.tensorrt import engine_cache_path

    base = engine_cache_path(Path("/c"), "ab" * 32, "NVIDIA H200", "10.3.0", "head", "fp16")
    assert base.parent == Path("/c") and "nvidia-h200" in base.name and "trt10.3.0" in base.name
    assert len({base, engine_cache_path(Path("/c"), "cd" * 32, "NVIDIA H200", "10.3.0", "head", "fp16"),
                engine_cache_path(Path("/c"), "ab" * 32, "NVIDIA L4", "10.3.0", "head", "fp16"),
                engine_cache_path(Path("/c"), "ab" * 32, "NVIDIA H200", "10.4.0", "head", "fp16"),
                engine_cache_path(Path("/c"), "ab" * 32, "NVIDIA H200", "10.3.0", "encoder", "fp16")}) == 5


# --- onnxruntime providers -------------------------------------------------------------------------
def test_ort_gpu_provider_fallback_is_detected(tiny_bundle_dir, caplog):
    """onnxruntime quietly runs on CPU when a GPU provider cannot load: we refuse, or warn loudly."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(RuntimeUnavailable, match=r"asked for \['CUDAExecutionProvider'\] but runs on"):
        create_runner("onnxruntime", tiny_bundle_dir, kind="head", providers=providers)
    runner = create_runner("onnxruntime", tiny_bundle_dir, kind="head", providers=providers, strict_providers=False)
    assert runner.describe()["providers"] == ["CPUExecutionProvider"]
    assert runner.describe()["device"] == "cpu"
    assert "fell back to CPU" in caplog.text


def test_ort_threads_and_description(ort_models):
    bundle, enc, head = ort_models
    d = head.describe()
    assert d["intra_op_threads"] == 1 and d["providers"] == ["CPUExecutionProvider"]
    assert enc.describe()["file"] == "encoder.onnx"


# --- input validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 3, 200, 200), np.float32), r"must be \[B,3,224,224\]"),
    (np.zeros((2, 224, 224, 3), np.float32), r"must be \[B,3,224,224\]"),
    (np.zeros((2, 3, 224, 224), np.uint8), "must be float32"),
    (np.zeros((65, 3, 224, 224), np.float32), "batch 65 is over the limit of 64"),
])
def test_encoder_rejects_bad_input(ort_models, images, message):
    with pytest.raises(InputError, match=message):
        ort_models[1].embed(images)


def test_encoder_output_and_empty_batch(ort_models):
    enc: EncoderModel = ort_models[1]
    assert enc.embed(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 512)
    out = enc.embed(np.zeros((2, 3, 224, 224), np.float64))  # float64 is converted
    assert out.shape == (2, 512) and out.dtype == np.float32


@pytest.mark.parametrize("features, lengths, message", [
    (np.zeros((1, 8, 256), np.float32), [8], "width 256, the bundle's head takes 512"),
    (np.zeros((1, 0, 512), np.float32), [1], r"T=0 is outside 1\.\.256"),
    (np.zeros((1, 257, 512), np.float32), [257], r"T=257 is outside 1\.\.256"),
    (np.zeros((65, 4, 512), np.float32), [4] * 65, r"batch 65 is outside 1\.\.64"),
    (np.zeros((8, 512), np.float32), [8], r"must be \[B,T,512\]"),
    (np.zeros((2, 8, 512), np.float32), [8], "lengths must be 2 integers"),
    (np.zeros((2, 8, 512), np.float32), [8.0, 8.0], "lengths must be 2 integers"),
    (np.zeros((2, 8, 512), np.float32), [8, 9], r"within 1\.\.T=8"),
    (np.zeros((2, 8, 512), np.float32), [0, 8], r"within 1\.\.T=8"),
    (np.full((1, 8, 512), np.nan, np.float32), [8], "NaN"),
    (np.zeros((1, 8, 512), np.int32), [8], "must be float32"),
])
def test_head_rejects_bad_input(ort_models, features, lengths, message):
    with pytest.raises(InputError, match=message):
        ort_models[2].score(features, lengths)


def test_head_outputs(ort_models):
    head: HeadModel = ort_models[2]
    feats, lengths = _windows(3, 256)
    scores, probs = head.score(feats, lengths)
    assert scores.shape == (3, 256) and probs.shape == (3, 256, 14)
    assert ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(1 - probs[..., 0], _sigmoid(_logit(scores) / 5.0), atol=1e-4)  # tau = 5
    assert head.display_names[8] == "Road accident"
    one, _ = head.score(feats[:1, :1], [1])  # a single-snippet window is valid
    assert one.shape == (1, 1)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# --- torch vs onnxruntime --------------------------------------------------------------------------
@pytest.mark.parametrize("b, t", [(1, 1), (2, 37), (4, 256)])
def test_torch_and_onnxruntime_agree(ort_models, torch_models, b, t):
    feats, lengths = _windows(b, t, seed=t)
    s1, p1 = ort_models[2].score(feats, lengths)
    s2, p2 = torch_models[2].score(feats, lengths)
    assert np.abs(s1 - s2).max() <= 1e-4 and np.abs(p1 - p2).max() <= 1e-4
    images = np.random.default_rng(t).standard_normal((b, 3, 224, 224), dtype=np.float32)
    e1, e2 = ort_models[1].embed(images), torch_models[1].embed(images)
    cos = (e1 * e2).sum(-1) / np.linalg.norm(e1, axis=-1) / np.linalg.norm(e2, axis=-1)
    assert cos.min() >= 0.9999


def test_torch_reduced_precision_runs(tiny_bundle_dir, torch_models):
    _, _, head16 = load_models(tiny_bundle_dir, runtime="torch", device="cpu", precision="bf16")
    assert head16.describe()["precision"] == "bf16"
    feats, lengths = _windows(2, 64)
    s32, _ = torch_models[2].score(feats, lengths)
    s16, p16 = head16.score(feats, lengths)
    assert p16.dtype == np.float32
    assert 0 < np.abs(s16 - s32).max() < 0.05  # bf16 really ran, and stays close


def test_bundle_without_torch_weights(tiny_bundle_dir, copy_bundle):
    import json
    import shutil

    d = copy_bundle(tiny_bundle_dir)
    data = json.loads((d / "bundle.json").read_text())
    data["torch"] = None
    data["files"] = {k: v for k, v in data["files"].items()
                     if k != "head.safetensors" and not k.startswith("encoder_torch/")}
    (d / "bundle.json").write_text(json.dumps(data))
    (d / "head.safetensors").unlink()
    shutil.rmtree(d / "encoder_torch")
    with pytest.raises(RuntimeUnavailable, match="no torch weights"):
        load_models(d, runtime="torch")
    assert load_models(d, runtime="onnxruntime")[2].describe()["runtime"] == "onnxruntime"


def test_int8_precision_means_the_bundles_quantised_encoder(tiny_bundle_dir, caplog):
    _, enc, head = load_models(tiny_bundle_dir, runtime="onnxruntime", precision="int8")
    assert "bundle's encoder.onnx is fp32" in caplog.text  # this bundle has no INT8 encoder: said, not hidden
    assert enc.describe()["precision"] == head.describe()["precision"] == "fp32"
    with pytest.raises(RuntimeUnavailable, match="the torch runtime does not run int8"):
        load_models(tiny_bundle_dir, runtime="torch", precision="int8")


def test_unknown_names(tiny_bundle_dir):
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tflite'"):
        create_runner("tflite", tiny_bundle_dir, kind="head")
    with pytest.raises(RuntimeUnavailable, match="unknown device 'tpu'"):
        load_models(tiny_bundle_dir, runtime="onnxruntime", device="tpu")
    with pytest.raises(RuntimeUnavailable, match="unknown precision 'int4'"):
        load_models(tiny_bundle_dir, runtime="torch", precision="int4")


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_bundle_dir, torch_models):
    _, _, compiled = load_models(tiny_bundle_dir, runtime="torch", device="cpu", compile=True)
    assert compiled.describe()["compiled"] is True
    feats, lengths = _windows(2, 48)
    np.testing.assert_allclose(compiled.score(feats, lengths)[0], torch_models[2].score(feats, lengths)[0], atol=1e-4)


# --- the ONNX Runtime path never imports torch ----------------------------------------------------
@pytest.mark.parametrize("runtime", ["onnxruntime", "auto"])
def test_onnxruntime_path_never_imports_torch(tiny_bundle_dir, runtime):
    code = f"""
import sys
import numpy as np
from engine.runtime import load_models
from engine.preprocess import preprocess_frames
bundle, enc, head = load_models({str(tiny_bundle_dir)!r}, runtime={runtime!r}, device="cpu")
frames = [np.full((120, 160, 3), 90, dtype=np.uint8)] * 3
emb = enc.embed(preprocess_frames(frames))
scores, probs = head.score(emb[None], np.array([3]))
assert scores.shape == (1, 3), scores.shape
assert 'torch' not in sys.modules, 'torch was imported'
assert enc.describe()['runtime'] == 'onnxruntime'
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "DSANET_ASSUME_NO_GPU": "1", "HOME": str(Path.home())})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# --- bench/gpu_check.py: its CPU paths (no GPU in CI) ---------------------------------------------
def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_gpu_check_skips_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path does not apply")
    res = _gpu_check("--quick")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no CUDA device" in res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("RESULT status=skipped reason=no_cuda")


def test_gpu_check_cpu_dry_run_measures_parity():
    res = _gpu_check("--device", "cpu", "--quick", "--no-compile", "--skip-vitb16", "--iters", "1", "--warmup", "0")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT status=ok device=cpu")
    fields = dict(p.split("=", 1) for p in last.split()[1:])
    for prec in ("fp32", "fp16", "bf16"):
        assert float(fields[f"tiny_eager_{prec}_cos"]) >= 0.99
        assert float(fields[f"head_b1_eager_{prec}_maxabs"]) <= 0.05
    assert float(fields["head_b1_eager_fp32_maxabs"]) == 0.0  # fp32 eager is the reference itself
    assert "## Encoder" in res.stdout and "## DSANet head" in res.stdout


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_with_compile_and_vitb16():
    res = _gpu_check("--device", "cpu", "--quick", "--iters", "1", "--warmup", "0")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    fields = dict(p.split("=", 1) for p in res.stdout.strip().splitlines()[-1].split()[1:])
    assert float(fields["vitb16_eager_bf16_cos"]) >= 0.99 and float(fields["tiny_compile_fp32_cos"]) >= 0.9999
    assert float(fields["head_b1_compile_fp32_maxabs"]) <= 1e-4


def test_gpu_check_pure_torch_vit_has_clip_vitb16_size():
    """Without transformers on the GPU machine the check falls back to its own ViT: same size as CLIP's."""
    import importlib.util as iu

    import torch

    spec = iu.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    hf, impl = mod.build_encoder(mod.VITB16)
    ours = mod._TorchViT(**mod.VITB16)
    assert impl == "transformers"
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())
    with torch.no_grad():
        assert ours(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


@pytest.mark.parametrize(("threads", "expected"), [(None, "default"), (2, 2)])
def test_torch_cpu_runner_thread_count(tiny_bundle_dir, threads, expected) -> None:  # noqa: ANN001
    """Unset threads on CPU -> one per usable core (the count measured fastest); an explicit count wins."""
    torch = pytest.importorskip("torch")
    from engine.runtimes.torch import default_cpu_threads

    before = torch.get_num_threads()
    try:
        _, _, head = load_models(tiny_bundle_dir, runtime="torch", device="cpu", threads=threads)
        want = default_cpu_threads() if expected == "default" else expected
        assert head.describe()["threads"] == want == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
