"""Bad input end to end: damaged videos, damaged bundles, wrong checkpoints. Each must give a clear error that
names the file (or the camera), never a traceback, and a live service must keep its healthy cameras going.

What is already covered elsewhere and not repeated here: config fuzzing (``tests/test_config.py``,
hypothesis), ``load_bundle`` on every kind of damaged bundle (``tests/test_bundle.py``), garbage/missing/too
short videos in ``export.extract`` (``tests/test_extract.py``), bytes corrupted in the middle of a file read
by the reader (``tests/test_reader.py``). This file adds the user's view: the CLIs as subprocesses, and the
service with a broken file camera next to a good one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DSANET = [sys.executable, "-m", "stream.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dsanet(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DSANET, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def assert_clear_error(res: subprocess.CompletedProcess[str], *names: str) -> None:
    """Non-zero exit, no traceback, and every name (file, camera) appears in stderr."""
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    for n in names:
        assert n in res.stderr, f"{n!r} not named in: {res.stderr[-2000:]}"


@pytest.fixture
def good_clip(clip_factory) -> Path:
    return clip_factory("good.mp4", width=160, height=96, fps=25, seconds=3.0)


def _truncated(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _mid_damaged(src: Path, dst: Path) -> Path:
    """Overwrite a block in the middle of the media data with zeros (a bad sector, a torn copy)."""
    data = bytearray(src.read_bytes())
    a = len(data) // 3
    data[a: a + len(data) // 3] = bytes(len(data) // 3)
    dst.write_bytes(bytes(data))
    return dst


# --------------------------------------------------------------------------------- file cameras


def _cfg(tmp: Path, cameras: list[dict], bundle: Path) -> str:
    return json.dumps({
        "cameras": cameras,
        "model": {"bundle": str(bundle), "runtime": "onnxruntime", "threads": 1},
        "window": {"length": 8, "lookahead": 1},
        "ingest": {"open_timeout": 2, "read_timeout": 1, "backoff_initial": 0.2, "backoff_max": 1.0},
        "sinks": [{"type": "jsonl", "path": str(tmp / "events.jsonl")}],
        "metrics": {"enabled": False},
        "spool": {"directory": str(tmp / "spool")},
    })


def test_broken_file_cameras_are_named_and_do_not_stop_a_good_one(tmp_path, good_clip, clip_factory,
                                                                  tiny_bundle_dir, caplog):
    from stream.service import Service

    src = clip_factory("src.mp4", width=160, height=96, fps=25, seconds=3.0)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = _truncated(src, tmp_path / "truncated.mp4", 0.5)
    damaged = _mid_damaged(src, tmp_path / "damaged.mp4")
    cams = [{"name": "good", "url": f"file://{good_clip}", "realtime": False, "loop": True}]
    broken = {"garbage": garbage, "empty": empty, "truncated": truncated, "damaged": damaged}
    cams += [{"name": n, "url": f"file://{p}", "realtime": False} for n, p in broken.items()]
    caplog.set_level("INFO")
    svc = Service(parse_config(_cfg(tmp_path, cams, tiny_bundle_dir)), out=io.StringIO(), status_interval=0)
    try:
        svc.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and svc.cameras["good"].status.scored < 6:
            time.sleep(0.1)
        assert svc.cameras["good"].status.scored >= 6  # the good camera kept going
        time.sleep(1.0)
        for name in broken:
            r = svc.cameras[name].reader
            ok_end = r.finished and r.stats.frames > 0  # a damaged file may still give its readable frames
            assert ok_end or r.stats.last_error, (name, r.stats)
        assert svc.encoder.is_alive() and svc.head.is_alive()
    finally:
        svc.shutdown()
    text = caplog.text
    assert "Traceback" not in text
    for name in ("garbage", "empty"):  # unreadable from the first byte: a warning naming camera and file
        assert f"camera {name}" in text and f"{name}.mp4" in text, text[-3000:]


def test_dsanet_run_with_a_broken_file_camera_names_it_and_exits_cleanly(tmp_path, good_clip, tiny_bundle_dir):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all\n" * 100)
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(_cfg(tmp_path, [{"name": "good", "url": f"file://{good_clip}", "loop": True},
                                   {"name": "junk", "url": f"file://{garbage}"}], tiny_bundle_dir))
    res = dsanet("run", "-c", str(cfg), "--duration", "4", "--status-interval", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "camera junk" in res.stderr and "garbage.mp4" in res.stderr
    assert "[good] streaming" in res.stdout
    # a file camera whose file does not exist at all: refused at start, by name
    cfg.write_text(_cfg(tmp_path, [{"name": "gone", "url": f"file://{tmp_path}/gone.mp4"}], tiny_bundle_dir))
    assert_clear_error(dsanet("run", "-c", str(cfg), cwd=tmp_path), "gone.mp4")


def test_concealed_corruption_is_counted(tmp_path, clip_factory):
    """Bit errors inside H.264 slices (one byte in 300 XOR-ed) make FFmpeg conceal, not raise: the decoder
    returns frames flagged corrupt. They must show in ``decode_errors`` (and dsanet_decode_errors_total),
    or corruption on the wire stays invisible to operators (chaos scenario 3)."""
    from stream.reader import CameraReader, ReaderSettings

    src = clip_factory("src.mp4", width=160, height=96, fps=25, seconds=4.0, gop=25)
    data = bytearray(src.read_bytes())
    for k in range(len(data) // 4, 3 * len(data) // 4, 300):
        data[k] ^= 0x5A
    bad = tmp_path / "flipped.mp4"
    bad.write_bytes(bytes(data))

    class Sink:
        def on_frame(self, frame: object) -> None:
            pass

        def on_discontinuity(self) -> None:
            pass

    r = CameraReader(ReaderSettings("flip", f"file://{bad}", realtime=False), Sink())
    r.start()
    assert r.join(60)
    assert r.stats.frames >= 90  # the file still plays
    assert r.stats.decode_errors >= 1


# ------------------------------------------------------------------------------- extract-features


def test_extract_features_on_truncated_and_damaged_videos(tmp_path, clip_factory, tiny_clip_dir):
    """A real MP4 cut in half (its index may be gone) and one zeroed in the middle: either a clear error
    naming the file, or features for what was readable; never a traceback."""
    src = clip_factory("src.mp4", width=160, height=96, fps=25, seconds=4.0)
    for video in (_truncated(src, tmp_path / "half.mp4", 0.5), _truncated(src, tmp_path / "head.mp4", 0.05),
                  _mid_damaged(src, tmp_path / "zeroed.mp4")):
        res = dsanet("extract-features", str(video), "--clip", str(tiny_clip_dir), "--out",
                     str(tmp_path / f"out-{video.stem}"), "--no-progress", cwd=tmp_path)
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        if res.returncode != 0:
            assert video.name in res.stderr, res.stderr[-2000:]
        else:
            feats = list((tmp_path / f"out-{video.stem}").rglob("*.npy"))
            assert feats, res.stdout


# ------------------------------------------------------------------------------------- bundles


def _rehash(bundle: Path, name: str) -> None:
    import hashlib

    data = json.loads((bundle / "bundle.json").read_text())
    entry = data["files"][name]
    raw = (bundle / name).read_bytes()
    if isinstance(entry, dict):
        entry.update({k: v for k, v in (("sha256", hashlib.sha256(raw).hexdigest()), ("bytes", len(raw)),
                                        ("size", len(raw))) if k in entry})
    else:
        data["files"][name] = hashlib.sha256(raw).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(data))


@pytest.mark.parametrize("damage, needle", [
    ("truncate-head", "head.onnx"),
    ("garbage-encoder-rehashed", "encoder.onnx"),
    ("bundle-json-classes", "bundle.json"),
    ("bundle-json-syntax", "bundle.json"),
])
def test_damaged_bundle_is_a_clear_error_in_every_cli(tmp_path, tiny_bundle_dir, copy_bundle, good_clip, damage,
                                                      needle):
    d = copy_bundle(tiny_bundle_dir)
    if damage == "truncate-head":
        raw = (d / "head.onnx").read_bytes()
        (d / "head.onnx").write_bytes(raw[: len(raw) // 3])
    elif damage == "garbage-encoder-rehashed":  # passes the hash check, fails as ONNX
        (d / "encoder.onnx").write_bytes(b"\x08\x07not a protobuf model" * 64)
        _rehash(d, "encoder.onnx")
    elif damage == "bundle-json-classes":
        data = json.loads((d / "bundle.json").read_text())
        data["class_names"] = data["class_names"][:-1]
        data["display_names"] = data["display_names"][:-1]
        (d / "bundle.json").write_text(json.dumps(data))
    else:
        (d / "bundle.json").write_text('{"format_version": 1, "name": ')
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(_cfg(tmp_path, [{"name": "c", "url": f"file://{good_clip}"}], d))
    assert_clear_error(dsanet("run", "-c", str(cfg), cwd=tmp_path), needle, str(d))
    assert_clear_error(dsanet("score", str(good_clip), "-b", str(d), cwd=tmp_path), needle)
    if damage != "garbage-encoder-rehashed":  # bundle-info reads metadata and hashes, not the graphs
        assert_clear_error(dsanet("bundle-info", str(d), cwd=tmp_path), needle)


# ---------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ucf_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Path:
    """A real (untrained) UCF checkpoint written by the trainer's own save function."""
    from engine.model import build_model, text_width_of
    from export.train_config import load_train_config
    from export.trainer import model_config_for, save_checkpoint

    cfg = load_train_config(ROOT / "configs" / "train" / "ucf.yaml", [])
    model = build_model(model_config_for(cfg, text_width_of(tiny_clip_dir)), tiny_clip_dir)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ucf-best.safetensors", model, cfg, str(tiny_clip_dir))


