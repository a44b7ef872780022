"""deploy/ (docker compose, Kubernetes, Prometheus) against the CLI and the config schema, so they cannot drift."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.cli import build_parser
from stream.config import load_config
from stream.shard import resolve
from stream.sinks.kafka import ENV_SETTINGS
from tests.fixtures.system import find_tool, require

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SITE_ENV = {"CAMERA_USER": "u", "CAMERA_PASSWORD": "p", "TRITON_URL": "triton:8001", "KAFKA_BROKERS": "kafka:9092"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in _docs(f):
            if d.get("kind") == kind and d["metadata"]["name"] == name:
                return d
    raise AssertionError(f"no {kind} {name} under deploy/k8s")


@pytest.fixture
def site(monkeypatch):
    for k, v in SITE_ENV.items():
        monkeypatch.setenv(k, v)
    return load_config(DEPLOY / "config" / "site.yaml")


def _run_args(args: list[str]) -> Any:
    ns = build_parser().parse_args(args)  # argparse exits (SystemExit) on an unknown option
    assert ns.command == "run"
    return ns


def _volume(spec: str) -> tuple[str, str]:
    """A compose short volume (``SOURCE:TARGET[:ro]``; SOURCE may hold ``${VAR:?...}``) -> (target, source)."""
    body = spec[:-3] if spec.endswith((":ro", ":rw")) else spec
    source, target = body.rsplit(":", 1)
    return target, source


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.rsplit(":", 1)
    return host, int(port)


def test_site_config_is_valid_and_needs_only_documented_environment(site):
    assert site.model.encoder is not None and site.model.encoder.runtime == "triton"
    assert site.metrics.host == "0.0.0.0"  # reachable by Prometheus inside the container network
    assert [s.type for s in site.sinks] == ["kafka", "jsonl"]
    assert site.spool.directory.startswith("/data")  # the worker's persistent volume


def test_compose_workers_match_the_cli_config_and_shard_every_camera_once(site):
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    workers = {k: v for k, v in services.items() if k.startswith("worker-")}
    assert len(workers) >= 2
    owned: list[str] = []
    counts = set()
    for name, svc in workers.items():
        ns = _run_args(svc["command"])
        mounts = dict(_volume(m) for m in svc["volumes"])
        assert mounts[ns.config] == "../config/site.yaml"
        assert (DEPLOY / "compose" / mounts[ns.config]).resolve() == DEPLOY / "config" / "site.yaml"
        assert site.model.bundle in mounts and site.spool.directory.startswith("/data/")
        assert mounts["/data"] == f"{name}-data"  # each worker its own spool (never shared between workers)
        shard = resolve(ns.shard, env={})
        counts.add(shard.count)
        owned += [c.name for c in site.cameras if shard.owns(c.name)]
        assert any(p.endswith(f":{site.metrics.port}") for p in svc["ports"])
        env = svc.get("environment") or services["worker-0"]["environment"]
        host, port = _host_port(env["TRITON_URL"])
        assert host in services and str(port) in services[host]["expose"]
        bhost, bport = _host_port(env["KAFKA_BROKERS"])
        assert bhost in services and str(bport) in services[bhost]["expose"]
    assert counts == {len(workers)}, "every worker's --shard must name the same worker count"
    assert sorted(owned) == sorted(c.name for c in site.cameras), "cameras missing or watched twice"
    triton = services["triton"]["command"]
    assert "--model-repository=/models" in triton
    assert any(v.endswith(":/models:ro") for v in services["triton"]["volumes"])


def test_statefulset_shards_from_the_ordinal_and_matches_the_cli_and_config(site):
    sts = _k8s("StatefulSet", "dsanet-worker")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ns = _run_args(c["args"])
    env = {e["name"]: e for e in c["env"]}
    replicas = sts["spec"]["replicas"]
    assert env["SHARD_COUNT"]["value"] == str(replicas), "SHARD_COUNT must equal the StatefulSet's replicas"
    assert "SHARD_INDEX" not in env and ns.shard is None  # the index comes from the pod name's ordinal
    owned = []
    for i in range(replicas):
        shard = resolve(None, env={"SHARD_COUNT": env["SHARD_COUNT"]["value"]},
                        hostname=f"{sts['metadata']['name']}-{i}")
        assert shard.index == i
        owned += [cam.name for cam in site.cameras if shard.owns(cam.name)]
    assert sorted(owned) == sorted(cam.name for cam in site.cameras)
    kafka_env = {n for n in env if n.startswith("KAFKA_") and n != "KAFKA_BROKERS"}
    assert kafka_env <= set(ENV_SETTINGS), f"unknown Kafka settings {kafka_env - set(ENV_SETTINGS)}"
    assert "value" not in env["KAFKA_SASL_PASSWORD"] and "secretKeyRef" in env["KAFKA_SASL_PASSWORD"]["valueFrom"]
    assert "secretKeyRef" in env["CAMERA_PASSWORD"]["valueFrom"]
    (port,) = c["ports"]
    assert port["containerPort"] == site.metrics.port
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[str(Path(ns.config).parent)] == "config"
    assert mounts[site.model.bundle] == "bundle"
    assert site.spool.directory.startswith(next(p for p, n in mounts.items() if n == "data"))
    svc = _k8s("Service", "dsanet-workers")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "dsanet-workers"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == site.metrics.port
    # Triton: the URL the workers use names the triton Service's gRPC port
    host, grpc_port = _host_port(env["TRITON_URL"]["value"])
    tsvc = _k8s("Service", host)
    assert {p["name"]: p["port"] for p in tsvc["spec"]["ports"]}["grpc"] == grpc_port
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    gen = {g["name"]: g["files"] for g in kust["configMapGenerator"]}
    assert pod["volumes"][0]["configMap"]["name"] in gen
    assert gen["dsanet-site"] == [f"{Path(ns.config).name}=config/site.yaml"]
    assert all((DEPLOY / r).is_file() for r in kust["resources"])


def test_triton_deployment_writes_the_repository_the_workers_expect(site):
    dep = _k8s("Deployment", "triton")
    spec = dep["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    ns = build_parser().parse_args(init["args"])
    assert ns.command == "triton-repo" and ns.name == site.model.encoder.model
    (server,) = spec["containers"]
    repo_flag = next(a for a in server["args"] if a.startswith("--model-repository="))
    assert repo_flag.split("=", 1)[1] == ns.out
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert mounts[ns.out] == init_mounts[ns.out]
    assert init_mounts[ns.bundle] == "bundle" and ns.bundle == site.model.bundle
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == _host_port(site.model.encoder.url)[1]


@pytest.mark.parametrize("which", ["workers", "compose"])
def test_probe_paths_exist_on_the_metrics_server(which):
    from stream.metrics import Metrics

    if which == "workers":
        (c,) = _k8s("StatefulSet", "dsanet-worker")["spec"]["template"]["spec"]["containers"]
        paths = [c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]]
    else:
        prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
        paths = [j["metrics_path"] for j in prom["scrape_configs"] if j["job_name"] == "dsanet-worker"]
    metrics = Metrics()
    server = metrics.serve("127.0.0.1", 0)
    try:
        for path in paths:
            try:
                with urllib.request.urlopen(server.url + path, timeout=5) as r:
                    code = r.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            assert code in (200, 503), f"{path}: {code} (the probe would never pass)"
    finally:
        server.close()


def test_prometheus_configs_pass_promtool_and_target_the_metrics_port(tmp_path, site):
    require("promtool")
    compose_cfg = DEPLOY / "compose" / "prometheus.yml"
    k8s_cfg = tmp_path / "prometheus.yml"
    k8s_cfg.write_text(_k8s("ConfigMap", "dsanet-prometheus")["data"]["prometheus.yml"])
    for cfg in (compose_cfg, k8s_cfg):
        res = subprocess.run([find_tool("promtool"), "check", "config", "--syntax-only", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{cfg}: {res.stdout} {res.stderr}"
    prom = yaml.safe_load(compose_cfg.read_text())
    targets = [t for j in prom["scrape_configs"] if j["job_name"] == "dsanet-worker"
               for sc in j["static_configs"] for t in sc["targets"]]
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    assert sorted(t.split(":")[0] for t in targets) == sorted(k for k in compose["services"] if k.startswith("worker-"))
    assert all(t.endswith(f":{site.metrics.port}") for t in targets)
    k8s = {j["job_name"]: j for j in yaml.safe_load(k8s_cfg.read_text())["scrape_configs"]}
    (dns,) = k8s["dsanet-worker"]["dns_sd_configs"]
    svc = _k8s("Service", "dsanet-workers")
    assert dns["names"] == [svc["metadata"]["name"]] and svc["spec"]["clusterIP"] == "None"  # one A record a pod
    assert dns["port"] == site.metrics.port
    (triton,) = k8s["triton"]["static_configs"][0]["targets"]
    tsvc = _k8s("Service", triton.split(":")[0])
    assert {p["name"]: p["port"] for p in tsvc["spec"]["ports"]}["metrics"] == int(triton.split(":")[1])


def test_docker_entrypoint_runs_the_cli():
    text = (DEPLOY / "docker" / "worker.Dockerfile").read_text()
    cmd = next(line for line in text.splitlines() if line.startswith("CMD"))
    args = yaml.safe_load(cmd[3:].strip())
    ns = _run_args(args)
    assert ns.config == "/config/site.yaml"
    assert 'ENTRYPOINT ["dsanet"]' in text
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pip = next(line for line in text.splitlines() if "pip install" in line)
    wanted = pip.split('".[', 1)[1].split(']"', 1)[0].split(",")
    assert set(wanted) <= set(extras) and {"triton", "kafka"} <= set(wanted)
