"""Alert sinks, chosen by ``type`` in the config: a registry plus the built-in ``jsonl``, ``stdout``,
``webhook`` and ``mqtt`` sinks. Every sink spools to disk and delivers from its own worker thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import DsanetError
from stream.config import SinkConfigBase
from stream.sinks.base import Backoff, Metrics, Result, Sink
from stream.sinks.spool import Spool, SpoolItem

__all__ = [
    "Backoff", "Metrics", "Result", "Sink", "SinkError", "Spool", "SpoolItem",
    "available_sinks", "create_sink", "register_sink", "sink_class",
]

_REGISTRY: dict[str, type[Sink]] = {}
S = TypeVar("S", bound=type[Sink])


class SinkError(DsanetError):
    """A sink is unknown or misconfigured."""


def register_sink(type_name: str) -> Callable[[S], S]:
    """Class decorator: make a :class:`Sink` subclass available as ``type: <type_name>`` in the config."""

    def deco(cls: S) -> S:
        if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
            raise SinkError(f"sink type {type_name!r} is registered twice "
                            f"({_REGISTRY[type_name].__qualname__} and {cls.__qualname__})")
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls

    return deco


def available_sinks() -> list[str]:
    """Registered sink type names, sorted."""
    return sorted(_REGISTRY)


def sink_class(type_name: str) -> type[Sink]:
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise SinkError(f"unknown sink type {type_name!r}; available: {', '.join(available_sinks())}") from None


def create_sink(cfg: SinkConfigBase, spool_dir: str | Path | None, metrics: Metrics | None = None,
                **kwargs: Any) -> Sink:
    """Build (not start) the sink for one config entry; its spool lives in ``spool_dir/<name>/``
    (``spool_dir=None``: memory only, e.g. for ``dsanet score``)."""
    if not cfg.type:
        raise SinkError(f"sink config {cfg!r} has no 'type'")
    return sink_class(cfg.type)(cfg, spool_dir, metrics, **kwargs)


# Built-in sinks register themselves on import.
from stream.sinks import jsonl as _jsonl  # noqa: E402,F401
from stream.sinks import mqtt as _mqtt  # noqa: E402,F401
from stream.sinks import stdout as _stdout  # noqa: E402,F401
from stream.sinks import webhook as _webhook  # noqa: E402,F401
