"""Generated camera-like clips for the decode and capacity benchmarks: textured, noisy, camera bitrates.

Why not the demo's scenes: those are flat animated pictures that decode at a fraction of real footage's
cost (0.002 CPU s per second of 640x360 video, see BENCHMARKS.md). A surveillance camera sends a textured
scene with sensor noise at a fixed bitrate, and decode cost follows the bitrate and the picture size. So
these clips have a textured background (smoothed noise, like foliage and pavement), per-frame sensor
noise, and the camera-like bitrates of :data:`BITRATE_KBPS` (no B-frames, a keyframe every 2 s, as
cameras send), in H.264 (libx264) or H.265 (libx265).

Two scenes:

* ``busy``: the background pans slowly and six textured objects cross it all the time (a street);
* ``still``: a fixed background with sensor noise (a parking lot at night); one object crosses it for 2 s
  out of every 20 s, at a moment of the cycle set by the seed (cameras made with different seeds are not
  in phase).

Clips are cached by their parameters under the bench cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# kbit/s at 30 fps, H.264; H.265 gets 60% (same quality at a lower rate), 10 fps gets half
BITRATE_KBPS = {(640, 360): 768, (1280, 720): 2048, (1920, 1080): 4096}
CODECS = {"h264": "libx264", "h265": "libx265"}


def bitrate_kbps(width: int, height: int, fps: float, codec: str) -> int:
    base = BITRATE_KBPS.get((width, height), int(768 * width * height / (640 * 360)))
    rate = base * (0.6 if codec == "h265" else 1.0) * (1.0 if fps >= 20 else 0.5)
    return int(rate)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Values in 0..1: coarse random grid, upsampled bilinearly (a cheap texture)."""
    gh, gw = h // cell + 2, w // cell + 2
    g = rng.random((gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1.001, w, dtype=np.float32)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = g[y0][:, x0]
    b = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


class Scene:
    def __init__(self, width: int, height: int, fps: float, kind: str, seed: int = 0):
        if kind not in ("busy", "still"):
            raise ValueError(f"scene must be busy or still, not {kind!r}")
        self.w, self.h, self.fps, self.kind = width, height, fps, kind
        rng = np.random.default_rng(seed)
        pad = 64
        tex = 0.55 * _smooth_noise(rng, height + pad, width + pad, max(8, width // 40))
        tex += 0.30 * _smooth_noise(rng, height + pad, width + pad, 3)
        tint = np.array([0.9, 1.0, 0.85], dtype=np.float32)
        self.bg = np.clip(40 + 160 * tex[..., None] * tint, 0, 255).astype(np.float32)
        self.pad = pad
        n_obj = 6 if kind == "busy" else 1
        self.objs = []
        for _ in range(n_obj):
            oh, ow = int(height * rng.uniform(0.15, 0.35)), int(width * rng.uniform(0.05, 0.12))
            otex = 60 + 150 * _smooth_noise(rng, oh, ow, 4)[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
            self.objs.append((otex.astype(np.float32), rng.uniform(0.1, 0.9) * height, rng.uniform(40, 160),
                              rng.uniform(0, 1)))
        self.noise = [rng.normal(0, 3.0, (height, width, 1)).astype(np.float32) for _ in range(7)]
        # still scene: when in its 20 s cycle the object crosses, by seed, so that several cameras made
        # with different seeds do not all move at the same moment (real cameras are not in phase)
        self.offset = (seed * 7.0) % 20.0

    def frame(self, i: int) -> np.ndarray:
        t = i / self.fps
        if self.kind == "busy":
            ox = int((t * 6) % self.pad)
            img = self.bg[:self.h, ox:ox + self.w].copy()
        else:
            img = self.bg[:self.h, :self.w].copy()
        for k, (otex, y, speed, phase) in enumerate(self.objs):
            if self.kind == "still":
                cyc = (t + self.offset) % 20.0
                if not 9.0 <= cyc < 11.0:
                    continue
                x = int((cyc - 9.0) / 2.0 * (self.w + otex.shape[1])) - otex.shape[1]
            else:
                span = self.w + otex.shape[1]
                x = int((phase * span + t * speed * (1 if k % 2 else -1)) % span) - otex.shape[1]
            oh, ow = otex.shape[:2]
            y0 = int(min(max(y - oh / 2, 0), self.h - oh))
            xa, xb = max(x, 0), min(x + ow, self.w)
            if xb > xa:
                img[y0:y0 + oh, xa:xb] = otex[:, xa - x:xb - x]
        img += self.noise[i % len(self.noise)]
        return np.clip(img, 0, 255).astype(np.uint8)


def make_camera_clip(path: Path, width: int, height: int, fps: int, seconds: float, codec: str = "h264",
                     scene: str = "busy", seed: int = 0) -> Path:
    """Write (once) a camera-like clip; returns its path."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp" + path.suffix)
    sc = Scene(width, height, fps, scene, seed)
    kbps = bitrate_kbps(width, height, fps, codec)
    gop = int(2 * fps)
    with av.open(str(tmp), mode="w") as out:
        s = out.add_stream(CODECS[codec], rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.bit_rate = kbps * 1000
        if codec == "h264":
            s.options = {"preset": "veryfast", "x264-params": f"bframes=0:keyint={gop}:min-keyint={gop}:scenecut=0"}
        else:
            s.options = {"preset": "ultrafast",
                         "x265-params": f"bframes=0:keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"}
        for i in range(int(seconds * fps)):
            for p in s.encode(av.VideoFrame.from_ndarray(sc.frame(i), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    tmp.replace(path)
    return path


def clip_name(width: int, height: int, fps: int, seconds: float, codec: str, scene: str, seed: int = 0) -> str:
    return f"cam_{scene}_{width}x{height}_{fps}fps_{codec}_{seconds:g}s_s{seed}_v2.mp4"
