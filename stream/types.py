"""Frozen records that cross threads in the live pipeline (the ``Event`` record is ``stream.events.Event``).

Times: ``capture_time`` values are wall-clock UNIX seconds (what events report, ISO-8601 UTC);
``monotonic`` values come from ``time.monotonic()`` and are used for intervals and lag only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded frame of one camera."""

    camera: str
    index: int  # decoded-frame counter since the reader started (across reconnects)
    capture_time: float  # wall clock, UNIX seconds
    monotonic: float  # time.monotonic() when the frame was decoded
    image: np.ndarray = field(repr=False)  # H x W x 3 RGB uint8
    pts_seconds: float | None = None  # presentation time in the stream, when known

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class Snippet:
    """A span of video of one snippet duration, represented by the one frame that gets embedded."""

    camera: str
    index: int  # snippet sequence number per camera
    start_time: float  # wall clock of the snippet's start
    end_time: float  # wall clock of the snippet's end
    frame: Frame  # the frame chosen for embedding
    n_frames: int  # frames that fell in the span; 0 = an empty span filled with the previous snippet's frame
    pixels: np.ndarray | None = field(default=None, repr=False)  # [3,S,S] float32 encoder input, if prepared


@dataclass(frozen=True)
class SnippetEmbedding:
    """A snippet after the image encoder."""

    camera: str
    index: int
    start_time: float
    end_time: float
    embedding: np.ndarray = field(repr=False)  # [D] float32
    frame: Frame | None = field(default=None, repr=False)  # kept for evidence snapshots
    encoded_monotonic: float = 0.0


@dataclass(frozen=True)
class WindowScore:
    """The head's verdict for one snippet, read ``lookahead`` snippets behind the newest in the window."""

    camera: str
    index: int  # snippet index this score belongs to
    start_time: float
    end_time: float
    score: float  # anomaly probability in [0, 1]
    class_probs: tuple[float, ...]  # C entries, column 0 = normal, sums to 1
    newest_index: int  # newest snippet index in the window when it was scored
    newest_end_time: float  # capture time of the end of the newest snippet (for lag)
    frame: Frame | None = field(default=None, repr=False)
    # highest score of the rows newer than the read-out ones in the same window (not yet reported: they
    # have seen less future); an early hint for the adaptive stride. None when no row is newer.
    ahead_max: float | None = None


@dataclass(frozen=True)
class RowInfo:
    """What a window row stands for (kept beside the embedding)."""

    index: int
    start_time: float
    end_time: float


@dataclass(frozen=True)
class WindowJob:
    """One window for the head: its rows and which of them to report."""

    camera: str
    features: np.ndarray = field(repr=False)  # [T, D] float32, a copy (the ring keeps moving)
    readout: tuple[int, ...]  # row positions whose scores are reported (one live, up to L+1 on flush)
    rows: tuple[RowInfo, ...]  # info of the readout rows, same order
    frames: tuple[Frame | None, ...] = field(repr=False)  # frames of the readout rows (evidence), same order
    newest_index: int = 0
    newest_end_time: float = 0.0
    created_monotonic: float = 0.0

    @property
    def length(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class CameraSnapshot:
    """One camera as an operator sees it now. ``url`` is already redacted."""

    name: str
    url: str
    enabled: bool
    state: str  # stream.reader.CameraState value, or "disabled"
    fps: float  # frames per second over the last few seconds
    lag_seconds: float | None  # capture of the newest scored snippet -> now
    score: float | None  # latest reported anomaly score
    category: str | None  # latest top non-normal class name
    on_threshold: float
    off_threshold: float
    event_open: bool
    frames: int
    snippets: int
    scores: int
    reconnects: int


@dataclass(frozen=True)
class ScoreRecord:
    """One reported score of one camera, as the live feed carries it."""

    camera: str
    index: int
    start_time: float
    end_time: float
    score: float
    category: str | None
    category_score: float | None
