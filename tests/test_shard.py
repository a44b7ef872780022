"""Rendezvous sharding of cameras across workers (stream.shard) and `dsanet shard-plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import EXIT_BAD_INPUT
from stream.config import load_config
from stream.shard import (
    Shard,
    ShardError,
    apply_shard,
    assign,
    mod_owner,
    moved,
    owner,
    parse_spec,
    resolve,
    select,
)

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = [f"site-{i // 40:02d}-cam-{i % 40:03d}" for i in range(2000)]


def test_partition_is_complete_and_disjoint_for_any_worker_count():
    for n in range(1, 12):
        shards = [select(CAMERAS, Shard(i, n)) for i in range(n)]
        flat = [c for s in shards for c in s]
        assert sorted(flat) == sorted(CAMERAS), f"N={n}: a camera is missing or watched twice"
        assert len(set(flat)) == len(flat)
        # balanced: no worker gets more than 25% over its fair share on 2000 cameras
        assert max(len(s) for s in shards) <= 1.25 * len(CAMERAS) / n


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_scale_out_moves_about_one_over_n_plus_one_and_only_to_the_new_worker(n):
    before, after = assign(CAMERAS, n), assign(CAMERAS, n + 1)
    move = moved(before, after)
    assert all(after[c] == n for c in move), "a scale-out must only move cameras onto the new worker"
    frac = len(move) / len(CAMERAS)
    ideal = 1 / (n + 1)
    assert abs(frac - ideal) < 0.25 * ideal, f"N={n}: moved {frac:.3f}, ideal {ideal:.3f}"
    mod_frac = len(moved({c: mod_owner(c, n) for c in CAMERAS}, {c: mod_owner(c, n + 1) for c in CAMERAS})) \
        / len(CAMERAS)
    # mod-N moves about N/(N+1) (from 1 to 2 workers both move half)
    assert abs(mod_frac - n / (n + 1)) < 0.1, f"N={n}: mod-N moved {mod_frac:.3f}"
    if n >= 2:
        assert mod_frac > 1.5 * frac, f"N={n}: mod-N moved {mod_frac:.3f}, rendezvous {frac:.3f}"


def test_assignment_is_the_same_in_every_process_whatever_the_hash_seed():
    """Python's hash() is salted per process; the shard hash must not be."""
    code = ("import json; from stream.shard import assign; "
            f"print(json.dumps(assign({CAMERAS[:300]!r}, 5)))")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                             check=True)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] == assign(CAMERAS[:300], 5)


def test_a_camera_keeps_its_worker_when_other_cameras_come_and_go():
    full = assign(CAMERAS, 6)
    half = assign(CAMERAS[::2], 6)
    assert all(full[c] == w for c, w in half.items())


def test_shard_sources_in_order_of_precedence():
    assert resolve("1/3", env={"SHARD_INDEX": "0", "SHARD_COUNT": "2"}) == Shard(1, 3, "--shard")
    s = resolve(None, env={"SHARD_INDEX": "2", "SHARD_COUNT": "4"})
    assert (s.index, s.count) == (2, 4)
    s = resolve(None, env={"SHARD_COUNT": "4"}, hostname="dsanet-worker-3.dsanet-workers.ns.svc")
    assert (s.index, s.count) == (3, 4) and "ordinal" in s.source
    s = resolve(None, config_index=1, config_count=2, env={})
    assert (s.index, s.count) == (1, 2)
    assert (resolve(None, env={}).index, resolve(None, env={}).count) == (0, 1)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"cli": "2"}, "INDEX/COUNT"),
    ({"cli": "3/3"}, "outside 0..2"),
    ({"cli": "0/0"}, "count must be >= 1"),
    ({"env": {"SHARD_INDEX": "1"}}, "SHARD_COUNT is not"),
    ({"env": {"SHARD_COUNT": "two"}}, "not an integer"),
    ({"env": {"SHARD_COUNT": "3"}, "hostname": "worker"}, "StatefulSet ordinal"),
    ({"env": {"SHARD_COUNT": "3"}, "hostname": "dsanet-worker-5"}, "outside 0..2"),
])
def test_bad_shard_settings_are_one_line_errors(kwargs, needle):
    kwargs.setdefault("env", {})
    with pytest.raises(ShardError, match=needle) as info:
        resolve(**kwargs)
    assert "\n" not in str(info.value)


