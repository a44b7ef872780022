"""The two capture clocks: live sources (pts anchored to arrival, drift-limited) and media files."""

from __future__ import annotations

import logging

log = logging.getLogger("stream.reader")


class LiveClock:
    """Maps stream timestamps of a live source to wall-clock capture times (see module docstring)."""

    def __init__(self, max_drift: float = 5.0):
        self.max_drift = max_drift
        self._anchor_wall: float | None = None
        self._anchor_pts = 0.0
        self._last_pts: float | None = None
        self._last = float("-inf")

    def reset(self) -> None:
        """A new session (reconnect): timestamps restart, so does the mapping (monotonicity is kept)."""
        self._anchor_wall = None
        self._last_pts = None

    def capture_time(self, pts: float | None, arrival: float) -> float:
        if pts is None:
            t = arrival
        elif (self._anchor_wall is None or self._last_pts is None or pts < self._last_pts - 1e-6
              or self._anchor_wall + (pts - self._anchor_pts) < arrival - self.max_drift):
            self._anchor_wall, self._anchor_pts = arrival, pts
            t = arrival
        else:
            t = self._anchor_wall + (pts - self._anchor_pts)
            if t > arrival:  # this frame came faster than the anchor: it is the better anchor
                self._anchor_wall -= t - arrival
                t = arrival
        if pts is not None:
            self._last_pts = pts
        t = max(t, self._last)  # never backwards within a camera
        self._last = t
        return t


class MediaClock:
    """Capture time of file sources: wall time at the first frame + media time, continued across loops."""

    def __init__(self) -> None:
        self._base_wall: float | None = None  # wall time of media time 0 of the current loop
        self._base_mono = 0.0
        self._loop_first_pts: float | None = None
        self._last = float("-inf")
        self._frame_interval = 1.0 / 25.0
        self._count = 0

    def new_loop(self, frame_interval: float | None) -> None:
        """The file starts again: the next frame follows the last one by one frame interval."""
        if frame_interval:
            self._frame_interval = frame_interval
        if self._base_wall is not None:
            self._loop_first_pts = None
        self._count = 0

    def capture_time(self, pts: float | None, arrival: float, arrival_mono: float) -> tuple[float, float]:
        """Returns (capture wall time, monotonic time at which a real-time player releases the frame)."""
        media = pts if pts is not None else self._count * self._frame_interval
        self._count += 1
        if self._base_wall is None:
            self._base_wall, self._base_mono = arrival - media, arrival_mono - media
            self._loop_first_pts = media
        elif self._loop_first_pts is None:  # first frame of a new loop
            nxt = self._last + self._frame_interval
            shift = nxt - (self._base_wall + media)
            self._base_wall += shift
            self._base_mono += shift
            self._loop_first_pts = media
        t = max(self._base_wall + media, self._last)
        self._last = t
        return t, self._base_mono + (t - self._base_wall)
