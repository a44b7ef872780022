"""Torch DSANet: VadCLIP backbone, adapted CLIP text tower, SGNM, DCSA and the inference head.

Importing this package imports torch (``engine`` itself does not). ``DSANetConfig`` alone is
available torch-free from ``engine.model.config``.
"""

from __future__ import annotations

import os

from engine.model.config import DSANetConfig, ModelConfigError
from engine.model.dsanet import DSANet, DSANetOutput, hierarchical_probs
from engine.model.head import DSANetHead
from engine.model.text import AdaptedCLIPText

__all__ = ["AdaptedCLIPText", "DSANet", "DSANetConfig", "DSANetHead", "DSANetOutput", "ModelConfigError",
           "build_model", "hierarchical_probs", "text_width_of"]


def text_width_of(clip_dir: str | os.PathLike[str]) -> int:
    """Hidden width of the CLIP text tower in a local HF folder, read from its config.json (no weights)."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(clip_dir) / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    return int(text.get("hidden_size", 512))


def build_model(config: DSANetConfig, clip_dir: str | os.PathLike[str]) -> DSANet:
    """DSANet with its text branch on the CLIP text tower found in ``clip_dir``."""
    text = AdaptedCLIPText.from_clip_dir(clip_dir, config.class_prompts, config.text_adapt_until,
                                         config.text_adapter_weight, out_dim=config.embed_dim)
    if text.width != config.text_width:
        raise ModelConfigError(f"the CLIP text tower in {clip_dir} is {text.width} wide but the model config "
                               f"expects {config.text_width} (was it trained with another CLIP?)")
    return DSANet(config, text)
