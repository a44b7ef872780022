"""Assemble a model bundle: export both graphs, check parity, write ``bundle.json``, then rename into place.

``write_bundle`` builds the bundle in a temporary directory next to the target and renames it into
place only after the parity checks passed and ``engine.bundle.load_bundle`` accepted it, so a
half-written or untrustworthy bundle never exists under the target name. ``export_checkpoint`` is the
``dsanet export`` pipeline (trainer checkpoint + CLIP folder -> bundle). The bundle format itself is
:mod:`engine.bundle`; its summary is ``Bundle.describe()``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.bundle import (
    BUNDLE_FORMAT_VERSION,
    DEFAULT_MAX_BATCH,
    ENCODER_ONNX,
    ENCODER_TORCH_DIR,
    HEAD_INT8_ONNX,
    HEAD_ONNX,
    HEAD_OPEN_ONNX,
    HEAD_WEIGHTS,
    TEXT_ONNX,
    TOKENIZER_DIR,
    Bundle,
    EncoderSpec,
    HeadOpenSpec,
    HeadSpec,
    SourceInfo,
    TextSpec,
    TorchSpec,
    describe_parity,
    display_name,
    file_entries,
    load_bundle,
    sha256_file,
)
from engine.preprocess import Preprocessing
from export import onnx_export
from export import parity as checks
from export.onnx_export import ExportError
from export.parity import ENCODER_INT8_MIN_COSINE, ParityError, head_cases

log = logging.getLogger(__name__)

DEFAULT_FPS = {"ucf": 30.0, "xd": 24.0}  # frame rates of the benchmark videos the features came from


@dataclass
class ExportOptions:
    name: str | None = None
    encoder_int8: bool = False
    head_int8: bool = False  # also ship head.int8.onnx, gated on ``head_int8_data`` (export.head_int8)
    head_int8_data: Any = None  # export.head_int8.GateData
    head_int8_data_root: str | None = None  # where the checkpoint's test list lives (default: its data root)
    torch_weights: bool = True
    max_batch: int = DEFAULT_MAX_BATCH
    snippet_fps: float | None = None
    opset: int | None = None
    evaluation: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    clip: str | None = None
    tiny_clip: bool = False
    # A parent bundle whose text.onnx and tokenizer/ are reused byte for byte (``dsanet finetune``: the
    # text tower did not change, only the head); head_open.onnx is exported from this head.
    categories_from: str | os.PathLike[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # merged into bundle.json's ``extra``


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: exists and is not empty (pass --force to replace it)")


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


def _export_categories(head: Any, text: Any, clip_dir: Path, tmp: Path, opts: ExportOptions,
                       parity: dict[str, Any]) -> TextSpec:
    """text.onnx, tokenizer/ and head_open.onnx, with their parity figures: what category edits need."""
    import numpy as np

    from engine.clip import load_fast_tokenizer
    from engine.model.head import DSANetOpenHead
    from engine.model.text import PromptFeatureGraph

    config = head.config
    tokenizer = load_fast_tokenizer(clip_dir)
    tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                                  else tokenizer.eos_token_id)
    log.info("exporting the text tower")
    onnx_export.export_text_onnx(PromptFeatureGraph(text.eval().cpu(), eos), tmp / TEXT_ONNX, opset=opts.opset)
    prompts = [list(p) for p in config.class_prompts]
    parity["text"] = checks.text_parity(text, tmp / TEXT_ONNX, tmp / TOKENIZER_DIR / "tokenizer.json", prompts, eos, pad)
    log.info("exporting the open-vocabulary head")
    open_head = DSANetOpenHead(config, head.backbone, head.text_features)
    onnx_export.export_open_head_onnx(open_head, tmp / HEAD_OPEN_ONNX, int(config.embed_dim),
                                      int(config.visual_length), opts.max_batch, opset=opts.opset)
    sess_feats = checks.onnx_class_features(tmp / TEXT_ONNX, tmp / TOKENIZER_DIR / "tokenizer.json", prompts, eos, pad)
    parity["head_open"] = checks.head_open_parity(tmp / HEAD_ONNX, tmp / HEAD_OPEN_ONNX, np.asarray(sess_feats),
                                                  int(config.embed_dim), head_cases(int(config.visual_length)))
    return TextSpec(eos_id=eos, pad_id=pad, class_prompts=tuple(tuple(p) for p in prompts))


def _reuse_categories(head: Any, parent_dir: Path, tmp: Path, opts: ExportOptions,
                      parity: dict[str, Any]) -> TextSpec | None:
    """Copy the parent's text tower and tokenizer (unchanged), export head_open.onnx from ``head`` and
    check it against the new head.onnx on the parent text tower's class features."""
    import numpy as np

    from engine.model.head import DSANetOpenHead

    parent = load_bundle(parent_dir)
    if parent.text is None or parent.head_open is None:
        return None
    shutil.copyfile(parent.path(parent.text.file), tmp / TEXT_ONNX)
    shutil.copytree(parent.path(TOKENIZER_DIR), tmp / TOKENIZER_DIR)
    if "text" in parent.parity:
        parity["text"] = {**parent.parity["text"], "reused_from": parent.name}
    config = head.config
    open_head = DSANetOpenHead(config, head.backbone, head.text_features)
    onnx_export.export_open_head_onnx(open_head, tmp / HEAD_OPEN_ONNX, int(config.embed_dim),
                                      int(config.visual_length), opts.max_batch, opset=opts.opset)
    t = parent.text
    prompts = [list(p) for p in t.class_prompts]
    feats = checks.onnx_class_features(tmp / TEXT_ONNX, tmp / t.tokenizer, prompts, t.eos_id, t.pad_id)
    parity["head_open"] = checks.head_open_parity(tmp / HEAD_ONNX, tmp / HEAD_OPEN_ONNX, np.asarray(feats),
                                                  int(config.embed_dim), head_cases(int(config.visual_length)))
    return t


