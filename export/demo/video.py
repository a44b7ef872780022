"""Synthetic surveillance-style videos for the embedded demo: calm scenes with abnormal events.

A calm scene is a dim, slowly drifting background with a few muted figures walking across it. Each
event class has its own unmistakable look, so that even a tiny random CLIP embeds it apart from calm
frames and from the other classes:

- ``Explosion``: a bright orange-yellow flash that expands from a point, with flicker and noise;
- ``Fighting``: two saturated red figures that jitter violently around each other;
- ``RoadAccidents``: fast white-blue blocks that streak across the frame and collide, with shake.

Videos are H.264 MP4 files written with PyAV. Rendering is vectorised numpy; a 20 s 320x240 clip takes
about a second.
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


class SceneRenderer:
    """Renders frame ``i`` of a scene with the given events (deterministic per seed)."""

    def __init__(self, width: int, height: int, fps: float, events: Sequence[EventSpan] = (), seed: int = 0):
        for ev in events:
            if ev.label not in EVENT_CLASSES:
                raise ValueError(f"unknown demo event class {ev.label!r}; expected one of {EVENT_CLASSES}")
        self.w, self.h, self.fps = width, height, fps
        self.events = tuple(events)
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.xx, self.yy = xx / width, yy / height
        self.base_hue = rng.uniform(0, 2 * math.pi)
        self.walkers = rng.uniform(0, 1, size=(4, 3)).astype(np.float32)  # x0, y, speed
        self.rng = np.random.default_rng(seed + 1)

    def _background(self, t: float) -> np.ndarray:
        phase = self.base_hue + 0.05 * t
        g = 0.35 + 0.08 * np.sin(2 * math.pi * (self.xx * 0.7 + self.yy * 0.3) + phase)
        img = np.stack([g * 0.9, g, g * 1.05], axis=-1)
        for x0, y, speed in self.walkers:  # muted figures crossing slowly
            cx = (x0 + 0.02 * (0.5 + speed) * t) % 1.2 - 0.1
            mask = ((self.xx - cx) / 0.025) ** 2 + ((self.yy - (0.45 + 0.4 * y)) / 0.09) ** 2 < 1.0
            img[mask] = img[mask] * 0.6 + np.array([0.25, 0.25, 0.28]) * 0.4
        return img

    def _explosion(self, img: np.ndarray, u: float) -> None:
        r = 0.08 + 0.6 * u
        d = np.sqrt((self.xx - 0.5) ** 2 + ((self.yy - 0.55) * 0.75) ** 2)
        flash = np.clip(1.0 - d / r, 0, 1) ** 0.5 * (0.75 + 0.25 * self.rng.random())
        noise = self.rng.random(img.shape[:2]).astype(np.float32) * 0.35
        col = np.stack([np.ones_like(d), 0.55 + 0.3 * (1 - d / max(r, 1e-3)), 0.1 * np.ones_like(d)], axis=-1)
        a = np.clip(flash + noise * flash, 0, 1)[..., None]
        img[:] = img * (1 - a) + col * a

    def _fighting(self, img: np.ndarray, t: float) -> None:
        for k in range(2):
            cx = 0.45 + 0.1 * k + 0.06 * math.sin(37 * t + 3 * k) + 0.03 * self.rng.standard_normal()
            cy = 0.55 + 0.05 * math.cos(29 * t + k) + 0.03 * self.rng.standard_normal()
            mask = ((self.xx - cx) / 0.07) ** 2 + ((self.yy - cy) / 0.22) ** 2 < 1.0
            img[mask] = np.array([0.95, 0.05, 0.1])
            arm = (np.abs(self.yy - cy + 0.05) < 0.03) & (np.abs(self.xx - cx - (0.1 if k == 0 else -0.1)) < 0.09)
            img[arm] = np.array([1.0, 0.3, 0.3])
        img[:] = np.clip(img + self.rng.standard_normal(img.shape[:2])[..., None].astype(np.float32) * 0.06, 0, 1)

    def _accident(self, img: np.ndarray, u: float) -> None:
        shake = 0.03 * self.rng.standard_normal(2)
        for k, (y, speed) in enumerate(((0.45, 1.0), (0.62, -1.3))):
            cx = (0.5 + speed * (u - 0.5) * 1.4) if u < 0.5 else 0.5 + 0.02 * k
            m = (np.abs(self.xx - cx - shake[0]) < 0.12) & (np.abs(self.yy - y - shake[1]) < 0.07)
            img[m] = np.array([0.85, 0.9, 1.0]) if k == 0 else np.array([0.1, 0.3, 1.0])
        if u >= 0.5:  # debris after the impact
            sparks = self.rng.random(img.shape[:2]) > 0.985
            img[sparks] = 1.0

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
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)

    def frames(self, n: int) -> Iterator[np.ndarray]:
        for i in range(n):
            yield self.frame(i)


def write_video(path: str | Path, seconds: float, events: Sequence[EventSpan] = (), width: int = 320,
                height: int = 240, fps: int = 30, seed: int = 0, gop: int | None = None) -> Path:
    """Render a scene to an H.264 MP4 (yuv420p) and return its path."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = SceneRenderer(width, height, fps, events, seed)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop or fps)}
        for img in renderer.frames(int(round(seconds * fps))):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
