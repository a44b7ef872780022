"""Training presets (``configs/train/*.yaml``) as a pydantic model.

A preset pins everything the official DSANet scripts hard-code or take from their option files:
architecture, batch composition, both optimisers and schedules, loss weights, evaluation interval
and checkpoint-selection rule. Unknown keys are errors (a typo must not silently fall back to a
default), and every error names the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.bundle import DEFAULT_MAX_WINDOW
from engine.errors import DsanetError
from engine.snippet_contract import DEFAULT_SNIPPET_FRAMES


class TrainConfigError(DsanetError):
    """A training preset file is missing, not YAML, or has a bad or unknown key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Strict):
    train_list: str = Field(description="Training list CSV (path,label), relative to --data-root unless absolute.")
    test_list: str = Field(description="Test list CSV, relative to --data-root unless absolute; ground truth is "
                                       "looked up next to it (DATA_ROOT/list/).")
    snippet_frames: int = Field(DEFAULT_SNIPPET_FRAMES, ge=1, description="Frames per feature row, used when the features carry no "
                                                      "snippets.json.")
    snippet_fps: float = Field(description="Video frame rate used when the features carry no snippets.json "
                                           "(UCF-Crime 30, XD-Violence 24).", gt=0)


class ModelSection(_Strict):
    visual_length: int = Field(DEFAULT_MAX_WINDOW, ge=1, description="Snippets per sequence: longer training videos are "
                                                      "average-pooled to it, test videos are cut into chunks of it.")
    visual_width: int = Field(512, ge=8, description="Width of the backbone (= CLIP embedding width, 512).")
    visual_heads: int = Field(1, ge=1, description="Attention heads of the local temporal transformer.")
    visual_layers: int = Field(2, ge=1, description="Blocks of the local temporal transformer (UCF 2, XD 1).")
    attn_window: int = Field(8, ge=1, description="Local attention window in snippets (UCF 8, XD 64).")
    num_prototypes: int = Field(16, ge=1, description="SGNM learnable normal prototypes K.")
    decoder_depth: int = Field(8, ge=1, description="SGNM prototype-decoder layers.")
    normal_selection_ratio: float = Field(0.8, gt=0, le=1, description="Share of the padded length SGNM takes "
                                                                       "as normal snippets (lowest scores).")
    use_sgnm: bool = Field(True, description="Train with the SGNM branch (official DNP_use).")
    text_adapt_until: int = Field(3, ge=0, description="CLIP text blocks followed by an adapter (UCF 3, XD 1).")
    text_adapter_weight: float = Field(0.1, ge=0, le=1, description="Adapter mixing weight omega (UCF 0.1, XD 0.6).")
    dcsa_scale: float = Field(10.0, gt=0, description="kappa of the DCSA event/background weights exp(kappa p)-1.")
    tau: float = Field(5.0, gt=0, description="Inference temperature of the hierarchical class probabilities "
                                              "(UCF 5, XD 1).")
    mask_padding: bool = Field(False, description="Opt-in improvement: keep zero-padded snippets out of the visual "
                                                  "prompt, the DCSA pooling and the SGNM selection. Off = official.")


class BatchSection(_Strict):
    composition: Literal["balanced", "mixed"] = Field(description="balanced: 'normal' normal + 'abnormal' "
                                                                  "anomalous videos per step, normal first, both "
                                                                  "drop_last (UCF); mixed: 'size' videos drawn "
                                                                  "from the whole list, last batch kept (XD).")
    normal: int = Field(64, ge=1, description="Normal videos per step (balanced).")
    abnormal: int = Field(64, ge=1, description="Anomalous videos per step (balanced).")
    size: int = Field(96, ge=1, description="Videos per step (mixed).")


class MainOptimSection(_Strict):
    lr: float = Field(gt=0, description="AdamW learning rate of everything outside SGNM (UCF 7e-5, XD 1e-5).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay (torch default 0.01).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    cosine_t_max: int | None = Field(10, ge=1, description="CosineAnnealingLR period in epochs, stepped once per "
                                                           "epoch (official: max_epoch = 10); null = the run's "
                                                           "epoch count.")


