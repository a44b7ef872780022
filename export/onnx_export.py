"""Torch -> ONNX for the two networks of a bundle: the CLIP image tower and the DSANet head.

The graphs are written with torch's current exporter (``torch.onnx.export(..., dynamo=True)``) with a
dynamic batch axis (and a dynamic window axis 1..max_window for the head), so one file serves every
camera count and window length. ``quantize_encoder_int8`` adds the dynamically quantised encoder.
Checking the graphs against torch is :mod:`export.parity`; assembling a bundle is
:mod:`export.bundle_writer`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from engine.bundle import DEFAULT_MAX_BATCH
from engine.errors import DsanetError, RuntimeFailure

log = logging.getLogger(__name__)


class ExportError(DsanetError):
    """The export cannot start from what it was given (output folder, checkpoint, CLIP mismatch): exit 2."""


class ExportFailure(ExportError, RuntimeFailure):
    """The exporter itself failed on valid input (torch.onnx, quantisation, parity): exit 1."""


def _quiet_export(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an exporter call without its many harmless warnings (torchvision ops, deprecated specs)."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


def export_encoder_onnx(encoder: Any, path: Path, size: int, max_batch: int = DEFAULT_MAX_BATCH,
                        opset: int | None = None) -> Path:
    """CLIP image tower (wrapped to return image_embeds) -> ONNX with a dynamic batch axis."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    example = torch.zeros((2, 3, size, size), dtype=torch.float32)
    kwargs: dict[str, Any] = dict(dynamo=True, input_names=["pixel_values"], output_names=["image_embeds"],
                                  dynamic_shapes={"pixel_values": {0: batch}}, external_data=False, verbose=False)
    if opset:
        kwargs["opset_version"] = opset
    try:
        with torch.no_grad():
            _quiet_export(torch.onnx.export, encoder.eval(), (example,), str(path), **kwargs)
    except Exception as exc:  # the exporter raises many types; the user needs one line
        raise ExportFailure(f"ONNX export of the image encoder failed: {type(exc).__name__}: {exc}") from exc
    return path


def export_head_onnx(head: Any, path: Path, width: int, max_window: int, max_batch: int = DEFAULT_MAX_BATCH,
                     opset: int | None = None) -> Path:
    """DSANetHead -> ONNX with dynamic batch and window (1..max_window) axes."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    window = torch.export.Dim("window", min=1, max=max_window)
    # B=2, T=16 as examples: sizes 0/1 would be specialised by torch.export
    feats = torch.zeros((2, 16, width), dtype=torch.float32)
    lengths = torch.tensor([16, 9], dtype=torch.int64)
    kwargs: dict[str, Any] = dict(dynamo=True, input_names=["features", "lengths"],
                                  output_names=["scores", "class_probs"],
                                  dynamic_shapes={"features": {0: batch, 1: window}, "lengths": {0: batch}},
                                  external_data=False, verbose=False)
    if opset:
        kwargs["opset_version"] = opset
    try:
        with torch.no_grad():
            _quiet_export(torch.onnx.export, head.eval(), (feats, lengths), str(path), **kwargs)
    except Exception as exc:
        raise ExportFailure(f"ONNX export of the DSANet head failed: {type(exc).__name__}: {exc}") from exc
    return path


def quantize_encoder_int8(src: Path, dst: Path) -> Path:
    """Dynamic INT8 weight quantisation (MatMul/Gemm) with ONNX Runtime: ~1.6x faster on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        _quiet_export(quantize_dynamic, str(src), str(dst), weight_type=QuantType.QInt8,
                      op_types_to_quantize=["MatMul", "Gemm"])
    except Exception as exc:
        raise ExportFailure(f"INT8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    return dst


def quantize_head_int8(src: Path, dst: Path) -> Path:
    """Dynamic INT8 weight quantisation of the head's MatMul/Gemm (``--head-int8``; gated by
    :mod:`export.head_int8`, not by the fp32 parity tolerance)."""
    return quantize_encoder_int8(src, dst)


def onnx_opset(path: Path) -> int | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # opset is informative only
        return None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


TEXT_MAX_TOKENS = 77  # CLIP's context length


def export_text_onnx(graph: Any, path: Path, max_prompts: int = 4096, opset: int | None = None) -> Path:
    """``PromptFeatureGraph`` -> ONNX with dynamic prompt count and token length (2..77)."""
    import torch

    prompts = torch.export.Dim("prompts", min=1, max=max_prompts)
    tokens = torch.export.Dim("tokens", min=2, max=TEXT_MAX_TOKENS)
    ids = torch.zeros((3, 7), dtype=torch.int64)  # 3 != 7: torch.export must not tie the two axes
    ids[:, -1] = graph.eos_id
    ids[0, 3] = graph.eos_id
    kwargs: dict[str, Any] = dict(dynamo=True, input_names=["input_ids"],
                                  output_names=["prompt_features", "text_features"],
                                  dynamic_shapes={"input_ids": {0: prompts, 1: tokens}}, external_data=False,
                                  verbose=False)
    if opset:
        kwargs["opset_version"] = opset
    try:
        with torch.no_grad():
            _quiet_export(torch.onnx.export, graph.eval(), (ids,), str(path), **kwargs)
    except Exception as exc:
        raise ExportFailure(f"ONNX export of the text tower failed: {type(exc).__name__}: {exc}") from exc
    return path


def export_open_head_onnx(head: Any, path: Path, width: int, max_window: int, max_batch: int = DEFAULT_MAX_BATCH,
                          max_classes: int = 1024, opset: int | None = None) -> Path:
    """``DSANetOpenHead`` -> ONNX: dynamic batch, window (1..max_window) and class count (2..max_classes)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    window = torch.export.Dim("window", min=1, max=max_window)
    classes = torch.export.Dim("classes", min=2, max=max_classes)
    feats = torch.zeros((2, 16, width), dtype=torch.float32)
    lengths = torch.tensor([16, 9], dtype=torch.int64)
    text = torch.nn.functional.normalize(torch.randn((5, head.text_features.shape[1])), dim=-1)
    kwargs: dict[str, Any] = dict(dynamo=True, input_names=["features", "lengths", "text_features"],
                                  output_names=["scores", "class_probs"],
                                  dynamic_shapes={"features": {0: batch, 1: window}, "lengths": {0: batch},
                                                  "text_features": {0: classes}},
                                  external_data=False, verbose=False)
    if opset:
        kwargs["opset_version"] = opset
    try:
        with torch.no_grad():
            _quiet_export(torch.onnx.export, head.eval(), (feats, lengths, text), str(path), **kwargs)
    except Exception as exc:
        raise ExportFailure(f"ONNX export of the open-vocabulary head failed: {type(exc).__name__}: {exc}") from exc
    return path
