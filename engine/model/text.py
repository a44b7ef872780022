"""DSANet's text branch: the frozen CLIP text tower with small trainable adapters inside it.

Each class is described by one or more short texts. They run through CLIP's text transformer (from
a local Hugging Face folder, loaded with ``transformers.CLIPTextModel``); after each of the first L
blocks a bias-free ``LeakyReLU(Linear)`` adapter output, rescaled per token to the norm of the
block output, is mixed in with weight omega. After ``ln_final`` the end-of-text token is taken and a
trainable ``LeakyReLU(Linear(text_width, 512))`` head replaces CLIP's ``text_projection``. A class
feature is the mean over its descriptions, L2-normalised.

Prompts are padded to the longest prompt instead of CLIP's fixed 77 tokens: with the causal mask the
end-of-text state never sees later positions and every other operation is per token, so the result
is the same while the text tower costs a fraction of the time per training step.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn


def _text_transformer(model: nn.Module) -> nn.Module:
    """The module holding embeddings/encoder/final_layer_norm (transformers 4.x nests it)."""
    return getattr(model, "text_model", model)


class AdaptedCLIPText(nn.Module):
    """Frozen CLIP text tower + DSANet adapters; ``forward()`` returns the class features [C, out_dim]."""

    def __init__(self, clip_text: nn.Module, tokenizer: Any, class_prompts: list[list[str]], adapt_until: int,
                 adapter_weight: float, out_dim: int = 512) -> None:
        super().__init__()
        self.clip = clip_text
        for p in self.clip.parameters():
            p.requires_grad_(False)
        tm = _text_transformer(clip_text)
        layers = tm.encoder.layers
        width = int(tm.final_layer_norm.normalized_shape[0])
        if adapt_until > len(layers):
            raise ValueError(f"text_adapt_until={adapt_until} exceeds the {len(layers)} blocks of the CLIP text tower")
        self.width = width
        self.adapt_until = adapt_until
        self.adapter_weight = float(adapter_weight)
        self.adapters = nn.ModuleList(nn.Sequential(nn.Linear(width, width, bias=False), nn.LeakyReLU())
                                      for _ in range(adapt_until))
        self.proj = nn.Sequential(nn.Linear(width, out_dim, bias=False), nn.LeakyReLU())
        for p in list(self.adapters.parameters()) + list(self.proj.parameters()):
            nn.init.xavier_uniform_(p)
        self._legacy_layers = "causal_attention_mask" in inspect.signature(layers[0].forward).parameters

        flat = [text for prompts in class_prompts for text in prompts]
        enc = tokenizer(flat, padding=True, truncation=True, max_length=77, return_tensors="pt")
        ids = enc["input_ids"]
        eos = tokenizer.eos_token_id
        has_eos = (ids == eos).any(dim=1)
        if not bool(has_eos.all()):
            raise ValueError("the CLIP tokenizer produced a prompt without an end-of-text token")
        self.register_buffer("input_ids", ids, persistent=False)
        self.register_buffer("eot_index", (ids == eos).int().argmax(dim=1), persistent=False)
        # Row c averages the descriptions of class c.
        avg = torch.zeros(len(class_prompts), len(flat))
        start = 0
        for c, prompts in enumerate(class_prompts):
            avg[c, start: start + len(prompts)] = 1.0 / len(prompts)
            start += len(prompts)
        self.register_buffer("class_average", avg, persistent=False)
        n = ids.shape[1]
        causal = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal_mask", causal[None, None], persistent=False)

    @classmethod
    def from_clip_dir(cls, clip_dir: str | os.PathLike[str], class_prompts: list[list[str]], adapt_until: int,
                      adapter_weight: float, out_dim: int = 512) -> AdaptedCLIPText:
        from engine.clip import load_text_model, load_tokenizer

        return cls(load_text_model(clip_dir), load_tokenizer(clip_dir), class_prompts, adapt_until,
                   adapter_weight, out_dim)

    def train(self, mode: bool = True) -> AdaptedCLIPText:
        super().train(mode)
        self.clip.eval()  # frozen tower: never in training mode
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"adapters.{k}": v for k, v in self.adapters.state_dict().items()},
                **{f"proj.{k}": v for k, v in self.proj.state_dict().items()}}

    def _block(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        mask = self.causal_mask.to(x.dtype)
        out = layer(x, None, mask) if self._legacy_layers else layer(x, mask)
        return out[0] if isinstance(out, tuple) else out

    def encode(self, input_ids: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """[N, n] token ids -> [N, out_dim] adapted end-of-text features."""
        tm = _text_transformer(self.clip)
        x = tm.embeddings(input_ids=input_ids)
        w = self.adapter_weight
        for i, layer in enumerate(tm.encoder.layers):
            x = self._block(layer, x)
            if i < self.adapt_until:
                a = self.adapters[i](x)
                a = a * x.norm(dim=-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) + 1e-6)
                x = w * a + (1.0 - w) * x
        x = tm.final_layer_norm(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        return self.proj(x)

    def forward(self) -> torch.Tensor:
        """Class text features T_txt [C, out_dim], unit norm."""
        feats = self.class_average @ self.encode(self.input_ids, self.eot_index)
        return feats / feats.norm(dim=-1, keepdim=True)


class PromptFeatureGraph(nn.Module):
    """The adapted text tower as a graph over token ids: what ``text.onnx`` holds.

    ``forward(input_ids [N, L] int64) -> (prompt_features [N, out_dim], text_features [N, out_dim])``:
    ``prompt_features`` is ``AdaptedCLIPText.encode`` (adapters, norm rescale, omega mixing, SimpleProj)
    before any averaging; ``text_features`` is the same row L2-normalised, i.e. the class feature of a
    class described by that one prompt. The end-of-text position is the first ``eos_id`` of each row
    and the causal mask is built from L, so any padding length (and any N) runs the same graph; the
    averaging over a class's prompts is left to the caller (``engine.categories``), which keeps the
    model's own rule for the bundle's classes.
    """

    def __init__(self, text: AdaptedCLIPText, eos_id: int) -> None:
        super().__init__()
        self.text = text
        self.eos_id = int(eos_id)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = input_ids.shape[1]
        pos = torch.arange(n, device=input_ids.device)
        causal = torch.where(pos[None, :] > pos[:, None], torch.finfo(torch.float32).min, 0.0)[None, None]
        text = self.text
        tm: Any = _text_transformer(text.clip)  # transformers' CLIP text model (untyped submodules)
        x = tm.embeddings(input_ids=input_ids)
        w = text.adapter_weight
        for i, layer in enumerate(tm.encoder.layers):
            out = layer(x, None, causal) if text._legacy_layers else layer(x, causal)
            x = out[0] if isinstance(out, tuple) else out
            if i < text.adapt_until:
                a = text.adapters[i](x)
                a = a * x.norm(dim=-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) + 1e-6)
                x = w * a + (1.0 - w) * x
        x = tm.final_layer_norm(x)
        eot = (input_ids == self.eos_id).to(torch.int32).argmax(dim=1)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        raw = text.proj(x)
        return raw, raw / raw.norm(dim=-1, keepdim=True)
