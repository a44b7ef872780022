"""Caps and defaults of evidence: ring bytes, clip length and size, held ends, retention cadence."""

from __future__ import annotations

import logging

log = logging.getLogger("stream.evidence")


MIB = 1024 * 1024
DEFAULT_RING_BYTES = 64 * MIB  # per camera; a 4 Mbit/s camera fills it in ~2 minutes, far more than needed
DEFAULT_MAX_CLIP_SECONDS = 300.0
DEFAULT_MAX_CLIP_BYTES = 256 * MIB
DEFAULT_MAX_PENDING = 64  # held end events waiting for their files
DEFAULT_GRACE = 3.0  # wall seconds beyond post_roll to wait for a silent camera's packets
DEFAULT_RETENTION_INTERVAL = 300.0
EVIDENCE_SUFFIXES = (".jpg", ".mp4")
