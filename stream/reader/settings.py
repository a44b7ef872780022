"""A reader's settings and live counters, and how they come from the deployment config."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream.reader import hwaccel
from stream.reader.backoff import BackoffPolicy
from stream.reader.state import CameraState

if TYPE_CHECKING:
    from stream.config import CameraConfig, IngestConfig

log = logging.getLogger("stream.reader")


@dataclass(frozen=True)
class ReaderSettings:
    """Everything one reader needs; built from ``cfg.cameras[i]`` and ``cfg.ingest`` by the service."""

    name: str
    url: str
    transport: str = "tcp"  # rtsp transport: tcp | udp
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    loop: bool = False  # file sources: start again at the end
    realtime: bool = True  # file sources: release frames at their media time
    max_consecutive_decode_errors: int = 100
    max_clock_drift: float = 5.0
    low_latency: bool = True  # RTSP: no input buffering in FFmpeg while probing
    hwaccel: str | None = None  # FFmpeg device type to decode on (None: software); see stream.reader.hwaccel
    hwaccel_device: str | None = None


@dataclass
class ReaderStats:
    frames: int = 0
    decode_errors: int = 0
    frames_lost: int = 0  # frames missing from the stream, from gaps in presentation time
    reconnects: int = 0
    sessions: int = 0
    last_frame_monotonic: float | None = None
    last_error: str | None = None
    states: deque[CameraState] = field(default_factory=lambda: deque(maxlen=256))  # recent transitions


def make_reader_settings(camera: CameraConfig, ingest: IngestConfig) -> ReaderSettings:
    """ReaderSettings from the config's camera entry and ``ingest`` section."""
    return ReaderSettings(
        name=camera.name, url=camera.url, transport=camera.transport,
        open_timeout=ingest.open_timeout, read_timeout=ingest.read_timeout,
        backoff=BackoffPolicy(initial=ingest.backoff_initial, maximum=ingest.backoff_max,
                              reset_after=ingest.backoff_reset_after, jitter=ingest.jitter),
        loop=camera.loop, realtime=camera.realtime,
        hwaccel=hwaccel.resolve(ingest.hwaccel, ingest.hwaccel_device), hwaccel_device=ingest.hwaccel_device,
    )