def _config(tmp_path: Path, n: int, extra: str = "") -> Path:
    cams = "\n".join(f"  - {{name: cam-{i}, url: 'file:///clips/{i}.mp4'}}" for i in range(n))
    p = tmp_path / "site.yaml"
    p.write_text(f"cameras:\n{cams}\nmodel: {{bundle: /models/b}}\n{extra}", encoding="utf-8")
    return p


def test_apply_shard_enables_only_this_workers_cameras(tmp_path, monkeypatch):
    monkeypatch.delenv("SHARD_INDEX", raising=False)
    monkeypatch.delenv("SHARD_COUNT", raising=False)
    cfg = load_config(_config(tmp_path, 30))
    seen: list[str] = []
    for i in range(3):
        sub, shard = apply_shard(cfg, f"{i}/3")
        mine = [c.name for c in sub.enabled_cameras]
        assert mine == [c for c in (x.name for x in cfg.cameras) if owner(c, 3) == i]
        assert [c.name for c in sub.cameras] == [c.name for c in cfg.cameras]  # others stay, disabled
        seen += mine
    assert sorted(seen) == sorted(c.name for c in cfg.cameras)
    cfg2 = load_config(_config(tmp_path, 4, "shard: {index: 1, count: 2}\n"))
    sub, shard = apply_shard(cfg2)
    assert (shard.index, shard.count) == (1, 2)
    assert [c.name for c in sub.enabled_cameras] == [c.name for c in cfg2.cameras if owner(c.name, 2) == 1]


def test_sharded_workers_keep_site_data_in_folders_of_their_own(tmp_path, monkeypatch):
    """Two workers of one config must never share a feedback site-data folder (each store evicts and
    rewrites its own index files); one worker keeps the configured folder."""
    monkeypatch.delenv("SHARD_INDEX", raising=False)
    monkeypatch.delenv("SHARD_COUNT", raising=False)
    cfg = load_config(_config(tmp_path, 30))
    assert cfg.feedback.enabled
    base = Path(cfg.feedback.directory)
    dirs = [Path(apply_shard(cfg, f"{i}/3")[0].feedback.directory) for i in range(3)]
    assert len(set(dirs)) == 3
    assert all(d.parent == base and d.name == f"shard-{i}" for i, d in enumerate(dirs))
    assert Path(apply_shard(cfg, "0/1")[0].feedback.directory) == base


def test_a_worker_without_cameras_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SHARD_COUNT", raising=False)
    cfg = load_config(_config(tmp_path, 1))
    empty = next(i for i in range(4) if owner("cam-0", 4) != i)
    with pytest.raises(ShardError, match="owns none of the 1 enabled camera"):
        apply_shard(cfg, f"{empty}/4")


def test_parse_spec():
    assert parse_spec(" 2 / 5 ") == Shard(2, 5, "--shard")


def _dsanet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_shard_plan_command_prints_the_assignment_and_scale_out_moves(tmp_path):
    path = _config(tmp_path, 200)
    res = _dsanet("shard-plan", "-c", str(path), "--workers", "4", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    names = [f"cam-{i}" for i in range(200)]
    assert plan["assignment"] == assign(names, 4)
    assert sum(len(v) for v in plan["per_worker"].values()) == 200
    so = plan["scale_out"]
    assert so["moved"] == len(moved(assign(names, 4), assign(names, 5)))
    assert so["moved_cameras"] == moved(assign(names, 4), assign(names, 5))
    assert so["mod_n_moved"] > so["moved"]
    text = _dsanet("shard-plan", "-c", str(path), "--workers", "4")
    assert text.returncode == 0 and "cam-7" in text.stdout and "going to 5 workers moves" in text.stdout
    bad = _dsanet("shard-plan", "-c", str(tmp_path / "missing.yaml"), "--workers", "2")
    assert bad.returncode == 2 and "file not found" in bad.stderr and "Traceback" not in bad.stderr
    zero = _dsanet("shard-plan", "-c", str(path), "--workers", "0")
    assert zero.returncode == 2 and "--workers must be >= 1" in zero.stderr


def test_run_rejects_a_bad_shard_in_one_line_before_loading_anything(tmp_path):
    path = _config(tmp_path, 3)
    for spec, needle in (("5/2", "outside 0..1"), ("x", "INDEX/COUNT")):
        res = _dsanet("run", "-c", str(path), "--shard", spec, "--duration", "1")
        assert res.returncode == EXIT_BAD_INPUT, res.stderr
        assert needle in res.stderr and "Traceback" not in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("dsanet run: ")
