"""Parity checks: an exported graph must compute what the torch module computes, or no bundle is written.

Head: max |torch - ONNX Runtime| <= 1e-4 on scores and class probabilities for T in {16, 64, max window}
x B in {1, 4}, with varied lengths so padding masks are exercised. Encoder: cosine >= 0.9999 per
embedding between torch and ONNX Runtime (>= 0.995 for the dynamically quantised INT8 encoder), on
smooth synthetic scenes through the real CLIP preprocessing plus two noise images. The figures go into
``bundle.json`` (``parity``) and ``dsanet bundle-info`` prints them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import DEFAULT_MAX_WINDOW
from export.onnx_export import ExportFailure

HEAD_TOLERANCE = 1e-4
ENCODER_MIN_COSINE = 0.9999
ENCODER_INT8_MIN_COSINE = 0.995
HEAD_CASES = tuple((b, t) for t in (16, 64, DEFAULT_MAX_WINDOW) for b in (1, 4))


class ParityError(ExportFailure):
    """An exported graph disagrees with torch beyond the tolerance; ``figures`` holds the measurements
    (and the message ends with them as JSON, so ``dsanet export`` shows what was measured)."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(f"{message}\nmeasured figures:\n{json.dumps(figures, indent=2)}")
        self.figures = figures


def head_cases(max_window: int) -> tuple[tuple[int, int], ...]:
    """The standard (B, T) parity cases, windows capped at the head's maximum (which is always covered)."""
    windows = sorted({min(t, max_window) for _, t in HEAD_CASES} | {max_window})
    return tuple((b, t) for t in windows for b in (1, 4))


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def head_parity(head: Any, onnx_path: Path, width: int, cases: tuple[tuple[int, int], ...] = HEAD_CASES,
                seed: int = 0) -> dict[str, Any]:
    """Max |torch - ORT| over scores and class probs for each (B, T); varied lengths exercise masking."""
    import torch

    sess = _ort_session(onnx_path)
    rng = np.random.default_rng(seed)
    rows = []
    for b, t in cases:
        feats = rng.standard_normal((b, t, width), dtype=np.float32)
        lengths = np.array([t, max(1, t // 2), 1, max(1, t - 3)][:b] if b > 1 else [t], dtype=np.int64)
        if b > 4:
            lengths = np.resize(lengths, b)
        with torch.no_grad():
            ref_s, ref_p = head(torch.from_numpy(feats), torch.from_numpy(lengths))
        got_s, got_p = sess.run(["scores", "class_probs"], {"features": feats, "lengths": lengths})
        rows.append({"batch": b, "window": t,
                     "scores_max_abs": float(np.abs(got_s - ref_s.numpy()).max()),
                     "class_probs_max_abs": float(np.abs(got_p - ref_p.numpy()).max())})
    worst_s = max(r["scores_max_abs"] for r in rows)
    worst_p = max(r["class_probs_max_abs"] for r in rows)
    return {"cases": rows, "scores_max_abs": worst_s, "class_probs_max_abs": worst_p,
            "tolerance": HEAD_TOLERANCE, "passed": bool(worst_s <= HEAD_TOLERANCE and worst_p <= HEAD_TOLERANCE)}


def parity_images(size: int, n: int = 6, seed: int = 0) -> np.ndarray:
    """Preprocessed-looking inputs: smooth synthetic scenes through the real preprocessing, plus noise."""
    from engine.preprocess import preprocess_frames

    rng = np.random.default_rng(seed)
    frames = []
    yy, xx = np.mgrid[0:270, 0:480]
    for i in range(n - 2):
        base = (np.sin(xx / (15 + 7 * i)) + np.cos(yy / (11 + 5 * i))) * 60 + 128
        img = np.stack([base, np.roll(base, 30 * i, axis=1), 255 - base], axis=-1)
        img += rng.normal(0, 12, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    real = preprocess_frames(frames, size=size)
    noise = rng.standard_normal((2, 3, size, size), dtype=np.float32)
    return np.concatenate([real, noise], axis=0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def encoder_parity(encoder: Any, onnx_path: Path, size: int, min_cosine: float = ENCODER_MIN_COSINE,
                   seed: int = 0) -> dict[str, Any]:
    """Per-embedding cosine between torch and ORT (batch of 6, so the dynamic batch is exercised)."""
    import torch

    images = parity_images(size, seed=seed)
    sess = _ort_session(onnx_path)
    with torch.no_grad():
        ref = encoder(torch.from_numpy(images)).numpy()
    got = np.concatenate([sess.run(["image_embeds"], {"pixel_values": images[:4]})[0],
                          sess.run(["image_embeds"], {"pixel_values": images[4:]})[0]])
    cos = _cosines(got, ref)
    return {"images": int(len(images)), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs": float(np.abs(got - ref).max()), "min_required": min_cosine,
            "passed": bool(cos.min() >= min_cosine)}
