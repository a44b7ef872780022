"""Static (calibrated, QDQ) INT8 for the CLIP image encoder, beside the dynamic INT8 the exporter ships.

Dynamic INT8 (``export.onnx_export.quantize_encoder_int8``) stores INT8 weights and quantises each MatMul's
activations at run time (a min/max pass over the activation per call). Static INT8 fixes the activation
scales from a calibration set, so no per-call min/max is needed, and writes QuantizeLinear /
DequantizeLinear pairs around each MatMul/Gemm (QDQ format) that ONNX Runtime fuses into integer kernels.
Which one is faster, and whether static holds the embedding cosine gate, is measured by
``bench/encoder_int8.py``; the exporter keeps the dynamic one unless static is both faster and within the
gate (see BENCHMARKS.md, "CLIP image encoder: dynamic vs static INT8").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DsanetError


class QuantizationFailure(DsanetError):
    """Static quantisation could not be done (bad graph, no calibration data)."""


def calibration_images(size: int, frames: Sequence[np.ndarray]) -> np.ndarray:
    """Preprocessed calibration inputs [N, 3, size, size] from RGB frames (the service's preprocessing)."""
    from engine.preprocess import preprocess_frames

    if not frames:
        raise QuantizationFailure("static INT8 needs at least one calibration frame")
    return preprocess_frames(list(frames), size=size)


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a fixed array, one image per call."""

    def __init__(self, name: str, images: np.ndarray):
        self._name = name
        self._it: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self._name: x[None].astype(np.float32)}

    def rewind(self) -> None:  # not needed by MinMax; present for the protocol
        pass


def quantize_encoder_static(src: Path, dst: Path, images: np.ndarray, *, per_channel: bool = True,
                            method: str = "minmax", input_name: str = "pixel_values",
                            op_types: Sequence[str] = ("MatMul", "Gemm")) -> Path:
    """Write ``dst``: ``src`` with QDQ INT8 (U8 activations, S8 weights) calibrated on ``images``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods: dict[str, Any] = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise QuantizationFailure(f"calibration method must be one of {sorted(methods)}, not {method!r}")
    if len(images) == 0:
        raise QuantizationFailure("static INT8 needs at least one calibration image")
    try:
        quantize_static(str(src), str(dst), _Reader(input_name, images), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        op_types_to_quantize=list(op_types), calibrate_method=methods[method],
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       "CalibMovingAverage": False})
    except Exception as exc:
        raise QuantizationFailure(f"static INT8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") \
            from exc
    return dst
