"""The snippet contract: what one feature row stands for, shared by the live service and feature extraction.

The head was trained on rows that each describe one *snippet*: ``frames`` consecutive frames of a video
recorded at ``fps`` (UCF-Crime / XD-Violence: 16 frames at 30 fps = 0.533 s). If the live side cut or
sampled snippets differently from the extractor that made the training features, its embeddings would
not be the ones the head learned, and nothing would fail loudly. So both sides take the rules from
here (``stream.snippets`` for cameras and ``dsanet score``, ``export.extract`` for training features):

- **Length.** A snippet lasts ``SnippetSpec.seconds = frames / fps``. Cameras run at any rate, so the
  live side cuts by capture time on a grid ``[origin + k*D, origin + (k+1)*D)``; the extractor cuts a
  file by frame count (``frames`` decoded frames, the default) or by presentation time (``--snippet-
  seconds``) on the same kind of grid (:func:`snippet_number`).
- **Which frame is embedded.** One frame per snippet: the middle one, index ``n // 2`` of the ``n``
  frames the snippet received (:func:`embedded_frame_index`; frame 8 of 16). The middle frame is the
  closest in time to every other frame of the snippet, and the rule needs only the frames that arrived,
  so a camera that drops frames still gets a well-defined choice.
- **How the middle frame is held.** ``n`` is known only when the snippet ends, so frames that can still
  turn out to be the middle one are held, not yet converted to RGB: after ``k`` frames the middle of the
  final ``n >= k`` is at least ``k // 2``, so earlier ones are released at once
  (:class:`MiddleFrameHolder`; about half a snippet of decoded frames is held).
- **Empty snippets.** A camera slower than one frame per snippet leaves some snippets without a frame.
  The live side *fills* a run of empty snippets lasting at most ``max_fill`` seconds with the previous
  snippet's frame (so each row keeps standing for ``D`` seconds) and restarts the grid after a longer gap
  (:func:`fills_gap`). A decoded file cut by frame count never has an empty snippet; cut by time, the
  extractor skips empty ones (a recording has no outage to bridge).
- **Incomplete snippets.** At the end of a live stream the partial snippet is emitted (it is real
  footage). The extractor keeps a file's trailing snippet only when it is complete
  (:func:`extractor_keeps_tail`): all ``frames`` frames by count, or at least half a snippet by time.

Nothing here imports torch or any other side: ``engine`` is the shared floor of ``stream`` and ``export``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

DEFAULT_SNIPPET_FRAMES = 16  # frames per training feature row (VadCLIP's UCF-Crime / XD-Violence features)
DEFAULT_SNIPPET_FPS = 30.0  # frame rate the UCF-Crime features were extracted at
DEFAULT_MAX_FILL = 3.0  # seconds of empty snippets the live side fills with the previous frame
FRAME_RULE = "middle"  # recorded in snippets.json by the extractor
FRAME_RULE_TEXT = "n // 2 of the snippet's n frames"
# Boundary tolerance in snippets (~5 us at 16 frames / 30 fps): UNIX-time doubles carry ~0.2 us of
# rounding, so a frame exactly on a boundary (a camera at the training rate) must not slip into the
# previous snippet.
BOUNDARY_EPS = 1e-5

T = TypeVar("T")


def embedded_frame_index(n_frames: int) -> int:
    """Index, among a snippet's ``n_frames`` frames, of the frame that is embedded: the middle one."""
    if n_frames < 1:
        raise ValueError(f"a snippet needs at least one frame, got {n_frames}")
    return n_frames // 2


def snippet_number(t: float, origin: float, seconds: float) -> int:
    """Grid number of the snippet that a frame at time ``t`` falls in (grid starts at ``origin``)."""
    return int(math.floor((t - origin) / seconds + BOUNDARY_EPS))


def fills_gap(empty_snippets: int, seconds: float, max_fill: float = DEFAULT_MAX_FILL) -> bool:
    """True when a run of ``empty_snippets`` is filled with the previous frame; False: restart the grid."""
    return empty_snippets * seconds <= max_fill


def extractor_keeps_tail(count: int, frames: int, full_by_time: float | None = None) -> bool:
    """Whether the extractor keeps a file's last snippet of ``count`` frames.

    By frame count (``full_by_time`` None) only a complete snippet of ``frames`` frames; by time, one
    holding at least half of ``full_by_time`` (the frames a full snippet holds at the file's rate).
    """
    if full_by_time is None:
        return count == frames
    return count >= full_by_time / 2


@dataclass(frozen=True)
class SnippetSpec:
    """Snippet geometry of the training data (``bundle.json``: snippet_frames at snippet_fps)."""

    frames: int = DEFAULT_SNIPPET_FRAMES
    fps: float = DEFAULT_SNIPPET_FPS

    def __post_init__(self) -> None:
        if self.frames < 1 or self.fps <= 0:
            raise ValueError(f"snippet needs frames >= 1 and fps > 0, got {self.frames} frames at {self.fps} fps")

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    @classmethod
    def from_bundle(cls, bundle: Any) -> SnippetSpec:
        """From an ``engine.bundle.Bundle`` (or anything with ``snippet_frames`` and ``snippet_fps``)."""
        return cls(frames=int(bundle.snippet_frames), fps=float(bundle.snippet_fps))


class MiddleFrameHolder(Generic[T]):
    """The frames of the current snippet that may still be its middle one (not converted, not copied).

    ``add`` each frame as it arrives; ``chosen()`` is the embedded frame of the snippet so far, and
    ``reset()`` starts the next snippet. Holds about half a snippet: see the module docstring.
    """

    __slots__ = ("_held", "_held_from", "count")

    def __init__(self) -> None:
        self._held: list[T] = []
        self._held_from = 0  # position within the snippet of self._held[0]
        self.count = 0  # frames the snippet has received

    def add(self, frame: T) -> None:
        self._held.append(frame)
        self.count += 1
        drop = self.count // 2 - self._held_from  # the final middle is at least count // 2
        if drop > 0:
            del self._held[:drop]
            self._held_from += drop

    def chosen(self) -> T:
        return self._held[embedded_frame_index(self.count) - self._held_from]

    @property
    def held(self) -> int:
        """How many frames are held now (about half of ``count``: the memory bound)."""
        return len(self._held)

    def reset(self) -> None:
        self._held.clear()
        self._held_from = 0
        self.count = 0
