"""What the live service needs from a model bundle, as Protocols, and the loaded set (``Models``).

The service codes against these Protocols, not against ``engine.runtime`` classes, so tests may pass
small fakes and a new runtime (Triton, TensorRT) only has to offer ``embed``/``score`` and ``max_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from stream.config import ModelConfig


@runtime_checkable
class Encoder(Protocol):
    """Image encoder: ``embed(images[B,3,S,S] float32) -> [B,D] float32``."""

    max_batch: int

    def embed(self, images: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Head(Protocol):
    """Temporal head: ``score(features[B,T,D], lengths[B]) -> (scores[B,T], class_probs[B,T,C])``."""

    max_batch: int

    def score(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class BundleInfo(Protocol):
    """The parts of ``engine.bundle.Bundle`` the live side reads."""

    @property
    def name(self) -> str: ...

    @property
    def snippet_frames(self) -> int: ...

    @property
    def snippet_fps(self) -> float: ...

    @property
    def max_window(self) -> int: ...

    @property
    def class_names(self) -> Sequence[str]: ...

    @property
    def display_names(self) -> Sequence[str]: ...


@dataclass
class Models:
    """The bundle, encoder and head one service shares across all its cameras."""

    bundle: BundleInfo
    encoder: Encoder
    head: Head
    preprocess: Callable[[list[np.ndarray]], np.ndarray]
    runtime: str = "unknown"
    encoder_max_batch: int = 64
    head_max_batch: int = 64

    @classmethod
    def load(cls, model_cfg: ModelConfig) -> Models:
        from engine.runtime import load_models

        bundle, encoder, head = load_models(model_cfg.bundle, runtime=model_cfg.runtime, device=model_cfg.device,
                                            precision=model_cfg.precision, threads=model_cfg.threads)
        desc = head.describe() if hasattr(head, "describe") else {}
        runtime = str(desc.get("runtime") or desc.get("name") or model_cfg.runtime) if isinstance(desc, dict) \
            else model_cfg.runtime
        return cls(bundle=bundle, encoder=encoder, head=head, preprocess=bundle.preprocessing, runtime=runtime,
                   encoder_max_batch=encoder.max_batch, head_max_batch=head.max_batch)

    def category(self, probs: Sequence[float]) -> tuple[str | None, float | None]:
        """(display name, probability) of the most likely anomaly class; column 0 (normal) excluded."""
        if len(probs) < 2:
            return None, None
        arr = np.asarray(probs[1:])
        i = int(np.argmax(arr)) + 1
        names = self.bundle.display_names or self.bundle.class_names
        return str(names[i]), float(arr[i - 1])
