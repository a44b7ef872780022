"""The model bundle: the contract between the offline exporter and the live service (no torch here).

A bundle is a directory::

    bundle.json          what is inside and how to use it (this module's ``Bundle``)
    encoder.onnx         CLIP image tower, pixel_values [B,3,S,S] float32 -> image_embeds [B,D]
    head.onnx            DSANet head, features [B,T,D] float32 + lengths [B] int64
                         -> scores [B,T], class_probs [B,T,C]
    head.safetensors     (optional) the head's weights + DSANetConfig, for the torch / TensorRT runtimes
    encoder_torch/       (optional) the CLIP image tower in Hugging Face layout, for torch / TensorRT
    text.onnx            (optional) adapted text tower, input_ids [N,L] int64 -> prompt_features,
                         text_features [N,D] (engine.categories: categories chosen at deployment)
    head_open.onnx       (optional) the head with text_features [C,D] as a third input (dynamic C)
    tokenizer/           (optional) the CLIP tokenizer (tokenizer.json, read with ``tokenizers``)

``load_bundle`` refuses anything inconsistent with a ``BundleError`` naming the file and the problem,
so a damaged or mismatched bundle fails at start-up instead of producing silent garbage scores. Graph
shapes are read with the ``onnx`` package when it is installed (training side) and with an
unoptimised ONNX Runtime session otherwise (the service installs only onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.atomic import atomic_write
from engine.errors import BundleError, InputError
from engine.preprocess import Preprocessing

log = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
ENCODER_ONNX = "encoder.onnx"
HEAD_ONNX = "head.onnx"
HEAD_INT8_ONNX = "head.int8.onnx"
HEAD_WEIGHTS = "head.safetensors"
ENCODER_TORCH_DIR = "encoder_torch"
TEXT_ONNX = "text.onnx"
HEAD_OPEN_ONNX = "head_open.onnx"
TOKENIZER_DIR = "tokenizer"
DEFAULT_MAX_WINDOW = 256
DEFAULT_MAX_BATCH = 64

# Names whose generic prettification would read wrong.
_DISPLAY_OVERRIDES = {"roadaccidents": "Road accident", "car accident": "Car accident", "a": "Normal"}


def display_name(class_name: str) -> str:
    """Human-readable class name for events and dashboards: 'roadAccidents' -> 'Road accident'."""
    key = class_name.strip().lower()
    if key in _DISPLAY_OVERRIDES:
        return _DISPLAY_OVERRIDES[key]
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", class_name.strip()).replace("_", " ").replace("-", " ").split()
    if not words:
        return class_name
    words = [w.lower() for w in words]
    last = words[-1]
    if len(words) > 1 and last.endswith("ies") and len(last) > 4:
        words[-1] = last[:-3] + "y"  # plural category names read better singular in an alert
    elif len(words) > 1 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        words[-1] = last[:-1]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class EncoderSpec(_Strict):
    file: str = ENCODER_ONNX
    input: str = "pixel_values"
    output: str = "image_embeds"
    quantization: str | None = None  # None (fp32) or "int8-dynamic"
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1)


class HeadSpec(_Strict):
    file: str = HEAD_ONNX
    features: str = "features"
    lengths: str = "lengths"
    scores: str = "scores"
    class_probs: str = "class_probs"
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1)
    # opt-in INT8 head (``dsanet export --head-int8``), gated on test features (parity.head_int8);
    # same inputs and outputs as ``file``; the runtime uses it unless ``model.head_int8: false``
    int8_file: str | None = None


class TextSpec(_Strict):
    """The adapted text tower and its tokenizer: what turns category words into class features."""

    file: str = TEXT_ONNX
    input: str = "input_ids"
    prompt_output: str = "prompt_features"  # raw per-prompt features (before L2 normalisation)
    output: str = "text_features"  # the same, L2-normalised
    tokenizer: str = f"{TOKENIZER_DIR}/tokenizer.json"
    eos_id: int = Field(ge=0)
    pad_id: int = Field(ge=0)
    max_tokens: int = Field(default=77, ge=2)
    class_prompts: tuple[tuple[str, ...], ...]  # the prompts each bundle class was trained with


class HeadOpenSpec(_Strict):
    """``head_open.onnx``: the head with the class text features as an input."""

    file: str = HEAD_OPEN_ONNX
    features: str = "features"
    lengths: str = "lengths"
    text_features: str = "text_features"
    scores: str = "scores"
    class_probs: str = "class_probs"
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1)


class TorchSpec(_Strict):
    """Where the torch / TensorRT runtimes find weights (relative to the bundle directory)."""

    head_weights: str = HEAD_WEIGHTS  # safetensors, metadata "dsanet_config" = JSON of DSANetConfig
    encoder_dir: str | None = ENCODER_TORCH_DIR  # Hugging Face CLIPVisionModelWithProjection folder


class SourceInfo(_Strict):
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    preset: str | None = None
    clip: str | None = None
    tiny_clip: bool = False


class Bundle(_Strict):
    """Parsed and validated ``bundle.json``; ``root`` is the directory it was loaded from."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    format_version: int
    name: str = Field(min_length=1)
    created_utc: str | None = None
    class_names: tuple[str, ...]
    display_names: tuple[str, ...]
    snippet_frames: int = Field(ge=1)
    snippet_fps: float = Field(gt=0)
    snippet_seconds: float = Field(gt=0)
    embedding_width: int = Field(ge=1)
    max_window: int = Field(default=DEFAULT_MAX_WINDOW, ge=1)
    tau: float = Field(gt=0)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    head: HeadSpec = Field(default_factory=HeadSpec)
    torch: TorchSpec | None = None
    text: TextSpec | None = None  # optional: bundles exported before categories lack it
    head_open: HeadOpenSpec | None = None
    source: SourceInfo = Field(default_factory=SourceInfo)
    evaluation: dict[str, Any] | None = None
    tools: dict[str, str] = Field(default_factory=dict)
    onnx_opset: int | None = None
    parity: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    root: Path | None = Field(default=None, exclude=True)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != BUNDLE_FORMAT_VERSION:
            raise ValueError(f"unknown bundle format version {v} (this dsanet-stream reads version "
                             f"{BUNDLE_FORMAT_VERSION}; re-export the bundle with this version)")
        return v

    @field_validator("preprocessing", mode="before")
    @classmethod
    def _preprocessing(cls, v: Any) -> Any:
        if isinstance(v, dict):
            try:
                return Preprocessing.from_dict(v)
            except (InputError, TypeError) as exc:
                raise ValueError(str(exc)) from exc
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Bundle:
        if not self.class_names:
            raise ValueError("class_names is empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {list(self.class_names)}")
        if len(self.display_names) != len(self.class_names):
            raise ValueError(f"display_names has {len(self.display_names)} entries but class_names has "
                             f"{len(self.class_names)}")
        if self.text is not None and len(self.text.class_prompts) != len(self.class_names):
            raise ValueError(f"text.class_prompts has {len(self.text.class_prompts)} entries but class_names has "
                             f"{len(self.class_names)}")
        expected = self.snippet_frames / self.snippet_fps
        if not math.isclose(expected, self.snippet_seconds, rel_tol=1e-3):
            raise ValueError(f"snippet_seconds {self.snippet_seconds} != snippet_frames/snippet_fps = {expected:.4f}")
        return self

    # --- derived values -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def path(self, name: str) -> Path:
        if self.root is None:
            raise BundleError("bundle has no directory (not loaded with load_bundle)")
        return self.root / name

    @property
    def encoder_path(self) -> Path:
        return self.path(self.encoder.file)

    @property
    def head_path(self) -> Path:
        return self.path(self.head.file)

    @property
    def content_hash(self) -> str:
        """One hash over every file's hash: keys caches (TensorRT engines) to this exact bundle."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}:{self.files[name].sha256}\n".encode())
        return h.hexdigest()

    def to_json_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"root", "preprocessing"})
        d["preprocessing"] = self.preprocessing.to_dict()
        # keep bundle.json readable: keys in declaration order, preprocessing where it was declared
        return {k: d[k] for k in type(self).model_fields if k in d}

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``bundle.json`` atomically (a crash leaves the old file or the new one, never half)."""
        return atomic_write(Path(directory) / BUNDLE_JSON, json.dumps(self.to_json_dict(), indent=2) + "\n")

    def describe(self) -> str:
        """Human-readable summary (``dsanet bundle-info``): what the bundle holds and how it was checked."""
        src = self.source
        lines = [
            f"bundle {self.name} (format {self.format_version}) at {self.root}",
            f"  created       {self.created_utc}",
            f"  classes ({self.num_classes}): " + ", ".join(
                f"{c} ({d})" if d != c else c for c, d in zip(self.class_names, self.display_names, strict=True)),
            f"  snippets      {self.snippet_frames} frames at {self.snippet_fps:g} fps = "
            f"{self.snippet_seconds:.3f} s each; window up to {self.max_window} snippets",
            f"  embedding     {self.embedding_width}-d, tau {self.tau:g}",
            f"  preprocessing {json.dumps(self.preprocessing.to_dict())}",
            f"  encoder       {self.encoder.file} ({self.encoder.quantization or 'fp32'}, max batch {self.encoder.max_batch})",
            f"  head          {self.head.file} (max batch {self.head.max_batch})"
            + (f", INT8 {self.head.int8_file}" if self.head.int8_file else ""),
            f"  torch weights {'yes' if self.torch else 'no (onnxruntime only)'}",
            f"  categories    {'editable (' + self.text.file + ', ' + self.head_open.file + ')' if self.text and self.head_open else 'fixed (no text tower in this bundle)'}",
            f"  source        checkpoint {src.checkpoint or '-'} sha256 {(src.checkpoint_sha256 or '-')[:16]}"
            f" preset {src.preset or '-'} clip {src.clip or '-'}"
            + ("  [TINY RANDOM CLIP: scores are meaningless]" if src.tiny_clip else ""),
            f"  ONNX opset    {self.onnx_opset}",
            "  tools         " + ", ".join(f"{k} {v}" for k, v in self.tools.items()),
            f"  parity        {describe_parity(self.parity) or 'not recorded'}",
        ]
        h = self.parity.get("head")
        if h:
            for r in h["cases"]:
                lines.append(f"                B={r['batch']} T={r['window']}: scores {r['scores_max_abs']:.2e}, "
                             f"class_probs {r['class_probs_max_abs']:.2e}")
        if self.evaluation:
            lines.append("  evaluation    " + ", ".join(f"{k} {v}" for k, v in self.evaluation.items()))
        lines.append(f"  files ({len(self.files)}):")
        for name, entry in sorted(self.files.items()):
            lines.append(f"    {name:<36} {entry.bytes:>12,d} B  sha256 {entry.sha256[:16]}")
        return "\n".join(lines)


