"""Categories chosen at deployment: a class-list edit resolved into names, stable keys and text features.

DSANet classifies by comparing snippets with class text features, so the class list is words, not
weights. A bundle that carries ``text.onnx`` (the adapted text tower) and ``tokenizer/tokenizer.json``
turns words into those features here, on ONNX Runtime with the ``tokenizers`` package (no torch), and
``head_open.onnx`` takes them as an input. Rules of an edit (``CategoryEdit``):

- the bundle's classes keep their ``category_key`` (the bundle's class name) whatever they are renamed
  to, so automations keyed on it keep working; an added class's key is the name it was given;
- the first class (Normal) is always first and can be renamed but not dropped;
- a bundle class's features are computed as the model computes them (mean of its prompts' raw
  features, then L2-normalised), so an unedited class list reproduces the baked-in head; an added
  class with several prompts is a CLIP prompt ensemble: the mean of the L2-normalised per-prompt
  features, renormalised;
- ``rename`` and ``drop`` name the bundle's classes (by key or display name, case-insensitively), as
  they are before the edit; a class renamed twice, dropped twice, or both renamed and dropped is an
  error, and so is a new or added name that another category already has as its name or key;
- a category name is at most ``MAX_NAME_CHARS`` characters without control or invisible characters
  (a newline would break CSV headers, log lines and one-line event texts); an added prompt must fit
  the text tower's token limit (CLIP would silently drop its end);
- every error names the key (``model.categories.rename``, ``model.categories.add[1]`` ...).
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import Bundle
from engine.errors import DsanetError, InputError

# Above this cosine two classes' text features are called near-duplicates (see docs/categories.md).
NEAR_DUPLICATE_COSINE = 0.9
# The longest category name (it is shown in events, CSV headers, metrics labels and the console).
MAX_NAME_CHARS = 64


class CategoryError(DsanetError):
    """A category edit that cannot be applied to this bundle (unknown name, duplicate, no text tower)."""


@dataclass(frozen=True)
class AddedCategory:
    name: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class CategoryEdit:
    """What a deployment changes in the bundle's class list (``model.categories`` in the config)."""

    add: tuple[AddedCategory, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    where: str = "model.categories"  # the config key errors name ("" for command-line flags)

    def key(self, part: str, index: int | None = None) -> str:
        """How an error names ``part`` (add, rename, drop), or its ``index``-th entry: the config key
        (``model.categories.add[1]``), or the flag (``--add``)."""
        if not self.where:
            return f"--{part}"
        return f"{self.where}.{part}" + ("" if index is None else f"[{index}]")

    @property
    def empty(self) -> bool:
        return not (self.add or self.rename or self.drop)


@dataclass(frozen=True)
class CategorySet:
    """A resolved class list: column c of ``class_probs`` is ``keys[c]`` shown as ``names[c]``.

    ``features`` [C, D] float32 unit rows (None when the list is the bundle's own and no text tower ran);
    ``added`` marks the classes the edit added."""

    keys: tuple[str, ...]
    names: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    added: tuple[bool, ...]
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def name_problem(name: str) -> str | None:
    """Why ``name`` (leading and trailing spaces aside) cannot name a category, or None when it can:
    empty, longer than ``MAX_NAME_CHARS``, or holding control or invisible characters (Unicode
    categories C*: newline, tab, NUL, zero-width space ...). Letters of any script, digits, spaces and
    punctuation are fine."""
    s = str(name).strip()
    if not s:
        return "is empty"
    if len(s) > MAX_NAME_CHARS:
        return f"is {len(s)} characters long (at most {MAX_NAME_CHARS})"
    bad = sorted({f"U+{ord(ch):04X}" for ch in s if unicodedata.category(ch).startswith("C")})
    if bad:
        return f"holds control or invisible characters ({', '.join(bad)})"
    return None


def parse_add(spec: str) -> AddedCategory:
    """``"Name: prompt; prompt"`` (the ``dsanet categories --add`` form) -> ``AddedCategory``."""
    name, sep, rest = spec.partition(":")
    prompts = tuple(p.strip() for p in rest.split(";") if p.strip())
    if not sep or not name.strip() or not prompts:
        raise InputError(f"--add {spec!r}: expected 'Name: prompt; prompt' (a name, a colon, one or more prompts)")
    return AddedCategory(name.strip(), prompts)


def bundle_prompts(bundle: Bundle) -> tuple[tuple[str, ...], ...]:
    """The prompts each bundle class was trained with (from ``bundle.json``'s text section)."""
    if bundle.text is None:
        raise CategoryError(f"bundle {bundle.name} has no text tower (text.onnx): re-export it with this "
                            "dsanet-stream to change its categories")
    return tuple(tuple(p) for p in bundle.text.class_prompts)


def resolve(bundle: Bundle, edit: CategoryEdit) -> CategorySet:
    """Apply ``edit`` to the bundle's class list (names and keys only; ``with_features`` adds features)."""
    if (edit.add or edit.drop) and (bundle.text is None or bundle.head_open is None):
        raise CategoryError(f"{edit.where or 'categories'}: bundle {bundle.name} has no text tower (text.onnx, head_open.onnx), so "
                            "categories can only be renamed; re-export it with this dsanet-stream to add or drop")
    keys = list(bundle.class_names)
    names = list(bundle.display_names or bundle.class_names)
    prompts: list[tuple[str, ...]] = list(bundle_prompts(bundle)) if bundle.text is not None else [()] * len(keys)
    orig = tuple(zip(keys, names, strict=True))

    def find(label: str, key: str) -> int:
        """The bundle class ``label`` names (key or display name; exact first, then ignoring case)."""
        text = str(label).strip()
        for fold in (False, True):
            for i, (k, n) in enumerate(orig):
                if text in (k, n) or (fold and text.lower() in (k.lower(), n.lower())):
                    return i
        raise CategoryError(f"{key}: no category named {label!r} (categories: {', '.join(n for _, n in orig)})")

    renamed: dict[int, str] = {}
    for old, new in edit.rename.items():
        i = find(old, edit.key("rename"))
        if i in renamed:
            raise CategoryError(f"{edit.key('rename')}: {old!r} and an earlier entry both rename {orig[i][1]!r} "
                                f"(key {orig[i][0]!r})")
        problem = name_problem(str(new))
        if problem:
            raise CategoryError(f"{edit.key('rename')}: the new name for {old!r} {problem}")
        renamed[i] = str(new).strip()
    dropped: list[int] = []
    for label in edit.drop:
        i = find(label, edit.key("drop"))
        if i == 0:
            raise CategoryError(f"{edit.key('drop')}: {label!r} is the normal class, which is always the first category")
        if i in dropped:
            raise CategoryError(f"{edit.key('drop')}: {label!r} is listed twice (both name {orig[i][1]!r})")
        if i in renamed:
            raise CategoryError(f"{edit.key('drop')}: {label!r} is also renamed in {edit.key('rename')}; "
                                "drop it or rename it, not both")
        dropped.append(i)
    for i, new in renamed.items():
        names[i] = new
    for i, new in renamed.items():
        for j in range(len(keys)):
            if j != i and j not in dropped and new.lower() in (names[j].lower(), keys[j].lower()):
                raise CategoryError(f"{edit.key('rename')}: {orig[i][1]!r} -> {new!r} would share the name of another "
                                    f"category ({names[j]!r}, key {keys[j]!r})")
    kept = [i for i in range(len(keys)) if i not in dropped]
    keys, names, prompts = [keys[i] for i in kept], [names[i] for i in kept], [prompts[i] for i in kept]
    added = [False] * len(keys)
    for j, a in enumerate(edit.add):
        where = edit.key("add", j)
        problem = name_problem(a.name)
        if problem:
            raise CategoryError(f"{where}: the name {a.name!r} {problem}")
        name = a.name.strip()
        if not a.prompts or not all(p.strip() for p in a.prompts):
            raise CategoryError(f"{where}: {name!r} needs at least one prompt, none of them empty")
        if name.lower() in {s.lower() for s in keys + names}:
            raise CategoryError(f"{where}: {name!r} already names a category")
        keys.append(name)
        names.append(name)
        prompts.append(tuple(p.strip() for p in a.prompts))
        added.append(True)
    if len(keys) < 2:
        raise CategoryError(f"{edit.where or 'categories'}: at least one anomaly category must remain besides {names[0]!r}")
    if len({n.lower() for n in names}) != len(names):
        raise CategoryError(f"{edit.where or 'categories'}: two categories would share a name: {', '.join(names)}")
    return CategorySet(tuple(keys), tuple(names), tuple(prompts), tuple(added))


class TextEncoder:
    """Words -> class text features with the bundle's ``text.onnx`` and tokenizer (ONNX Runtime, no torch)."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        spec = bundle.text
        if spec is None:
            raise CategoryError(f"bundle {bundle.name} has no text tower (text.onnx): re-export it with this "
                                "dsanet-stream to change its categories")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.spec = spec
        try:
            self.tokenizer = Tokenizer.from_file(str(bundle.path(spec.tokenizer)))
        except Exception as exc:  # the Rust tokenizer raises its own exception type
            raise CategoryError(f"{bundle.path(spec.tokenizer)}: cannot load the tokenizer ({exc})") from exc
        self.tokenizer.no_truncation()  # token_ids truncates as CLIP does and pads; the file's settings must not
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle.path(spec.file)), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """[N, L] int64: CLIP tokens (start, words, end) padded with the pad id to the longest text."""
        s = self.spec
        rows = []
        for t in texts:
            ids = self.tokenizer.encode(t).ids
            if len(ids) > s.max_tokens:  # truncate as CLIP does: keep the end-of-text token last
                ids = ids[: s.max_tokens - 1] + [s.eos_id]
            rows.append(ids)
        n = max(len(r) for r in rows)
        out = np.full((len(rows), max(n, 2)), s.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def prompt_features(self, texts: Sequence[str]) -> np.ndarray:
        """[N, D] raw (not normalised) adapted features, one per text."""
        ids = self.token_ids(texts)
        s = self.spec
        (raw,) = self.session.run([s.prompt_output], {s.input: ids})
        return np.asarray(raw, dtype=np.float32)

    def class_features(self, prompts: Sequence[Sequence[str]], added: Sequence[bool]) -> np.ndarray:
        """[C, D] unit class features: the model's rule for bundle classes, a prompt ensemble for added ones."""
        flat = [p for ps in prompts for p in ps]
        raw = self.prompt_features(flat).astype(np.float64)
        rows, start = [], 0
        for ps, is_added in zip(prompts, added, strict=True):
            block = raw[start: start + len(ps)]
            start += len(ps)
            rows.append(_norm(_norm(block).mean(axis=0)) if is_added else _norm(block.mean(axis=0)))
        return np.stack(rows).astype(np.float32)


def with_features(categories: CategorySet, encoder: TextEncoder, key: str = "model.categories.add") -> CategorySet:
    """``categories`` with their class features; an added prompt longer than the text tower reads
    (``max_tokens`` CLIP tokens, start and end included) is a ``CategoryError`` naming ``key``."""
    limit = encoder.spec.max_tokens
    for name, prompts, is_added in zip(categories.names, categories.prompts, categories.added, strict=True):
        if not is_added:
            continue
        for n, prompt in enumerate(prompts, start=1):
            length = len(encoder.tokenizer.encode(prompt).ids)
            if length > limit:
                raise CategoryError(f"{key}: prompt {n} of {name!r} is {length} tokens, more than the {limit} the "
                                    "text tower reads (its end would be cut off): shorten it")
    feats = encoder.class_features(categories.prompts, categories.added)
    return CategorySet(categories.keys, categories.names, categories.prompts, categories.added, feats)


def build(bundle: Bundle, edit: CategoryEdit, encoder: TextEncoder | None = None) -> CategorySet:
    """``resolve`` + features: the class list a head built from ``head_open.onnx`` scores against."""
    cats = resolve(bundle, edit)
    return with_features(cats, encoder or TextEncoder(bundle), edit.key("add"))


def similarities(categories: CategorySet) -> list[tuple[str, str, float]]:
    """(added class, other class, cosine) for every added class against every other anomaly class
    (Normal excluded: the anomaly classes share the mass Normal leaves), highest first."""
    if categories.features is None:
        raise CategoryError("similarities need class features (use categories.build)")
    f = categories.features.astype(np.float64)
    out = []
    for i, is_added in enumerate(categories.added):
        if not is_added:
            continue
        for j in range(1, len(categories)):
            if j != i and not (categories.added[j] and j < i):
                out.append((categories.names[i], categories.names[j], float(f[i] @ f[j])))
    return sorted(out, key=lambda r: -r[2])


class OpenHeadModel:
    """``head_open.onnx`` on ONNX Runtime with a swappable class list (``HeadModel.score`` interface).

    ``set_categories`` replaces the class list atomically (one reference assignment); ``score`` reads
    it once per call, so a batch is scored against one list, and ``last_used`` (written by the scoring
    thread) tells that thread which list the probabilities it got belong to.
    """

    def __init__(self, bundle: Bundle, categories: CategorySet, threads: int | None = None) -> None:
        spec = bundle.head_open
        if spec is None:
            raise CategoryError(f"bundle {bundle.name} has no open-vocabulary head (head_open.onnx): re-export it "
                                "with this dsanet-stream to change its categories")
        import onnxruntime as ort

        self.bundle = bundle
        self.spec = spec
        self.width = bundle.embedding_width
        self.max_window = bundle.max_window
        self.max_batch = spec.max_batch
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle.path(spec.file)), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self._categories = self._checked(categories)
        self.last_used: CategorySet = self._categories

    def _checked(self, categories: CategorySet) -> CategorySet:
        f = categories.features
        if f is None or f.ndim != 2 or f.shape[1] != self.width or f.shape[0] != len(categories) or len(categories) < 2:
            raise CategoryError(f"class features must be [C>=2, {self.width}] for {len(categories)} categories")
        return categories

    @property
    def categories(self) -> CategorySet:
        return self._categories

    def set_categories(self, categories: CategorySet) -> None:
        checked = self._checked(categories)
        with self._lock:
            self._categories = checked

    def score(self, features: np.ndarray, lengths: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        cats = self._categories  # one read: the whole batch uses one class list
        s = self.spec
        feats = np.ascontiguousarray(features, dtype=np.float32)
        lens = np.asarray(lengths, dtype=np.int64)
        if feats.ndim != 3 or feats.shape[2] != self.width:
            raise InputError(f"head features must be [B,T,{self.width}], got shape {list(feats.shape)}")
        scores, probs = self.session.run([s.scores, s.class_probs],
                                         {s.features: feats, s.lengths: lens, s.text_features: cats.features})
        self.last_used = cats
        return np.asarray(scores, dtype=np.float32), np.asarray(probs, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "model": "head_open", "file": Path(self.spec.file).name,
                "classes": len(self._categories)}


def open_head_for(bundle: Bundle, categories: CategorySet, head: Any = None,
                  threads: int | None = None) -> OpenHeadModel:
    """The open head on the runtime ``head`` (the baked head already loaded) runs on: torch's own
    ``DSANetOpenHead`` for the torch runtime (same device and precision); ``head_open.onnx`` on ONNX
    Runtime CPU otherwise. TensorRT has no open head here (no TensorRT in this build's test machines to
    check one): a TensorRT deployment scores edited categories on ONNX Runtime CPU."""
    desc = head.describe() if head is not None and hasattr(head, "describe") else {}
    if isinstance(desc, dict) and desc.get("runtime") == "torch":
        from engine.runtimes.torch import TorchOpenHeadModel

        return TorchOpenHeadModel(bundle, categories, device=str(desc.get("device", "cpu")),
                                  precision=str(desc.get("precision", "fp32")), threads=threads)
    return OpenHeadModel(bundle, categories, threads=threads)
