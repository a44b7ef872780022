"""Torch DSANet: VadCLIP backbone, adapted CLIP text tower, SGNM, DCSA and the inference head.

Names are imported lazily, so ``engine.model.config`` (``DSANetConfig``) stays torch-free; any torch
name (``DSANet``, ``DSANetHead``, ``build_model`` ...) imports torch on first use.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from engine.model.config import DSANetConfig, ModelConfigError

_LAZY = {
    "DSANet": "engine.model.dsanet",
    "DSANetOutput": "engine.model.dsanet",
    "hierarchical_probs": "engine.model.dsanet",
    "DSANetHead": "engine.model.head",
    "AdaptedCLIPText": "engine.model.text",
}

__all__ = ["AdaptedCLIPText", "DSANet", "DSANetConfig", "DSANetHead", "DSANetOutput", "ModelConfigError",
           "build_model", "hierarchical_probs", "text_width_of"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - module-level lazy import
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def text_width_of(clip_dir: str | os.PathLike[str]) -> int:
    """Hidden width of the CLIP text tower in a local HF folder, read from its config.json (no weights)."""
    import json
    from pathlib import Path

    from engine.errors import ClipLoadError

    path = Path(clip_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClipLoadError(f"cannot read {path}: {exc}") from exc
    text = cfg.get("text_config", cfg)
    return int(text.get("hidden_size", 512))


def build_model(config: DSANetConfig, clip_dir: str | os.PathLike[str]):  # -> DSANet
    """DSANet with its text branch on the CLIP text tower found in ``clip_dir``."""
    from engine.model.dsanet import DSANet
    from engine.model.text import AdaptedCLIPText

    text = AdaptedCLIPText.from_clip_dir(clip_dir, config.class_prompts, config.text_adapt_until,
                                         config.text_adapter_weight, out_dim=config.embed_dim)
    if text.width != config.text_width:
        raise ModelConfigError(f"the CLIP text tower in {clip_dir} is {text.width} wide but the model config "
                               f"expects {config.text_width} (was it trained with another CLIP?)")
    return DSANet(config, text)
