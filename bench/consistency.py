"""Streaming vs offline scores: how far the live per-snippet scores are from the official whole-video scores.

Why: the DSANet head is not causal (8-row attention blocks, a k=5 convolution, a distance graph and a
similarity graph over the whole window), so a live score read at the newest snippet has seen no future.
The service reads each snippet's score ``lookahead`` (L) snippets behind the newest
(``stream.window``); this measures, for L in {0, 2, 4, 8} and window lengths W (the config default 64
and the maximum 256), the gap between ``stream.window.streaming_scores`` (exactly the live read-out)
and ``stream.window.offline_scores`` (the whole video at once, as the official test scores it):

* max |live - offline| and mean |live - offline| over all snippets;
* Pearson r between live and offline scores;
* frame AUC of live scores minus frame AUC of offline scores (``export.metrics.frame_auc_ap``).

Data: synthetic features (``export.synth``) and a head trained on them for a few steps with the real
trainer (``export.trainer.train``), cached under the bench cache; or the user's real features:
``--list CSV --data-root DIR --checkpoint CKPT --clip DIR`` (ground truth found as ``dsanet evaluate``
finds it). The head runs on ONNX Runtime, exported with ``export.onnx_export.export_head_onnx``, as in
the service.

    .venv/bin/python bench/consistency.py            # synthetic, W in {64, 256}, 8 videos <= 128 snippets
    .venv/bin/python bench/consistency.py --quick    # W=64, 3 videos <= 80 snippets
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cache_dir, print_header, result_line, table, usable_cores  # noqa: E402

SNIPPET_FRAMES = 16
SYNTH_VIDEOS = 48
TRAIN_OVERRIDES = ["epochs=3", "batch.normal=8", "batch.abnormal=8", "eval.every_steps=4", "optim.main.lr=1e-4",
                   "optim.sgnm.lr=1e-4", "optim.sgnm.warmup_iters=2", "optim.main.cosine_t_max=3",
                   "optim.sgnm.planned_iterations=40", "eval.batch_size=8"]


def synthetic_setup(say: Callable[[str], None] = print, train_head: bool = True,
                    ) -> tuple[Path | None, Path, list[tuple[str, np.ndarray, np.ndarray]]]:
    """(checkpoint, clip dir, test videos as (name, features [T,512], snippet gt [T])) on cached synthetic data.

    ``train_head=False`` returns no checkpoint (the caller uses an untrained head).
    """
    from engine.clip import resolve_clip_dir
    from export.data import load_features, read_list
    from export.synth import synth_features
    from export.train_config import load_train_config
    from export.trainer import train

    root = cache_dir("consistency")
    data, run = root / "synth", root / "run"
    clip = resolve_clip_dir("tiny")
    if not (data / "list" / "ucf_CLIP_rgbtest.csv").is_file():
        say(f"making synthetic features in {data} (first run only)")
        synth_features(data, preset="ucf", videos=SYNTH_VIDEOS, seed=0, crops=2)
    ckpt: Path | None = run / "best.safetensors"
    if not train_head:
        ckpt = None
    elif not ckpt.is_file():
        say(f"training a head on them in {run} (first run only, a few minutes on a busy machine)")
        cfg = load_train_config(Path(__file__).resolve().parent.parent / "configs" / "train" / "ucf.yaml",
                                list(TRAIN_OVERRIDES))
        res = train(cfg, data, str(clip), run, device="cpu", progress=False)
        say(f"  trained: best frame AUC {res.best_metric}")
    rows = read_list(data / "list" / "ucf_CLIP_rgbtest.csv", data)
    gt_by_video = _synthetic_gt(data, rows)
    videos = [(r.video, load_features(r.path), gt_by_video[r.video]) for r in rows]
    return ckpt, clip, videos


def _synthetic_gt(data: Path, rows: list[Any]) -> dict[str, np.ndarray]:
    """Snippet-level ground truth per test video from the saved frame GT (16 frames per snippet)."""
    from export.gt import load_ground_truth

    gt = load_ground_truth("ucf", data, rows)
    out, pos = {}, 0
    for r, t in zip(rows, gt.lengths, strict=True):
        frames = gt.frame_gt[pos: pos + SNIPPET_FRAMES * t]
        out[r.video] = frames.reshape(t, SNIPPET_FRAMES).max(axis=1)
        pos += SNIPPET_FRAMES * t
    return out


def real_setup(list_csv: str, data_root: str) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Test videos of a user's list with snippet GT when the ground truth can be found."""
    from export.data import load_features, read_list

    rows = read_list(list_csv, data_root)
    preset = "xd" if "xd" in Path(list_csv).name.lower() else "ucf"
    gts: dict[str, np.ndarray] = {}
    try:
        from export.gt import load_ground_truth

        gt = load_ground_truth(preset, data_root, rows)
        pos = 0
        for r, t in zip(rows, gt.lengths, strict=True):
            gts[r.video] = gt.frame_gt[pos: pos + SNIPPET_FRAMES * t].reshape(t, SNIPPET_FRAMES).max(axis=1)
            pos += SNIPPET_FRAMES * t
    except Exception as exc:  # AUC is optional; the score gaps need no GT
        print(f"(no ground truth: {exc}; frame AUC not computed)")
    return [(r.video, load_features(r.path), gts.get(r.video)) for r in rows]


