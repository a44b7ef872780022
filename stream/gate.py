"""Still-scene gating of the encoder: when nothing in the picture moved, reuse the last embedding.

Before a snippet's frame is embedded, :class:`StillGate` compares it with the frame the camera last
*embedded* (not the last one seen, so a slow drift adds up and is embedded in the end). The comparison is a
luma thumbnail: the frame is sampled every few pixels (about 10 x 10 samples per cell), averaged over a
16 x 9 grid of cells, and the
largest change of any cell's mean luma (0-255 levels) is compared with ``still_gate.threshold``. A cell
is about 1/144 of the picture, so a person crossing a quarter of one cell already moves its mean by
several levels, while sensor noise and compression flicker average out over the hundreds of pixels a
cell holds. A global light change (day/night switch, auto exposure) changes every cell: embedded fresh.

Safety (``never on by surprise in a way that hides events``):

* off by default (``still_gate.enabled: false``);
* at most ``max_reuse`` snippets in a row reuse one embedding; the next is embedded fresh;
* only while the camera is calm (``stream.stride.StrideController.calm``: the latest score below
  ``on_threshold - stride_margin`` and no event pending or open); otherwise every snippet is embedded.

Reuses are counted in ``dsanet_embeddings_reused_total{camera}``. The comparison is numpy only and costs
about 100 microseconds of CPU per frame at any resolution (``bench/gating.py`` measures it).
"""

from __future__ import annotations

import numpy as np

from stream.config import StillGateConfig

GRID = (9, 16)  # cells (rows, columns)
SAMPLES_PER_CELL = 10  # about 10 x 10 sampled pixels feed each cell's mean, whatever the frame size
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def luma_thumbnail(image: np.ndarray, grid: tuple[int, int] = GRID) -> np.ndarray:
    """Mean luma per cell of an H x W x 3 uint8 RGB frame: float32 [grid rows, grid columns].

    The frame is sampled every ``step`` pixels (4 at 640x360, 12 at 1920x1080), so the cost does not grow
    with the resolution: about 100 us of CPU per frame.
    """
    gh, gw = grid
    step = max(1, min(image.shape[0] // (gh * SAMPLES_PER_CELL), image.shape[1] // (gw * SAMPLES_PER_CELL)))
    sub = image[::step, ::step]
    h, w = sub.shape[0] // gh * gh, sub.shape[1] // gw * gw
    if h == 0 or w == 0:  # tiny frame: fewer pixels than cells; nearest pixel per cell
        rows = np.linspace(0, image.shape[0], gh, endpoint=False).astype(int)
        cols = np.linspace(0, image.shape[1], gw, endpoint=False).astype(int)
        return (image[rows][:, cols, :3].astype(np.float32) @ _LUMA).astype(np.float32)
    y = sub[:h, :w, :3].astype(np.float32) @ _LUMA
    return y.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3)).astype(np.float32)


def scene_change(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-cell luma change between two thumbnails (0-255 levels)."""
    return float(np.max(np.abs(a - b)))


class StillGate:
    """One camera's gate; used only from the encoder worker's thread."""

    def __init__(self, cfg: StillGateConfig) -> None:
        self.threshold = cfg.threshold
        self.max_reuse = cfg.max_reuse
        self._ref: np.ndarray | None = None  # thumbnail of the last embedded frame
        self._run = 0  # reuses in a row since then
        self.reused = 0
        self.checked = 0
        self.last_change: float | None = None
        # set from the head thread after each score (StrideController.calm); a plain bool, read here
        self.calm = False

    def still(self, image: np.ndarray) -> tuple[bool, np.ndarray]:
        """Should this frame reuse the last embedding? Returns (reuse, thumbnail).

        On reuse the gate counts it; otherwise the caller embeds the frame and calls :meth:`embedded`.
        """
        thumb = luma_thumbnail(image)
        self.checked += 1
        if self._ref is None or self._ref.shape != thumb.shape:
            self.last_change = None
            return False, thumb
        self.last_change = scene_change(thumb, self._ref)
        if self.calm and self._run < self.max_reuse and self.last_change <= self.threshold:
            self._run += 1
            self.reused += 1
            return True, thumb
        return False, thumb

    def embedded(self, thumb: np.ndarray) -> None:
        """The frame of ``thumb`` was embedded fresh: it becomes the reference."""
        self._ref, self._run = thumb, 0

    def reset(self) -> None:
        """Forget the reference (its embedding was lost, e.g. a failed encoder call)."""
        self._ref, self._run = None, 0
