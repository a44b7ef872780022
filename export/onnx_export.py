"""Export a trained DSANet (+ the CLIP image tower) to a model bundle, with parity checks.

``dsanet export`` writes ``encoder.onnx`` and ``head.onnx`` with torch's current exporter
(``torch.onnx.export(..., dynamo=True)``), runs both through ONNX Runtime next to the torch modules
and refuses to produce a bundle whose graphs disagree with torch (head: max |diff| <= 1e-4 on scores
and class probabilities for T in {16, 64, 256} x B in {1, 4}; encoder: cosine >= 0.9999 per
embedding, >= 0.995 for the dynamically quantised INT8 encoder). The measured figures go into
bundle.json. The bundle is assembled in a temporary directory next to the target and renamed into
place at the end, so a half-written bundle never exists under the target name.

``build_tiny_bundle`` makes a small but complete bundle (tiny random CLIP, real DSANet head
architecture) for tests and demos.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import (
    BUNDLE_FORMAT_VERSION,
    DEFAULT_MAX_BATCH,
    ENCODER_ONNX,
    ENCODER_TORCH_DIR,
    HEAD_ONNX,
    HEAD_WEIGHTS,
    Bundle,
    EncoderSpec,
    HeadSpec,
    SourceInfo,
    TorchSpec,
    display_name,
    file_entries,
    load_bundle,
    sha256_file,
)
from engine.errors import DsanetError
from engine.preprocess import Preprocessing

log = logging.getLogger(__name__)

HEAD_TOLERANCE = 1e-4
ENCODER_MIN_COSINE = 0.9999
ENCODER_INT8_MIN_COSINE = 0.995
HEAD_CASES = tuple((b, t) for t in (16, 64, 256) for b in (1, 4))


def head_cases(max_window: int) -> tuple[tuple[int, int], ...]:
    """The standard (B, T) parity cases, windows capped at the head's maximum (which is always covered)."""
    windows = sorted({min(t, max_window) for _, t in HEAD_CASES} | {max_window})
    return tuple((b, t) for t in windows for b in (1, 4))
DEFAULT_FPS = {"ucf": 30.0, "xd": 24.0}  # frame rates of the benchmark videos the features came from


class ExportError(DsanetError):
    """The export could not produce a trustworthy bundle (bad checkpoint, exporter failure, parity)."""


class ParityError(ExportError):
    """An exported graph disagrees with torch beyond the tolerance; ``figures`` holds the measurements."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


@dataclass
class ExportOptions:
    name: str | None = None
    encoder_int8: bool = False
    torch_weights: bool = True
    max_batch: int = DEFAULT_MAX_BATCH
    snippet_fps: float | None = None
    opset: int | None = None
    evaluation: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    clip: str | None = None
    tiny_clip: bool = False


# --- exporting -----------------------------------------------------------------------------------
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
        raise ExportError(f"ONNX export of the image encoder failed: {type(exc).__name__}: {exc}") from exc
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
        raise ExportError(f"ONNX export of the DSANet head failed: {type(exc).__name__}: {exc}") from exc
    return path


def quantize_encoder_int8(src: Path, dst: Path) -> Path:
    """Dynamic INT8 weight quantisation (MatMul/Gemm) with ONNX Runtime: ~1.6x faster on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        _quiet_export(quantize_dynamic, str(src), str(dst), weight_type=QuantType.QInt8,
                      op_types_to_quantize=["MatMul", "Gemm"])
    except Exception as exc:
        raise ExportError(f"INT8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    return dst


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


# --- parity --------------------------------------------------------------------------------------
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


def _fmt_parity(parity: dict[str, Any]) -> str:
    parts = []
    h = parity.get("head")
    if h:
        parts.append(f"head max|diff| scores {h['scores_max_abs']:.2e}, class_probs {h['class_probs_max_abs']:.2e} "
                     f"(<= {h['tolerance']:.0e}: {'ok' if h['passed'] else 'FAIL'})")
    for key in ("encoder", "encoder_int8"):
        e = parity.get(key)
        if e:
            parts.append(f"{key} min cosine {e['min_cosine']:.6f} (>= {e['min_required']}: "
                         f"{'ok' if e['passed'] else 'FAIL'})")
    return "; ".join(parts)


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: exists and is not empty (pass --force to replace it)")


# --- bundle assembly ---------------------------------------------------------------------------
def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dsanet-stream", "torch", "onnx", "onnxscript", "onnxruntime", "transformers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _save_head_weights(head: Any, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path), metadata={"dsanet_config": head.config.to_json()})


