"""GPU check: parity and throughput of the encoder and the DSANet head under the torch/TensorRT runtimes.

Why: the GPU deployments run ``engine.runtimes.torch`` (eager or ``torch.compile``, fp32/fp16/bf16
under autocast, exactly like this script) or ``engine.runtimes.tensorrt``; none of that can run in CI.
This one script, run once on a machine with a CUDA GPU, answers: do the reduced-precision and compiled
variants still compute the same thing (encoder cosine to fp32 eager, head max |diff| on scores and
class probabilities), and how fast is each (encoder images/s, head windows/s)?

Models (random weights: speed and agreement do not depend on the values):
* encoder ``vitb16``: the full CLIP ViT-B/16 image tower (768 wide, 12 layers, 16 px patches, 224 px,
  512-d projection) via transformers' ``CLIPVisionModelWithProjection``; if transformers is missing on
  the GPU machine, an equivalent pure-torch ViT (same shapes and FLOPs; flagged in the output);
* encoder ``tiny``: the tiny CLIP tower of the tests (hidden 64, 2 layers, patch 32);
* ``head``: ``engine.model.DSANetHead`` with the UCF architecture, T = 256 windows.

Without CUDA it prints that and exits 0 at once. ``--device cpu --quick`` is a dry run of every code
path on the CPU (tiny sizes; ViT-B/16 eager only), used by the test suite.

    python bench/gpu_check.py                 # full (~5-8 min on one H200, compiles included)
    python bench/gpu_check.py --quick         # ~2-3 min: fewer iterations, compile only where it matters
    python bench/gpu_check.py --device cpu --quick

Last line: ``RESULT status=ok|parity_fail|skipped device=... key=value ...``. Exit 1 on a parity failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_header, result_line, summary, table  # noqa: E402  (also puts the repo on sys.path)

# Agreement required with fp32 eager on the same device.
ENCODER_MIN_COS = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.99}
HEAD_MAX_ABS = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}

VITB16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
              patch_size=16, projection_dim=512)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=224,
            patch_size=32, projection_dim=512)


# --- models ---------------------------------------------------------------------------------------
def build_encoder(spec: dict[str, int], seed: int = 0) -> tuple[Any, str]:
    """(module: pixel_values [B,3,224,224] -> image_embeds [B,512], which implementation)."""
    import torch

    torch.manual_seed(seed)
    if importlib.util.find_spec("transformers") is not None:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        cfg = CLIPVisionConfig(hidden_act="quick_gelu", **spec)
        model = CLIPVisionModelWithProjection(cfg).eval()

        class ImageEmbeds(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, pixel_values: Any) -> Any:
                return self.m(pixel_values=pixel_values).image_embeds

        return ImageEmbeds(model).eval(), "transformers"
    return _TorchViT(**spec).eval(), "pure-torch ViT (transformers missing)"


def _torch_vit_class() -> type:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int, heads: int, hidden: int) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

        def forward(self, x: Any) -> Any:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            h = self.fc1(self.ln2(x))
            return x + self.fc2(h * torch.sigmoid(1.702 * h))

    class TorchViT(nn.Module):
        """CLIP's vision transformer layout (pre-LN, class token, QuickGELU, projection)."""

        def __init__(self, hidden_size: int, intermediate_size: int, num_hidden_layers: int, num_attention_heads: int,
                     image_size: int, patch_size: int, projection_dim: int) -> None:
            super().__init__()
            n = (image_size // patch_size) ** 2
            self.patch = nn.Conv2d(3, hidden_size, patch_size, patch_size, bias=False)
            self.cls = nn.Parameter(torch.randn(hidden_size) * 0.02)
            self.pos = nn.Parameter(torch.randn(n + 1, hidden_size) * 0.02)
            self.pre, self.post = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
            self.blocks = nn.ModuleList(Block(hidden_size, num_attention_heads, intermediate_size)
                                        for _ in range(num_hidden_layers))
            self.proj = nn.Linear(hidden_size, projection_dim, bias=False)

        def forward(self, pixel_values: Any) -> Any:
            x = self.patch(pixel_values).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos
            x = self.pre(x)
            for b in self.blocks:
                x = b(x)
            return self.proj(self.post(x[:, 0]))

    return TorchViT


def _TorchViT(**spec: int) -> Any:  # noqa: N802 - a factory standing in for a class
    return _torch_vit_class()(**spec)


def build_head(seed: int = 0) -> Any:
    """DSANetHead, official UCF architecture, random weights and random unit class text features."""
    import torch
    import torch.nn.functional as F

    from engine.model.backbone import VadClipBackbone
    from engine.model.config import DSANetConfig
    from engine.model.head import DSANetHead

    torch.manual_seed(seed)
    cfg = DSANetConfig()
    text = F.normalize(torch.randn(cfg.num_classes, cfg.embed_dim), dim=-1)
    return DSANetHead(cfg, VadClipBackbone(cfg), text).eval()


# --- variants --------------------------------------------------------------------------------------
def make_runner(module: Any, device: Any, precision: str, compiled: bool, mode: str | None = None) -> Callable[..., Any]:
    """Run a module as ``engine.runtimes.torch.TorchRunner`` does: fp32 weights, autocast for fp16/bf16."""
    import torch

    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    fn = torch.compile(module, dynamic=False, **({"mode": mode} if mode else {})) if compiled else module

    def run(*args: Any) -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return fn(*args)

    return run


def make_tensorrt(module: Any, example: list[Any], precision: str) -> tuple[Callable[..., Any] | None, str]:
    """torch-tensorrt compile (static shapes of ``example``), or (None, why not)."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return None, "torch-tensorrt not installed"
    try:
        import torch
        import torch_tensorrt

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        trt = torch_tensorrt.compile(module, ir="dynamo", inputs=example, enabled_precisions={dtype},
                                     truncate_double=True, min_block_size=1)
    except Exception as exc:  # any failure is a finding to report, not a crash
        return None, f"{type(exc).__name__}: {str(exc)[:120]}"

    def run(*args: Any) -> Any:
        with torch.inference_mode():
            return trt(*args)

    return run, "ok"


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any, iters: int, warmup: int, max_seconds: float) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync(device)
    samples: list[float] = []
    start = time.monotonic()
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 3 and time.monotonic() - start > max_seconds:
            break
    return summary(samples)


def cosine_min(a: Any, b: Any) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


# --- checks -------------------------------------------------------------------------------------
def variants(args: argparse.Namespace, heavy: bool) -> list[tuple[str, str, bool]]:
    """(label, precision, compiled) to measure; quick/CPU runs drop the costly compiles of big models."""
    out = [("eager", p, False) for p in ("fp32", "fp16", "bf16")]
    if args.no_compile:
        return out
    on_cpu = args.device == "cpu"
    if args.quick and heavy:
        return out if on_cpu else out + [("compile", "fp16", True)]
    if args.quick and on_cpu:
        return out + [("compile", "fp32", True)]  # one compile per model: the code path, not the speed
    return out + [("compile", p, True) for p in ("fp32", "fp16", "bf16")]


def check_encoder(name: str, spec: dict[str, int], args: argparse.Namespace, device: Any,
                  rows: list[list[Any]], result: dict[str, Any]) -> bool:
    import torch

    module, impl = build_encoder(spec)
    module = module.to(device)
    heavy = spec["hidden_size"] >= 512
    batch = args.encoder_batch if device.type == "cuda" else (2 if heavy else 8)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 3, 224, 224, generator=gen).to(device)
    ref = make_runner(module, device, "fp32", False)(x).float()
    ok = True
    for label, prec, compiled in variants(args, heavy):
        key = f"{name}_{label}_{prec}"
        try:
            run = make_runner(module, device, prec, compiled, args.compile_mode if compiled else None)
            t0 = time.perf_counter()
            out = run(x)
            first = time.perf_counter() - t0
            cos = cosine_min(out, ref)
            t = timed(lambda run=run: run(x), device, args.iters, args.warmup, args.max_seconds)
        except Exception as exc:  # report and continue with the next variant
            rows.append([name, label, prec, batch, "error", "-", "-", f"{type(exc).__name__}: {str(exc)[:60]}"])
            result[f"{key}_error"] = type(exc).__name__
            ok = False
            if args.verbose:
                traceback.print_exc()
            continue
        passed = cos >= ENCODER_MIN_COS[prec]
        ok &= passed
        ips = batch / t["p50"]
        rows.append([name, label, prec, batch, f"{cos:.6f}", ips, t["p50"] * 1000, f"first call {first:.1f}s"
                     + ("" if passed else f" PARITY FAIL (< {ENCODER_MIN_COS[prec]})")])
        result[f"{key}_ips"] = ips
        result[f"{key}_cos"] = cos
    if device.type == "cuda":
        for prec in ("fp16",):
            run, why = make_tensorrt(module, [x], prec)
            if run is None:
                rows.append([name, "tensorrt", prec, batch, "-", "-", "-", why])
                result[f"{name}_tensorrt"] = "unavailable"
                continue
            cos = cosine_min(run(x), ref)
            t = timed(lambda run=run: run(x), device, args.iters, args.warmup, args.max_seconds)
            rows.append([name, "tensorrt", prec, batch, f"{cos:.6f}", batch / t["p50"], t["p50"] * 1000, ""])
            result[f"{name}_tensorrt_{prec}_ips"] = batch / t["p50"]
            result[f"{name}_tensorrt_{prec}_cos"] = cos
            ok &= cos >= ENCODER_MIN_COS[prec]
    result[f"{name}_impl"] = impl.split()[0]
    return ok


def check_head(args: argparse.Namespace, device: Any, rows: list[list[Any]], result: dict[str, Any]) -> bool:
    import torch

    head = build_head().to(device)
    gen = torch.Generator(device="cpu").manual_seed(2)
    ok = True
    shapes = [(args.head_batch if device.type == "cuda" else 2, 256), (1, 256)]
    if args.quick:
        shapes = shapes[:1] if device.type == "cuda" else [(1, 64)]
    for b, t in shapes:
        x = torch.randn(b, t, 512, generator=gen).to(device)
        lengths = torch.tensor([t, max(1, t // 3), 1, t // 2][:b] * (b // 4 + 1), dtype=torch.int64)[:b].to(device)
        ref_s, ref_p = (o.float() for o in make_runner(head, device, "fp32", False)(x, lengths))
        for label, prec, compiled in variants(args, heavy=False):
            key = f"head_b{b}_{label}_{prec}"
            try:
                run = make_runner(head, device, prec, compiled, args.compile_mode if compiled else None)
                t0 = time.perf_counter()
                s, p = run(x, lengths)
                first = time.perf_counter() - t0
                diff = max(float((s.float() - ref_s).abs().max()), float((p.float() - ref_p).abs().max()))
                tm = timed(lambda run=run, x=x, lengths=lengths: run(x, lengths), device, args.iters, args.warmup, args.max_seconds)
            except Exception as exc:  # report and continue
                rows.append([f"head B={b} T={t}", label, prec, "error", "-", "-", f"{type(exc).__name__}: {str(exc)[:60]}"])
                result[f"{key}_error"] = type(exc).__name__
                ok = False
                if args.verbose:
                    traceback.print_exc()
                continue
            passed = diff <= HEAD_MAX_ABS[prec]
            ok &= passed
            rows.append([f"head B={b} T={t}", label, prec, f"{diff:.2e}", b / tm["p50"], tm["p50"] * 1000,
                         f"first call {first:.1f}s" + ("" if passed else f" PARITY FAIL (> {HEAD_MAX_ABS[prec]})")])
            result[f"{key}_wps"] = b / tm["p50"]
            result[f"{key}_maxabs"] = diff
        if device.type == "cuda":
            run, why = make_tensorrt(head, [x, lengths], "fp16")
            if run is None:
                rows.append([f"head B={b} T={t}", "tensorrt", "fp16", "-", "-", "-", why])
                result["head_tensorrt"] = "unavailable"
            else:
                s, p = run(x, lengths)
                diff = max(float((s.float() - ref_s).abs().max()), float((p.float() - ref_p).abs().max()))
                tm = timed(lambda run=run, x=x, lengths=lengths: run(x, lengths), device, args.iters, args.warmup, args.max_seconds)
                rows.append([f"head B={b} T={t}", "tensorrt", "fp16", f"{diff:.2e}", b / tm["p50"], tm["p50"] * 1000, ""])
                result[f"head_b{b}_tensorrt_fp16_wps"] = b / tm["p50"]
                result[f"head_b{b}_tensorrt_fp16_maxabs"] = diff
                ok &= diff <= HEAD_MAX_ABS["fp16"]
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu = dry run of the code paths)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations and compiles")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per variant")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None, help="time cap per variant")
    ap.add_argument("--encoder-batch", type=int, default=64)
    ap.add_argument("--head-batch", type=int, default=32)
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--skip-vitb16", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.iters = args.iters or (5 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.max_seconds = args.max_seconds or (5.0 if args.quick else 20.0)

    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to check")
        print(result_line(status="skipped", reason="no_torch"))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}, cuda build {torch.version.cuda}): GPU checks skipped")
        print(result_line(status="skipped", reason="no_cuda", torch=torch.__version__))
        return 0
    device = torch.device(args.device)
    print_header("GPU check: encoder and DSANet head, torch eager / torch.compile / TensorRT, fp32 / fp16 / bf16")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the parity columns
        torch.backends.cudnn.allow_tf32 = False
    print(f"device {device} ({gpu}); torch {torch.__version__}; cuda {torch.version.cuda}; "
          f"torch-tensorrt {'yes' if importlib.util.find_spec('torch_tensorrt') else 'no'}\n")

    result: dict[str, Any] = {}
    ok = True
    t_start = time.monotonic()
    enc_rows: list[list[Any]] = []
    encoders = [("tiny", TINY)] + ([] if args.skip_vitb16 else [("vitb16", VITB16)])
    for name, spec in encoders:
        ok &= check_encoder(name, spec, args, device, enc_rows, result)
    print("## Encoder (cosine to fp32 eager, min over the batch)\n")
    print(table(["encoder", "variant", "precision", "batch", "min cosine", "images/s", "ms/batch", "notes"], enc_rows))
    head_rows: list[list[Any]] = []
    ok &= check_head(args, device, head_rows, result)
    print("\n## DSANet head (max |diff| to fp32 eager over scores and class probs)\n")
    print(table(["case", "variant", "precision", "max |diff|", "windows/s", "ms/batch", "notes"], head_rows))
    print()
    elapsed = time.monotonic() - t_start
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else float("nan")) for k, v in result.items()}
    print(result_line(status="ok" if ok else "parity_fail", device=device.type, gpu=gpu, torch=torch.__version__,
                      seconds=round(elapsed, 1), **clean))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
