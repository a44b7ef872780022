"""CLIP image preprocessing with numpy only (no torch, no PIL, no torchvision).

The live service must feed the image encoder exactly what the CLIP weights were trained on, or the
embeddings drift away from the features the head was trained with. OpenAI CLIP (and Hugging Face's
``CLIPImageProcessor``) resize the short side to 224 with PIL's *antialiased* bicubic filter, centre
crop 224x224, scale to [0, 1] and normalise. OpenCV's ``INTER_CUBIC`` does not antialias, so on a
720p frame it aliases badly; instead this module re-implements PIL's separable resampling (same
kernel support scaling, same 22-bit fixed-point coefficients, same uint8 rounding between the
horizontal and vertical passes), which reproduces PIL's pixels (to within one grey level at most) while
staying torch- and PIL-free. The resize is two banded passes (about 15 taps per output pixel) that
only compute the output pixels surviving the crop.

``ten_crop`` gives the 10-crop views used for the VadCLIP features: index 0 = centre, 1-4 = corners
(top-left, top-right, bottom-left, bottom-right), 5-9 = the horizontal mirror of views 0-4 (so 5 is the
mirrored centre, the view VadCLIP's UCF-Crime test list uses). VadCLIP documents "0 centre, 1-4
corners, 5-9 mirrored" without the corner order; ours is the order above.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError

# Same numbers as engine.clip (kept here too so this module has no import beyond numpy and errors).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_PRECISION_BITS = 22  # PIL: 32 - 8 (pixel) - 2 (headroom)
_INTERPOLATIONS = ("bicubic", "bilinear")
# Pillow / transformers resample codes -> our names
_RESAMPLE_CODES = {2: "bilinear", 3: "bicubic"}


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (PIL's BICUBIC)."""
    a = -0.5
    x = np.abs(x)
    out = np.zeros_like(x)
    near = x < 1.0
    far = (x >= 1.0) & (x < 2.0)
    xn = x[near]
    out[near] = ((a + 2.0) * xn - (a + 3.0)) * xn * xn + 1.0
    xf = x[far]
    out[far] = (((xf - 5.0) * xf + 8.0) * xf - 4.0) * a
    return out


def _triangle(x: np.ndarray) -> np.ndarray:
    """PIL's BILINEAR kernel."""
    return np.clip(1.0 - np.abs(x), 0.0, None)


_KERNELS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


