"""``DSANetConfig``: every architecture hyperparameter of the DSANet head, JSON-serialisable.

The config travels inside checkpoints (safetensors metadata) and bundles, so a model can be rebuilt
without the training preset. This module imports no torch: the export/bundle side reads configs
without loading the model code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import DsanetError

# Class words of the two benchmarks, in the order of the official label maps (index 0 = normal).
UCF_CLASSES = ["normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion", "fighting",
               "roadAccidents", "robbery", "shooting", "shoplifting", "stealing", "vandalism"]
XD_CLASSES = ["normal", "fighting", "shooting", "riot", "abuse", "car accident", "explosion"]

# One text description per class. DSANet describes each class by its bare class word (the CLIP
# tokenizer lower-cases, so "roadAccidents" and "roadaccidents" tokenise the same); any rewording
# would change the text features the published numbers were obtained with, so the words are kept.
UCF_PROMPTS = [[c.lower()] for c in UCF_CLASSES]
XD_PROMPTS = [[c] for c in XD_CLASSES]


class ModelConfigError(DsanetError):
    """A DSANet model config (from a checkpoint, bundle or preset) is malformed."""


@dataclass
class DSANetConfig:
    """Architecture of one DSANet model. Defaults are the official UCF-Crime values."""

    preset: str = "ucf"  # which benchmark layout the class list follows ("ucf", "xd" or "custom")
    class_names: list[str] = field(default_factory=lambda: list(UCF_CLASSES))
    class_prompts: list[list[str]] = field(default_factory=lambda: [list(p) for p in UCF_PROMPTS])
    embed_dim: int = 512  # width of the input CLIP image embeddings and of the text features
    visual_length: int = 256  # max snippets per sequence; shorter inputs are zero-padded to it
    visual_width: int = 512  # width of the temporal transformer (= embed_dim in the official code)
    visual_heads: int = 1
    visual_layers: int = 2
    attn_window: int = 8  # block-diagonal local attention window (UCF 8, XD 64)
    gcn_threshold: float = 0.7  # cosine similarities <= this are zeroed before the row softmax
    align_temperature: float = 0.07  # cosine / 0.07 in the alignment and DCSA logits
    num_prototypes: int = 16
    decoder_depth: int = 8
    sgnm_heads: int = 8
    normal_selection_ratio: float = 0.8
    use_sgnm: bool = True
    text_width: int = 512  # hidden width of the CLIP text tower the adapters sit in (64 for tiny CLIP)
    text_adapt_until: int = 3  # adapters after the first L text blocks (UCF 3, XD 1)
    text_adapter_weight: float = 0.1  # omega: x <- omega*adapter + (1-omega)*x (UCF 0.1, XD 0.6)
    dcsa_scale: float = 10.0  # kappa in the event/background weights exp(kappa*p)-1
    tau: float = 5.0  # hierarchical refinement temperature at inference (UCF 5, XD 1)
    mask_padding: bool = False  # opt-in: keep padded snippets out of the prompt, DCSA and SGNM selection
    snippet_frames: int = 16  # video frames per feature row
    snippet_fps: float | None = None  # frame rate of the videos the features came from, when known

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def validate(self) -> None:
        """Reject configs that cannot build a model, with the field at fault named."""
        if len(self.class_names) < 2:
            raise ModelConfigError("class_names needs at least two classes (index 0 = normal)")
        if len(self.class_prompts) != len(self.class_names):
            raise ModelConfigError(f"class_prompts has {len(self.class_prompts)} entries for "
                                   f"{len(self.class_names)} classes")
        if any(not p or not all(isinstance(s, str) and s for s in p) for p in self.class_prompts):
            raise ModelConfigError("every class needs at least one non-empty description in class_prompts")
        for name in ("embed_dim", "visual_length", "visual_width", "visual_heads", "visual_layers", "attn_window",
                     "num_prototypes", "decoder_depth", "sgnm_heads", "text_width", "snippet_frames"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.visual_width != self.embed_dim:
            raise ModelConfigError("visual_width must equal embed_dim (the backbone has no input projection)")
        if self.visual_width % self.visual_heads or self.visual_width % self.sgnm_heads:
            raise ModelConfigError("visual_width must be divisible by visual_heads and sgnm_heads")
        if self.attn_window > self.visual_length:
            raise ModelConfigError("attn_window must not exceed visual_length")
        if not 0.0 < self.normal_selection_ratio <= 1.0:
            raise ModelConfigError("normal_selection_ratio must be in (0, 1]")
        if int(self.visual_length * self.normal_selection_ratio) < 1:
            raise ModelConfigError("visual_length * normal_selection_ratio must select at least one snippet")
        if not 0 <= self.text_adapt_until:
            raise ModelConfigError("text_adapt_until must be >= 0")
        if not 0.0 <= self.text_adapter_weight <= 1.0:
            raise ModelConfigError("text_adapter_weight must be in [0, 1]")
        if self.tau <= 0 or self.align_temperature <= 0:
            raise ModelConfigError("tau and align_temperature must be > 0")

    # --- presets -------------------------------------------------------------------------------
    @classmethod
    def ucf(cls, **overrides: Any) -> DSANetConfig:
        """Official UCF-Crime architecture (ucf_option.py)."""
        return cls(**overrides)

    @classmethod
    def xd(cls, **overrides: Any) -> DSANetConfig:
        """Official XD-Violence architecture (xd_option.py)."""
        base: dict[str, Any] = dict(preset="xd", class_names=list(XD_CLASSES),
                                    class_prompts=[list(p) for p in XD_PROMPTS], visual_layers=1,
                                    attn_window=64, text_adapt_until=1, text_adapter_weight=0.6, tau=1.0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> DSANetConfig:
        if preset == "ucf":
            return cls.ucf(**overrides)
        if preset == "xd":
            return cls.xd(**overrides)
        raise ModelConfigError(f"unknown preset {preset!r} (expected 'ucf' or 'xd')")

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DSANetConfig:
        """Rebuild from ``to_dict`` output; unknown keys are an error (a newer or foreign file)."""
        if not isinstance(data, dict):
            raise ModelConfigError(f"{source}: the DSANet config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"{source}: unknown DSANet config keys {unknown}")
        try:
            return cls(**data)
        except ModelConfigError as exc:
            raise ModelConfigError(f"{source}: {exc}") from exc
        except TypeError as exc:
            raise ModelConfigError(f"{source}: bad DSANet config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> DSANetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"{source}: the DSANet config is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source)
