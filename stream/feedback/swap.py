"""Bundle hot-swap checks: which bundle a score came from, and whether a new bundle may replace the
running one without restarting cameras (``Service.swap_bundle``; docs/feedback.md).

A new bundle is loaded and warmed up on the same runtime settings, then *tried*: one frame through its
encoder and one window through its head, outputs checked for shape and finiteness. It must cut snippets
the same way (frames, fps) and preprocess frames the same way, since the cameras' cutters and the frames
already prepared keep running across the switch; its ``max_window`` must hold every camera's window.
Window embeddings stay valid only when the encoder file is the same (``files[encoder.onnx].sha256`` in
bundle.json): otherwise every camera's window restarts empty at the switch, and the swap says so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from engine.errors import DsanetError

log = logging.getLogger(__name__)

T = TypeVar("T")
LOAD_NICE = 10  # the loading thread's niceness: the cameras' threads keep the CPU while a bundle loads


def run_niced(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread at a lower CPU priority (Linux: niceness is per thread) and wait for it.

    Loading and warming up a bundle takes seconds of CPU; on a small box at normal priority it takes them
    from the encoder and head threads, and the other cameras' scores lag. Where per-thread priority is not
    available the load simply runs at normal priority."""
    out: list[Any] = []

    def body() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICE)
        except (AttributeError, OSError) as exc:
            log.debug("bundle load at normal priority (%s)", exc)
        try:
            out.append(("ok", fn()))
        except BaseException as exc:  # handed to the caller's thread
            out.append(("err", exc))

    t = threading.Thread(target=body, name="bundle-load", daemon=True)
    t.start()
    t.join()
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


class SwapError(DsanetError):
    """The new bundle was refused; the running one keeps scoring."""


@dataclass(frozen=True)
class BundleIds:
    """Identity of a bundle: its head and encoder files' sha256 (None for fakes without file hashes)."""

    name: str
    head: str | None
    encoder: str | None
    path: str | None

    @property
    def short(self) -> str | None:
        """The ``bundle`` field of events: the first 12 hex digits of the head's sha256."""
        return self.head[:12] if self.head else None

    @classmethod
    def of(cls, bundle: Any) -> BundleIds:
        files = getattr(bundle, "files", None) or {}

        def sha(spec: Any) -> str | None:
            name = getattr(spec, "file", None)
            entry = files.get(name) if name else None
            return str(entry.sha256) if entry is not None else None

        root = getattr(bundle, "root", None)
        return cls(str(getattr(bundle, "name", "?")), sha(getattr(bundle, "head", None)),
                   sha(getattr(bundle, "encoder", None)), str(root) if root is not None else None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.short, "head_sha256": self.head, "encoder_sha256": self.encoder,
                "path": self.path}


def check_compatible(old: Any, new: Any, windows: Iterable[tuple[str, int]]) -> None:
    """Refuse a bundle the running cameras cannot switch to; the message names what differs."""
    problems = []
    for key in ("snippet_frames", "snippet_fps"):
        if getattr(old, key) != getattr(new, key):
            problems.append(f"{key} {getattr(new, key)} differs from the running bundle's {getattr(old, key)}")
    if int(getattr(old, "embedding_width", 0)) != int(getattr(new, "embedding_width", 0)):
        problems.append(f"embedding_width {new.embedding_width} differs from the running bundle's "
                        f"{old.embedding_width}")
    op, np_ = getattr(old, "preprocessing", None), getattr(new, "preprocessing", None)
    if op is not None and np_ is not None and op.to_dict() != np_.to_dict():
        problems.append("its preprocessing differs from the running bundle's")
    for cam, length in windows:
        if length > int(new.max_window):
            problems.append(f"camera {cam!r}: window.length {length} is longer than its max_window {new.max_window}")
    if problems:
        raise SwapError("bundle refused (a restart can apply it): " + "; ".join(problems))


def try_models(models: Any, window: int) -> None:
    """One frame through the encoder and one window through the head; raises ``SwapError`` on bad output."""
    b = models.bundle
    side = int(getattr(getattr(b, "preprocessing", None), "size", 0) or 224)
    frame = (np.arange(side * side * 3, dtype=np.uint32).reshape(side, side, 3) % 251).astype(np.uint8)
    try:
        pixels = np.asarray(models.preprocess([frame]))
        emb = np.asarray(models.encoder.embed(pixels), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != 1 or not np.all(np.isfinite(emb)):
            raise SwapError(f"its encoder gave an output of shape {emb.shape} (finite: "
                            f"{bool(np.all(np.isfinite(emb)))}) for one frame")
        t = max(1, min(window, int(b.max_window)))
        feats = np.repeat(emb[None], t, axis=1).astype(np.float32)
        scores, probs = models.score(feats, np.asarray([t], dtype=np.int64))
        scores, probs = np.asarray(scores), np.asarray(probs)
    except SwapError:
        raise
    except Exception as exc:
        raise SwapError(f"trying it failed: {type(exc).__name__}: {exc}") from None
    n_cls = len(models.current_classes()[0])
    if scores.shape != (1, t) or probs.shape != (1, t, n_cls):
        raise SwapError(f"its head gave scores {scores.shape} and class_probs {probs.shape} for a window of {t} "
                        f"(expected (1, {t}) and (1, {t}, {n_cls}))")
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(probs))):
        raise SwapError("its head gave non-finite scores")
