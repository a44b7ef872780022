"""Offline scoring of a video file (``dsanet score``): what an operator runs to check a recording.

The point of this module is that a file is scored **exactly as the live service would score it** if the
file were a camera, so that the timeline an operator looks at is the one the alerts come from. Every
step therefore goes through the live code, not a copy of it:

* frames get capture times from the file's presentation timestamps with the live file clock
  (:class:`stream.reader.MediaClock`), anchored at ``origin`` (default 0: seconds from the first frame);
* snippets are cut by :class:`stream.snippets.SnippetCutter` with the bundle's snippet duration (middle
  frame, empty spans filled, a partial last snippet kept, as live);
* snippets are embedded by :class:`stream.scoring.EncoderWorker`'s batch step (same preprocessing, same
  reuse of a filled snippet's embedding), here called synchronously;
* every embedding goes through :class:`stream.window.EmbeddingWindow` (window length and lookahead as in
  the deployment config) and the windows are scored with :func:`stream.window.score_jobs`, so snippet
  ``i``'s score comes from the window that ends ``lookahead`` snippets later, and the last ones from the
  flushed final window (:func:`stream.window.streaming_scores` gives the same numbers);
* the scores drive :class:`stream.events.EventMachine`, the same thresholds and timing as live. An event
  still open at the end of the file is closed with ``reason: "end_of_file"``.

Times. Snippet times in the result, the CSV and the plot are **seconds from the first decoded frame**.
Events keep the live JSON schema, whose times are ISO-8601 capture times: those are ``origin`` + seconds
into the video, so with the default ``origin = 0`` they read ``1970-01-01T00:00:12.345Z`` for 12.345 s
into the video (``dsanet score --start-at`` sets the real wall-clock time of the first frame instead).
Each event line also carries ``"video": {"name", "start_s", "end_s", "updated_s"}``, the same times in
seconds from the start of the file, an extra key that parsers of the live schema ignore.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import DEFAULT_MAX_WINDOW
from engine.errors import DataError, DsanetError
from stream.events import Event, EventMachine, EventSettings
from stream.feedback.swap import BundleIds
from stream.reader import LazyFrame, MediaClock
from stream.scoring import DropOldestQueue, EncoderWorker
from stream.snippets import SnippetCutter, SnippetSpec
from stream.types import Snippet, SnippetEmbedding, WindowScore
from stream.window import EmbeddingWindow, WindowJob, score_jobs

log = logging.getLogger(__name__)

REASON_END_OF_FILE = "end_of_file"
DEFAULT_BATCH = 16


class ScoreError(DsanetError):
    """Offline scoring cannot run with these inputs or settings (the message names what is wrong)."""


# --------------------------------------------------------------------------------------------- helpers


def format_mmss(seconds: float, decimals: int = 0) -> str:
    """``75.4 -> '01:15'``; from one hour on ``'1:02:03'``; ``decimals`` adds fractions of a second.

    Used by the summary and the plot's time axis, so both read the same as a video player's clock.
    """
    if not math.isfinite(seconds):
        return "--:--"
    sign = "-" if seconds < 0 else ""
    scale = 10 ** decimals
    total = round(abs(seconds) * scale)  # round once, then split, so 59.96 s shows as 01:00 not 00:60
    whole, frac = divmod(total, scale)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    tail = f".{frac:0{decimals}d}" if decimals > 0 else ""
    if h:
        return f"{sign}{h}:{m:02d}:{s:02d}{tail}"
    return f"{sign}{m:02d}:{s:02d}{tail}"


@dataclass(frozen=True)
class EventSpan:
    """One event summarised for the plot and the summary (from its start/update/end messages)."""

    id: str
    category: str
    category_key: str
    start_s: float
    end_s: float
    peak_score: float
    category_score: float
    snippets: int
    reason: str | None


@dataclass
class ScoreResult:
    """Everything ``dsanet score`` learned about one video. Arrays are per snippet, in order."""

    video: Path
    camera: str
    bundle_name: str
    bundle_hash: str | None
    class_names: tuple[str, ...]
    display_names: tuple[str, ...]
    snippet_seconds: float
    window: int
    lookahead: int
    settings: EventSettings
    origin: float  # capture time of the first frame (events' clock); times below are relative to it
    start_s: np.ndarray  # [N] seconds from the first frame
    end_s: np.ndarray  # [N]
    scores: np.ndarray  # [N] anomaly score in [0, 1]
    class_probs: np.ndarray  # [N, C], column 0 = normal
    embeddings: np.ndarray = field(repr=False)  # [N, D] what the encoder gave (for parity checks)
    frames_per_snippet: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    events: list[Event] = field(default_factory=list)
    frames_decoded: int = 0
    fps: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_snippets(self) -> int:
        return int(self.scores.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.end_s[-1]) if self.n_snippets else 0.0

    def relative(self, t: float | None) -> float | None:
        """Capture time -> seconds from the first frame (rounded to the millisecond the schema carries)."""
        return None if t is None else round(t - self.origin, 3)

    def spans(self) -> list[EventSpan]:
        """One span per event id, with the values of its last message (its end when there is one)."""
        last: dict[str, Event] = {}
        for ev in self.events:
            if ev.id not in last or ev.seq >= last[ev.id].seq:
                last[ev.id] = ev
        out = []
        for ev in last.values():
            end = ev.end_time if ev.end_time is not None else ev.updated_time
            out.append(EventSpan(id=ev.id, category=ev.category, category_key=ev.category_key,
                                 start_s=ev.start_time - self.origin, end_s=end - self.origin,
                                 peak_score=ev.peak_score, category_score=ev.category_score,
                                 snippets=ev.snippets, reason=ev.reason))
        return sorted(out, key=lambda s: s.start_s)

    def event_dict(self, ev: Event) -> dict[str, Any]:
        """The live event object plus ``video`` (the same times in seconds from the start of the file)."""
        d = ev.to_dict()
        d["video"] = {"name": self.video.name, "start_s": self.relative(ev.start_time),
                      "end_s": self.relative(ev.end_time), "updated_s": self.relative(ev.updated_time)}
        return d

    def csv_header(self) -> list[str]:
        return ["index", "start_s", "end_s", "score", *self.display_names]

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per snippet: index, start/end in seconds from the first frame, score, class probabilities."""
        p = _prepare_output(path)
        try:
            with p.open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(self.csv_header())
                for i in range(self.n_snippets):
                    w.writerow([i, f"{self.start_s[i]:.3f}", f"{self.end_s[i]:.3f}", f"{self.scores[i]:.6f}",
                                *(f"{x:.6f}" for x in self.class_probs[i])])
        except OSError as exc:
            raise ScoreError(f"cannot write {p}: {exc.strerror or exc}") from None
        return p

    def write_events(self, path: str | os.PathLike[str]) -> Path:
        """Events as JSON lines (the live schema + ``video``); an empty file when nothing fired."""
        p = _prepare_output(path)
        try:
            with p.open("w", encoding="utf-8") as fh:
                for ev in self.events:
                    fh.write(json.dumps(self.event_dict(ev), separators=(",", ":"), ensure_ascii=False) + "\n")
        except OSError as exc:
            raise ScoreError(f"cannot write {p}: {exc.strerror or exc}") from None
        return p

    def summary(self) -> str:
        """A few lines for the terminal: what was scored and which events fired, in mm:ss."""
        spans = self.spans()
        lines = [
            f"{self.video.name}: {self.n_snippets} snippets of {self.snippet_seconds:.3f} s "
            f"({format_mmss(self.duration_s)}, {self.frames_decoded} frames) scored with {self.bundle_name} "
            f"(window {self.window}, lookahead {self.lookahead})",
        ]
        if self.n_snippets:
            lines.append(f"score: mean {float(np.mean(self.scores)):.3f}, max {float(np.max(self.scores)):.3f}; "
                         f"thresholds on {self.settings.on_threshold:g} / off {self.settings.off_threshold:g}")
        lines.append(f"events: {len(spans)}" + ("" if spans else " (none)"))
        for s in spans:
            lines.append(f"  {format_mmss(s.start_s)}-{format_mmss(s.end_s)}  {s.category} "
                         f"({s.category_score:.2f}) peak {s.peak_score:.2f}"
                         + (f" [{s.reason}]" if s.reason and s.reason != "score_below_threshold" else ""))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _prepare_output(path: str | os.PathLike[str]) -> Path:
    """Check an output path and create its folder; called before scoring too, so a typo fails at once."""
    p = Path(path)
    if p.is_dir():
        raise ScoreError(f"output {p} is a directory; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScoreError(f"cannot create the folder for {p}: {exc.strerror or exc}") from None
    return p


# -------------------------------------------------------------------------------------------- decoding


@dataclass
class DecodeStats:
    """Filled in while :func:`iter_snippets` runs."""

    frames: int = 0
    fps: float | None = None
    expected_frames: int | None = None
    warnings: list[str] = field(default_factory=list)


def open_video(path: str | os.PathLike[str]) -> Any:
    """Open a video with PyAV; a missing, unreadable or non-video file raises :class:`DataError`."""
    import av

    p = Path(path)
    if not p.exists():
        raise DataError(f"video {p} does not exist")
    if not p.is_file():
        raise DataError(f"video {p} is not a file")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot open video {p}: not a video file or damaged ({exc})") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{p} has no video stream")
    return container


