"""Evidence per event: a JPEG snapshot of the peak frame and an MP4 clip around the event.

What an operator needs after an alert is to *see* it. Both files are written by one small worker thread
so that the live pipeline never waits for a disk or an encoder:

* **Packet ring** (:class:`PacketRing`, one per camera, fed by the camera's reader thread): the last
  ``ring_seconds`` of *compressed* packets (not decoded frames: a 640x360 H.264 camera costs about
  100 kB per second, a decoded second would cost 17 MB), each stamped with the same capture-time clock
  the frames use (``packet pts + (capture - pts) of the latest decoded frame``), so event times map
  straight to packets. Trimming drops whole GOPs only, so the oldest kept packet is always a keyframe at
  or before the horizon; a byte cap bounds it hard. No ring exists when evidence is disabled.
* **Recording** (:class:`Recording`): when an event starts, the packets of its segment from the last
  keyframe at or before ``start - pre_roll`` are taken from the ring (shared, not copied), and every new
  packet is appended until ``end + post_roll``. A clip is capped at ``max_clip_seconds`` (300 s) and
  ``max_clip_bytes`` (256 MiB): a longer event gets a clip of its first five minutes (plus pre-roll),
  and ``clip_truncated: true``.
* **Segments**: the packets of one reader session with one resolution/pixel format share one codec
  template. A reconnect, a file loop or a resolution change starts a new segment, and a clip never
  crosses one: it is **cut at the change** (the part containing the event start is kept).
* **Clip** (:func:`remux_clip`): remuxed without re-encoding (PyAV output stream from the detached codec
  template, packets rebased so the first one has dts 0), starting on a keyframe, written to a temporary
  name and renamed (atomic).
* **Snapshot** (:func:`write_snapshot`): the frame of the window score with the highest score of the
  event (the frame the model embedded for that snippet), JPEG via OpenCV, written atomically **when the
  event ends** (one write per event; start and update events carry ``evidence: null``).
* **End events are held**: the ``end`` is handed to the sinks only once both files exist (or failed), so
  its ``evidence`` object names files a receiver can open. The wait is ``post_roll`` of capture time at
  most (plus ``grace`` seconds of wall time if the camera went silent); starts and updates are never
  delayed. Held ends are bounded (``max_pending``); beyond it an end is sent at once without evidence
  (counted as ``dsanet_evidence_total{result="dropped"}``). A later event of the same camera can
  therefore start before the previous end arrives; receivers order per ``id``.
* **Retention**: after each write and every ``retention_interval`` seconds, files older than
  ``max_age_days`` are deleted, then the oldest until the total is below ``max_total_mb``.
* **Paths**: ``<directory>/<camera slug>/<start UTC>_<event id prefix>.{jpg,mp4}``; the event carries
  them *relative to* ``evidence.directory``. The slug keeps ``[A-Za-z0-9_-]`` only (plus a hash of the
  real name when anything was replaced) and the resolved folder is checked to be inside the directory,
  so no camera name can escape it; no URL ever takes part in a file name.

Modules: ``limits`` (caps), ``paths`` (safe folders), ``ring`` (packet ring, segments, recordings),
``writers`` (JPEG, MP4), ``retention``, ``manager`` (the evidence stage and its worker thread).
"""

from stream.evidence.limits import (
    DEFAULT_GRACE,
    DEFAULT_MAX_CLIP_BYTES,
    DEFAULT_MAX_CLIP_SECONDS,
    DEFAULT_MAX_PENDING,
    DEFAULT_RETENTION_INTERVAL,
    DEFAULT_RING_BYTES,
    EVIDENCE_SUFFIXES,
    MIB,
)
from stream.evidence.manager import EvidenceManager
from stream.evidence.paths import EvidenceError, camera_slug, safe_camera_dir
from stream.evidence.retention import enforce_retention
from stream.evidence.ring import BufferedPacket, PacketRing, Recording, Segment
from stream.evidence.writers import remux_clip, write_snapshot

__all__ = ["BufferedPacket", "DEFAULT_GRACE", "DEFAULT_MAX_CLIP_BYTES", "DEFAULT_MAX_CLIP_SECONDS", "DEFAULT_MAX_PENDING", "DEFAULT_RETENTION_INTERVAL", "DEFAULT_RING_BYTES", "EVIDENCE_SUFFIXES", "EvidenceError", "EvidenceManager", "MIB", "PacketRing", "Recording", "Segment", "camera_slug", "enforce_retention", "remux_clip", "safe_camera_dir", "write_snapshot"]
