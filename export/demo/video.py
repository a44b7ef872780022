"""Synthetic surveillance-style videos for the embedded demo: calm scenes with abnormal events.

A calm scene is a dim, slowly drifting background with a few muted figures walking across it. Each
event class has its own unmistakable look, so that even a tiny random CLIP embeds it apart from calm
frames and from the other classes:

- ``Explosion``: a yellow-white fireball that fills most of the frame within a second, with flicker;
- ``Fighting``: a close-up of two large saturated red figures jittering violently, the scene reddened;
- ``RoadAccidents``: two cyan-white cars that streak across the frame and collide under bright cyan
  warning light, with shake and debris.

The tiny random CLIP the demo trains on responds mostly to colour and coverage, not to shapes: with
small events on a grey scene its embeddings of a road accident and of a calm frame had cosine 0.997,
so each class owns a large share of the frame in a colour far from the others (yellow, red, cyan;
pairwise embedding cosine <= 0.73 between classes and <= 0.88 to a calm frame, against >= 0.99 within a
class, with the demo's tiny CLIP; see docs/demo.md).

Videos are H.264 MP4 files written with PyAV. Rendering is vectorised float32 numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EVENT_CLASSES = ("Explosion", "Fighting", "RoadAccidents")


@dataclass(frozen=True)
class EventSpan:
    """An abnormal segment of a synthetic video, in seconds."""

    label: str
    start: float
    end: float


_F = np.float32


def _c(*rgb: float) -> np.ndarray:
    return np.array(rgb, dtype=_F)


class SceneRenderer:
    """Renders frame ``i`` of a scene with the given events (deterministic per seed).

    Vectorised float32 numpy; the drifting background is two precomputed planes mixed per frame and the
    walkers are drawn inside their bounding boxes only, so a frame costs a few whole-frame operations.
    """

    def __init__(self, width: int, height: int, fps: float, events: Sequence[EventSpan] = (), seed: int = 0):
        for ev in events:
            if ev.label not in EVENT_CLASSES:
                raise ValueError(f"unknown demo event class {ev.label!r}; expected one of {EVENT_CLASSES}")
        self.w, self.h, self.fps = width, height, fps
        self.events = tuple(events)
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width].astype(_F)
        self.xx, self.yy = xx / _F(width), yy / _F(height)
        self.base_hue = rng.uniform(0, 2 * math.pi)
        self.walkers = rng.uniform(0, 1, size=(4, 3)).astype(_F)  # x0, y, speed
        self.rng = np.random.default_rng(seed + 1)
        arg = (2 * math.pi * (self.xx * 0.7 + self.yy * 0.3)).astype(_F)
        self._sin, self._cos = np.sin(arg), np.cos(arg)
        self._tint = _c(0.9, 1.0, 1.05)
        # explosion geometry: distance from the blast centre
        self._blast = np.sqrt((self.xx - 0.5) ** 2 + ((self.yy - 0.55) * 0.75) ** 2).astype(_F)

    def _background(self, t: float) -> np.ndarray:
        phase = self.base_hue + 0.05 * t  # sin(a + p) = sin a cos p + cos a sin p
        g = _F(0.35) + _F(0.08) * (self._sin * _F(math.cos(phase)) + self._cos * _F(math.sin(phase)))
        img = g[..., None] * self._tint
        rx, ry = 0.025, 0.09
        for x0, y, speed in self.walkers:  # muted figures crossing slowly
            cx, cy = (x0 + 0.02 * (0.5 + speed) * t) % 1.2 - 0.1, 0.45 + 0.4 * y
            x_lo, x_hi = max(0, int((cx - rx) * self.w)), min(self.w, int((cx + rx) * self.w) + 2)
            y_lo, y_hi = max(0, int((cy - ry) * self.h)), min(self.h, int((cy + ry) * self.h) + 2)
            if x_lo >= x_hi or y_lo >= y_hi:
                continue
            xs, ys = self.xx[y_lo:y_hi, x_lo:x_hi], self.yy[y_lo:y_hi, x_lo:x_hi]
            mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1.0
            box = img[y_lo:y_hi, x_lo:x_hi]
            box[mask] = box[mask] * _F(0.6) + _c(0.1, 0.1, 0.112)
        return img

    def _explosion(self, img: np.ndarray, u: float) -> None:
        # a yellow-white fireball that fills most of the frame within the first second and flickers
        r = _F(0.45 + 0.55 * min(1.0, 4.0 * u))
        inner = np.clip(1 - self._blast / r, 0, 1)
        flash = np.clip(_F(1.3) - self._blast / r, 0, 1) ** _F(0.4) * _F(0.85 + 0.15 * self.rng.random())
        noise = self.rng.random(img.shape[:2], dtype=_F) * _F(0.25)
        col = np.stack([np.ones_like(inner), _F(0.85) + _F(0.15) * inner,
                        _F(0.15) + _F(0.5) * np.clip(1 - 2 * self._blast / r, 0, 1)], axis=-1)
        a = np.clip(flash + noise * flash, 0, 1)[..., None]
        img[:] = img * (1 - a) + col * a

    def _fighting(self, img: np.ndarray, t: float) -> None:
        # a close-up brawl: two large saturated red figures jittering violently, the scene reddened
        img[:] = img * _c(1.0, 0.45, 0.45) + _c(0.25, 0.0, 0.02)
        for k in range(2):
            cx = 0.38 + 0.24 * k + 0.07 * math.sin(37 * t + 3 * k) + 0.03 * self.rng.standard_normal()
            cy = 0.5 + 0.05 * math.cos(29 * t + k) + 0.03 * self.rng.standard_normal()
            mask = ((self.xx - cx) / 0.16) ** 2 + ((self.yy - cy) / 0.45) ** 2 < 1.0
            img[mask] = _c(0.95, 0.05, 0.1)
            arm = (np.abs(self.yy - cy + 0.05) < 0.06) & (np.abs(self.xx - cx - (0.18 if k == 0 else -0.18)) < 0.14)
            img[arm] = _c(1.0, 0.2, 0.35)
        img += (self.rng.standard_normal(img.shape[:2], dtype=_F) * _F(0.06))[..., None]

    def _accident(self, img: np.ndarray, u: float) -> None:
        # two cyan-white cars crash head-on under bright cyan warning light; the camera shakes, debris flies
        img[:] = img * _c(0.1, 0.2, 0.2) + _c(0.25, 0.85, 0.9)
        shake = 0.03 * self.rng.standard_normal(2)
        for k, (y, speed) in enumerate(((0.4, 1.0), (0.62, -1.3))):
            cx = (0.5 + speed * (u - 0.5) * 1.4) if u < 0.5 else 0.5 + 0.02 * k
            x_lo, x_hi = (int(np.clip(v, 0, 1) * self.w) for v in (cx + shake[0] - 0.22, cx + shake[0] + 0.22))
            y_lo, y_hi = (int(np.clip(v, 0, 1) * self.h) for v in (y + shake[1] - 0.13, y + shake[1] + 0.13))
            img[y_lo:y_hi, x_lo:x_hi] = _c(0.9, 1.0, 1.0) if k == 0 else _c(0.0, 0.6, 0.7)
        if u >= 0.5:  # debris after the impact
            sparks = self.rng.random(img.shape[:2], dtype=_F) > 0.97
            img[sparks] = _c(1.0, 1.0, 1.0)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as H x W x 3 RGB uint8."""
        t = i / self.fps
        img = self._background(t)
        for ev in self.events:
            if ev.start <= t < ev.end:
                u = (t - ev.start) / max(ev.end - ev.start, 1e-6)
                if ev.label == "Explosion":
                    self._explosion(img, u)
                elif ev.label == "Fighting":
                    self._fighting(img, t)
                else:
                    self._accident(img, (u * 3) % 1.0)
        np.clip(img, 0, 1, out=img)
        return (img * _F(255)).astype(np.uint8)

    def frames(self, n: int) -> Iterator[np.ndarray]:
        for i in range(n):
            yield self.frame(i)


def write_video(path: str | Path, seconds: float, events: Sequence[EventSpan] = (), width: int = 320,
                height: int = 240, fps: int = 30, seed: int = 0, gop: int | None = None, scale: int = 1) -> Path:
    """Render a scene to an H.264 MP4 (yuv420p) and return its path.

    ``scale`` > 1 renders at ``width / scale`` x ``height / scale`` and enlarges each pixel to a
    ``scale`` x ``scale`` block (the demo camera: 640x360 from a 320x180 render, 4x less work).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if width % scale or height % scale:
        raise ValueError(f"{width}x{height} is not a multiple of scale {scale}")
    renderer = SceneRenderer(width // scale, height // scale, fps, events, seed)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # one slice per frame: x264's zerolatency tune cuts frames into slices (sliced threads), and the
        # local RTSP path (gst-rtsp-server -> FFmpeg) then delivered half-decoded frames to the reader
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop or fps),
                          "x264-params": "sliced-threads=0:slices=1"}
        for img in renderer.frames(int(round(seconds * fps))):
            if scale > 1:
                img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
