"""What a running service offers to whatever controls it at runtime (HTTP API, SIGHUP reload, CLI).

The contract is a Protocol so the operator console, the reload path and their tests depend on this
module only, never on the service's internals. ``stream.service.Service`` implements it; a listener
receives every score and event record as the pipeline produces them and must never block (the console
puts them on bounded per-client queues and counts what it drops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stream.config import CameraConfig


@dataclass(frozen=True)
class CameraSnapshot:
    """One camera as an operator sees it now. ``url`` is already redacted."""

    name: str
    url: str
    enabled: bool
    state: str  # stream.reader.CameraState value, or "disabled"
    fps: float  # frames per second over the last few seconds
    lag_seconds: float | None  # capture of the newest scored snippet -> now
    score: float | None  # latest reported anomaly score
    category: str | None  # latest top non-normal class name
    on_threshold: float
    off_threshold: float
    event_open: bool
    frames: int
    snippets: int
    scores: int
    reconnects: int


@dataclass(frozen=True)
class ScoreRecord:
    """One reported score of one camera, as the live feed carries it."""

    camera: str
    index: int
    start_time: float
    end_time: float
    score: float
    category: str | None
    category_score: float | None


Listener = Callable[[ScoreRecord | dict[str, Any]], None]
"""Receives a ``ScoreRecord`` per reported score and an event payload dict (docs/events.md) per event."""


@runtime_checkable
class ServiceControl(Protocol):
    """Runtime control of a running service. Every method is safe to call from any thread."""

    def camera_snapshots(self) -> list[CameraSnapshot]: ...

    def add_camera(self, camera: CameraConfig) -> None:
        """Start watching a camera; raises ``ValueError`` naming the camera if the name is taken."""

    def remove_camera(self, name: str) -> None:
        """Stop a camera; its open event ends with ``reason: camera_removed``. ``KeyError`` if unknown."""

    def set_camera_enabled(self, name: str, enabled: bool) -> None:
        """Disable (stop reading, end open event) or enable a configured camera."""

    def set_thresholds(self, name: str, on_threshold: float | None, off_threshold: float | None) -> None:
        """Change a camera's on/off thresholds; ``ValueError`` if off > on."""

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register a non-blocking listener; returns a function that removes it."""
