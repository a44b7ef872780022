"""Smoke tests of the ``bench/`` scripts: each runs end to end with tiny arguments, prints a Markdown
table, the machine and the command, and ends with one parseable ``RESULT key=value ...`` line holding
the figures BENCHMARKS.md quotes. No timing is asserted (machines are noisy); the figures must only be
present and well-formed, so a refactor of the service, runtime or exporter that breaks a benchmark is
caught here rather than the day someone re-measures.

The scripts share one bench cache per test run (``$DSANET_BENCH_CACHE`` in a tmp dir, the fixture
``bench_cache_dir``, shared with the soak test), so exported graphs and the tiny bundle are built once. The
scripts that run the live service are marked slow.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from common import parse_result, percentile, result_line, table  # noqa: E402


@pytest.fixture
def bench_cache(bench_cache_dir: Path) -> Path:
    """The run's bench cache (``tests/fixtures/fx_bench.py``): the tiny bundle is already in it."""
    return bench_cache_dir


def run_script(name: str, args: list[str], cache: Path, timeout: float = 600) -> tuple[str, dict[str, str]]:
    env = {**os.environ, "DSANET_BENCH_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "machine:" in out and "cores" in out, "the machine description is missing"
    assert f"command: .venv/bin/python bench/{name}" in out, "the command line is missing"
    assert any(line.startswith("|") and line.rstrip().endswith(":|") for line in out.splitlines()), \
        "no Markdown table printed"
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    assert last.startswith("RESULT "), f"the last line must be the RESULT line, got {last!r}"
    return out, parse_result(out)


def number(result: dict[str, str], key: str) -> float:
    assert key in result, f"RESULT has no {key}: {result}"
    return float(result[key])


# --- helpers (pure) ---------------------------------------------------------------------------------
def test_result_line_round_trips_and_has_no_spaces_inside_values() -> None:
    line = result_line(ratio=3.14159, name="a b", ok=True, n=4, bad=float("nan"))
    assert line == "RESULT ratio=3.142 name=a_b ok=1 n=4 bad=nan"
    assert parse_result("noise\n" + line + "\n") == {"ratio": "3.142", "name": "a_b", "ok": "1", "n": "4",
                                                     "bad": "nan"}
    assert parse_result("no result here") == {}


def test_percentile_interpolates_like_numpy() -> None:
    import numpy as np

    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 25, 50, 95, 100):
        assert math.isclose(percentile(xs, q), float(np.percentile(xs, q)))


def test_table_is_markdown_with_a_right_aligned_rule() -> None:
    t = table(["a", "bb"], [[1, 2.5], ["x", float("nan")]], digits=2).splitlines()
    assert t[0] == "| a |   bb |" and t[1] == "|--:|-----:|" and t[2] == "| 1 | 2.50 |" and t[3] == "| x |  nan |"


# --- the scripts --------------------------------------------------------------------------------------
def test_head_bench_reports_the_ratio_at_the_target_case(bench_cache: Path) -> None:
    out, res = run_script("head.py", ["--batches", "1,8", "--windows", "256", "--iters", "1", "--threads", "1"],
                          bench_cache)
    ratio = number(res, "ratio_ort_vs_torch")
    assert ratio > 0 and res["W"] == "256" and res["B"] == "8"
    assert number(res, "ratio_w256_b1") > 0
    assert "ORT vs torch eager at W=256, B=8" in out
    # the official forward is a recorded anchor (labelled so), set beside our live W=256, B=1 row
    assert number(res, "official_ms_recorded") > 0 and "RECORDED" in out
    assert number(res, "torch_vs_official_recorded") > 0 and number(res, "ort_vs_official_recorded") > 0


def test_encoder_bench_tiny_reports_throughput_and_int8_cosine(bench_cache: Path) -> None:
    _, res = run_script("encoder.py", ["--models", "tiny", "--batches", "1", "--iters", "1", "--threads", "1"],
                        bench_cache)
    assert number(res, "tiny_ips_ort_fp32") > 0 and number(res, "tiny_ips_ort_int8") > 0
    assert number(res, "tiny_ips_torch") > 0
    assert 0.9 < number(res, "tiny_cos_int8_min") <= 1.0 + 1e-6


