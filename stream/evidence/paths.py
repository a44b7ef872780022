"""Where evidence files go: a file-name-safe folder per camera that no camera name can escape."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from engine.errors import DsanetError
from stream.redact import redact

log = logging.getLogger("stream.evidence")


class EvidenceError(DsanetError):
    """The evidence directory cannot be used, or a camera name would leave it."""


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def camera_slug(name: str) -> str:
    """A file-name-safe folder name for a camera: ``[A-Za-z0-9_-]`` only, at most ~60 characters.

    Anything replaced (dots, slashes, spaces, unicode) adds a short hash of the real name, so two names
    that differ only in unsafe characters still get different folders.
    """
    slug = _UNSAFE.sub("-", redact(name)).strip("-")[:48]  # redact: a URL-like name loses its password
    if slug != name or not slug:
        slug = f"{slug or 'camera'}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
    return slug


def safe_camera_dir(root: Path, camera: str) -> Path:
    """``root/<slug>``, resolved and checked to lie strictly inside ``root`` (symlinks included)."""
    base = root.resolve()
    path = (base / camera_slug(camera)).resolve()
    if path == base or not path.is_relative_to(base):
        raise EvidenceError(f"camera {camera!r}: evidence folder would be outside {base}")
    return path