def head_score_fn(checkpoint: Path | None, clip: Path, threads: int) -> tuple[Callable[..., Any], int]:
    """ORT scoring function of the checkpoint's head (exported once per checkpoint, cached) and its max window.

    No checkpoint: an untrained UCF-layout head (seed 0).
    """
    import onnxruntime as ort

    from engine.bundle import sha256_file
    from export.onnx_export import export_head_onnx

    if checkpoint is None:  # the same seeded head as bench/head.py: share its cached graph
        from head import build_head, export_cached

        head = build_head(seed=0)
        onnx = export_cached(head, cache_dir("head"))
    else:
        from export.checkpoint import load_checkpoint

        head = load_checkpoint(checkpoint, clip).eval().inference_head().eval()
        onnx = cache_dir("consistency") / f"head-{sha256_file(checkpoint)[:16]}.onnx"
        if not onnx.is_file():
            export_head_onnx(head, onnx, int(head.config.embed_dim), int(head.config.visual_length), max_batch=64)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx), sess_options=opts, providers=["CPUExecutionProvider"])

    def score(feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, p = sess.run(["scores", "class_probs"], {"features": np.ascontiguousarray(feats, dtype=np.float32),
                                                     "lengths": np.asarray(lengths, dtype=np.int64)})
        return s, p

    return score, int(head.config.visual_length)


def window_outputs(emb: np.ndarray, score_fn: Callable[..., Any], length: int, batch: int = 16) -> list[np.ndarray]:
    """Head scores of every live window of a video: entry j = scores of the window ending at snippet j.

    The window ending at snippet j is the same whatever the lookahead, so all lookaheads are read from
    one pass (each window costs a full 256-row head call); ``streaming_read`` turns them into the live
    per-snippet scores, checked against ``stream.window.streaming_scores`` in ``main``.
    """
    from stream.window import pad_batch

    n = emb.shape[0]
    out: list[np.ndarray] = []
    for s in range(0, n, batch):
        wins = [emb[max(0, j - length + 1): j + 1] for j in range(s, min(n, s + batch))]
        feats, lens = pad_batch(wins)
        scores = np.asarray(score_fn(feats, lens)[0])
        out += [scores[b, : lens[b]] for b in range(len(wins))]
    return out


def streaming_read(outputs: list[np.ndarray], length: int, lookahead: int) -> np.ndarray:
    """Snippet i's live score: row i of the window ending at min(i + L, N - 1) (the flush covers the tail)."""
    n = len(outputs)
    res = np.empty(n, dtype=np.float32)
    for i in range(n):
        j = min(i + lookahead, n - 1)
        res[i] = outputs[j][i - max(0, j - length + 1)]
    return res


def frame_auc(scores: list[np.ndarray], gts: list[np.ndarray]) -> float:
    from export.metrics import frame_auc_ap

    gt = np.concatenate([np.repeat(g, SNIPPET_FRAMES) for g in gts])
    if gt.min() == gt.max():
        return float("nan")
    return frame_auc_ap(scores, gt)[0]


def pick_videos(videos: list[Any], n: int | None, max_snippets: int | None) -> list[Any]:
    """Up to n videos alternating anomalous and normal (so AUC is defined), each cut to max_snippets."""
    if n is not None:
        abn = [v for v in videos if v[2] is not None and v[2].any()]
        nor = [v for v in videos if not (v[2] is not None and v[2].any())]
        mixed = [x for pair in zip(abn, nor, strict=False) for x in pair] + abn[len(nor):] + nor[len(abn):]
        videos = mixed[:n]
    if max_snippets:
        videos = [(name, f[:max_snippets], None if g is None else g[:max_snippets]) for name, f, g in videos]
    return videos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="W=64 only, 3 videos of at most 80 snippets")
    ap.add_argument("--lookaheads", default="0,2,4,8", help="comma list of lookaheads L (snippets)")
    ap.add_argument("--windows", default=None, help="comma list of window lengths W (default 64,256; quick 64)")
    ap.add_argument("--videos", type=int, default=None, help="use at most this many test videos (default 8; quick 3)")
    ap.add_argument("--max-snippets", type=int, default=None,
                    help="cut every video to this many snippets (default 128; quick 80)")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    ap.add_argument("--random-head", action="store_true",
                    help="skip training: an untrained head (smoke tests only; AUC figures are meaningless)")
    ap.add_argument("--list", dest="list_csv", default=None, help="real features: test list CSV")
    ap.add_argument("--data-root", default=None, help="real features: data set folder")
    ap.add_argument("--checkpoint", default=None, help="real features: trained checkpoint (best.safetensors)")
    ap.add_argument("--clip", default=None, help="real features: the CLIP folder the checkpoint was trained with")
    args = ap.parse_args(argv)

    real = any(v is not None for v in (args.list_csv, args.checkpoint))
    if real and not (args.list_csv and args.checkpoint and args.clip):
        ap.error("real features need --list, --checkpoint and --clip (and usually --data-root)")
    m = print_header("Streaming vs offline DSANet scores (lookahead read-out)")
    threads = args.threads or usable_cores()
    lookaheads = [int(v) for v in args.lookaheads.split(",")]
    windows = [int(v) for v in args.windows.split(",")] if args.windows else ([64] if args.quick else [64, 256])
    # every window costs a full 256-row head call: cap the work (full: ~1.8k windows, quick: ~0.3k)
    n_videos = args.videos if args.videos is not None else (3 if args.quick else 8)
    max_snip = args.max_snippets if args.max_snippets is not None else (80 if args.quick else 128)

    from stream.window import offline_scores, streaming_scores

    if real:
        from engine.clip import resolve_clip_dir

        clip = resolve_clip_dir(args.clip)
        ckpt = Path(args.checkpoint)
        videos = real_setup(args.list_csv, args.data_root or str(Path(args.list_csv).resolve().parent.parent))
        source = f"real features {args.list_csv}"
    else:
        ckpt, clip, videos = synthetic_setup(train_head=not args.random_head)
        how = "UNTRAINED head" if args.random_head else f"head trained with {TRAIN_OVERRIDES}"
        source = f"synthetic features (export.synth, {SYNTH_VIDEOS} videos, seed 0; {how})"
    videos = pick_videos(videos, n_videos, max_snip)
    score_fn, max_window = head_score_fn(ckpt, clip, threads)
    n_snip = sum(v[1].shape[0] for v in videos)
    has_gt = all(v[2] is not None for v in videos)
    print(f"data: {source}")
    print(f"{len(videos)} videos, {n_snip} snippets (lengths {min(v[1].shape[0] for v in videos)}.."
          f"{max(v[1].shape[0] for v in videos)}); head on ONNX Runtime, {threads} threads\n")

    offline = [offline_scores(f, score_fn, max_window)[0] for _, f, _ in videos]
    auc_off = frame_auc(offline, [v[2] for v in videos]) if has_gt else float("nan")
    # the one-pass read-out must equal the live path exactly (checked on the shortest video)
    probe = min(videos, key=lambda v: v[1].shape[0])[1]
    la_check = min(max(lookaheads), windows[0] - 1)
    check = float(np.abs(streaming_read(window_outputs(probe, score_fn, windows[0]), windows[0], la_check)
                         - streaming_scores(probe, score_fn, windows[0], la_check, batch=16)[0]).max())
    print(f"read-out check vs stream.window.streaming_scores (W={windows[0]}, L={la_check}): max |diff| {check:.1e}")
    if check > 1e-4:
        raise SystemExit("the one-pass read-out disagrees with stream.window.streaming_scores")
    rows = []
    res: dict[str, float] = {"readout_check": check}
    for w in windows:
        outs = [window_outputs(f, score_fn, w) for _, f, _ in videos]
        for la in lookaheads:
            if la >= w:
                continue
            live = [streaming_read(o, w, la) for o in outs]
            diff = np.concatenate([np.abs(a - b) for a, b in zip(live, offline, strict=True)])
            a, b = np.concatenate(live), np.concatenate(offline)
            r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
            auc_live = frame_auc(live, [v[2] for v in videos]) if has_gt else float("nan")
            rows.append([w, la, float(diff.max()), float(diff.mean()), r, auc_live, auc_live - auc_off])
            res[f"w{w}_l{la}_maxabs"] = float(diff.max())
            res[f"w{w}_l{la}_r"] = r
            res[f"w{w}_l{la}_dauc"] = auc_live - auc_off
    print(table(["W", "lookahead L", "max abs diff", "mean abs diff", "Pearson r", "live frame AUC",
                 "AUC live - offline"], rows, digits=4))
    print(f"\noffline frame AUC {auc_off:.4f} (whole videos, chunks of {max_window} as the official test)")
    print()
    print(result_line(videos=len(videos), snippets=n_snip, offline_auc=auc_off, cores=m["cores"], **res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