@functools.lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int, first: int, count: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point resampling taps for output pixels ``first .. first+count-1`` of an ``in -> out`` resize.

    Returns (index [count, k] int, weight [count, k] integer-valued float64): output pixel i is
    sum_j weight[i, j] * input[index[i, j]] (unused taps have weight 0). Mirrors PIL's
    ``precompute_coeffs`` + ``normalize_coeffs_8bpc``. Banded taps instead of a dense matrix: k is ~15
    for a 720p frame, so the resize needs no BLAS (whose thread pool spins badly on a busy CPU).
    """
    kernel, base_support = _KERNELS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    k = int(math.ceil(support)) * 2 + 1
    index = np.zeros((count, k), dtype=np.intp)
    weight = np.zeros((count, k), dtype=np.float64)
    for i, xx in enumerate(range(first, first + count)):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = np.arange(xmin, xmax, dtype=np.float64)
        w = kernel((taps - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        # PIL rounds half away from zero when converting to fixed point
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION_BITS)), np.trunc(0.5 + w * (1 << _PRECISION_BITS)))
        n = len(fixed)
        index[i, :n] = np.arange(xmin, xmax)
        index[i, n:] = xmin
        weight[i, :n] = fixed
    index.setflags(write=False)  # cached and shared between calls
    weight.setflags(write=False)
    return index, weight


def _round_clip(acc: np.ndarray) -> np.ndarray:
    """PIL's fixed-point rounding (add half, arithmetic shift) and clip to 0..255, as uint8."""
    return np.clip((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) after resizing the short side to ``size`` (long side truncated, as HF does)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _resize_region(batch: np.ndarray, out_h: int, out_w: int, top: int, left: int, crop_h: int, crop_w: int,
                   interpolation: str) -> np.ndarray:
    """Resize ``batch`` [N,H,W,3] uint8 to (out_h, out_w) and return only the crop, uint8 [N,crop_h,crop_w,3].

    Horizontal pass first, rounded to uint8, then vertical: PIL's order and rounding. Integer
    arithmetic in int32 as PIL does (|sum| <= 255 * sum|w| < 2^31, so nothing overflows); the pixel
    axis being gathered is made the contiguous one, which keeps each tap a fast ``np.take``.
    """
    n, h, w, c = batch.shape
    planes = np.ascontiguousarray(batch.transpose(0, 1, 3, 2))  # [N,H,C,W]
    if out_w != w:
        index, weight = _coefficients(w, out_w, left, crop_w, interpolation)
        wi = weight.astype(np.int32)
        acc = np.zeros((n, h, c, crop_w), dtype=np.int32)
        for j in range(index.shape[1]):
            acc += np.take(planes, index[:, j], axis=3).astype(np.int32) * wi[:, j]
        tmp = _round_clip(acc)
    else:
        tmp = planes[..., left:left + crop_w]
    if out_h != h:
        index, weight = _coefficients(h, out_h, top, crop_h, interpolation)
        wi = weight.astype(np.int32)
        acc = np.zeros((n, crop_h, c, crop_w), dtype=np.int32)
        for j in range(index.shape[1]):
            acc += np.take(tmp, index[:, j], axis=1).astype(np.int32) * wi[:, j, None, None]
        out = _round_clip(acc)
    else:
        out = tmp[:, top:top + crop_h]
    return out.transpose(0, 1, 3, 2)  # [N,crop_h,crop_w,C]


def _as_batches(frames: Any) -> list[np.ndarray]:
    """Group frames into same-size uint8 [N,H,W,3] batches (keeping order via the caller's index)."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"frames must be HxWx3 RGB images or an [N,H,W,3] array, got shape {frames.shape}")
        return [frames]
    if not isinstance(frames, Sequence) or len(frames) == 0:
        raise InputError("frames must be a non-empty list of HxWx3 uint8 RGB images")
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise InputError(f"frame {i} must be HxWx3 RGB, got shape {a.shape}")
        out.append(a[None])
    return out


def _check_frame(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise InputError(f"frames must be uint8 RGB (0..255), got dtype {a.dtype}")
    if a.shape[1] < 1 or a.shape[2] < 1:
        raise InputError(f"empty frame of shape {a.shape[1:]}")
    return a


def _normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], rescale: float) -> np.ndarray:
    """[N,h,w,3] 0..255 -> float32 [N,3,h,w] normalised (same arithmetic order as HF: rescale then normalise)."""
    x = pixels.astype(np.float32) * np.float32(rescale)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def preprocess_frames(frames: Any, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                      std: Sequence[float] = CLIP_STD, interpolation: str = "bicubic",
                      rescale: float = 1.0 / 255.0) -> np.ndarray:
    """CLIP preprocessing: short side -> ``size`` (antialiased bicubic), centre crop, [0,1], normalise.

    ``frames``: a list of HxWx3 uint8 RGB images (sizes may differ) or an [N,H,W,3] uint8 array.
    Returns float32 [N,3,size,size], ready for ``EncoderModel.embed``.
    """
    if interpolation not in _INTERPOLATIONS:
        raise InputError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    outs = []
    for batch in _as_batches(frames):
        batch = _check_frame(batch)
        _, h, w, _ = batch.shape
        out_h, out_w = resized_size(h, w, size)
        top, left = (out_h - size) // 2, (out_w - size) // 2
        pix = _resize_region(batch, out_h, out_w, top, left, size, size, interpolation)
        outs.append(_normalise(pix, mean, std, rescale))
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


def ten_crop(frame: np.ndarray, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
             std: Sequence[float] = CLIP_STD, interpolation: str = "bicubic",
             rescale: float = 1.0 / 255.0) -> np.ndarray:
    """The ten VadCLIP views of one HxWx3 uint8 frame -> float32 [10,3,size,size].

    The frame is first resized (short side -> ``size``) like ``preprocess_frames``; then views are
    0 centre, 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right, and 5-9 the horizontal mirrors of
    0-4. (On a 16:9 frame the short side equals ``size``, so top and bottom crops coincide.)
    """
    if interpolation not in _INTERPOLATIONS:
        raise InputError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    batch = _check_frame(_as_batches(frame)[0])
    if batch.shape[0] != 1:
        raise InputError(f"ten_crop takes one frame, got {batch.shape[0]}")
    _, h, w, _ = batch.shape
    out_h, out_w = resized_size(h, w, size)
    full = _resize_region(batch, out_h, out_w, 0, 0, out_h, out_w, interpolation)[0]
    ct, cl = (out_h - size) // 2, (out_w - size) // 2
    b, r = out_h - size, out_w - size
    origins = [(ct, cl), (0, 0), (0, r), (b, 0), (b, r)]
    views = [full[y:y + size, x:x + size] for y, x in origins]
    views += [v[:, ::-1] for v in views]
    return _normalise(np.stack(views), mean, std, rescale)


@dataclass(frozen=True)
class Preprocessing:
    """What the encoder expects; recorded in bundle.json so the service preprocesses like the export did."""

    size: int = 224
    interpolation: str = "bicubic"  # PIL-compatible antialiased kernel
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    crop: str = "center"
    resize: str = "shortest_edge"
    rescale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise InputError(f"preprocessing.interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.crop != "center" or self.resize != "shortest_edge":
            raise InputError(f"only crop='center' and resize='shortest_edge' are supported, got {self.crop!r}/{self.resize!r}")
        if not isinstance(self.size, int) or self.size < 8:
            raise InputError(f"preprocessing.size must be an integer >= 8, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise InputError("preprocessing.mean/std must be three numbers each, std > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def __call__(self, frames: Any) -> np.ndarray:
        """Preprocess frames into the encoder's [N,3,size,size] float32 input."""
        return preprocess_frames(frames, self.size, self.mean, self.std, self.interpolation, self.rescale)

    def ten_crop(self, frame: np.ndarray) -> np.ndarray:
        return ten_crop(frame, self.size, self.mean, self.std, self.interpolation, self.rescale)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {k: d[k] for k in ("size", "interpolation", "mean", "std", "crop", "resize", "rescale",
                                   "channel_order", "extra") if k in d}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InputError(f"unknown preprocessing keys {unknown}")
        if "mean" in known:
            known["mean"] = tuple(known["mean"])
        if "std" in known:
            known["std"] = tuple(known["std"])
        return cls(**known)

    @classmethod
    def from_clip_dir(cls, clip_dir: str | os.PathLike[str]) -> Preprocessing:
        """Read a Hugging Face ``preprocessor_config.json`` (defaults to OpenAI CLIP's if absent)."""
        path = Path(clip_dir) / "preprocessor_config.json"
        if not path.exists():
            return cls()
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read the CLIP preprocessor config: {exc}") from exc
        size = cfg.get("size", {"shortest_edge": 224})
        size = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", {"height": size, "width": size})
        crop = crop.get("height", size) if isinstance(crop, dict) else int(crop)
        if crop != size:
            raise InputError(f"{path}: crop_size {crop} != resize size {size} is not supported")
        resample = cfg.get("resample", 3)
        if resample not in _RESAMPLE_CODES:
            raise InputError(f"{path}: resample={resample} is not supported (2 bilinear, 3 bicubic)")
        return cls(size=int(size), interpolation=_RESAMPLE_CODES[resample],
                   mean=tuple(cfg.get("image_mean", CLIP_MEAN)), std=tuple(cfg.get("image_std", CLIP_STD)),
                   rescale=float(cfg.get("rescale_factor", 1.0 / 255.0)))