def describe_parity(parity: dict[str, Any]) -> str:
    """One line of the parity figures ``dsanet export`` measured (``bundle.json``'s ``parity``)."""
    parts = []
    h = parity.get("head")
    if h:
        parts.append(f"head max|diff| scores {h['scores_max_abs']:.2e}, class_probs {h['class_probs_max_abs']:.2e} "
                     f"(<= {h['tolerance']:.0e}: {'ok' if h['passed'] else 'FAIL'})")
    t = parity.get("text")
    if t:
        parts.append(f"text max|diff| {t['max_abs']:.2e} (<= {t['tolerance']:.0e}: {'ok' if t['passed'] else 'FAIL'})")
    o = parity.get("head_open")
    if o:
        parts.append(f"head_open max|diff| {o['max_abs']:.2e} (<= {o['tolerance']:.0e}: {'ok' if o['passed'] else 'FAIL'})")
    q = parity.get("head_int8")
    if q and "scores_max_abs" not in q:  # a hand-made (benchmark) bundle: not gated on test features
        parts.append(f"head_int8 not gated ({q.get('data', 'no test data')})")
    elif q:
        parts.append(f"head_int8 max|score diff| {q['scores_max_abs']:.2e} (<= {q['score_tolerance']}), frame AUC "
                     f"{q['auc_int8']:.4f} vs fp32 {q['auc_fp32']:.4f} (|delta| <= {q['auc_tolerance']}: "
                     f"{'ok' if q['passed'] else 'FAIL'})")
    for key in ("encoder", "encoder_int8"):
        e = parity.get(key)
        if e:
            parts.append(f"{key} min cosine {e['min_cosine']:.6f} (>= {e['min_required']}: "
                         f"{'ok' if e['passed'] else 'FAIL'})")
    return "; ".join(parts)


