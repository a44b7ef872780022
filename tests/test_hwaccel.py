"""``ingest.hwaccel``: config values, the device probe, and clean software decode where a machine has none."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from engine.errors import DsanetError
from stream.cli import EXIT_BAD_INPUT, exit_code
from stream.config import CameraConfig, IngestConfig
from stream.reader import CameraReader, make_reader_settings
from stream.reader import hwaccel as hw
from tests.test_reader import Collector


@pytest.mark.parametrize("value, ok", [("none", True), ("auto", True), ("cuda", True), ("vaapi", True),
                                       ("nvdec", False), ("", False), ("CUDA", False)])
def test_config_accepts_only_known_device_types(value: str, ok: bool) -> None:
    if ok:
        assert IngestConfig(hwaccel=value).hwaccel == value
    else:
        with pytest.raises(ValidationError, match="hwaccel"):
            IngestConfig(hwaccel=value)


def test_default_is_software() -> None:
    assert IngestConfig().hwaccel == "none"
    assert hw.resolve("none") is None


@pytest.mark.parametrize("device_type", ["cuda", "vaapi", "qsv", "videotoolbox"])
def test_named_type_works_or_refuses_with_the_config_key(device_type: str) -> None:
    why = hw.probe(device_type)
    if why is None:  # a machine with this device: the readers decode on it
        assert hw.resolve(device_type) == device_type
        return
    with pytest.raises(hw.HwaccelUnavailable, match=rf"ingest\.hwaccel: '{device_type}'") as info:
        hw.resolve(device_type)
    assert why in str(info.value)
    assert exit_code(info.value) == EXIT_BAD_INPUT  # the service refuses to start: exit 2, no traceback


def test_unknown_type_to_this_ffmpeg_is_reported_without_trying() -> None:
    assert "no 'vulkan-x' support" in (hw.probe("vulkan-x") or "")


def test_auto_falls_back_to_software_and_says_what_it_tried(caplog: pytest.LogCaptureFixture) -> None:
    usable = [t for t in hw.AUTO_ORDER if t in hw.compiled_types() and hw.probe(t) is None]
    hw._log_software_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="stream.reader"):
        got = hw.resolve("auto")
    if usable:
        assert got == usable[0]
    else:
        assert got is None
        assert "decoding in software" in caplog.text
        for t in hw.AUTO_ORDER:
            if t in hw.compiled_types():
                assert t in caplog.text


def test_reader_with_auto_decodes_frames(clip_factory) -> None:
    clip = clip_factory(width=160, height=96, seconds=1.0)
    settings = make_reader_settings(CameraConfig(name="cam", url=clip.resolve().as_uri(), realtime=False),
                                    IngestConfig(hwaccel="auto"))
    assert settings.hwaccel == hw.resolve("auto")
    got = Collector()
    r = CameraReader(settings, got)
    r.start()
    try:
        assert got.wait_frames(25, timeout=30)
    finally:
        r.stop()
        r.join(10)
    assert got.images[0].shape == (96, 160, 3)


def test_unusable_named_type_stops_reader_settings() -> None:
    missing = next((t for t in ("cuda", "vaapi", "qsv") if hw.probe(t) is not None), None)
    if missing is None:
        pytest.skip("every named device works on this machine")
    with pytest.raises(DsanetError, match="ingest.hwaccel"):
        make_reader_settings(CameraConfig(name="cam", url="rtsp://127.0.0.1:1/x"), IngestConfig(hwaccel=missing))
