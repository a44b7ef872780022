"""Deployment config: validation, line-numbered errors, env substitution, check-config CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import ConfigError, DeploymentConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = """\
cameras:
  - name: lobby
    url: rtsp://127.0.0.1:8554/cam
model:
  bundle: scratch/bundle1
sinks:
  - type: jsonl
    path: scratch/events.jsonl
metrics:
  port: 9108
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml")
    return info.value.problems


def test_minimal_config_from_the_issue_gets_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.cameras[0].transport == "tcp"
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9108
    assert cfg.model.runtime == "auto"
    assert cfg.window.lookahead < cfg.window.length
    assert cfg.sinks[0].type == "jsonl"


def test_example_config_is_valid_and_uses_every_sink_type() -> None:
    cfg = load_config(ROOT / "configs" / "example.yaml")
    assert {s.type for s in cfg.sinks} == {"jsonl", "stdout", "webhook", "mqtt"}
    assert len(cfg.cameras) >= 2


def test_unknown_key_is_named_with_its_line() -> None:
    text = MINIMAL + "events:\n  on_threshold: 0.7\n  treshold: 0.5\n"
    (msg,) = problems(text)
    assert msg.startswith("events.treshold (line 13)") and "unknown key" in msg


def test_duplicate_camera_and_bad_url_are_all_reported() -> None:
    text = MINIMAL.replace(
        "model:", "  - name: Lobby\n    url: ftp://h/x\nmodel:", 1)
    msgs = problems(text)
    assert any(m.startswith("cameras[1].name (line 4)") and "duplicate" in m for m in msgs)
    assert any(m.startswith("cameras[1].url (line 5)") and "ftp" in m for m in msgs)


def test_unsafe_camera_names_are_rejected() -> None:
    for bad in ("../etc", "a/b", ".hidden", ""):
        text = MINIMAL.replace("name: lobby", f"name: '{bad}'")
        assert any("cameras[0].name" in m for m in problems(text)), bad


def test_sink_type_errors() -> None:
    msgs = problems(MINIMAL.replace("metrics:", "  - type: carrier-pigeon\nmetrics:"))
    assert any(m.startswith("sinks[1].type") and "carrier-pigeon" in m for m in msgs)
    msgs = problems(MINIMAL.replace("    path: scratch/events.jsonl\n", ""))
    assert any(m.startswith("sinks[0].path") and "missing" in m for m in msgs)


def test_thresholds_must_keep_hysteresis() -> None:
    msgs = problems(MINIMAL + "events:\n  on_threshold: 0.3\n  off_threshold: 0.5\n")
    assert any("off_threshold" in m for m in msgs)


def test_env_substitution_and_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "s3cr3t!")
    text = MINIMAL.replace("rtsp://127.0.0.1", "rtsp://admin:${CAM_PW}@127.0.0.1")
    assert parse_config(text).cameras[0].url == "rtsp://admin:s3cr3t!@127.0.0.1:8554/cam"
    monkeypatch.delenv("CAM_PW")
    (msg,) = problems(text)
    assert "cameras[0].url (line 3)" in msg and "CAM_PW" in msg
    assert parse_config(text.replace("${CAM_PW}", "${CAM_PW:-dflt}")).cameras[0].url.startswith("rtsp://admin:dflt@")


def test_errors_never_show_camera_passwords() -> None:
    text = MINIMAL.replace("rtsp://127.0.0.1:8554/cam", "gopher://admin:hunter2@127.0.0.1/cam")
    msgs = problems(text)
    assert msgs and not any("hunter2" in m for m in msgs)


def test_per_camera_overrides_merge_with_globals() -> None:
    text = MINIMAL.replace("    url: rtsp://127.0.0.1:8554/cam\n",
                           "    url: rtsp://127.0.0.1:8554/cam\n    events:\n      on_threshold: 0.9\n")
    cfg = parse_config(text + "events:\n  hold: 7\n")
    ev = cfg.events_for(cfg.cameras[0])
    assert ev.on_threshold == 0.9 and ev.hold == 7 and ev.off_threshold == cfg.events.off_threshold


def test_yaml_syntax_error_and_empty_file() -> None:
    (msg,) = problems("cameras: [\n")
    assert "YAML syntax error" in msg and "line" in msg
    (msg,) = problems("")
    assert "empty" in msg


def test_every_field_has_a_description() -> None:
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for arg in _model_types(field.annotation):
                walk(arg)

    walk(DeploymentConfig)
    assert len(seen) > 8


def _model_types(tp: object) -> list[type]:
    from typing import get_args

    from pydantic import BaseModel

    out = []
    stack = [tp]
    while stack:
        t = stack.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            out.append(t)
        stack.extend(get_args(t))
    return out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = _cli("check-config", str(ROOT / "configs" / "example.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "lobby" in ok.stdout and "changeme" not in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "events:\n  treshold: 1\n")
    res = _cli("check-config", str(bad))
    assert res.returncode == 2
    assert "events.treshold (line 12): unknown key" in res.stderr
    assert "Traceback" not in res.stderr
    missing = _cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr


# Fuzzing: whatever a user writes, the answer is a valid config or a ConfigError, never a traceback.
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["cameras", "model", "window", "events", "sinks", "metrics", "evidence", "ingest",
                         "spool", "logging", "bogus"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.just(yaml.safe_load(MINIMAL)), key=_keys, sub=st.text(max_size=10), value=_values)
def test_fuzzed_configs_give_clear_errors(base: dict, key: str, sub: str, value: object) -> None:
    data = dict(base)
    if isinstance(data.get(key), dict) and sub:
        data[key] = {**data[key], sub: value}
    else:
        data[key] = value
    text = yaml.safe_dump(data)
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
