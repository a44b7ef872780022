"""Cutting a camera's frames into snippets, the unit the model was trained on.

A training feature row covers one snippet: ``snippet_frames`` consecutive frames of a video recorded at
``snippet_fps`` (UCF-Crime / XD-Violence: 16 frames at 30 fps = 0.533 s). Cameras run at any rate
(5, 12.5, 25, 30 fps, or a varying rate), so snippets are cut by **capture time**, not by frame count:
snippet ``k`` of a camera spans ``[origin + k*D, origin + (k+1)*D)`` with ``D = snippet_frames /
snippet_fps``, where ``origin`` is the capture time of the first frame. Counting frames instead would
make a 15 fps camera's rows cover 1.07 s each, twice what the head's temporal layers (local attention
windows, distance adjacency) learned. Capture times come from :mod:`stream.reader` (stream timestamps
mapped to the wall clock), so network jitter does not move boundaries.

**Which frame is embedded**, how long a snippet is, how the middle frame is held and when an empty
snippet is filled: the rules are :mod:`engine.snippet_contract`, shared with the training feature
extractor (``export.extract``), so both embed the very same frames of a video (``tests/test_snippets.py``
checks it at 30, 15 and 12.5 fps; the extractor cut by time at other rates). Only the embedded frame is
converted to RGB: the others are decoded (inter-frame codecs need them) but never converted
(:class:`stream.reader.LazyFrame`).

**Cameras slower than one frame per snippet** (for example 1 fps): some snippets contain no frame.
Such a snippet is *filled*: it is emitted with the previous snippet's frame and ``n_frames = 0``, as long
as the run of empty snippets lasts at most ``max_fill`` seconds (default 3 s). Skipping empty snippets
instead would compress time in the window (each row would stand for more than D seconds), which is
exactly the distortion cutting by capture time avoids; a frozen scene also gives near-identical
consecutive rows in training data, so a repeated frame is the faithful stand-in. The encoder worker
recognises the repeated frame and reuses its embedding rather than computing it again. A longer gap
(an outage, a reconnect) is not papered over: the snippet grid restarts at the next frame, and the
window simply continues with it.

With ``prepare`` (the service passes the bundle's CLIP preprocessing), the embedded frame is also
resized, cropped and normalised here, in the camera's own reader thread: preprocessing costs more than
the tiny encoder itself, and doing it per camera spreads it over the cores (numpy releases the GIL)
instead of serialising every camera's frames in the one encoder thread.

A snippet is emitted when it is complete, i.e. when the first frame at or past its end arrives, or when
the stream breaks (:meth:`SnippetCutter.on_discontinuity`: a partial last snippet with at least one frame is
emitted, since it is real footage). Emission never blocks: the callback pushes into a bounded queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine.snippet_contract import (
    DEFAULT_MAX_FILL,
    MiddleFrameHolder,
    SnippetSpec,
    embedded_frame_index,
    fills_gap,
    snippet_number,
)
from stream.reader import LazyFrame
from stream.types import Frame, Snippet

__all__ = ["DEFAULT_MAX_FILL", "SnippetCutter", "SnippetSpec", "cut_frames", "snippet_frame_offset"]

# The contract's name for the rule, kept under the name the live side has always used.
snippet_frame_offset = embedded_frame_index


class SnippetCutter:
    """Per-camera consumer of a reader's frames (runs in the reader's thread); emits :class:`Snippet` s.

    ``emit`` must not block (the service passes a drop-oldest queue's ``put``).
    """

    def __init__(self, camera: str, spec: SnippetSpec, emit: Callable[[Snippet], Any],
                 max_fill: float = DEFAULT_MAX_FILL, prepare: Callable[[np.ndarray], np.ndarray] | None = None):
        self.camera = camera
        self.prepare = prepare  # image -> encoder input, run here so each camera's thread pays for its own
        self._last_pixels: np.ndarray | None = None
        self.spec = spec
        self.emit = emit
        self.max_fill = max_fill
        self._origin: float | None = None  # capture time of the grid's snippet 0
        self._k = 0  # current snippet number on the grid
        self._held: MiddleFrameHolder[LazyFrame] = MiddleFrameHolder()  # may still be the middle one
        self._last_frame: Frame | None = None  # frame of the last emitted snippet (to fill empty ones)
        self._next_index = 0
        self.emitted = 0
        self.filled = 0

    # grid helpers
    def _start(self, k: int) -> float:
        assert self._origin is not None
        return self._origin + k * self.spec.seconds

    def on_frame(self, frame: LazyFrame) -> None:
        t = frame.capture_time
        if self._origin is None:
            self._origin, self._k = t, 0
        else:
            t = max(t, self._start(self._k))  # clock is monotone per camera; guard rounding after a flush
            k = snippet_number(t, self._origin, self.spec.seconds)
            if k > self._k:
                first_empty = self._k + 1 if self._held.count else self._k  # after a flush the current one is empty
                self._close()
                if fills_gap(k - first_empty, self.spec.seconds, self.max_fill):
                    for j in range(first_empty, k):
                        self._emit_filled(j)
                    self._k = k
                else:  # an outage: restart the grid at this frame rather than invent minutes of video
                    self._origin, self._k = t, 0
        self._held.add(frame)

    def on_discontinuity(self) -> None:
        """The stream broke or ended: emit the partial snippet (if it has frames); the grid moves past it."""
        if self._origin is not None and self._held.count:
            self._close()
            self._k += 1

    def _close(self) -> None:
        count = self._held.count
        if not count:
            return
        chosen = self._held.chosen().to_frame()
        self._send(self._k, chosen, count)
        self._held.reset()

    def _emit_filled(self, k: int) -> None:
        if self._last_frame is not None:
            self.filled += 1
            self._send(k, self._last_frame, 0)

    def _send(self, k: int, frame: Frame, n_frames: int) -> None:
        start = self._start(k)
        pixels = None
        if self.prepare is not None:
            if frame is self._last_frame and self._last_pixels is not None:
                pixels = self._last_pixels  # a filled snippet: same frame, same input
            else:
                pixels = self.prepare(frame.image)
            self._last_pixels = pixels
        snippet = Snippet(camera=self.camera, index=self._next_index, start_time=start,
                          end_time=start + self.spec.seconds, frame=frame, n_frames=n_frames, pixels=pixels)
        self._next_index += 1
        self._last_frame = frame
        self.emitted += 1
        self.emit(snippet)


def cut_frames(camera: str, frames: list[tuple[float, Any]], spec: SnippetSpec,
               max_fill: float = DEFAULT_MAX_FILL) -> list[Snippet]:
    """Offline helper: cut ``(capture_time, rgb_image)`` pairs exactly as a live camera would be cut."""
    out: list[Snippet] = []
    cutter = SnippetCutter(camera, spec, out.append, max_fill=max_fill)
    for i, (t, image) in enumerate(frames):
        cutter.on_frame(LazyFrame(camera, i, float(t), float(t), None, rgb=image))
    cutter.on_discontinuity()
    return out
