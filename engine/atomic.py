"""One way to write a durable file: temp file beside it, fsync, rename over it, fsync the folder.

Every file that must survive a crash whole (spool entries, the open-event journal, evidence, bundle.json,
calibration state, site data) goes through ``atomic_write`` so a reader sees the old or the new content,
never a torn one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename/unlink in ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically; with ``fsync`` the new content is on disk on return.

    The temp file is ``<name>.<pid>-<random>.tmp`` in the same folder (a rename across file systems is
    not atomic; a name of its own per writer, because two processes may share a folder, e.g. sharded
    workers writing one site-data folder); it is removed if the write fails, so a failed write leaves
    the old file untouched.
    """
    final = Path(path)
    tmp = final.with_name(f"{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(final.parent)
    return final
