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
    from engine.categories import CategoryEdit, CategorySet, OpenHeadModel, TextEncoder
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
    threads: int | None = None
    # Categories edited at deployment (engine.categories): ``open_head`` scores against edited class
    # features; ``renamed`` is a names-only edit on the baked head; ``scored_with`` is the class list of
    # the batch the head thread scored last (written and read on that thread only).
    open_head: OpenHeadModel | None = None
    renamed: CategorySet | None = None
    scored_with: CategorySet | None = None
    _text: TextEncoder | None = None

    @classmethod
    def load(cls, model_cfg: ModelConfig) -> Models:
        from engine.runtime import load_models

        if model_cfg.encoder is not None:  # the encoder on a Triton server, the head here
            from engine.runtimes.triton import load_with_remote_encoder

            bundle, remote, local_head = load_with_remote_encoder(model_cfg)
            models = cls(bundle=bundle, encoder=remote, head=local_head, preprocess=remote.preprocess,
                         runtime=f"triton+{local_head.describe()['runtime']}", encoder_max_batch=remote.max_batch,
                         head_max_batch=local_head.max_batch, threads=model_cfg.threads)
        else:
            bundle, encoder, head = load_models(model_cfg.bundle, runtime=model_cfg.runtime, device=model_cfg.device,
                                                precision=model_cfg.precision, threads=model_cfg.threads,
                                                head_int8=model_cfg.head_int8)
            desc = head.describe() if hasattr(head, "describe") else {}
            runtime = str(desc.get("runtime") or desc.get("name") or model_cfg.runtime) if isinstance(desc, dict) \
                else model_cfg.runtime
            models = cls(bundle=bundle, encoder=encoder, head=head, preprocess=bundle.preprocessing, runtime=runtime,
                         encoder_max_batch=encoder.max_batch, head_max_batch=head.max_batch,
                         threads=model_cfg.threads)
        if model_cfg.categories is not None:
            models.set_categories(model_cfg.categories.to_edit())
        return models

    # --- categories --------------------------------------------------------------------------------
    def set_categories(self, edit: CategoryEdit) -> CategorySet:
        """Apply a category edit to the bundle's class list; safe while the head thread scores.

        Adding or dropping classes (or any edit once one did) scores with ``head_open.onnx`` on ONNX
        Runtime CPU against the edited class features; a rename alone keeps the baked head. The head
        thread picks the new list up at its next batch (one reference assignment each).
        """
        from engine.bundle import Bundle
        from engine.categories import CategoryError, TextEncoder, open_head_for, resolve, with_features

        if not isinstance(self.bundle, Bundle):
            raise CategoryError("categories can only be edited on models loaded from a bundle")
        cats = resolve(self.bundle, edit)
        if not (edit.add or edit.drop) and self.open_head is None:
            self.renamed = cats
            return cats
        if self._text is None:
            self._text = TextEncoder(self.bundle, threads=self.threads)
        cats = with_features(cats, self._text, edit.key("add"))
        if self.open_head is None:
            head = open_head_for(self.bundle, cats, self.head, threads=self.threads)
            self.head_max_batch = min(self.head_max_batch, head.max_batch)
            self.open_head = head
        else:
            self.open_head.set_categories(cats)
        self.renamed = None
        return cats

    def current_classes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(keys, display names) of the class list now in effect (the next batch's)."""
        oh = self.open_head
        cats = oh.categories if oh is not None else self.renamed
        if cats is not None:
            return cats.keys, cats.names
        return tuple(self.bundle.class_names), tuple(self.bundle.display_names or self.bundle.class_names)

    def score(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head thread: score one batch and remember which class list its columns belong to."""
        oh = self.open_head
        if oh is None:
            self.scored_with = self.renamed
            return self.head.score(features, lengths)
        out = oh.score(features, lengths)
        self.scored_with = oh.last_used
        return out

    def scored_classes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Head thread: (keys, display names) of the columns of the batch scored last."""
        cats = self.scored_with
        if cats is not None:
            return cats.keys, cats.names
        return tuple(self.bundle.class_names), tuple(self.bundle.display_names or self.bundle.class_names)

    def category(self, probs: Sequence[float]) -> tuple[str | None, float | None]:
        """(display name, probability) of the most likely anomaly class; column 0 (normal) excluded."""
        if len(probs) < 2:
            return None, None
        arr = np.asarray(probs[1:])
        i = int(np.argmax(arr)) + 1
        names = self.scored_classes()[1]
        return str(names[i]), float(arr[i - 1])
