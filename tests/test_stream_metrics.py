"""The service's Prometheus page, /healthz and /readyz: every documented metric present with help text,
labels as documented, promtool-clean, and health/readiness that flip for the right reasons."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest

from stream.metrics import Metrics
from stream.reader import CameraState
from tests.fixtures.system import find_tool, require

DOCUMENTED = {
    "dsanet_camera_up": ["camera"],
    "dsanet_camera_state": ["camera", "state"],
    "dsanet_frames_decoded_total": ["camera"],
    "dsanet_snippets_total": ["camera"],
    "dsanet_dropped_total": ["stage", "camera"],
    "dsanet_reconnects_total": ["camera"],
    "dsanet_decode_errors_total": ["camera"],
    "dsanet_stream_lag_seconds": ["camera"],
    "dsanet_anomaly_score": ["camera"],
    "dsanet_inference_seconds": ["model"],
    "dsanet_batch_size": ["model"],
    "dsanet_events_total": ["camera", "category"],
    "dsanet_sink_deliveries_total": ["sink", "result"],
    "dsanet_sink_spool_depth": ["sink"],
    "dsanet_build_info": ["version", "bundle", "runtime"],
    "dsanet_threshold": ["camera", "kind"],
}


def populated() -> Metrics:
    m = Metrics()
    m.register_camera("front door")
    m.camera_state("front door", CameraState.STREAMING)
    m.frame_decoded("front door", 25)
    m.decode_error("front door")
    m.reconnect("front door")
    m.snippet("front door", 3)
    m.dropped("encoder", "front door", 2)
    m.scored("front door", 0.73, 0.41)
    m.inference_done("encoder", 0.02, 8)
    m.inference_done("head", 0.003, 2)
    m.event("front door", "Fighting")
    m.sink_delivered("webhook", "delivered")
    m.spool_depth("webhook", 4)
    m.build_info("0.1.0", "tiny", "onnxruntime")
    m.thresholds("front door", 0.62, 0.41)
    return m


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_page_has_every_documented_metric_with_help_and_labels():
    text = populated().render().decode()
    for name, labels in DOCUMENTED.items():
        family = name.removesuffix("_total")
        assert f"# HELP {family}" in text or f"# HELP {name}" in text, name
        sample = next(line for line in text.splitlines() if line.startswith(name + "{")
                      or line.startswith(name + "_bucket{") or line.startswith(name + "_count{"))
        for label in labels:
            assert f'{label}="' in sample, (name, label, sample)
    assert 'dsanet_frames_decoded_total{camera="front door"} 25.0' in text
    assert 'dsanet_dropped_total{camera="front door",stage="encoder"} 2.0' in text
    assert 'dsanet_camera_state{camera="front door",state="streaming"} 1.0' in text
    assert 'dsanet_camera_state{camera="front door",state="backing_off"} 0.0' in text
    assert 'dsanet_camera_up{camera="front door"} 1.0' in text
    assert 'dsanet_batch_size_bucket{le="8.0",model="encoder"} 1.0' in text
    assert 'dsanet_stream_lag_seconds{camera="front door"} 0.41' in text
    assert 'dsanet_threshold{camera="front door",kind="on"} 0.62' in text
    assert 'dsanet_threshold{camera="front door",kind="off"} 0.41' in text


def test_state_changes_move_the_one_hot_and_up():
    m = Metrics()
    m.register_camera("c")
    m.camera_state("c", CameraState.BACKING_OFF)
    text = m.render().decode()
    assert 'dsanet_camera_up{camera="c"} 0.0' in text
    ones = [ln for ln in text.splitlines() if ln.startswith("dsanet_camera_state{") and ln.endswith(" 1.0")]
    assert ones == ['dsanet_camera_state{camera="c",state="backing_off"} 1.0']


def test_two_services_do_not_share_a_registry():
    a, b = Metrics(), Metrics()
    a.frame_decoded("x", 5)
    assert 'camera="x"' in a.render().decode()
    assert 'camera="x"' not in b.render().decode()


@pytest.mark.system
def test_promtool_accepts_the_page():
    require("promtool")
    page = populated().render()
    res = subprocess.run([find_tool("promtool"), "check", "metrics"], input=page, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_http_endpoints_health_and_readiness():
    m = Metrics(stale_after=5.0)
    beat = {"t": time.monotonic()}
    m.add_liveness("reader:c", lambda: beat["t"])
    m.register_camera("c")
    srv = m.serve("127.0.0.1", 0)
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0
        code, body = get(srv.url + "/metrics")
        assert code == 200 and "dsanet_camera_state" in body
        assert get(srv.url + "/healthz")[0] == 200
        code, body = get(srv.url + "/readyz")
        assert code == 503 and "model not loaded" in body
        m.set_model_loaded()
        code, body = get(srv.url + "/readyz")
        assert code == 503 and "no camera streaming" in body
        m.camera_state("c", CameraState.STREAMING)
        assert get(srv.url + "/readyz")[0] == 200
        beat["t"] = time.monotonic() - 60  # the loop stopped making progress
        code, body = get(srv.url + "/healthz")
        assert code == 503 and "reader:c" in body
        assert get(srv.url + "/nope")[0] == 404
    finally:
        srv.close()


def test_sink_protocol_accepts_enum_results():
    from stream.sinks.base import Result

    m = Metrics()
    m.sink_delivered("hook", Result.DELIVERED)
    m.sink_delivered("hook", Result.RETRY)
    text = m.render().decode()
    assert 'dsanet_sink_deliveries_total{result="delivered",sink="hook"} 1.0' in text
    assert 'dsanet_sink_deliveries_total{result="failed",sink="hook"} 1.0' in text
