"""OpenAI CLIP's byte-level BPE tokenizer, offline, without the ``clip`` or ``open_clip`` packages.

The official DSANet code tokenises its class descriptions with OpenAI's tokenizer: lower-cased,
whitespace-collapsed text, split by CLIP's word pattern, each word byte-encoded and merged with the
48,894 merges of ``bpe_simple_vocab_16e6.txt.gz``; ids are wrapped in start/end-of-text (49406 /
49407) and zero-padded to 77. The vocabulary file is data, not code: open-clip-torch's wheel ships
it, and ``find_bpe_vocab`` locates it through the import system's path finder *without importing*
the package (importing open_clip pulls torchvision, which breaks beside our torch). A Hugging Face
CLIP folder (``vocab.json`` + ``merges.txt``) holds the same vocabulary; both give the same ids
(tests/test_official_import.py checks them against ids the official tokenizer produced).

``ClipBPETokenizer`` answers the small part of the Hugging Face tokenizer interface that
``engine.model.text.AdaptedCLIPText`` uses (``__call__`` with padding, ``eos_token_id``), so the text
branch runs on either. ftfy's mojibake repair runs when ftfy is installed; the benchmark prompts are
plain ASCII, for which it changes nothing.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.errors import ClipLoadError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # merges OpenAI keeps from the file (vocabulary = 49408 tokens)
_PACKAGES = (("open_clip", "open_clip_torch"), ("clip", "clip"))  # (import name, distribution name)
_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def find_bpe_vocab() -> Path:
    """Path of OpenAI's BPE vocabulary as an installed package ships it; nothing is imported or fetched."""
    for module, dist in _PACKAGES:
        spec = importlib.util.find_spec(module)  # a top-level spec lookup runs no package code
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / BPE_FILE
            if candidate.is_file():
                return candidate
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == BPE_FILE:
                return Path(str(f.locate()))
    raise ClipLoadError(f"OpenAI's CLIP vocabulary ({BPE_FILE}) was not found: install it with "
                        "`pip install --no-deps open-clip-torch` (its data file is read, the package is never "
                        "imported) or pass a Hugging Face CLIP folder holding vocab.json and merges.txt")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable stand-in character (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (kept bytes first) is the vocabulary order


def _clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class ClipBPETokenizer:
    """CLIP BPE over a merges list; ids identical to OpenAI's ``clip.tokenize``."""

    def __init__(self, merges: Sequence[tuple[str, str]], source: str = "") -> None:
        import regex

        self.source = source
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        if len(self.encoder) != len(vocab):
            raise ClipLoadError(f"{source}: the BPE merges produce duplicate tokens")
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.bos_token_id = self.encoder[SOT]
        self.eos_token_id = self.encoder[EOT]
        self.pad_token_id = 0
        self._pattern = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, list[str]] = {}

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike[str] | None = None) -> ClipBPETokenizer:
        """From OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (default: the one an installed package ships)."""
        p = Path(path) if path is not None else find_bpe_vocab()
        try:
            lines = gzip.open(p).read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ClipLoadError(f"{p}: not a readable CLIP BPE vocabulary: {exc}") from exc
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ClipLoadError(f"{p}: expected {N_MERGES} BPE merges, found a different file")
        return cls(merges, source=str(p))  # type: ignore[arg-type]

    @classmethod
    def from_hf_folder(cls, folder: str | os.PathLike[str]) -> ClipBPETokenizer:
        """From a Hugging Face CLIP folder's ``merges.txt`` (its ``vocab.json`` is checked to agree)."""
        import json

        root = Path(folder)
        try:
            lines = (root / "merges.txt").read_text(encoding="utf-8").split("\n")
            vocab = json.loads((root / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ClipLoadError(f"{root}: no readable CLIP tokenizer (vocab.json, merges.txt): {exc}") from exc
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        tok = cls(merges, source=str(root))  # type: ignore[arg-type]
        if tok.encoder != vocab:
            raise ClipLoadError(f"{root}: vocab.json does not match the ids its merges.txt implies")
        return tok

    # --- encoding ----------------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end markers."""
        ids: list[int] = []
        for word in self._pattern.findall(_clean(text)):
            chars = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(chars))
        return ids

    def tokenize(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = False):
        """OpenAI's ``clip.tokenize``: [N, context_length] int64 numpy array, zero-padded."""
        import numpy as np

        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.bos_token_id, *self.encode(text), self.eos_token_id]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"text {text[:40]!r}... is longer than {context_length} tokens")
                ids = ids[:context_length]
                ids[-1] = self.eos_token_id
            out[i, :len(ids)] = ids
        return out

    def __call__(self, texts: Sequence[str], padding: bool = True, truncation: bool = True,
                 max_length: int = CONTEXT_LENGTH, return_tensors: str | None = None) -> dict[str, Any]:
        """The Hugging Face call the text branch makes: ids padded to the longest text (zeros after EOT)."""
        ids = self.tokenize(texts, max_length, truncate=truncation)
        if padding:
            ids = ids[:, : int((ids != 0).sum(axis=1).max())]
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.from_numpy(ids)}
        return {"input_ids": ids}
