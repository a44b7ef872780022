"""Trainer checkpoints: what a run directory holds and how it is written and read back.

``best.safetensors`` / ``last.safetensors`` hold the trainable weights only (the frozen CLIP text tower
is rebuilt from ``--clip``); their metadata carries ``format``, ``dsanet_config`` (JSON of
``DSANetConfig``), ``train_config`` (the resolved preset), ``clip`` and the snippet timing, so a
checkpoint describes itself without loading weights (:func:`read_checkpoint_info`). ``last_optim.pt``
holds the optimiser, scheduler and loop state for ``--resume``; it is read with ``weights_only=True``.
Every file is replaced atomically (``engine.atomic.atomic_write``): a crash mid-save leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.atomic import atomic_write
from engine.errors import CheckpointError, DsanetError
from engine.model import DSANet, DSANetConfig, ModelConfigError, build_model, text_width_of
from engine.model.config import XD_PROMPTS
from export.data import class_names
from export.train_config import TrainConfig

CHECKPOINT_FORMAT = "dsanet-checkpoint/1"
BEST = "best.safetensors"
LAST = "last.safetensors"
LAST_OPTIM = "last_optim.pt"


def model_config_for(cfg: TrainConfig, text_width: int, snippet: dict[str, Any] | None = None) -> DSANetConfig:
    """The ``DSANetConfig`` a training preset describes (class list from the data preset)."""
    m = cfg.model
    frames = int(snippet["snippet_frames"]) if snippet else cfg.data.snippet_frames
    fps = float(snippet["snippet_fps"]) if snippet else cfg.data.snippet_fps
    # each class described by its class word (UCF-layout words lower-cased, as DSANet's UCF prompts)
    prompts = XD_PROMPTS if cfg.preset == "xd" else [[c.lower()] for c in class_names(cfg.preset)]
    return DSANetConfig(
        preset=cfg.preset, class_names=class_names(cfg.preset), class_prompts=[list(p) for p in prompts],
        embed_dim=m.visual_width, visual_length=m.visual_length, visual_width=m.visual_width,
        visual_heads=m.visual_heads, visual_layers=m.visual_layers, attn_window=m.attn_window,
        num_prototypes=m.num_prototypes, decoder_depth=m.decoder_depth, normal_selection_ratio=m.normal_selection_ratio,
        use_sgnm=m.use_sgnm, text_width=text_width, text_adapt_until=m.text_adapt_until,
        text_adapter_weight=m.text_adapter_weight, dcsa_scale=m.dcsa_scale, tau=m.tau, mask_padding=m.mask_padding,
        snippet_frames=frames, snippet_fps=fps)


def torch_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DsanetError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return torch.device(name)



@dataclass
class CheckpointInfo:
    """What a checkpoint's metadata says, read without building the model."""

    path: Path
    dsanet_config: DSANetConfig
    train_config: dict[str, Any] | None
    clip: str
    snippet_frames: int
    snippet_fps: float | None
    metadata: dict[str, str] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], model: DSANet, train_config: TrainConfig | dict[str, Any] | None,
                    clip: str, state: dict[str, torch.Tensor] | None = None, **extra: Any) -> Path:
    """Write trainable weights (or ``state``) + metadata to a safetensors file, atomically."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in (state or model.trainable_state_dict()).items()}
    tc = train_config.model_dump(mode="json") if isinstance(train_config, TrainConfig) else train_config
    meta = {"format": CHECKPOINT_FORMAT, "dsanet_config": model.config.to_json(),
            "train_config": json.dumps(tc, sort_keys=True) if tc is not None else "null", "clip": str(clip),
            "snippet_frames": str(model.config.snippet_frames),
            "snippet_fps": "" if model.config.snippet_fps is None else str(model.config.snippet_fps)}
    meta.update({k: json.dumps(v) for k, v in extra.items()})
    return atomic_write(path, save(tensors, metadata=meta))


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Metadata of a checkpoint (config, CLIP source, snippet timing) without loading any weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "dsanet_config" not in meta:
        raise CheckpointError(f"checkpoint {path} is not a DSANet checkpoint (metadata format "
                              f"{meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    try:
        config = DSANetConfig.from_json(meta["dsanet_config"], source=f"checkpoint {path}")
        train_cfg = json.loads(meta.get("train_config", "null"))
    except (ModelConfigError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad metadata: {exc}") from exc
    fps = meta.get("snippet_fps") or None
    return CheckpointInfo(path=path, dsanet_config=config, train_config=train_cfg, clip=meta.get("clip", ""),
                          snippet_frames=int(meta.get("snippet_frames", config.snippet_frames)),
                          snippet_fps=float(fps) if fps else None, metadata=meta)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def load_weights_into(model: DSANet, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint's weights into an existing model; mismatches name the file."""
    path = Path(path)
    try:
        model.load_trainable_state_dict(load_tensors(path))
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({exc.args[0]}): it was made for "
                              "another preset or architecture") from None


def load_checkpoint(path: str | os.PathLike[str], clip_dir: str | os.PathLike[str], device: str = "cpu",
                    expect_preset: str | None = None) -> DSANet:
    """Rebuild a trained DSANet (eval mode) from a checkpoint and the CLIP folder it was trained with."""
    info = read_checkpoint_info(path)
    cfg = info.dsanet_config
    if expect_preset is not None and cfg.preset != expect_preset:
        raise CheckpointError(f"checkpoint {info.path} was trained for preset {cfg.preset!r} "
                              f"({cfg.num_classes} classes), not {expect_preset!r}")
    width = text_width_of(clip_dir)
    if width != cfg.text_width:
        raise CheckpointError(f"checkpoint {info.path} was trained with a CLIP text tower {cfg.text_width} wide "
                              f"({info.clip}); the CLIP in {clip_dir} is {width} wide")
    model = build_model(cfg, clip_dir)
    load_weights_into(model, info.path)
    return model.to(torch_device(device)).eval()


def save_train_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write the loop / optimiser / scheduler state for ``--resume`` (tensors and plain types only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


def load_train_state(path: Path) -> dict[str, Any]:
    """Read what :func:`save_train_state` wrote (``weights_only=True``: no code runs on load)."""
    if not path.is_file():
        raise CheckpointError(f"--resume: {path} does not exist (no finished epoch to resume from)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"--resume: cannot read {path}: {exc}") from exc
