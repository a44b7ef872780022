"""Evidence retention: delete by age, then the oldest until the total size fits."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from stream.evidence.limits import EVIDENCE_SUFFIXES

log = logging.getLogger("stream.evidence")


def enforce_retention(root: Path, max_age_seconds: float, max_total_bytes: int,
                      now: float | None = None, protect: frozenset[Path] = frozenset()) -> list[Path]:
    """Delete evidence older than ``max_age_seconds``, then the oldest until the total fits; returns what
    was deleted. Only ``*.jpg``/``*.mp4`` in the camera folders are touched (plus stale ``*.tmp``);
    ``protect`` (the files just written, which an end event is about to name) are never deleted."""
    now = time.time() if now is None else now
    files: list[tuple[float, int, Path]] = []
    deleted: list[Path] = []
    if not root.is_dir():
        return deleted
    for d in root.iterdir():
        if not d.is_dir() or d.is_symlink():
            continue
        for f in d.iterdir():
            try:
                if f.is_symlink() or not f.is_file():
                    continue
                st = f.stat()
            except OSError:
                continue
            if f.suffix == ".tmp":
                if now - st.st_mtime > 3600:  # left by a crash mid-write
                    _unlink(f, deleted)
                continue
            if f.suffix in EVIDENCE_SUFFIXES and f.resolve() not in protect:
                files.append((st.st_mtime, st.st_size, f))
    files.sort(key=lambda x: (x[0], str(x[2])))
    keep: list[tuple[float, int, Path]] = []
    for mtime, size, f in files:
        if now - mtime > max_age_seconds:
            _unlink(f, deleted)
        else:
            keep.append((mtime, size, f))
    total = sum(s for _, s, _ in keep)
    for _, size, f in keep:
        if total <= max_total_bytes:
            break
        if _unlink(f, deleted):
            total -= size
    return deleted


def _unlink(f: Path, deleted: list[Path]) -> bool:
    try:
        f.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("evidence retention: cannot delete %s (%s)", f, exc.strerror or exc)
        return False
    deleted.append(f)
    return True