# --- graph inspection ---------------------------------------------------------------------------
Shape = tuple[int | str | None, ...]


def onnx_io(path: str | os.PathLike[str]) -> tuple[dict[str, Shape], dict[str, Shape]]:
    """(inputs, outputs) of an ONNX graph as {name: shape}, dynamic dims as str/None.

    Raises ``BundleError`` when the file cannot be parsed. Uses ``onnx`` when installed (parses the
    protobuf only), otherwise an ONNX Runtime session with graph optimisation off (cheapest ORT load).
    """
    path = Path(path)
    try:
        import onnx  # noqa: F401  (training extra)
    except ImportError:
        return _onnx_io_ort(path)
    return _onnx_io_onnx(path)


def _onnx_io_onnx(path: Path) -> tuple[dict[str, Shape], dict[str, Shape]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise BundleError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc

    def shape(vi: Any) -> Shape:
        dims = vi.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)

    inits = {i.name for i in model.graph.initializer}
    ins = {vi.name: shape(vi) for vi in model.graph.input if vi.name not in inits}
    outs = {vi.name: shape(vi) for vi in model.graph.output}
    if not ins or not outs:
        raise BundleError(f"{path}: ONNX graph has no inputs or no outputs")
    return ins, outs


def _onnx_io_ort(path: Path) -> tuple[dict[str, Shape], dict[str, Shape]]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BundleError("cannot inspect the bundle: neither onnx nor onnxruntime is installed "
                          "(pip install 'dsanet-stream[cpu]')") from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for invalid models
        raise BundleError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc

    def norm(s: Any) -> Shape:
        return tuple(d if isinstance(d, int) else (d or None) for d in s)

    return ({i.name: norm(i.shape) for i in sess.get_inputs()}, {o.name: norm(o.shape) for o in sess.get_outputs()})