def test_consistency_bench_measures_every_lookahead(bench_cache: Path) -> None:
    _, res = run_script("consistency.py", ["--random-head", "--windows", "16", "--lookaheads", "0,4",
                                           "--videos", "2", "--max-snippets", "24", "--threads", "1"], bench_cache)
    for la in (0, 4):
        assert number(res, f"w16_l{la}_maxabs") >= 0
        assert -1.0 <= number(res, f"w16_l{la}_r") <= 1.0
    assert number(res, "snippets") == 48


@pytest.mark.slow
def test_pipeline_bench_measures_service_and_decode(bench_cache: Path) -> None:
    _, res = run_script("pipeline.py", ["--cameras", "1", "--seconds", "3", "--warmup", "2", "--no-capacity",
                                        "--threads", "1"], bench_cache)
    assert number(res, "service_cpu_per_cam_s") > 0 and number(res, "decode_cpu_per_cam_s") > 0
    assert number(res, "ratio_service_vs_decode") > 0


@pytest.mark.slow
def test_memory_bench_fits_a_slope(bench_cache: Path) -> None:
    _, res = run_script("memory.py", ["--counts", "1,2", "--encoders", "tiny", "--warmup", "2", "--samples", "1",
                                      "--threads", "1"], bench_cache)
    assert number(res, "tiny_base_mib") > 10
    assert math.isfinite(number(res, "tiny_mib_per_camera"))


@pytest.mark.slow
def test_latency_bench_runs_the_service_and_reports_the_bound(bench_cache: Path) -> None:
    _, res = run_script("latency.py", ["--bundle", "tiny", "--events", "1", "--cameras", "1"], bench_cache)
    bound = number(res, "bound_s")
    # bound = snippet (16/30 s) x (1 + 2) + inference + 1 s
    assert bound > 16 / 30 * 3 + 1.0
    assert number(res, "onsets") >= 1


@pytest.mark.slow
def test_import_official_bench_reports_time_and_peak_memory(bench_cache: Path) -> None:
    out, res = run_script("import_official.py", ["--quick"], bench_cache)
    assert res["geometry"] == "tiny" and "| encoder |" in out
    assert number(res, "fp32_import_s") > 0 and 0.1 < number(res, "fp32_peak_rss_gib") < 24


def test_decode_bench_reports_decode_beside_the_model(bench_cache: Path) -> None:
    out, res = run_script("decode.py", ["--resolutions", "320x180", "--codecs", "h264,h265", "--rates", "10",
                                        "--seconds", "1", "--models", "tiny"], bench_cache)
    assert number(res, "decode_180p_h264_10") > 0 and number(res, "decode_180p_h265_10") > 0
    assert number(res, "model_tiny") > 0
    assert "cases where decode >= model" in out


def test_capacity_reports_na_for_config_keys_this_checkout_lacks(bench_cache: Path) -> None:
    out, res = run_script("capacity.py", ["--quick", "--set", "no_such_section.enabled=true",
                                          "--camera-set", "no_such_key=1"], bench_cache)
    assert res["busy_fp32"] == res["busy_int8"] == res["still_int8"] == res["head_to_encoder"] == "n/a"
    assert "no_such_section" in out and "cameras.0.no_such_key" in out
    assert number(res, "encoder_gflop") > 30  # ViT-B/16 at 224 px: ~17.6 G multiply-adds
    # the limits come from kernels timed in the run: the fp32 one from the faster of numpy and ORT, the
    # INT8 one from ORT's MatMulInteger, so it sits above the fp32 limit on any CPU with integer SIMD
    fp32_best = max(number(res, "gemm_gflops_per_cpu_s"), number(res, "ort_gemm_gflops_per_cpu_s"))
    cores = int(re.search(r"machine: (\d+) cores", out).group(1))  # type: ignore[union-attr]
    assert number(res, "limit_fp32_gemm_cams") == pytest.approx(cores * fp32_best / (number(res, "encoder_gflop") * 1.875),
                                                               rel=0.02)
    assert number(res, "limit_int8_gemm_cams") > number(res, "limit_fp32_gemm_cams") > 0


@pytest.mark.parametrize("sets, camera_sets, bad", [
    (["window.lookahead=4"], [], None),
    ([], ["window.lookahead=4"], None),
    (["still_gate_x.enabled=true"], [], "still_gate_x"),
    ([], ["events_x.on=1"], "cameras.0.events_x"),
])
def test_capacity_overrides_validate_or_name_the_unknown_key(sets, camera_sets, bad, bench_cache, monkeypatch) -> None:
    monkeypatch.setenv("DSANET_BENCH_CACHE", str(bench_cache))
    import capacity

    why = capacity.supported(capacity.parse_sets(sets), capacity.parse_sets(camera_sets))
    if bad is None:
        assert why is None
    else:
        assert why is not None and bad in why


