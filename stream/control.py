"""What a running service offers to whatever controls it at runtime (HTTP API, SIGHUP reload, CLI).

The contract is a Protocol so the operator console, the reload path and their tests depend on this
module only, never on the service's internals. ``stream.service.Service`` implements it; a listener
receives every score and event record as the pipeline produces them and must never block (the console
puts them on bounded per-client queues and counts what it drops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from stream.types import CameraSnapshot, ScoreRecord

if TYPE_CHECKING:
    from engine.categories import CategoryEdit, CategorySet
    from stream.config import CameraConfig


Listener = Callable[[ScoreRecord | dict[str, Any]], None]
"""Receives a ``ScoreRecord`` per reported score and an event payload dict (docs/events.md) per event.

The service calls listeners from one listener thread fed by a bounded queue (drop oldest, counted as
``dsanet_dropped_total{stage="listener"}``), so a slow listener costs only its own records."""

__all__ = ["CameraSnapshot", "Listener", "ScoreRecord", "ServiceControl"]


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

    def set_categories(self, edit: CategoryEdit) -> CategorySet:
        """Apply a category edit (against the bundle's own list) without restarting cameras;
        ``CategoryError`` naming the problem leaves the running list unchanged."""

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register a non-blocking listener; returns a function that removes it."""