class SgnmOptimSection(_Strict):
    lr: float = Field(gt=0, description="StableAdamW peak learning rate of SGNM (same as the main lr officially).")
    weight_decay: float = Field(1e-4, ge=0, description="StableAdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="StableAdamW betas.")
    eps: float = Field(1e-10, gt=0, description="StableAdamW epsilon.")
    amsgrad: bool = Field(True, description="Use the running maximum of the second moment (AMSGrad).")
    clip_threshold: float = Field(1.0, gt=0, description="Update clipping: step divided by max(1, RMS(g/denom)/this).")
    warmup_iters: int = Field(100, ge=0, description="Linear warm-up iterations from 0 (first update uses lr 0).")
    final_lr_ratio: float = Field(0.1, ge=0, description="Cosine end value as a fraction of lr.")
    planned_iterations: int | None = Field(description="Length of the per-iteration warm-up+cosine schedule. "
                                                       "Official: 10 * (125 + 126) = 2510 for UCF although only "
                                                       "1250 steps run (lr ends near 0.58 lr), 10 * 412 = 4120 for "
                                                       "XD. null = the official formula on this data set.",
                                           default=None, ge=1)


class OptimSection(_Strict):
    main: MainOptimSection = Field(description="AdamW + per-epoch cosine for the backbone, text adapters, heads.")
    sgnm: SgnmOptimSection = Field(description="StableAdamW + per-iteration warm-up cosine for the SGNM branch.")


class LossSection(_Strict):
    align_weight: float = Field(ge=0, description="lambda on the MIL-Align loss (UCF 1.1, XD 5.0); the official "
                                                  "code uses 1 when use_sgnm is false.")
    separation_weight: float = Field(1.0, ge=0, description="Weight of the normal-vs-anomaly text separation loss.")
    event_weight: float = Field(1.0, ge=0, description="Weight of the DCSA event loss.")
    background_weight: float = Field(1.0, ge=0, description="Weight of the DCSA background loss.")
    consistency_weight: float = Field(1.0, ge=0, description="Weight of the SGNM consistency loss.")
    gather_weight: float = Field(1.0, ge=0, description="Weight of the SGNM compactness (gather) loss.")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="epsilon of the event/background soft targets.")
    background_other: float = Field(0.01, ge=0, description="Unnormalised background target of each anomaly class "
                                                            "(normal = 1).")


class EvalSection(_Strict):
    every_steps: int | None = Field(description="Evaluate every N steps (UCF 10: after steps 10, 20, ... of each "
                                                "epoch, counting from 0 as the official loop); null = once per "
                                                "epoch after the scheduler step (XD). An epoch shorter than N "
                                                "steps is evaluated at its end.", ge=1)
    metric: Literal["auc", "ap"] = Field(description="Selection metric: frame AUC (UCF) or frame AP (XD), of "
                                                     "sigmoid(s).")
    selection: Literal["test", "val"] = Field("test", description="test = select on the test list as the official "
                                                                  "code does (optimistic); val = hold out "
                                                                  "val_fraction of the training videos and select "
                                                                  "on their video-level metric.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of training videos held out when selection "
                                                             "= val.")
    reload_best: bool = Field(True, description="After every epoch reload the best weights so far into the model "
                                                "(official behaviour; optimiser state is kept).")
    batch_size: int = Field(32, ge=1, description="Test chunks per forward during evaluation (does not change "
                                                  "results: videos are independent).")


class TrainConfig(_Strict):
    """One training preset (see configs/train/ucf.yaml)."""

    preset: Literal["ucf", "xd", "demo"] = Field(description="Benchmark layout: class list, labels, ground truth, mAP "
                                                             "(demo: the embedded demo's 4 classes, UCF layout).")
    epochs: int = Field(10, ge=1, description="Epochs (official max_epoch 10).")
    seed: int = Field(234, description="Seed of torch, numpy and the data order (official 234).")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms(True) (the official code "
                                                   "only sets cudnn.deterministic).")
    data: DataSection = Field(description="List files and snippet timing.")
    model: ModelSection = Field(description="Architecture (see DSANetConfig).")
    batch: BatchSection = Field(description="Batch composition per step.")
    optim: OptimSection = Field(description="Both optimisers and their schedules.")
    loss: LossSection = Field(description="Loss weights.")
    eval: EvalSection = Field(description="Evaluation interval and checkpoint selection.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        m = self.model
        if m.attn_window > m.visual_length:
            raise ValueError("model.attn_window must not exceed model.visual_length")
        if m.visual_width % m.visual_heads or m.visual_width % 8:
            raise ValueError("model.visual_width must be divisible by model.visual_heads and by 8 (SGNM heads)")
        return self


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise TrainConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from exc


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{source}: " + "; ".join(parts)


def config_from_dict(data: dict[str, Any], source: str = "training config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError(_format_errors(exc, source)) from None


def load_train_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> TrainConfig:
    """Read a preset YAML, apply ``--set KEY=VALUE`` overrides, validate; errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"training config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrainConfigError(f"cannot read training config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainConfigError(f"training config {path}: expected a mapping at the top level")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(data, key, value)
    return config_from_dict(data, str(path))
