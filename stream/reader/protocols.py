"""What a reader talks to besides its consumer: the packet sink (evidence ring) and its metrics."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from stream.reader.state import CameraState

log = logging.getLogger("stream.reader")


class PacketSink(Protocol):
    """Where compressed packets go when evidence is on (``stream.evidence.PacketRing``); reader thread."""

    def begin_segment(self, stream: Any, width: int | None = None, height: int | None = None,
                      pix_fmt: str | None = None) -> None: ...

    def push(self, data: bytes, pts: int | None, dts: int | None, duration: int | None, keyframe: bool,
             capture: float) -> None: ...

    def end_segment(self) -> None: ...


MAX_PENDING_PACKETS = 512  # packets of a session held until its first frame gives the pts -> capture offset


class ReaderMetrics(Protocol):
    def camera_state(self, camera: str, state: CameraState) -> None: ...

    def frame_decoded(self, camera: str) -> None: ...

    def decode_error(self, camera: str) -> None: ...

    def frames_lost(self, camera: str, n: int) -> None: ...

    def reconnect(self, camera: str) -> None: ...


class NullReaderMetrics:
    def camera_state(self, camera: str, state: CameraState) -> None:
        pass

    def frame_decoded(self, camera: str) -> None:
        pass

    def decode_error(self, camera: str) -> None:
        pass

    def frames_lost(self, camera: str, n: int) -> None:
        pass

    def reconnect(self, camera: str) -> None:
        pass
