"""``dsanet synth-features`` and ``dsanet extract-features``: make feature data sets in VadCLIP's layout."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _synth(args: argparse.Namespace) -> int:
    from export.synth import synth_features

    summary = synth_features(args.out, preset=args.preset, videos=args.videos, seed=args.seed,
                             test_fraction=args.test_fraction, crops=args.crops)
    print(summary.describe())
    print(f"train list: {summary.train_csv}\ntest list:  {summary.test_csv}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from export.extract import extract_features

    csv_path = extract_features(args.videos, clip=args.clip, out=args.out, crops=args.crops,
                                snippet_seconds=args.snippet_seconds, label=args.label,
                                list_name=args.list_name, batch_size=args.batch_size,
                                show_progress=not args.no_progress)
    print(f"features of {len(args.videos)} video(s) written; list: {csv_path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers) -> None:  # noqa: ANN001 - argparse's private action type
    p = subparsers.add_parser(
        "synth-features", help="write a synthetic feature data set in VadCLIP's layout (for tests and demos)",
        description="Write a synthetic data set in exactly VadCLIP's layout: list CSVs (10 train crops, one "
                    "test crop), annotation file, frame and segment ground truth, [T,512] float32 features "
                    "under DIR/features, and DIR/snippets.json. Anomalous videos hold one or two segments "
                    "shifted along a per-class direction, so the class is learnable. Deterministic per seed.")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--preset", choices=("ucf", "xd", "demo"), default="ucf",
                   help="UCF-Crime or XD-Violence layout (demo: the embedded demo's 4 classes, UCF layout)")
    p.add_argument("--videos", type=_positive_int, default=120, help="number of videos (>= 4; half normal)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of each group put in the test list")
    p.add_argument("--crops", type=_positive_int, default=10, help="train crops per video (1..10)")
    p.set_defaults(func=_synth)

    e = subparsers.add_parser(
        "extract-features", help="embed videos with the CLIP image tower into VadCLIP-format features",
        description="Cut each video into non-overlapping snippets of 16 decoded frames (or --snippet-seconds "
                    "of presentation time) and embed ONE frame per snippet, the middle one (index n // 2 of "
                    "the snippet's n frames; the live service picks the same frame), with the CLIP image "
                    "tower after CLIP preprocessing. A trailing partial 16-frame snippet is dropped. Writes "
                    "OUT/features/<video>__<k>.npy ([T,512] float32; k = crop: 0 centre, 1-4 corners, 5-9 "
                    "mirrored), OUT/list/<list> (path,label; re-running merges) and OUT/snippets.json.")
    e.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (anything FFmpeg decodes)")
    e.add_argument("--clip", required=True, help="local Hugging Face CLIP folder, or 'tiny' (random, tests only)")
    e.add_argument("--out", required=True, help="output data set folder")
    e.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1 = centre view only, 10 = VadCLIP's ten views")
    e.add_argument("--snippet-seconds", type=float, default=None,
                   help="cut snippets by time (seconds) instead of 16 frames")
    e.add_argument("--label", default="Normal",
                   help="label written in the list for these videos (e.g. Normal, Fighting, or XD codes)")
    e.add_argument("--list-name", default="extracted.csv", help="list file name under OUT/list/")
    e.add_argument("--batch-size", type=_positive_int, default=32, help="images per CLIP forward pass")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_extract)