def test_checkpoint_from_another_preset_is_refused_by_name(tmp_path, ucf_checkpoint, tiny_clip_dir):
    res = dsanet("eval", "--checkpoint", str(ucf_checkpoint), "-c", "xd", "--data-root", str(tmp_path),
                 "--clip", str(tiny_clip_dir), "--no-progress", cwd=tmp_path)
    assert_clear_error(res, "ucf-best.safetensors", "'ucf'", "'xd'")


@pytest.mark.parametrize("kind", ["truncated", "pickle", "empty"])
def test_damaged_or_foreign_checkpoint_is_a_clear_error(tmp_path, ucf_checkpoint, tiny_clip_dir, kind):
    bad = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        raw = ucf_checkpoint.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    elif kind == "pickle":  # a torch.save pickle renamed: must be rejected, never unpickled
        import pickle

        marker = tmp_path / "PWNED"
        payload = pickle.dumps(_Boom(str(marker)))
        bad.write_bytes(payload)
    else:
        bad.write_bytes(b"")
    res = dsanet("export", "--checkpoint", str(bad), "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "b"),
                 cwd=tmp_path)
    assert_clear_error(res, bad.name)
    assert not (tmp_path / "PWNED").exists()
    res = dsanet("eval", "--checkpoint", str(bad), "-c", "ucf", "--data-root", str(tmp_path), "--clip",
                 str(tiny_clip_dir), "--no-progress", cwd=tmp_path)
    assert_clear_error(res, bad.name)
    assert not (tmp_path / "PWNED").exists()


class _Boom:
    """Unpickling this would create a file: proof that a loader executed pickle code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))
