"""``dsanet score VIDEO -b BUNDLE``: score a recording offline, as the live service would, with a timeline."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

_DESCRIPTION = """\
Score a video file offline exactly as the live service would score it as a camera: same snippet cutting
(by presentation time, the bundle's snippet duration), same sliding window and lookahead, same event
state machine. Prints a short summary (snippets, events with category and span in mm:ss) and optionally
writes a per-snippet CSV, the events as JSON lines and a timeline PNG.

Times. CSV rows and the plot use seconds from the first frame of the video. Event lines keep the live
event schema: their ISO-8601 times are capture times, i.e. --start-at + seconds into the video. Without
--start-at the video starts at the UNIX epoch, so "1970-01-01T00:00:12.345Z" means 12.345 s into the
video. Every event line also has "video": {"name", "start_s", "end_s", "updated_s"} with the same times
in seconds from the first frame. An event still open at the end of the file ends with reason
"end_of_file".

Settings come from the live defaults, then from -c/--config (the deployment's window and events
sections, with --camera's overrides, and model.categories: categories added, renamed or dropped in words),
then from the options below. Exit status: 0 on success, 2 when
the video, bundle, config or an option is unusable (the message says which)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score", help="score a video file offline and plot its timeline (check a recording)",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", metavar="VIDEO", help="video file (anything FFmpeg reads: mp4, mkv, avi, ...)")
    p.add_argument("-b", "--bundle", metavar="DIR",
                   help="model bundle directory (default: model.bundle of -c/--config)")
    out = p.add_argument_group("outputs")
    out.add_argument("--csv", metavar="OUT.csv",
                     help="one row per snippet: index, start_s, end_s, score, one probability column per class")
    out.add_argument("--plot", metavar="OUT.png", help="timeline PNG (needs matplotlib: the 'train' extra)")
    out.add_argument("--events", metavar="OUT.jsonl", help="events as JSON lines (live schema + 'video' times)")
    win = p.add_argument_group("window (default: the live defaults or the config's)")
    win.add_argument("--window", type=int, metavar="W", help="snippets in the sliding window (1..bundle max)")
    win.add_argument("--lookahead", type=int, metavar="N",
                     help="snippets behind the newest at which a score is read (0..W-1)")
    ev = p.add_argument_group("events (default: the live defaults or the config's)")
    ev.add_argument("--on-threshold", type=float, metavar="X", help="score at or above which an event may start")
    ev.add_argument("--off-threshold", type=float, metavar="X", help="score below which an open event may end")
    ev.add_argument("--min-duration", type=float, metavar="S", help="seconds >= on-threshold before a start")
    ev.add_argument("--hold", type=float, metavar="S", help="seconds < off-threshold before an end")
    ev.add_argument("--cooldown", type=float, metavar="S", help="seconds before the same category may start again")
    ev.add_argument("--update-interval", type=float, metavar="S", help="minimum seconds between update events")
    src = p.add_argument_group("source")
    src.add_argument("-c", "--config", metavar="FILE",
                     help="deployment YAML: take window, events and model settings from it")
    src.add_argument("--camera", metavar="NAME",
                     help="camera name in events (default: the video's file name); with -c, that camera's "
                          "window/events overrides apply")
    src.add_argument("--start-at", metavar="ISO",
                     help="wall-clock time of the first frame for event times, e.g. 2026-11-29T07:00:00Z "
                          "(default: 1970-01-01T00:00:00Z, so event times read as offsets)")
    rt = p.add_argument_group("runtime")
    rt.add_argument("--runtime", choices=("auto", "onnxruntime", "torch", "tensorrt"), default=None,
                    help="inference runtime (default: auto, or the config's)")
    rt.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu, or the config's)")
    rt.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None, help="default fp32")
    rt.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads per model")
    rt.add_argument("--batch", type=int, default=16, metavar="N", help="snippets per encoder call (default 16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log runtime selection and other details")
    p.set_defaults(func=handle)


_EVENT_OPTIONS = ("on_threshold", "off_threshold", "min_duration", "hold", "cooldown", "update_interval")


