"""Decode CPU per camera beside the model's CPU per camera: when does decode, not the model, bound a box?

Why: every frame a camera sends is decoded (the reader cannot skip frames of an H.264/H.265 stream
between keyframes), but only one frame per 16-frame snippet is embedded. So decode cost grows with
resolution and frame rate while the model's cost per camera does not. This measures decode CPU seconds
per camera-second (process CPU time, all FFmpeg threads, ``time.process_time``) for generated camera-like
clips (``bench/scenes.py``: textured, sensor noise, camera bitrates, no B-frames) at 640x360, 1280x720
and 1920x1080, H.264 and H.265, 30 and 10 fps, decoded exactly as the reader decodes (every packet,
no RGB conversion); and beside it the model's CPU seconds per camera-second (encoder per image + head
per window, ONNX Runtime, batch 8, times the snippet rate), for the tiny bundle and the ViT-B/16-shaped
bundles (fp32 and INT8) from the bench cache.

The snippet rate is the bundle's (16 frames at 30 fps of media time = 1.875 snippets per camera-second)
whatever the camera's frame rate: the cutter samples by media time.

    .venv/bin/python bench/decode.py            # 8 s clips, all models
    .venv/bin/python bench/decode.py --quick    # 3 s clips, about a minute once the clips are cached
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cache_dir, print_header, quiet_logs, result_line, table, tiny_bundle, vitb16_bundle  # noqa: E402
from scenes import bitrate_kbps, clip_name, make_camera_clip  # noqa: E402

RESOLUTIONS = [(640, 360), (1280, 720), (1920, 1080)]
CODECS = ["h264", "h265"]
RATES = [30, 10]
SNIPPETS_PER_S = 30.0 / 16.0


def decode_cpu_per_second(clip: Path, fps: float, min_seconds: float) -> tuple[float, float]:
    """(CPU s per second of video, frames/s decoded on the wall clock) decoding ``clip`` in a loop."""
    import av

    frames = 0
    t0, w0 = time.process_time(), time.monotonic()
    while True:
        with av.open(str(clip)) as c:
            stream = c.streams.video[0]
            for packet in c.demux(stream):
                frames += len(packet.decode())
        if frames / fps >= min_seconds:
            break
    cpu, wall = time.process_time() - t0, time.monotonic() - w0
    return cpu / (frames / fps), frames / wall


def model_cpu_per_camera_second(bundle: Path, threads: int) -> tuple[float, float]:
    """(encoder, head) CPU seconds per camera-second at the bundle's snippet rate."""
    from pipeline import model_costs

    c = model_costs(bundle, threads, batch=8, calls=1)
    return c["encoder_cpu_per_image"] * SNIPPETS_PER_S, c["head_cpu_per_window"] * SNIPPETS_PER_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s clips, each decoded for at least 3 s of video")
    ap.add_argument("--seconds", type=float, default=None, help="clip length (default 8; quick 3)")
    ap.add_argument("--models", default="tiny,vitb16,vitb16-int8",
                    help="comma list of tiny,vitb16,vitb16-int8 (default all; '' for none)")
    ap.add_argument("--threads", type=int, default=1, help="ORT threads for the model costs (default 1: the service's)")
    ap.add_argument("--resolutions", default=",".join(f"{w}x{h}" for w, h in RESOLUTIONS), help="comma list WxH")
    ap.add_argument("--codecs", default=",".join(CODECS), help="comma list of h264,h265")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="comma list of frame rates")
    args = ap.parse_args(argv)
    quiet_logs()
    try:
        resolutions = [tuple(int(v) for v in r.split("x")) for r in args.resolutions.split(",") if r]
        rates = [int(r) for r in args.rates.split(",") if r]
    except ValueError:
        ap.error("--resolutions takes WxH[,WxH...] and --rates integers")
    codecs = [c for c in args.codecs.split(",") if c]
    for c in codecs:
        if c not in CODECS:
            ap.error(f"--codecs: unknown codec {c!r} (expected h264 or h265)")
    m = print_header("Decode CPU per camera-second vs model CPU per camera-second")
    seconds = args.seconds or (3.0 if args.quick else 8.0)

    rows: list[list[Any]] = []
    dec: dict[str, float] = {}
    folder = cache_dir("camera-clips")
    for w, h in resolutions:
        for codec in codecs:
            for fps in rates:
                clip = make_camera_clip(folder / clip_name(w, h, fps, seconds, codec, "busy"), w, h, fps, seconds,
                                        codec, "busy")
                cpu, speed = decode_cpu_per_second(clip, fps, min_seconds=seconds)
                kbps = clip.stat().st_size * 8 / 1000 / seconds
                key = f"{h}p_{codec}_{fps}"
                dec[key] = cpu
                rows.append([f"{w}x{h}", codec, fps, bitrate_kbps(w, h, fps, codec), round(kbps), cpu, speed / fps,
                             1.0 / cpu if cpu > 0 else float("nan")])
    print(f"## Decode, busy camera-like scene, {seconds:g} s clips, load(1m) at start {m['load_1m']}\n")
    print(table(["resolution", "codec", "fps", "target kbps", "actual kbps", "decode CPU s per cam-s",
                 "x real time", "cameras per core (decode only)"], rows, digits=4))

    models: dict[str, tuple[float, float]] = {}
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    for name in names:
        if name == "tiny":
            b = tiny_bundle()
        elif name in ("vitb16", "vitb16-int8"):
            b = vitb16_bundle(encoder_int8=name.endswith("int8"))
        else:
            ap.error(f"--models: unknown model {name!r}")
        models[name] = model_cpu_per_camera_second(b, args.threads)
    out: dict[str, Any] = {f"decode_{k}": v for k, v in dec.items()}
    if models:
        print(f"\n## Model CPU per camera-second ({SNIPPETS_PER_S:.3f} snippets/s, ORT {args.threads} thread(s), "
              "batch 8) and decode's share\n")
        mrows = []
        for name, (enc, head) in models.items():
            model = enc + head
            worst = max(dec.values())
            best = min(dec.values())
            mrows.append([name, enc, head, model, best / model, worst / model,
                          ", ".join(k for k, v in dec.items() if v >= model) or "none"])
            out[f"model_{name.replace('-', '_')}"] = model
        print(table(["model", "encoder CPU s/cam-s", "head CPU s/cam-s", "model CPU s/cam-s", "decode/model min",
                     "decode/model max", "cases where decode >= model"], mrows, digits=4))
        print("\nDecode bounds a box when decode CPU per camera-second is at or above the model's: then a cheaper "
              "model buys no cameras, a substream (lower resolution/rate) or hardware decode does.")
    out["decode_worst"] = max(dec.values())
    out["load_1m"] = m["load_1m"]
    print()
    print(result_line(**out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