@pytest.mark.parametrize("limit, start, max_n, steps, want", [
    (5, 1, 64, 8, 5),    # doubling 1, 2, 4 ok, 8 fails, bisection finds 5
    (5, 1, 64, 1, 4),    # one step: 6 fails, best known stays 4
    (0, 1, 64, 8, 0),    # even one camera falls behind
    (64, 1, 64, 8, 64),  # never fails up to --max
    (13, 4, 64, 8, 13),
    (30, 6, 20, 8, 20),  # 6, 12 ok; doubling past --max 20 tries 20 itself (ok): the answer is --max, not 12
    (14, 6, 20, 8, 14),  # 6, 12 ok, 20 (--max) fails, bisection between 12 and 20 finds 14
])
def test_capacity_search_doubles_then_bisects(limit, start, max_n, steps, want, monkeypatch) -> None:
    import capacity

    tried: list[int] = []

    def fake_run(bundle, clips, *a, **k):
        tried.append(len(clips))
        return {"ok": len(clips) <= limit, "n": len(clips), "lag_p50": 0.1, "lag_p95": 0.2, "dropped": 0.0,
                "scored": 1, "due": 1.0, "cpu": 1.0, "wall": 1.0}

    monkeypatch.setattr(capacity, "run_once", fake_run)
    n, runs = capacity.search("t", Path("b"), lambda k: [Path("c")] * k, 1, 1, 1, start, max_n, steps, [], [],
                              say=lambda *_: None)
    assert n == want and len(runs) == len(tried)
    assert all((t <= limit) == (t <= n) for t in tried)  # every N tried above the answer failed, below passed


def test_calibration_bench_learns_thresholds_that_meet_the_target(bench_cache: Path) -> None:
    _, res = run_script("calibration.py", ["--quick"], bench_cache)
    assert number(res, "fa_learned") <= 2.0 < number(res, "fa_default")
    assert number(res, "on_learned") >= 0.3


def test_with_head_int8_makes_a_bundle_whose_runner_uses_the_int8_head(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    from common import with_head_int8

    from engine.bundle import describe_parity, load_bundle
    from engine.runtime import load_models

    base = tmp_path / "tiny"
    shutil.copytree(tiny_bundle_dir, base)
    out = with_head_int8(base)
    assert out.name == "tiny-head-int8" and with_head_int8(base) == out  # cached, built once
    b = load_bundle(out)  # hashes verified, INT8 graph checked against head.onnx's names and shapes
    assert b.head.int8_file == "head.int8.onnx" and "head_int8 not gated" in describe_parity(b.parity)
    _, _, head = load_models(out, runtime="onnxruntime", device="cpu", threads=1)
    _, _, ref = load_models(base, runtime="onnxruntime", device="cpu", threads=1)
    assert head.runner.describe()["file"] == "head.int8.onnx" and head.runner.describe()["precision"] == "int8-dynamic"
    assert ref.runner.describe()["file"] == "head.onnx" and ref.runner.describe()["precision"] == "fp32"


def test_capacity_searches_both_criteria_without_running_any_n_twice(monkeypatch) -> None:
    import capacity

    tried: list[int] = []

    def fake_run(bundle, clips, *a, **k):
        n = len(clips)
        tried.append(n)
        return {"ok": n <= 3, "keeps_up": n <= 6, "n": n, "lag_p50": 0.1, "lag_p95": 0.2, "dropped": 0.0,
                "scored": 1, "due": 1.0, "cpu": 1.0, "wall": 1.0}

    monkeypatch.setattr(capacity, "run_once", fake_run)
    done: dict[int, dict] = {}
    args = ("t", Path("b"), lambda k: [Path("c")] * k, 1, 1, 1, 1, 64, 8, [], [])
    keep, _ = capacity.search(*args, say=lambda *_: None, key="keeps_up", done=done)
    strict, _ = capacity.search(*args, say=lambda *_: None, key="ok", done=done)
    assert (keep, strict) == (6, 3)
    assert len(tried) == len(set(tried)) == len(done)  # the second search reused the first one's runs
