"""The two evidence writers: a JPEG snapshot of one frame and an MP4 clip remuxed from packets."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write
from stream.evidence.paths import EvidenceError
from stream.evidence.ring import BufferedPacket, Segment
from stream.types import Frame

log = logging.getLogger("stream.evidence")


def write_snapshot(path: Path, frame: Frame, quality: int = 90) -> None:
    """The frame as a JPEG (OpenCV), written with ``engine.atomic.atomic_write``."""
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(frame.image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise EvidenceError(f"camera {frame.camera!r}: JPEG encoding failed")
    atomic_write(path, buf.tobytes())


def remux_clip(path: Path, segment: Segment, packets: list[BufferedPacket]) -> tuple[float, float]:
    """Write ``packets`` (starting on a keyframe) as an MP4 without re-encoding; returns the capture times
    (first, end) the clip covers. Timestamps are rebased so the first packet has dts 0."""
    import av

    if segment.template is None:
        raise EvidenceError(segment.error or "no codec template")
    if not packets or not packets[0].keyframe:
        raise EvidenceError("no keyframe in the buffered packets")
    tb = segment.time_base
    first = packets[0]
    base = first.dts if first.dts is not None else first.pts
    if base is None:
        base = 0
    last_end = first.capture
    buf = io.BytesIO()  # muxed in memory (the packets are there already), then one atomic write
    with av.open(buf, mode="w", format="mp4") as out:
        st = out.add_stream_from_template(segment.template)
        prev_dts: int | None = None
        for p in packets:
            pts = p.pts if p.pts is not None else (p.dts if p.dts is not None else
                                                   int(round((p.capture - first.capture) / tb)) + base)
            dts = p.dts if p.dts is not None else pts
            pts, dts = pts - base, dts - base
            if prev_dts is not None and dts <= prev_dts:
                continue  # non-monotonic timestamps would make the muxer fail; drop the packet
            prev_dts = dts
            pk = av.Packet(p.data)
            pk.pts, pk.dts = max(pts, dts), dts
            pk.time_base = tb
            if p.duration:
                pk.duration = p.duration
            pk.is_keyframe = p.keyframe
            pk.stream = st
            out.mux(pk)
            dur = float(p.duration * tb) if p.duration else 0.0
            last_end = max(last_end, p.capture + dur)
    atomic_write(path, buf.getvalue())
    return first.capture, last_end
