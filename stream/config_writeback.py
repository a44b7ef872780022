"""Changes made at run time (API) written back into the deployment file, keeping its comments, key
order and ``${ENV}`` references (ruamel.yaml round-trip), atomically (``engine.atomic``), and only after
the edited text validates as a whole, so a write-back can never leave a file the next start rejects.

Only the edited camera entry changes; everything else is byte-for-byte what the operator wrote (apart
from what ruamel normalises: indentation of the edited sequence).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write
from engine.errors import DsanetError
from stream.config import _substitute, parse_config


class WritebackError(DsanetError):
    """The deployment file could not be updated (the running service has the change anyway)."""


def _yaml() -> Any:
    from ruamel.yaml import YAML  # imported here: only a service with a console pays for it

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long lines (URLs)
    y.indent(mapping=2, sequence=4, offset=2)  # the layout of the project's example files
    return y


def file_writable(path: Path) -> bool:
    """Whether we may rewrite the file: it and its folder are writable by us, and the operator has not
    made it read-only (no write bit at all: ``chmod a-w``, which root's ``os.access`` would ignore)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return (stat.S_ISREG(mode) and bool(mode & 0o222) and os.access(path, os.W_OK)
            and os.access(path.parent, os.W_OK))


class ConfigFile:
    """One deployment file that runtime changes are written back into."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def writable(self) -> bool:
        return file_writable(self.path)

    def _edit(self, change: Callable[[Any], None]) -> None:
        y = _yaml()
        try:
            text = self.path.read_text(encoding="utf-8")
            doc = y.load(text)
        except OSError as exc:
            raise WritebackError(f"{self.path}: cannot read the deployment file: {exc.strerror or exc}") from None
        except Exception as exc:  # ruamel's parser errors have no common base worth naming
            raise WritebackError(f"{self.path}: cannot parse the deployment file for write-back: {exc}") from None
        change(doc)
        out = io.StringIO()
        y.dump(doc, out)
        new_text = out.getvalue()
        parse_config(new_text, str(self.path))  # raises ConfigError: never write a file that would not load
        mode = stat.S_IMODE(self.path.stat().st_mode)
        try:
            atomic_write(self.path, new_text)
            os.chmod(self.path, mode)
        except OSError as exc:
            raise WritebackError(f"{self.path}: cannot write the deployment file: {exc.strerror or exc}") from None

    def _index(self, doc: Any, name: str) -> int:
        cams = doc.get("cameras") if hasattr(doc, "get") else None
        for i, c in enumerate(cams or []):
            raw = c.get("name") if hasattr(c, "get") else None
            if isinstance(raw, str) and _substitute(raw, (), []) == name:
                return i
        raise WritebackError(f"{self.path}: camera {name!r} is not in the deployment file")

    # ------------------------------------------------------------------------------------- edits
    def add_camera(self, raw: dict[str, Any]) -> None:
        from ruamel.yaml.comments import CommentedMap

        def change(doc: Any) -> None:
            entry = CommentedMap()
            for k, v in raw.items():
                entry[k] = CommentedMap(v) if isinstance(v, dict) else v
            doc["cameras"].append(entry)

        self._edit(change)

    def set_model_bundle(self, bundle: str) -> None:
        """``model.bundle`` set to ``bundle`` (as the API was sent it: a relative path stays relative to the
        file's folder). An ``${ENV}`` reference there is the operator's choice of where the path comes from:
        it is not overwritten (``WritebackError``)."""
        from ruamel.yaml.comments import CommentedMap

        def change(doc: Any) -> None:
            model = doc.get("model")
            if model is None:
                model = doc["model"] = CommentedMap()
            cur = model.get("bundle")
            if isinstance(cur, str) and "${" in cur:
                raise WritebackError(f"{self.path}: model.bundle is {cur!r}, an environment reference: left as it is "
                                     "(set that variable to keep the new bundle after a restart)")
            model["bundle"] = bundle

        self._edit(change)

    def remove_camera(self, name: str) -> None:
        self._edit(lambda doc: doc["cameras"].pop(self._index(doc, name)))

    def set_enabled(self, name: str, enabled: bool) -> None:
        def change(doc: Any) -> None:
            cam = doc["cameras"][self._index(doc, name)]
            if enabled and "enabled" in cam:
                del cam["enabled"]  # back to the default, as most files write it
            elif not enabled:
                cam["enabled"] = False

        self._edit(change)

    def set_thresholds(self, name: str, on: float | None, off: float | None) -> None:
        from ruamel.yaml.comments import CommentedMap

        def change(doc: Any) -> None:
            cam = doc["cameras"][self._index(doc, name)]
            ev = cam.get("events")
            if ev is None:
                ev = cam["events"] = CommentedMap()
            if on is not None:
                ev["on_threshold"] = on
            if off is not None:
                ev["off_threshold"] = off

        self._edit(change)
