"""Adaptive head stride: score a calm camera's window every k-th snippet instead of every snippet.

The head scores a whole window (up to 256 rows) to report one row, so at stride 1 each snippet costs a
full head pass. While a camera is calm, :class:`stream.window.EmbeddingWindow` waits for ``k`` new rows and
then reads out all ``k`` rows the window now covers beyond the lookahead, in one pass: head work drops to
``1/k``. Each snippet still gets exactly one score (read from a window that has seen ``lookahead`` to
``lookahead + k - 1`` rows of its future, instead of exactly ``lookahead``), and it reaches the event
machine at most ``k - 1`` snippets later than at stride 1.

**Calm** (:class:`StrideController`): no event pending or open on the camera, and the last ``k`` scores
(each reported score and the highest not-yet-reported score of the same window, ``WindowScore.ahead_max``)
all stayed below ``on_threshold - stride_margin``. The first score that fails this sets the stride back
to 1 at once: the next push then reads out every row still waiting, so nothing is skipped or repeated.
A new camera starts at stride 1 and becomes calm after ``k`` calm scores.

Worst case for an event: the first score at or above ``on_threshold`` is reported up to ``k - 1``
snippets later than at stride 1 (``(k - 1) x snippet_seconds``, 1.6 s at k = 4 on UCF geometry), plus the
time for the score that ends the calm to come back from the head queue. The event's own times (its start
is the capture time of its first snippet) are unchanged as long as the scores are.
"""

from __future__ import annotations

from stream.config import ScoringConfig


class StrideController:
    """Decides one camera's head stride from its scores; owned by the camera's head-thread path."""

    def __init__(self, cfg: ScoringConfig) -> None:
        self.max_stride = cfg.adaptive_stride
        self.margin = cfg.stride_margin
        self._calm_run = 0  # consecutive calm scores
        self.stride = 1
        self.fallbacks = 0  # times the stride went from k back to 1

    def observe(self, score: float, ahead_max: float | None, on_threshold: float, event_busy: bool) -> int:
        """One reported score; returns the stride to use from the next push on."""
        peak = score if ahead_max is None else max(score, ahead_max)
        if event_busy or peak >= on_threshold - self.margin:
            if self.stride > 1:
                self.fallbacks += 1
            self._calm_run, self.stride = 0, 1
        else:
            self._calm_run += 1
            if self.max_stride > 1 and self._calm_run >= self.max_stride:
                self.stride = self.max_stride
        return self.stride

    @property
    def calm(self) -> bool:
        """The latest score was calm (the still-scene gate only reuses embeddings while this holds)."""
        return self._calm_run > 0