def iter_snippets(path: str | os.PathLike[str], spec: SnippetSpec, camera: str = "video", origin: float = 0.0,
                  stats: DecodeStats | None = None, on_frame: Callable[[], None] | None = None) -> Iterator[Snippet]:
    """Decode ``path`` and yield its snippets as the live service would cut them (see module docstring).

    A decoding error after some frames ends the file there with a warning (a truncated recording is still
    worth checking); one before any frame raises :class:`DataError`.
    """
    import av

    stats = stats if stats is not None else DecodeStats()
    container = open_video(path)
    out: list[Snippet] = []
    cutter = SnippetCutter(camera, spec, out.append)
    clock = MediaClock()
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        stats.fps = float(rate) if rate else None
        stats.expected_frames = int(stream.frames) or None
        clock.new_loop(1.0 / stats.fps if stats.fps else None)
        try:
            for av_frame in container.decode(stream):
                pts = av_frame.time
                capture, _ = clock.capture_time(pts, origin, 0.0)
                cutter.on_frame(LazyFrame(camera, stats.frames, capture, 0.0, pts, av_frame=av_frame))
                stats.frames += 1
                if on_frame is not None:
                    on_frame()
                if out:
                    yield from out
                    out.clear()
        except av.error.FFmpegError as exc:
            if stats.frames == 0:
                raise DataError(f"video {path} is corrupt: no frame could be decoded ({exc})") from None
            msg = f"decoding stopped after {stats.frames} frames ({exc}); the rest of the file is not scored"
            log.warning("%s: %s", path, msg)
            stats.warnings.append(msg)
        cutter.on_discontinuity()  # the partial last snippet is real footage: keep it, as live
        yield from out
        out.clear()
    finally:
        container.close()
    if stats.frames == 0:
        raise DataError(f"video {path} has no decodable frames")


