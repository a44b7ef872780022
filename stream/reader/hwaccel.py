"""Hardware video decode (``ingest.hwaccel``): which FFmpeg device type a reader decodes on, if any.

``none`` decodes in software (the default). A named type (``cuda``, ``vaapi``, ``qsv``, ``videotoolbox``,
``d3d11va``) must work on this machine: it is probed once, when the service builds its readers, by
decoding a tiny H.264 clip made in memory on that device; if the probe fails the service refuses to start
with an error naming ``ingest.hwaccel`` (exit 2) instead of every camera failing later. ``auto`` probes
the types this FFmpeg build knows, in :data:`AUTO_ORDER`, takes the first that decodes, and otherwise
decodes in software with one log line that says what was tried.

Once a type is chosen each reader opens its stream with PyAV's ``av.codec.hwaccel.HWAccel`` and
software fallback allowed: a stream the device cannot decode (a codec or profile it lacks) is decoded in
software, logged once per camera. Frames are copied back to system memory (the snippet cutter converts
one frame per snippet to RGB, as before).
"""

from __future__ import annotations

import functools
import io
import logging
from typing import Any

from engine.errors import DsanetError

log = logging.getLogger("stream.reader")

HWACCEL_CHOICES = ("none", "auto", "cuda", "vaapi", "qsv", "videotoolbox", "d3d11va")
AUTO_ORDER = ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11va")
_PROBE_SIZE = (256, 144)  # above every hardware decoder's minimum picture size


class HwaccelUnavailable(DsanetError):
    """``ingest.hwaccel`` names a device type this machine cannot decode on."""


@functools.lru_cache(maxsize=1)
def _probe_clip() -> bytes:
    """Four frames of H.264 in an MP4, made once per process (a few milliseconds)."""
    import av
    import numpy as np

    buf = io.BytesIO()
    w, h = _PROBE_SIZE
    with av.open(buf, mode="w", format="mp4") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(4):
            img = np.full((h, w, 3), 40 * i, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def compiled_types() -> list[str]:
    """Device types the loaded FFmpeg build supports (not proof that the device exists)."""
    try:
        from av.codec.hwaccel import hwdevices_available
    except ImportError:  # PyAV older than 14: no hardware decode API
        return []
    return [str(t) for t in hwdevices_available()]


def probe(device_type: str, device: str | None = None) -> str | None:
    """None if ``device_type`` decodes the probe clip on this machine, else why not (one line)."""
    return _probe_cached(device_type, device)


@functools.lru_cache(maxsize=16)
def _probe_cached(device_type: str, device: str | None) -> str | None:
    try:
        import av
        from av.codec.hwaccel import HWAccel
    except ImportError:
        return "this PyAV has no hardware decode support (needs PyAV >= 14)"
    if device_type not in compiled_types():
        return f"the FFmpeg build in PyAV {av.__version__} has no {device_type!r} support"
    try:
        hw = HWAccel(device_type, device=device, allow_software_fallback=False)
        with av.open(io.BytesIO(_probe_clip()), mode="r", hwaccel=hw) as c:
            frames = sum(1 for _ in c.decode(video=0))
        if frames == 0:
            return "the probe clip decoded no frames"
    except Exception as exc:  # no driver, no device node, permission: FFmpeg says which
        return f"{type(exc).__name__}: {exc}"
    return None


def resolve(choice: str, device: str | None = None) -> str | None:
    """The device type readers decode on (None: software) for ``ingest.hwaccel: choice``.

    Raises :class:`HwaccelUnavailable` when a named type does not work here.
    """
    if choice == "none":
        return None
    if choice == "auto":
        tried = []
        for t in AUTO_ORDER:
            if t not in compiled_types():
                continue
            why = probe(t, device)
            if why is None:
                log.info("ingest.hwaccel auto: decoding on %s", t)
                return t
            tried.append(f"{t} ({why})")
        _log_software_once(tuple(tried))
        return None
    why = probe(choice, device)
    if why is not None:
        raise HwaccelUnavailable(
            f"ingest.hwaccel: {choice!r} hardware decode is not usable on this machine: {why}. "
            f"Set ingest.hwaccel to 'none' (software) or 'auto' (hardware where it works)")
    return choice


@functools.lru_cache(maxsize=4)
def _log_software_once(tried: tuple[str, ...]) -> None:
    log.info("ingest.hwaccel auto: no hardware decoder usable (%s); decoding in software",
             "; ".join(tried) or "FFmpeg build has none")


def open_options(device_type: str | None, device: str | None = None) -> dict[str, Any]:
    """Extra ``av.open`` keyword arguments for a reader (empty for software decode)."""
    if device_type is None:
        return {}
    from av.codec.hwaccel import HWAccel

    return {"hwaccel": HWAccel(device_type, device=device, allow_software_fallback=True)}


def is_hw(stream: Any) -> bool:
    """Whether an opened PyAV video stream decodes on the device."""
    return bool(getattr(stream.codec_context, "is_hwaccel", False))