# --- loading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path}: missing (a bundle directory needs {BUNDLE_JSON}; export one with `dsanet export`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def parse_bundle_json(data: dict[str, Any], where: str | os.PathLike[str] = BUNDLE_JSON) -> Bundle:
    """Validate a bundle.json dictionary (format version first, so an old/new bundle says so plainly)."""
    version = data.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{where}: unknown bundle format version {version!r} (this dsanet-stream reads "
                          f"version {BUNDLE_FORMAT_VERSION}; re-export the bundle)")
    try:
        return Bundle.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"{where}: {problems}") from None


def _last_dim(shape: Shape | None) -> int | None:
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def check_graphs(bundle: Bundle) -> None:
    """Check both ONNX graphs against bundle.json and each other (names, ranks, widths, classes)."""
    enc_path, head_path = bundle.encoder_path, bundle.head_path
    enc_in, enc_out = onnx_io(enc_path)
    head_in, head_out = onnx_io(head_path)
    e, h = bundle.encoder, bundle.head
    for names, io, path, kind in ((
        [e.input], enc_in, enc_path, "input"), ([e.output], enc_out, enc_path, "output"),
            ([h.features, h.lengths], head_in, head_path, "input"), ([h.scores, h.class_probs], head_out, head_path, "output")):
        for n in names:
            if n not in io:
                raise BundleError(f"{path}: has no {kind} named {n!r} (graph {kind}s: {sorted(io)})")
    px = enc_in[e.input]
    if len(px) != 4 or (isinstance(px[1], int) and px[1] != 3):
        raise BundleError(f"{enc_path}: input {e.input!r} must be [B,3,H,W], got {list(px)}")
    size = bundle.preprocessing.size
    if any(isinstance(d, int) and d != size for d in px[2:]):
        raise BundleError(f"{enc_path}: input is {list(px)} but bundle.json preprocessing.size is {size}")
    enc_width = _last_dim(enc_out[e.output])
    head_width = _last_dim(head_in[h.features])
    if len(enc_out[e.output]) != 2:
        raise BundleError(f"{enc_path}: output {e.output!r} must be [B,D], got {list(enc_out[e.output])}")
    if len(head_in[h.features]) != 3:
        raise BundleError(f"{head_path}: input {h.features!r} must be [B,T,D], got {list(head_in[h.features])}")
    if enc_width is not None and head_width is not None and enc_width != head_width:
        raise BundleError(f"{enc_path} outputs {enc_width}-d embeddings but {head_path} takes {head_width}-d "
                          "features: the encoder and head come from different models")
    for width, path in ((enc_width, enc_path), (head_width, head_path)):
        if width is not None and width != bundle.embedding_width:
            raise BundleError(f"{path}: width {width} != bundle.json embedding_width {bundle.embedding_width}")
    c = _last_dim(head_out[h.class_probs])
    if c is not None and c != bundle.num_classes:
        raise BundleError(f"{head_path}: class_probs has {c} classes but bundle.json lists {bundle.num_classes}")
    if h.int8_file:
        q_in, q_out = _require_names(bundle.path(h.int8_file), [h.features, h.lengths], [h.scores, h.class_probs])
        if q_in[h.features] != head_in[h.features] or q_out[h.class_probs] != head_out[h.class_probs]:
            raise BundleError(f"{bundle.path(h.int8_file)}: its shapes differ from {head_path} (not the same head)")
    _check_category_graphs(bundle)


