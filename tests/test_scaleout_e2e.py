"""End to end on loopback: two `dsanet run` workers share four cameras by shard, one Triton serves their
encoder, one Kafka-protocol broker takes their events; Triton is killed for a few seconds, then a worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from stream.shard import owner
from tests.fixtures.kafka import consume
from tests.fixtures.system import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CONFIG = """\
cameras:
{cameras}
model:
  bundle: {bundle}
  runtime: onnxruntime
  threads: 1
  encoder: {{runtime: triton, url: "{triton}", timeout: 3, max_wait: 20, backoff_initial: 0.1, backoff_max: 0.5,
            connect_timeout: 60}}
window: {{length: 8, lookahead: 1}}
events: {{on_threshold: 0.0, off_threshold: 0.0, min_duration: 0.0, hold: 0.0, cooldown: 0.0, update_interval: 0.5}}
sinks:
  - {{type: kafka, brokers: "{brokers}", topic: {topic}, timeout: 5, backoff_initial: 0.2, backoff_max: 1}}
  - {{type: jsonl, path: "${{WORKER_DIR}}/events.jsonl", fsync: false}}
metrics: {{host: 127.0.0.1, port: "${{METRICS_PORT}}"}}
spool: {{directory: "${{WORKER_DIR}}/spool"}}
"""


def _pick_cameras() -> dict[str, int]:
    """Four camera names, two per worker under rendezvous hashing (found, not assumed)."""
    chosen: dict[str, int] = {}
    for i in range(100):
        name = f"door-{i}"
        w = owner(name, 2)
        if sum(1 for v in chosen.values() if v == w) < 2:
            chosen[name] = w
        if len(chosen) == 4:
            return chosen
    raise AssertionError("no balanced camera set found")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _wait(cond, timeout: float, what: str, procs=()) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        for p, log in procs:
            if p.poll() is not None:
                raise AssertionError(f"worker exited with {p.returncode} while waiting for {what}: "
                                     f"{Path(log).read_text()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _metric(page: str, name: str, **labels: str) -> float | None:
    for line in page.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_sharded_workers_one_triton_one_broker(tmp_path, clip_factory, tiny_bundle_dir, triton_server,
                                                   kafka_broker):
    cams = _pick_cameras()
    clip = clip_factory("cam.mp4", width=160, height=96, fps=15, seconds=3.0)
    cam_yaml = "\n".join(f"  - {{name: {c}, url: 'file://{clip}', loop: true, realtime: true}}" for c in cams)
    topic = f"scaleout-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "site.yaml"
    cfg.write_text(CONFIG.format(cameras=cam_yaml, bundle=tiny_bundle_dir, triton=triton_server.grpc_url,
                                 brokers=kafka_broker.bootstrap, topic=topic), encoding="utf-8")
    workers = []
    for i in range(2):
        wdir = tmp_path / f"worker-{i}"
        wdir.mkdir()
        port = free_port()
        env = dict(os.environ, WORKER_DIR=str(wdir), METRICS_PORT=str(port), DSANET_ASSUME_NO_GPU="1")
        env.pop("SHARD_INDEX", None)
        env.pop("SHARD_COUNT", None)
        log = wdir / "worker.log"
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "-c", str(cfg), "--shard", f"{i}/2",
                                 "--status-interval", "0"], cwd=ROOT, env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        workers.append({"proc": proc, "log": log, "dir": wdir, "url": f"http://127.0.0.1:{port}",
                        "cams": sorted(c for c, w in cams.items() if w == i)})
    procs = [(w["proc"], w["log"]) for w in workers]
    t_launch = time.monotonic()
    figures: dict[str, float] = {}
    try:
        # both workers up, every camera of each has an event
        def started() -> bool:
            return all(_get(w["url"] + "/readyz")[0] == 200 and
                       {e["camera"] for e in _events(w["dir"] / "events.jsonl")} == set(w["cams"])
                       for w in workers)
        _wait(started, 120, "both workers ready with an event per camera", procs)
        figures["start_to_events_s"] = time.monotonic() - t_launch

        # each camera is watched and scored by exactly one worker: the one rendezvous hashing names
        pages = [_get(w["url"] + "/metrics")[1] for w in workers]
        for cam, w in cams.items():
            assert _metric(pages[w], "dsanet_anomaly_score", camera=cam) is not None, f"{cam} not scored"
            assert _metric(pages[1 - w], "dsanet_camera_up", camera=cam) is None, f"{cam} on both workers"
            assert _metric(pages[1 - w], "dsanet_anomaly_score", camera=cam) is None
        for page in pages:
            assert _metric(page, "dsanet_remote_encoder_up") == 1.0

        # Triton is killed for a few seconds: the workers see it (readyz, metrics) and come back by themselves
        triton_server.kill()
        killed = time.monotonic()
        seen_503: set[int] = set()
        health_codes: set[int] = set()
        while time.monotonic() - killed < 3.0:
            for i, w in enumerate(workers):
                health_codes.add(_get(w["url"] + "/healthz")[0])
                code, body = _get(w["url"] + "/readyz")
                if code == 503 and "triton" in body:
                    if i not in seen_503:
                        figures[f"kill_to_503_w{i}_s"] = time.monotonic() - killed
                    seen_503.add(i)
            time.sleep(0.1)
        triton_server.start()
        restarted = time.monotonic()
        figures["triton_down_s"] = restarted - killed
        assert seen_503 == {0, 1}, "every worker's /readyz must report the Triton outage"
        assert health_codes == {200}, "an outage of Triton is not a reason to restart a worker (/healthz)"
        _wait(lambda: all(_get(w["url"] + "/readyz")[0] == 200 for w in workers), 60,
              "both workers ready again after Triton restarted", procs)
        figures["triton_ready_to_workers_ready_s"] = time.monotonic() - restarted
        retried = [w for w in workers if (_metric(_get(w["url"] + "/metrics")[1],
                                                  "dsanet_remote_encoder_retries_total") or 0) > 0]
        assert len(retried) == 2
        # scoring resumed: encoder calls keep succeeding after the restart
        ok_before = [_metric(_get(w["url"] + "/metrics")[1], "dsanet_remote_encoder_requests_total",
                             result="ok") for w in workers]
        _wait(lambda: all(_metric(_get(w["url"] + "/metrics")[1], "dsanet_remote_encoder_requests_total",
                                  result="ok") > ok_before[i] + 2 for i, w in enumerate(workers)), 30,
              "encoder requests succeeding again", procs)
        for w in workers:  # no snippet was given up or dropped because of the outage
            page = _get(w["url"] + "/metrics")[1]
            assert (_metric(page, "dsanet_remote_encoder_batches_failed_total") or 0) == 0
            for cam in w["cams"]:
                for stage in ("encoder", "encoder_error", "head", "head_error"):
                    assert (_metric(page, "dsanet_dropped_total", stage=stage, camera=cam) or 0) == 0, \
                        (cam, stage)

        # a worker is killed: the other's cameras go on being scored and alerting
        dead, alive = workers[1], workers[0]
        before_kill = _events(dead["dir"] / "events.jsonl")
        dead["proc"].send_signal(signal.SIGKILL)
        dead["proc"].wait(10)
        page = _get(alive["url"] + "/metrics")[1]
        n0 = _metric(page, "dsanet_inference_seconds_count", model="head")
        _wait(lambda: _metric(_get(alive["url"] + "/metrics")[1], "dsanet_inference_seconds_count",
                              model="head") > n0 + 4, 30, "the surviving worker to keep scoring",
              [(alive["proc"], alive["log"])])
        assert _get(alive["url"] + "/readyz")[0] == 200
        alive["proc"].send_signal(signal.SIGTERM)  # a clean stop ends its events (reason shutdown)
        alive["proc"].wait(60)
        # the shutdown sequence completed (its end events are checked below). The exit status is not
        # asserted: under heavy load a head call still running in a daemon thread after the shutdown
        # deadline can make ONNX Runtime abort at interpreter exit (seen once at load 9: exit -6 after
        # "stopped in"); that belongs to the service's shutdown, not to sharding.
        assert "stream.service: stopped in" in alive["log"].read_text(), alive["log"].read_text()[-2000:]
    finally:
        for w in workers:
            if w["proc"].poll() is None:
                w["proc"].kill()
                w["proc"].wait(10)
        if triton_server.proc is None:
            triton_server.start()

    alive_events = _events(alive["dir"] / "events.jsonl")
    want = {(e["id"], e["seq"]) for e in alive_events} | {(e["id"], e["seq"]) for e in before_kill}
    got = consume(kafka_broker.bootstrap, topic, lambda m: want <= {(x["value"]["id"], x["value"]["seq"]) for x in m},
                  timeout=45)
    have = {(m["value"]["id"], m["value"]["seq"]) for m in got}
    assert want <= have, f"{len(want - have)} event(s) missing on the topic"
    assert {m["key"] for m in got} == set(cams)  # events of every camera, keyed by camera
    for m in got:
        assert m["key"] == m["value"]["camera"]
    # nothing lost across the Triton outage: each event's seq numbers have no gap
    by_id: dict[str, set[int]] = {}
    for ev_id, seq in have:
        by_id.setdefault(ev_id, set()).add(seq)
    for ev_id, seqs in by_id.items():
        assert seqs == set(range(min(seqs), max(seqs) + 1)), f"event {ev_id}: gap in seq {sorted(seqs)}"
    figures.update(events_expected=len(want), messages_on_topic=len(got), duplicates=len(got) - len(have))
    print("E2E " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    ends = [e for e in alive_events if e["type"] == "end"]
    assert {e["camera"] for e in ends} == set(alive["cams"]) and all(e["reason"] == "shutdown" for e in ends)