# ----------------------------------------------------------------------------------- embed and score


def embed_snippets(snippets: Iterator[Snippet], embed: Callable[[np.ndarray], np.ndarray],
                   preprocess: Callable[[list[np.ndarray]], np.ndarray], batch: int = DEFAULT_BATCH,
                   on_batch: Callable[[int], None] | None = None) -> tuple[list[SnippetEmbedding], list[int]]:
    """Embed snippets in batches with the live encoder worker's batch step (filled snippets reuse the
    previous embedding). Returns the embeddings without frames (a long file would not fit in memory with
    them) and each snippet's frame count (0 = filled)."""
    got: list[SnippetEmbedding] = []
    counts: list[int] = []
    worker = EncoderWorker(DropOldestQueue(1, name="offline-encoder"), embed, preprocess,
                           lambda es: got.extend(replace(e, frame=None) for e in es), max_batch=batch)
    pending: list[Snippet] = []
    for s in snippets:
        pending.append(s)
        counts.append(s.n_frames)
        if len(pending) >= batch:
            worker.process(pending)
            pending = []
            if on_batch is not None:
                on_batch(len(got))
    if pending:
        worker.process(pending)
    return got, counts


def window_scores(embeddings: Sequence[SnippetEmbedding],
                  score_fn: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                  length: int, lookahead: int, batch: int = DEFAULT_BATCH, max_window: int = DEFAULT_MAX_WINDOW,
                  camera: str = "video") -> list[WindowScore]:
    """Every snippet's score as the live service reports it: the live window and lookahead, flush included.

    Windows are scored ``batch`` at a time with :func:`stream.window.score_jobs` (what the head worker does).
    """
    win = EmbeddingWindow(length, lookahead, camera=camera, max_window=max_window)
    out: list[WindowScore] = []
    pending: list[WindowJob] = []
    for e in embeddings:
        job = win.push(e)
        if job is not None:
            pending.append(job)
            if len(pending) >= batch:
                out.extend(score_jobs(pending, score_fn))
                pending = []
    last = win.flush()
    if last is not None:
        pending.append(last)
    if pending:
        out.extend(score_jobs(pending, score_fn))
    return sorted(out, key=lambda ws: ws.index)


def run_events(scores: Sequence[WindowScore], machine: EventMachine) -> list[Event]:
    """Feed the scores in order to the live event machine; close what is still open at the end of the file."""
    events = machine.push_many(scores)
    last = machine.close(REASON_END_OF_FILE)
    if last is not None:
        events.append(last)
    return events


# ---------------------------------------------------------------------------------------------- entry


def resolve_window(length: int | None, lookahead: int | None, max_window: int) -> tuple[int, int]:
    """Window length and lookahead: given values, else the deployment config's defaults (as live)."""
    from stream.config import WindowConfig

    defaults = WindowConfig()
    length = int(defaults.length if length is None else length)
    lookahead = int(defaults.lookahead if lookahead is None else lookahead)
    if not 1 <= length <= max_window:
        raise ScoreError(f"--window {length} must be within 1..{max_window} (the bundle's max_window)")
    if not 0 <= lookahead < length:
        raise ScoreError(f"--lookahead {lookahead} must be within 0..{length - 1} (smaller than the window)")
    return length, lookahead