def _check_category_graphs(bundle: Bundle) -> None:
    """text.onnx and head_open.onnx (when present): tensor names and the text feature width."""
    widths: dict[str, int | None] = {}
    t, o = bundle.text, bundle.head_open
    if t is not None:
        g_in, g_out = _require_names(bundle.path(t.file), [t.input], [t.prompt_output, t.output])
        widths[t.file] = _last_dim(g_out[t.output])
    if o is not None:
        g_in, g_out = _require_names(bundle.path(o.file), [o.features, o.lengths, o.text_features],
                                     [o.scores, o.class_probs])
        widths[o.file] = _last_dim(g_in[o.text_features])
    known = {k: w for k, w in widths.items() if w is not None}
    if len(set(known.values())) > 1:
        raise BundleError(f"text feature widths differ between {' and '.join(known)}: {known}")


def _require_names(path: Path, inputs: list[str], outputs: list[str]) -> tuple[dict[str, Shape], dict[str, Shape]]:
    g_in, g_out = onnx_io(path)
    for names, io, kind in ((inputs, g_in, "input"), (outputs, g_out, "output")):
        for n in names:
            if n not in io:
                raise BundleError(f"{path}: has no {kind} named {n!r} (graph {kind}s: {sorted(io)})")
    return g_in, g_out


def load_bundle(bundle_dir: str | os.PathLike[str], verify_hashes: bool = True, inspect_graphs: bool = True) -> Bundle:
    """Load and validate a bundle directory; raise ``BundleError`` naming the file and problem."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    meta = root / BUNDLE_JSON
    bundle = parse_bundle_json(_read_json(meta), meta).model_copy(update={"root": root.resolve()})
    required = [bundle.encoder.file, bundle.head.file] + ([bundle.head.int8_file] if bundle.head.int8_file else [])
    required += [bundle.text.file, bundle.text.tokenizer] if bundle.text else []
    required += [bundle.head_open.file] if bundle.head_open else []
    for name in required:
        if name not in bundle.files:
            raise BundleError(f"{meta}: files has no entry for {name!r}")
    for name, entry in bundle.files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {meta})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{path}: is {size} bytes, bundle.json says {entry.bytes} (truncated or replaced)")
        if verify_hashes:
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise BundleError(f"{path}: sha256 {digest[:12]}... does not match bundle.json "
                                  f"({entry.sha256[:12]}...): the file is damaged or was replaced")
    if inspect_graphs:
        check_graphs(bundle)
    return bundle


def file_entries(root: str | os.PathLike[str], names: list[str]) -> dict[str, FileEntry]:
    """Hashes for bundle.json's ``files`` (names relative to ``root``, folders expanded to their files)."""
    root = Path(root)
    out: dict[str, FileEntry] = {}
    for name in names:
        p = root / name
        paths = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in paths:
            out[q.relative_to(root).as_posix()] = FileEntry(sha256=sha256_file(q), bytes=q.stat().st_size)
    return out