def handle(args: argparse.Namespace) -> int:
    """Validate everything cheap first (video, outputs, options, plot package), then load and score.

    Errors (a ``ScoreError`` or other ``DsanetError``: exit 2) are reported by ``stream.cli.main``."""
    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from engine.bundle import DEFAULT_MAX_WINDOW
    from stream.events import EventSettings, parse_iso_utc
    from stream.offline import ScoreError, _prepare_output, open_video, resolve_window, score_video

    video = Path(args.video)
    cfg, cam_cfg = _load_config(args)
    bundle_dir = args.bundle or (cfg.model.bundle if cfg is not None else None)
    if not bundle_dir:
        raise ScoreError("no model bundle: give -b/--bundle DIR (or -c/--config with model.bundle)")
    for opt in ("csv", "plot", "events"):
        target = getattr(args, opt)
        if target and video.exists() and Path(target).resolve() == video.resolve():
            raise ScoreError(f"--{opt} {target} is the input video; refusing to overwrite it")
        if target:
            _prepare_output(target)  # an output in an impossible place fails now, not after scoring
    if args.batch < 1:
        raise ScoreError(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise ScoreError(f"--threads must be >= 1, got {args.threads}")
    open_video(video).close()  # a bad video fails now, not after loading the models

    # window and events: live defaults < config (+ camera overrides) < command line
    wcfg = (cfg.window_for(cam_cfg) if cam_cfg is not None else cfg.window) if cfg is not None else None
    window = args.window if args.window is not None else (wcfg.length if wcfg is not None else None)
    lookahead = args.lookahead if args.lookahead is not None else (wcfg.lookahead if wcfg is not None else None)
    base = EventSettings.from_config((cfg.events_for(cam_cfg) if cam_cfg is not None else cfg.events)
                                     if cfg is not None else None)
    overrides = {k: float(getattr(args, k)) for k in _EVENT_OPTIONS if getattr(args, k) is not None}
    resolve_window(window, lookahead, DEFAULT_MAX_WINDOW)  # the bundle may allow less; checked again once it is loaded
    settings = dataclasses.replace(base, **overrides)
    settings.validate()
    origin = parse_iso_utc(args.start_at) if args.start_at else 0.0
    if args.plot:
        from stream.plot import require_matplotlib

        require_matplotlib()

    from engine.runtime import load_models

    m = cfg.model if cfg is not None else None
    models = load_models(bundle_dir, runtime=args.runtime or (m.runtime if m else "auto"),
                         device=args.device or (m.device if m else "cpu"),
                         precision=args.precision or (m.precision if m else "fp32"),
                         threads=args.threads if args.threads is not None else (m.threads if m else None))
    resolve_window(window, lookahead, int(models[0].max_window))  # clear message before decoding anything
    camera = args.camera or video.stem or "video"
    result = score_video(video, models, window=window, lookahead=lookahead, events=settings, camera=camera,
                         origin=float(origin or 0.0), encoder_batch=args.batch,
                         progress=not args.quiet and sys.stderr.isatty(),
                         categories=m.categories.to_edit() if m is not None and m.categories is not None else None)
    print(result.summary())
    if args.csv:
        print(f"csv: {result.write_csv(args.csv)}")
    if args.events:
        print(f"events: {result.write_events(args.events)} ({len(result.events)} messages)")
    if args.plot:
        from stream.plot import plot_timeline

        print(f"plot: {plot_timeline(result, args.plot)}")
    return 0


def _load_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """(deployment config or None, the camera entry named by --camera or None)."""
    if not args.config:
        return None, None
    from stream.config import load_config
    from stream.offline import ScoreError

    cfg = load_config(args.config)
    if not args.camera:
        return cfg, None
    for cam in cfg.cameras:
        if cam.name == args.camera:
            return cfg, cam
    names = ", ".join(c.name for c in cfg.cameras)
    raise ScoreError(f"{args.config}: no camera named {args.camera!r} (cameras: {names})")