def score_video(video: str | os.PathLike[str], models: tuple[Any, Any, Any], *, window: int | None = None,
                lookahead: int | None = None, events: Any = None, camera: str | None = None, origin: float = 0.0,
                encoder_batch: int = DEFAULT_BATCH, head_batch: int = DEFAULT_BATCH,
                progress: bool = False, categories: Any = None) -> ScoreResult:
    """Score one video file with loaded models (``engine.runtime.load_models``'s ``(bundle, encoder, head)``).

    ``events``: an ``EventsConfig``, ``EventSettings``, mapping or None (config defaults). ``camera``
    names the source in events (default: the file's stem). ``origin``: capture time of the first frame.
    ``categories``: an ``engine.categories.CategoryEdit`` (``model.categories``), applied as the live
    service applies it: a rename keeps the baked head; an add or drop scores with ``head_open.onnx``
    against the edited class features.
    """
    bundle, encoder, head = models
    path = Path(video)
    cam = camera or path.stem or "video"
    settings = EventSettings.from_config(events)
    max_window = int(getattr(bundle, "max_window", DEFAULT_MAX_WINDOW))
    length, lookahead = resolve_window(window, lookahead, max_window)
    spec = SnippetSpec.from_bundle(bundle)
    class_names = tuple(bundle.class_names)
    display_names = tuple(getattr(bundle, "display_names", class_names))
    if categories is not None and not categories.empty:
        from engine.categories import TextEncoder, open_head_for, resolve, with_features

        cats = resolve(bundle, categories)
        if categories.add or categories.drop:
            cats = with_features(cats, TextEncoder(bundle), categories.key("add"))
            head = open_head_for(bundle, cats, head)
        class_names, display_names = cats.keys, cats.names
    machine = EventMachine(cam, settings, list(class_names), list(display_names),
                           model_info={"name": getattr(bundle, "name", None), "hash": _short_hash(bundle)})
    machine.bundle = BundleIds.of(bundle).short  # events name their bundle, as live ones do
    enc_batch = max(1, min(encoder_batch, int(getattr(encoder, "max_batch", encoder_batch))))
    hd_batch = max(1, min(head_batch, int(getattr(head, "max_batch", head_batch))))

    stats = DecodeStats()
    bar = _progress(path, progress)
    try:
        def tick() -> None:
            if bar is not None:
                if bar.total is None and stats.expected_frames:
                    bar.total = stats.expected_frames
                bar.update(1)

        snippets = iter_snippets(path, spec, cam, origin, stats, on_frame=tick)
        embedded, counts = embed_snippets(snippets, encoder.embed, bundle.preprocessing, enc_batch)
    finally:
        if bar is not None:
            bar.close()
    if not embedded:
        raise DataError(f"video {path} gave no snippet")  # unreachable with >= 1 frame; kept as a guard
    scored = window_scores(embedded, head.score, length, lookahead, hd_batch, max_window, cam)
    if [ws.index for ws in scored] != list(range(len(embedded))):
        raise ScoreError(f"{path}: internal error: {len(scored)} scores for {len(embedded)} snippets")
    evs = run_events(scored, machine)
    return ScoreResult(
        video=path, camera=cam, bundle_name=str(getattr(bundle, "name", "bundle")), bundle_hash=_short_hash(bundle),
        class_names=class_names, display_names=display_names, snippet_seconds=spec.seconds, window=length,
        lookahead=lookahead, settings=settings, origin=origin,
        start_s=np.asarray([ws.start_time - origin for ws in scored], dtype=np.float64),
        end_s=np.asarray([ws.end_time - origin for ws in scored], dtype=np.float64),
        scores=np.asarray([ws.score for ws in scored], dtype=np.float32),
        class_probs=np.asarray([ws.class_probs for ws in scored], dtype=np.float32).reshape(len(scored), -1),
        embeddings=np.stack([e.embedding for e in embedded]).astype(np.float32),
        frames_per_snippet=np.asarray(counts, dtype=np.int64),
        events=evs, frames_decoded=stats.frames, fps=stats.fps, warnings=list(stats.warnings),
    )


def _progress(path: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc=path.name, unit="frame", leave=False, dynamic_ncols=True)


def _short_hash(bundle: Any) -> str | None:
    """The bundle's content hash as events carry it live (first 12 hex digits)."""
    try:
        h = bundle.content_hash
    except Exception:  # bundles without file hashes (fakes in tests)
        return None
    return str(h)[:12] if h else None
