"""The frame hand-over from a reader to its consumer: a decoded frame converted to RGB only on demand."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from stream.types import Frame

log = logging.getLogger("stream.reader")


class LazyFrame:
    """A decoded frame not yet converted to RGB; :meth:`to_frame` converts once, on demand.

    Only valid inside the consumer call (the decoder may reuse its buffers afterwards), except that the
    consumer may keep *one* LazyFrame alive until it decides (PyAV frames are reference counted).
    """

    __slots__ = ("camera", "index", "capture_time", "monotonic", "pts_seconds", "width", "height", "_av", "_rgb",
                 "_frame")

    def __init__(self, camera: str, index: int, capture_time: float, monotonic: float, pts_seconds: float | None,
                 av_frame: Any = None, rgb: np.ndarray | None = None):
        self.camera, self.index = camera, index
        self.capture_time, self.monotonic, self.pts_seconds = capture_time, monotonic, pts_seconds
        self._av, self._rgb = av_frame, rgb
        self._frame: Frame | None = None
        if rgb is not None:
            self.height, self.width = int(rgb.shape[0]), int(rgb.shape[1])
        else:
            self.height, self.width = int(av_frame.height), int(av_frame.width)

    def to_frame(self) -> Frame:
        if self._frame is None:
            rgb = self._rgb if self._rgb is not None else self._av.to_ndarray(format="rgb24")
            self._frame = Frame(camera=self.camera, index=self.index, capture_time=self.capture_time,
                                monotonic=self.monotonic, image=rgb, pts_seconds=self.pts_seconds)
            self._av = None  # release the decoder's buffer
        return self._frame

    @property
    def converted(self) -> bool:
        return self._frame is not None


class FrameConsumer(Protocol):
    """What a reader feeds. Both calls run in the reader's thread and must not block."""

    def on_frame(self, frame: LazyFrame) -> None: ...

    def on_discontinuity(self) -> None:
        """The stream ended or broke (reconnect, end of file, stop): flush what is pending."""


FrameCallback = Callable[[LazyFrame], None]
