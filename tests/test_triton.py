"""The encoder on a real Triton server: repository files, parity with in-process ORT, outages."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import load_bundle, onnx_io
from engine.errors import RuntimeUnavailable
from engine.runtime import load_models
from engine.triton_repo import write_repository

ROOT = Path(__file__).resolve().parents[1]


def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), cfg)  # strict: an unknown field is an error
    return cfg, model_config_pb2


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "tensorrt"])
def test_config_pbtxt_is_valid_model_config_matching_the_onnx_graph(tmp_path, tiny_bundle_dir, backend):
    model = write_repository(tiny_bundle_dir, tmp_path, backend=backend, instances=2)
    cfg, pb = _parse_config(model.directory / "config.pbtxt")
    bundle = load_bundle(tiny_bundle_dir)
    ins, outs = onnx_io(bundle.encoder_path)
    graph_in, graph_out = ins[bundle.encoder.input], outs[bundle.encoder.output]
    assert cfg.name == "dsanet_encoder"
    assert cfg.max_batch_size == bundle.encoder.max_batch
    assert not isinstance(graph_in[0], int) or graph_in[0] <= 0  # the batch dim the server batches on is dynamic
    (inp,), (out,) = cfg.input, cfg.output
    assert out.name == bundle.encoder.output and out.data_type == pb.TYPE_FP32
    assert list(out.dims) == list(graph_out[1:])
    s = bundle.preprocessing.size
    if backend == "python":
        assert cfg.backend == "python"
        assert inp.name == "frames" and inp.data_type == pb.TYPE_UINT8 and list(inp.dims) == [s, s, 3]
        assert list(graph_in[1:]) == [3, s, s]  # what model.py feeds the graph after normalising
        assert (model.directory / "1" / "model.py").is_file() and (model.directory / "1" / "encoder.onnx").is_file()
        assert cfg.parameters["onnx_input"].string_value == bundle.encoder.input
    else:
        assert cfg.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
        assert inp.name == bundle.encoder.input and inp.data_type == pb.TYPE_FP32
        assert list(inp.dims) == list(graph_in[1:])
    if backend == "onnxruntime":
        assert (model.directory / "1" / "model.onnx").read_bytes() == bundle.encoder_path.read_bytes()
    if backend == "tensorrt":
        assert "trtexec --onnx=1/encoder.onnx" in (model.directory / "BUILD_PLAN.txt").read_text()
        assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert cfg.instance_group[0].count == 2
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert all(1 <= b <= cfg.max_batch_size for b in cfg.dynamic_batching.preferred_batch_size)
    assert cfg.parameters["dsanet_bundle_hash"].string_value == bundle.content_hash[:16]


def test_triton_repo_command_refuses_to_overwrite_and_reports_bad_bundles(tmp_path, tiny_bundle_dir):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stream.cli", "triton-repo", *args], capture_output=True,
                              text=True, cwd=ROOT)

    ok = cli(str(tiny_bundle_dir), str(tmp_path / "repo"))
    assert ok.returncode == 0, ok.stderr
    assert "python backend" in ok.stdout and "uint8" in ok.stdout
    again = cli(str(tiny_bundle_dir), str(tmp_path / "repo"))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert cli(str(tiny_bundle_dir), str(tmp_path / "repo"), "--force").returncode == 0
    bad = cli(str(tmp_path / "nope"), str(tmp_path / "repo2"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (180, 320, 3), dtype=np.uint8) for _ in range(n)]


def test_triton_encoder_gives_the_in_process_embeddings(triton_server, tiny_bundle_dir):
    from engine.runtimes.triton import load_triton_encoder

    bundle = load_bundle(tiny_bundle_dir)
    remote = load_triton_encoder(bundle, url=triton_server.grpc_url)
    _, local, _ = load_models(tiny_bundle_dir, runtime="onnxruntime")
    frames = _frames(70)  # more than the server's max_batch_size (64): two requests in flight
    crops = remote.preprocess(frames)
    assert crops.dtype == np.uint8 and crops.shape == (70, 224, 224, 3)  # 150 KB a frame on the wire
    sent_before = remote.health().bytes_sent
    got = remote.embed(crops)
    pixels = bundle.preprocessing(frames)
    want = np.concatenate([local.embed(pixels[:35]), local.embed(pixels[35:])])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    h = remote.health()
    assert h.ready and h.circuit == "closed" and h.requests_ok >= 2
    assert h.bytes_sent - sent_before == crops.nbytes
    d = remote.describe()
    assert d["runtime"] == "triton" and d["backend"] == "python" and d["server_max_batch"] == 64


def test_an_unknown_model_or_server_is_a_clear_start_error(triton_server, tiny_bundle_dir):
    from engine.runtimes.triton import load_triton_encoder

    bundle = load_bundle(tiny_bundle_dir)
    with pytest.raises(RuntimeUnavailable, match="not ready") as info:
        load_triton_encoder(bundle, url=triton_server.grpc_url, model="nope", connect_timeout=1.0)
    assert "\n" not in str(info.value)
    from tests.fixtures.system import free_port

    with pytest.raises(RuntimeUnavailable, match="after 1s"):
        load_triton_encoder(bundle, url=f"127.0.0.1:{free_port()}", connect_timeout=1.0)


def test_outage_opens_the_circuit_shows_on_readyz_and_scoring_resumes_by_itself(triton_server, tiny_bundle_dir):
    from engine.runtimes.triton import RemoteError, load_triton_encoder
    from stream.metrics import Metrics
    from stream.reader import CameraState
    from stream.remote import watch_remote_encoder

    bundle = load_bundle(tiny_bundle_dir)
    enc = load_triton_encoder(bundle, url=triton_server.grpc_url, timeout=2.0, max_wait=1.5,
                              backoff_initial=0.05, backoff_max=0.5)
    metrics = Metrics()
    metrics.set_model_loaded(True)
    metrics.register_camera("cam")
    metrics.camera_state("cam", CameraState.STREAMING)
    assert watch_remote_encoder(metrics, enc)
    server = metrics.serve("127.0.0.1", 0)
    crops = enc.preprocess(_frames(3))
    try:
        assert metrics.readiness()[0]
        triton_server.kill()
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="unavailable"):
            enc.embed(crops)
        assert time.monotonic() - t0 < 10  # bounded by max_wait, never a hang (generous: loaded machine)
        ready, why = metrics.readiness()
        assert not ready and why.startswith("triton:") and "circuit open" in why
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/readyz", timeout=5)
        assert err.value.code == 503
        page = metrics.render().decode()
        assert 'dsanet_remote_encoder_up{model="dsanet_encoder"' in page
        assert _value(page, "dsanet_remote_encoder_up") == 0.0
        assert _value(page, "dsanet_remote_encoder_retries_total") >= 1
        assert _value(page, "dsanet_remote_encoder_batches_failed_total") == 1
    finally:
        triton_server.start()
    emb = None
    for _ in range(20):  # the worker's next batches: the first one after the restart succeeds or retries
        try:
            emb = enc.embed(crops)
            break
        except RemoteError:
            continue
    assert emb is not None and emb.shape == (3, bundle.embedding_width)
    assert metrics.readiness()[0]
    with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as r:
        assert r.status == 200
    assert _value(metrics.render().decode(), "dsanet_remote_encoder_up") == 1.0
    server.close()


def _value(page: str, name: str) -> float:
    for line in page.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on the metrics page")


@pytest.mark.slow
def test_triton_bench_runs_and_reports_every_figure(tmp_path, tiny_bundle_dir):
    """bench/triton_encoder.py end to end with tiny settings (no timing asserted: machines are noisy)."""
    import os

    from tests.fixtures.triton import require_triton

    require_triton()

    env = {**os.environ, "DSANET_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "triton_encoder.py"), "--bundle-dir",
                           str(tiny_bundle_dir), "--iters", "3", "--cameras", "1", "--seconds", "2", "--warmup", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1]
    assert last.startswith("RESULT ")
    res = dict(p.split("=", 1) for p in last.split()[1:])
    for key in ("added_ms_b1", "ips_local_b8", "ips_triton_b8", "cpu_local", "cpu_triton_worker",
                "cpu_triton_server", "wire_kb_per_cam_s", "wire_f32_kb_per_cam_s"):
        assert float(res[key]) == float(res[key]), f"{key} is not a number: {res[key]}"
    # the wire figure is what the client sent: uint8 crops, a quarter of float32 input
    assert abs(float(res["wire_f32_kb_per_cam_s"]) / float(res["wire_kb_per_cam_s"]) - 4.0) < 0.05
    assert " in-process |" in proc.stdout and " triton |" in proc.stdout  # both contenders in the tables


def test_circuit_breaker_opens_after_the_threshold_and_probes_with_a_growing_delay():
    from engine.runtimes.triton import CircuitBreaker

    b = CircuitBreaker(threshold=3, initial=1.0, maximum=4.0)
    t = 100.0
    assert not b.failure(t) and not b.failure(t) and b.state == "closed" and b.wait_time(t) == 0
    assert b.failure(t) and b.state == "open"  # the third consecutive failure opens it
    assert b.wait_time(t + 0.25) == pytest.approx(0.75)  # no request before the probe time
    assert b.wait_time(t + 1.0) == 0 and b.state == "half_open"  # one probe may go
    assert not b.failure(t + 1.0)  # a failed probe re-opens (not a new outage)...
    assert b.state == "open" and b.wait_time(t + 1.0) == pytest.approx(2.0)  # ...with the delay doubled
    b.wait_time(t + 3.0)
    b.failure(t + 3.0)
    b.wait_time(t + 7.0)
    b.failure(t + 7.0)
    assert b.wait_time(t + 7.0) == pytest.approx(4.0)  # capped at the maximum
    assert b.opened_at == t  # the outage started at the first opening
    b.wait_time(t + 11.0)
    assert b.success() and b.state == "closed" and b.opened_at is None and b.wait_time(t + 11.0) == 0
    assert not b.failure(t + 12.0)  # the count starts again from zero