def write_bundle(head: Any, vision: Any, out_dir: str | os.PathLike[str], preprocessing: Preprocessing,
                 options: ExportOptions | None = None, force: bool = False) -> Bundle:
    """Export both networks, check parity, write bundle.json; return the loaded, validated bundle.

    ``head``: a ``DSANetHead``; ``vision``: a ``CLIPVisionModelWithProjection``. Raises ``ParityError``
    (bundle not written) when a graph disagrees with torch.
    """
    import torch

    from engine.runtimes.torch import make_encoder_module

    opts = options or ExportOptions()
    out = Path(out_dir)
    _check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = head.config
    width = int(config.embed_dim)
    max_window = int(config.visual_length)
    head = head.eval().cpu()
    encoder = make_encoder_module(vision.eval().cpu())
    with torch.no_grad():
        probe = encoder(torch.zeros((1, 3, preprocessing.size, preprocessing.size)))
    if probe.shape[-1] != width:
        raise ExportError(f"the CLIP image tower outputs {probe.shape[-1]}-d embeddings but the head takes {width}-d "
                          "(was the checkpoint trained on another CLIP?)")

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        parity: dict[str, Any] = {}
        log.info("exporting the head (T 1..%d, dynamic batch)", max_window)
        export_head_onnx(head, tmp / HEAD_ONNX, width, max_window, opts.max_batch, opts.opset)
        parity["head"] = head_parity(head, tmp / HEAD_ONNX, width, head_cases(max_window))
        log.info("exporting the image encoder")
        enc_fp32 = tmp / (ENCODER_ONNX if not opts.encoder_int8 else "encoder.fp32.onnx")
        export_encoder_onnx(encoder, enc_fp32, preprocessing.size, opts.max_batch, opts.opset)
        parity["encoder"] = encoder_parity(encoder, enc_fp32, preprocessing.size)
        if opts.encoder_int8:
            quantize_encoder_int8(enc_fp32, tmp / ENCODER_ONNX)
            parity["encoder_int8"] = encoder_parity(encoder, tmp / ENCODER_ONNX, preprocessing.size,
                                                    ENCODER_INT8_MIN_COSINE)
            enc_fp32.unlink()
        failed = [k for k, v in parity.items() if not v["passed"]]
        if failed:
            raise ParityError(f"parity check failed for {', '.join(failed)}: {_fmt_parity(parity)}", parity)
        log.info("parity: %s", _fmt_parity(parity))

        names = [ENCODER_ONNX, HEAD_ONNX]
        torch_spec = None
        if opts.torch_weights:
            _save_head_weights(head, tmp / HEAD_WEIGHTS)
            vision.save_pretrained(str(tmp / ENCODER_TORCH_DIR), safe_serialization=True)
            names += [HEAD_WEIGHTS, ENCODER_TORCH_DIR]
            torch_spec = TorchSpec()
        preset = str(opts.source.get("preset") or config.preset)
        fps = float(opts.snippet_fps or config.snippet_fps or DEFAULT_FPS.get(preset, 30.0))
        frames = int(config.snippet_frames)
        bundle = Bundle(
            format_version=BUNDLE_FORMAT_VERSION,
            name=opts.name or out.name,
            created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            class_names=tuple(config.class_names),
            display_names=tuple(display_name(c) for c in config.class_names),
            snippet_frames=frames, snippet_fps=fps, snippet_seconds=round(frames / fps, 6),
            embedding_width=width, max_window=max_window, tau=float(config.tau),
            preprocessing=preprocessing,
            encoder=EncoderSpec(quantization="int8-dynamic" if opts.encoder_int8 else None, max_batch=opts.max_batch),
            head=HeadSpec(max_batch=opts.max_batch),
            torch=torch_spec,
            source=SourceInfo(checkpoint=opts.source.get("checkpoint"),
                              checkpoint_sha256=opts.source.get("checkpoint_sha256"), preset=preset,
                              clip=opts.clip, tiny_clip=opts.tiny_clip),
            evaluation=opts.evaluation,
            tools=tool_versions(),
            onnx_opset=onnx_opset(tmp / HEAD_ONNX),
            parity=parity,
            files=file_entries(tmp, names),
            extra={"model_config": config.to_dict()},
        )
        bundle.write(tmp)
        load_bundle(tmp)  # the exporter must never write a bundle the service would refuse
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out)


