"""Reading an official DSANet checkpoint safely and proving it is one, with one-line errors.

``torch.load(weights_only=True)`` (memory-mapped: a 600 MB file is not copied into RAM) of either a
bare state dict or a dict holding one under a usual key (``state_dict``, ``model``, ...); a
``module.`` prefix left by DataParallel is dropped. The keys are then compared with the table of
``export.official.layout`` for the CLIP geometry read off the file and the preset's head: every
problem (a VadCLIP checkpoint, the other preset, a truncated or foreign file, a missing, unexpected
or mis-shaped tensor) is an ``OfficialCheckpointError`` whose message starts with the file name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from export.official.layout import (
    ADAPTER_PREFIX,
    CLIP_ALIAS_PREFIX,
    CLIP_PREFIX,
    PRESET_HEADS,
    SGNM_PREFIX,
    ClipGeometry,
    HeadGeometry,
    LayoutError,
    guess_preset,
    infer_clip_geometry,
    infer_head_geometry,
    official_shapes,
)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
MAX_LISTED = 4


class OfficialCheckpointError(CheckpointError):
    """The file is not a usable official DSANet checkpoint for the preset asked for."""


@dataclass
class OfficialCheckpoint:
    """A validated official checkpoint: the state dict, CLIP weights (unprefixed) and geometries."""

    path: Path
    preset: str
    state: dict[str, Any]
    clip: dict[str, Any]
    clip_geometry: ClipGeometry
    head_geometry: HeadGeometry
    clip_dtype: str
    notes: list[str] = field(default_factory=list)


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors of a ``.pth``/``.pt`` file, loaded with ``weights_only=True``; one-line errors."""
    import pickle
    import zipfile

    import torch

    p = Path(path)
    if not p.is_file():
        raise OfficialCheckpointError(f"{p}: no such checkpoint file")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # mmap needs the zip format; the legacy format loads without it
        if "mmap" in str(exc) or "zipfile" in str(exc).lower() and "legacy" in str(exc).lower():
            obj = _load_plain(p)
        else:
            raise OfficialCheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                                          f"{str(exc).splitlines()[0]}") from exc
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise OfficialCheckpointError(f"{p}: not a loadable weights-only PyTorch checkpoint: "
                                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return unwrap_state_dict(obj, p)


def _load_plain(p: Path) -> Any:
    import torch

    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise OfficialCheckpointError(f"{p}: not a readable PyTorch checkpoint: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def unwrap_state_dict(obj: Any, p: Path) -> dict[str, Any]:
    """A bare state dict, or the one held under a usual wrapper key; ``module.`` prefixes removed."""
    state = obj
    if not _is_tensor_dict(state) and isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if _is_tensor_dict(state.get(key)):
                state = state[key]
                break
    if not _is_tensor_dict(state):
        kind = type(obj).__name__
        keys = sorted(obj)[:MAX_LISTED] if isinstance(obj, dict) else []
        raise OfficialCheckpointError(f"{p}: holds a {kind}{' with keys ' + str(keys) if keys else ''}, not a "
                                      "state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def validate(state: dict[str, Any], path: Path, preset: str) -> OfficialCheckpoint:
    """Check ``state`` against the official layout of ``preset``; return the split, checked parts."""
    import torch

    if preset not in PRESET_HEADS:
        raise OfficialCheckpointError(f"{path}: unknown preset {preset!r} (expected 'ucf' or 'xd')")
    keys = list(state)
    dsanet_parts = any(k.startswith((SGNM_PREFIX, ADAPTER_PREFIX)) for k in keys)
    if "text_prompt_embeddings.weight" in state or (f"{CLIP_PREFIX}token_embedding.weight" in state
                                                    and not dsanet_parts):
        raise OfficialCheckpointError(f"{path}: a VadCLIP checkpoint (learnt text prompt, no SGNM "
                                      "video_anomaly_refiner.*), not DSANet's: import-official takes the DSANet "
                                      "weights the DSANet authors released")
    if not any(k.startswith(CLIP_PREFIX) for k in keys):
        if any(k.startswith(("backbone.", "sgnm.", "text.adapters.")) for k in keys):
            raise OfficialCheckpointError(f"{path}: a checkpoint of this project's trainer, not an official one "
                                          "(use `dsanet export` for it)")
        raise OfficialCheckpointError(f"{path}: not an official DSANet checkpoint (no {CLIP_PREFIX}* CLIP weights; "
                                      f"first keys: {_listing(sorted(keys))})")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        clip_g = infer_clip_geometry(shapes, CLIP_PREFIX)
        head_g = infer_head_geometry(shapes)
    except LayoutError as exc:
        raise OfficialCheckpointError(f"{path}: incomplete official DSANet checkpoint: {exc}") from exc
    ref = PRESET_HEADS[preset]
    if (head_g.visual_layers, head_g.text_adapt_until) != (ref.visual_layers, ref.text_adapt_until):
        other = guess_preset(head_g)
        hint = f": it is laid out as the official {other} model (use --preset {other})" if other else ""
        raise OfficialCheckpointError(
            f"{path}: does not match the official {preset} model: {head_g.visual_layers} temporal layer(s) and "
            f"{head_g.text_adapt_until} text adapter(s), expected {ref.visual_layers} and {ref.text_adapt_until}{hint}")
    if head_g.visual_width != clip_g.embed_dim:
        raise OfficialCheckpointError(f"{path}: the head is {head_g.visual_width} wide but CLIP embeds to "
                                      f"{clip_g.embed_dim}")
    expected = official_shapes(clip_g, head_g)
    present = {k for k in keys if k not in _meta_keys()}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    bad = sorted(k for k in set(expected) & present if shapes[k] != expected[k])
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
        if bad:
            parts.append(f"{len(bad)} mis-shaped (" + ", ".join(f"{k} {shapes[k]} expected {expected[k]}"
                                                                for k in bad[:MAX_LISTED]) + ")")
        raise OfficialCheckpointError(f"{path}: not a complete official DSANet {preset} checkpoint: " + "; ".join(parts))
    for k in expected:
        if not state[k].is_floating_point():
            raise OfficialCheckpointError(f"{path}: {k} holds {state[k].dtype} values, expected floating point")
    notes: list[str] = []
    clip = {k[len(CLIP_PREFIX):]: state[k] for k in keys if k.startswith(CLIP_PREFIX)}
    for k in list(clip):
        alias = state[CLIP_ALIAS_PREFIX + k]
        if alias.data_ptr() != clip[k].data_ptr() and not torch.equal(alias, clip[k]):
            # load_state_dict fills the shared CLIP from both names; the adapter's copy is loaded last
            clip[k] = alias
            if not notes:
                notes.append(f"{CLIP_PREFIX}* and {CLIP_ALIAS_PREFIX}* differ (first: {k}); using "
                             f"{CLIP_ALIAS_PREFIX}*, which the official load_state_dict applies last")
    nonfinite = next((k for k in expected if not bool(torch.isfinite(state[k]).all())), None)
    if nonfinite:
        raise OfficialCheckpointError(f"{path}: {nonfinite} holds NaN or infinite values")
    dtypes = sorted({str(state[CLIP_PREFIX + k].dtype).replace("torch.", "") for k in clip})
    return OfficialCheckpoint(path=path, preset=preset, state=state, clip=clip, clip_geometry=clip_g,
                              head_geometry=head_g, clip_dtype="/".join(dtypes), notes=notes)


def _meta_keys() -> set[str]:
    from export.official.layout import CLIP_META_KEYS

    return {p + k for p in (CLIP_PREFIX, CLIP_ALIAS_PREFIX) for k in CLIP_META_KEYS}


def load_official(path: str | os.PathLike[str], preset: str) -> OfficialCheckpoint:
    """Read and validate an official DSANet checkpoint (see the module docstring)."""
    p = Path(path)
    return validate(read_state_dict(p), p, preset)


__all__ = ["ADAPTER_PREFIX", "OfficialCheckpoint", "OfficialCheckpointError", "load_official", "read_state_dict",
           "sha256_of", "unwrap_state_dict", "validate"]
