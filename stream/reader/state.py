"""What a camera reader is doing (``CameraState``), its source kinds, and its error type."""

from __future__ import annotations

import enum
import logging
from urllib.parse import unquote, urlsplit

from engine.errors import DsanetError
from stream.redact import redact_url

log = logging.getLogger("stream.reader")


LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")


class SourceError(DsanetError):
    """A camera URL cannot be used at all (unsupported scheme, missing file); retrying will not help."""


class CameraState(str, enum.Enum):
    """Where a reader is in its life; exported as ``dsanet_camera_state{camera,state}``."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


def source_kind(url: str) -> str:
    """``"file"`` for file:// URLs and plain paths, ``"rtsp"`` or ``"http"`` for live sources."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # plain or Windows path
        return "file"
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "http"
    raise SourceError(f"unsupported source {redact_url(url)!r}: use rtsp://, rtsps://, http(s):// or file://")


def file_path(url: str) -> str:
    """The local path of a file source (``file:///abs``, ``file:rel`` or a plain path)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return unquote((parts.netloc or "") + parts.path) if parts.netloc not in ("", "localhost") else unquote(parts.path)
    return url