# --- checkpoints -------------------------------------------------------------------------------
def load_checkpoint_model(checkpoint: str | os.PathLike[str], clip_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(DSANet in eval mode, what bundle.json records about its source) from a trainer checkpoint."""
    from export.trainer import load_checkpoint, read_checkpoint_info

    path = Path(checkpoint)
    info = read_checkpoint_info(path)  # CheckpointError (a DsanetError) names the file when it is not one
    model = load_checkpoint(path, clip_dir, "cpu")
    train = info.train_config if isinstance(info.train_config, dict) else {}
    source: dict[str, Any] = {"checkpoint": path.name, "checkpoint_sha256": sha256_file(path),
                              "preset": train.get("preset") or info.dsanet_config.preset,
                              "snippet_fps": info.snippet_fps}
    metric = info.metadata.get("metric")
    if metric:
        try:
            figures = json.loads(metric)
        except json.JSONDecodeError:
            figures = None
        if isinstance(figures, dict):
            figures = {k: v for k, v in figures.items() if isinstance(v, int | float | str)}
            for key in ("epoch", "step"):
                if info.metadata.get(key, "").isdigit():
                    figures[key] = int(info.metadata[key])
            figures["source"] = "checkpoint metadata (evaluation during training)"
            source["evaluation"] = figures
    return model.eval(), source


def export_checkpoint(checkpoint: str | os.PathLike[str], clip: str, out_dir: str | os.PathLike[str],
                      options: ExportOptions | None = None, force: bool = False) -> Bundle:
    """The ``dsanet export`` pipeline: checkpoint + CLIP folder -> bundle directory."""
    from engine.clip import is_tiny, load_vision_model, resolve_clip_dir

    opts = options or ExportOptions()
    _check_out_dir(Path(out_dir), force)  # fail before minutes of work, not after
    clip_dir = resolve_clip_dir(clip)
    model, source = load_checkpoint_model(checkpoint, clip_dir)
    opts.source = {**source, **opts.source}
    opts.clip = "tiny" if is_tiny(clip_dir) else clip_dir.name
    opts.tiny_clip = is_tiny(clip_dir)
    if opts.snippet_fps is None:
        opts.snippet_fps = source.get("snippet_fps")
    if opts.evaluation is None:
        opts.evaluation = _find_evaluation(Path(checkpoint).parent) or source.get("evaluation")
    return write_bundle(model.inference_head(), load_vision_model(clip_dir), out_dir,
                        Preprocessing.from_clip_dir(clip_dir), opts, force=force)


def _find_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """Evaluation figures saved next to the checkpoint, if the trainer left any."""
    for name in ("evaluation.json", "eval.json", "metrics.json"):
        p = run_dir / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict):
                return data
    return None


# --- the tiny bundle for tests and demos -------------------------------------------------------
def build_tiny_bundle(out_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
                      clip_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                      encoder_int8: bool = False, force: bool = True) -> Path:
    """A complete bundle on the tiny random CLIP: DSANet (UCF layout, random init or ``checkpoint``).

    ``clip_dir`` defaults to the shared tiny CLIP (``resolve_clip_dir('tiny')``). Scores mean nothing;
    shapes, names and every code path are the real ones.
    """
    import torch

    from engine.clip import build_tiny_clip, load_vision_model, resolve_clip_dir
    from engine.model import DSANetConfig, build_model, text_width_of

    if clip_dir is None:
        clip = resolve_clip_dir("tiny")
    else:
        clip = Path(clip_dir)
        if not (clip / "config.json").exists():
            build_tiny_clip(clip)
    opts = ExportOptions(encoder_int8=encoder_int8, clip="tiny", tiny_clip=True, snippet_fps=30.0)
    if checkpoint is not None:
        model, source = load_checkpoint_model(checkpoint, clip)
        opts.source = source
        opts.evaluation = source.get("evaluation")
    else:
        torch.manual_seed(seed)
        model = build_model(DSANetConfig(text_width=text_width_of(clip)), clip)
        opts.source = {"preset": "ucf"}
    opts.name = f"tiny-{Path(out_dir).name}"
    write_bundle(model.eval().inference_head(), load_vision_model(clip), out_dir, Preprocessing.from_clip_dir(clip),
                 opts, force=force)
    return Path(out_dir)


def describe_bundle(bundle: Bundle) -> str:
    """Human-readable summary for ``dsanet bundle-info``."""
    lines = [
        f"bundle {bundle.name} (format {bundle.format_version}) at {bundle.root}",
        f"  created       {bundle.created_utc}",
        f"  classes ({bundle.num_classes}): " + ", ".join(
            f"{c} ({d})" if d != c else c for c, d in zip(bundle.class_names, bundle.display_names, strict=True)),
        f"  snippets      {bundle.snippet_frames} frames at {bundle.snippet_fps:g} fps = "
        f"{bundle.snippet_seconds:.3f} s each; window up to {bundle.max_window} snippets",
        f"  embedding     {bundle.embedding_width}-d, tau {bundle.tau:g}",
        f"  preprocessing {json.dumps(bundle.preprocessing.to_dict())}",
        f"  encoder       {bundle.encoder.file} ({bundle.encoder.quantization or 'fp32'}, max batch {bundle.encoder.max_batch})",
        f"  head          {bundle.head.file} (max batch {bundle.head.max_batch})",
        f"  torch weights {'yes' if bundle.torch else 'no (onnxruntime only)'}",
        f"  source        checkpoint {bundle.source.checkpoint or '-'} sha256 {(bundle.source.checkpoint_sha256 or '-')[:16]}"
        f" preset {bundle.source.preset or '-'} clip {bundle.source.clip or '-'}"
        + ("  [TINY RANDOM CLIP: scores are meaningless]" if bundle.source.tiny_clip else ""),
        f"  ONNX opset    {bundle.onnx_opset}",
        "  tools         " + ", ".join(f"{k} {v}" for k, v in bundle.tools.items()),
        f"  parity        {_fmt_parity(bundle.parity) or 'not recorded'}",
    ]
    h = bundle.parity.get("head")
    if h:
        for r in h["cases"]:
            lines.append(f"                B={r['batch']} T={r['window']}: scores {r['scores_max_abs']:.2e}, "
                         f"class_probs {r['class_probs_max_abs']:.2e}")
    if bundle.evaluation:
        lines.append("  evaluation    " + ", ".join(f"{k} {v}" for k, v in bundle.evaluation.items()))
    lines.append(f"  files ({len(bundle.files)}):")
    for name, entry in sorted(bundle.files.items()):
        lines.append(f"    {name:<36} {entry.bytes:>12,d} B  sha256 {entry.sha256[:16]}")
    return "\n".join(lines)