def write_bundle(head: Any, vision: Any, out_dir: str | os.PathLike[str], preprocessing: Preprocessing,
                 options: ExportOptions | None = None, force: bool = False, text: Any | None = None,
                 clip_dir: str | os.PathLike[str] | None = None) -> Bundle:
    """Export the networks, check parity, write bundle.json; return the loaded, validated bundle.

    ``head``: a ``DSANetHead``; ``vision``: a ``CLIPVisionModelWithProjection``; ``text`` (with
    ``clip_dir`` for its tokenizer): the model's ``AdaptedCLIPText``, which adds ``text.onnx``,
    ``tokenizer/`` and ``head_open.onnx`` so the bundle's categories can be edited at deployment.
    Raises ``ParityError`` (bundle not written) when a graph disagrees with torch.
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
        onnx_export.export_head_onnx(head, tmp / HEAD_ONNX, width, max_window, opts.max_batch, opts.opset)
        parity["head"] = checks.head_parity(head, tmp / HEAD_ONNX, width, head_cases(max_window))
        if opts.head_int8:
            from export import head_int8

            if opts.head_int8_data is None:
                raise head_int8.HeadInt8GateError("--head-int8 needs test features to gate the INT8 head on")
            log.info("quantising the head to INT8 and gating it on %s", opts.head_int8_data.source)
            onnx_export.quantize_head_int8(tmp / HEAD_ONNX, tmp / HEAD_INT8_ONNX)
            parity["head_int8"] = head_int8.gate(tmp / HEAD_ONNX, tmp / HEAD_INT8_ONNX, opts.head_int8_data, width,
                                                 max_window)
            head_int8.check_gate(parity["head_int8"])
        log.info("exporting the image encoder")
        enc_fp32 = tmp / (ENCODER_ONNX if not opts.encoder_int8 else "encoder.fp32.onnx")
        onnx_export.export_encoder_onnx(encoder, enc_fp32, preprocessing.size, opts.max_batch, opts.opset)
        parity["encoder"] = checks.encoder_parity(encoder, enc_fp32, preprocessing.size)
        text_spec = None
        if text is not None:
            if clip_dir is None:
                raise ExportError("exporting the text tower needs the CLIP folder of its tokenizer (clip_dir)")
            text_spec = _export_categories(head, text, Path(clip_dir), tmp, opts, parity)
        elif opts.categories_from is not None:
            text_spec = _reuse_categories(head, Path(opts.categories_from), tmp, opts, parity)
        if opts.encoder_int8:
            onnx_export.quantize_encoder_int8(enc_fp32, tmp / ENCODER_ONNX)
            parity["encoder_int8"] = checks.encoder_parity(encoder, tmp / ENCODER_ONNX, preprocessing.size,
                                                    ENCODER_INT8_MIN_COSINE)
            enc_fp32.unlink()
        failed = [k for k, v in parity.items() if not v["passed"]]
        if failed:
            raise ParityError(f"parity check failed for {', '.join(failed)}: {describe_parity(parity)}", parity)
        log.info("parity: %s", describe_parity(parity))

        names = [ENCODER_ONNX, HEAD_ONNX] + ([HEAD_INT8_ONNX] if opts.head_int8 else [])
        if text_spec is not None:
            names += [TEXT_ONNX, HEAD_OPEN_ONNX, TOKENIZER_DIR]
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
            head=HeadSpec(max_batch=opts.max_batch, int8_file=HEAD_INT8_ONNX if opts.head_int8 else None),
            torch=torch_spec,
            text=text_spec,
            head_open=HeadOpenSpec(max_batch=opts.max_batch) if text_spec is not None else None,
            source=SourceInfo(checkpoint=opts.source.get("checkpoint"),
                              checkpoint_sha256=opts.source.get("checkpoint_sha256"), preset=preset,
                              clip=opts.clip, tiny_clip=opts.tiny_clip),
            evaluation=opts.evaluation,
            tools=tool_versions(),
            onnx_opset=onnx_export.onnx_opset(tmp / HEAD_ONNX),
            parity=parity,
            files=file_entries(tmp, names),
            extra={"model_config": config.to_dict(), **opts.extra},
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


def load_checkpoint_model(checkpoint: str | os.PathLike[str], clip_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(DSANet in eval mode, what bundle.json records about its source) from a trainer checkpoint."""
    from export.checkpoint import load_checkpoint, read_checkpoint_info

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
    if opts.head_int8 and opts.head_int8_data is None:
        from export.head_int8 import load_gate_data

        opts.head_int8_data = load_gate_data(checkpoint, opts.head_int8_data_root)
    return write_bundle(model.inference_head(), load_vision_model(clip_dir), out_dir,
                        Preprocessing.from_clip_dir(clip_dir), opts, force=force, text=model.text, clip_dir=clip_dir)


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
