"""``dsanet extract-features``: CLIP features of the user's own footage, in VadCLIP's format.

Each video is cut into consecutive, non-overlapping snippets, by default of 16 decoded frames (as the
VadCLIP features: one row per 16-frame snippet) or, with ``--snippet-seconds S``, of S seconds of
presentation time. One frame per snippet is embedded with the CLIP image tower, after CLIP
preprocessing (antialiased bicubic resize of the short side to 224, centre crop, CLIP mean/std, via
``engine.preprocess``). With ``--crops 10`` every embedded frame gives the ten VadCLIP views
(0 = centre, 1-4 = top-left, top-right, bottom-left, bottom-right corners of the resized frame, 5-9 =
their horizontal mirrors), written as ``<video>__0.npy`` .. ``<video>__9.npy``; with ``--crops 1``
only the centre view ``<video>__0.npy``.

Which frame represents a snippet (the live service must choose the same one, or its embeddings would
not match what the head was trained on): **the middle frame**, index ``n // 2`` of the n frames the
snippet holds (frame 8 of 16). That rule, how the candidate frames are held, the boundary tolerance of
time-cut snippets and which trailing snippet is kept are :mod:`engine.snippet_contract`, which the live
side (``stream.snippets``) imports too.

A video's trailing frames that do not fill a whole 16-frame snippet are dropped (T = frames // 16);
in ``--snippet-seconds`` mode the last snippet is kept only if it holds at least half as many frames
as a full one. VadCLIP does not document whether its rows are one frame or a mean of 16; this choice is
ours (see docs/model.md).

Output in ``--out DIR``: ``DIR/features/<video>__<k>.npy`` ([T, 512] float32),
``DIR/list/<list name>`` (``path,label``, paths relative to DIR; rows for the same files are replaced
when the command runs again, so several runs with different ``--label`` build one list) and
``DIR/snippets.json`` (snippet frames / fps / seconds, the frame rule, per-video details).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DataError
from engine.snippet_contract import (
    FRAME_RULE,
    FRAME_RULE_TEXT,
    MiddleFrameHolder,
    embedded_frame_index,
    extractor_keeps_tail,
    snippet_number,
)
from export.data import SNIPPET_FRAMES, SNIPPET_INFO_FILE, write_list, write_snippet_info

log = logging.getLogger(__name__)

DEFAULT_LIST = "extracted.csv"
snippet_frame_offset = embedded_frame_index  # the contract's rule, under the extractor's historical name


@dataclass
class VideoFeatures:
    """Result for one video: the per-crop features and how they were cut."""

    name: str
    source: Path
    features: np.ndarray  # [crops, T, 512]
    fps: float
    n_frames: int
    snippet_frames: float  # frames per snippet (nominal in seconds mode)


def _open(path: Path):  # -> av container
    import av

    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot open video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise DataError(f"{path} has no video stream")
    return container


def _fps(stream: Any, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        log.warning("%s: no frame rate in the container, assuming 30 fps", path)
        return 30.0
    return float(rate)


def iter_snippet_frames(path: str | os.PathLike[str], snippet_seconds: float | None = None
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frames in snippet, RGB uint8 frame)`` for every snippet's embedded frame, in order.

    Frame mode (``snippet_seconds=None``): snippets of 16 decoded frames, incomplete tail dropped.
    Seconds mode: frames grouped by ``floor((t - t0) / snippet_seconds)`` of their presentation time.
    """
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _fps(stream, path)
        held: MiddleFrameHolder[Any] = MiddleFrameHolder()  # frames that may still be the middle one
        group_key: int | None = None
        full = None if snippet_seconds is None else max(1.0, snippet_seconds * fps)
        t0: float | None = None

        def chosen() -> np.ndarray:
            return held.chosen().to_ndarray(format="rgb24")

        try:
            for i, frame in enumerate(container.decode(stream)):
                if snippet_seconds is None:
                    key = i // SNIPPET_FRAMES
                else:
                    t = frame.time if frame.time is not None else i / fps
                    t0 = t if t0 is None else t0
                    key = snippet_number(t, t0, snippet_seconds)
                if group_key is not None and key != group_key:
                    if snippet_seconds is not None or held.count == SNIPPET_FRAMES:
                        yield held.count, chosen()
                    held.reset()
                group_key = key
                held.add(frame)
        except av.error.FFmpegError as exc:
            raise DataError(f"video {path} is corrupt: decoding failed: {exc}") from exc
        if held.count and extractor_keeps_tail(held.count, SNIPPET_FRAMES, full):
            yield held.count, chosen()
    finally:
        container.close()


def video_info(path: str | os.PathLike[str]) -> tuple[float, int]:
    """(fps, number of frames as declared by the container; 0 when unknown)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        return _fps(stream, path), int(stream.frames or 0)
    finally:
        container.close()


class ClipEmbedder:
    """CLIP image tower + the CLIP folder's preprocessing; embeds RGB frames into [N, 512] float32."""

    def __init__(self, clip_dir: str | os.PathLike[str], crops: int = 1, batch_size: int = 32) -> None:
        import torch

        from engine.clip import load_vision_model
        from engine.preprocess import Preprocessing

        if crops not in (1, 10):
            raise DataError(f"--crops must be 1 or 10, got {crops}")
        self.torch = torch
        self.model = load_vision_model(clip_dir)
        self.pre = Preprocessing.from_clip_dir(clip_dir)
        self.crops = crops
        self.batch_size = batch_size

    def images(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """[N*crops, 3, 224, 224]: frame-major (all views of frame 0, then frame 1, ...)."""
        if self.crops == 1:
            return self.pre(list(frames))
        return np.concatenate([self.pre.ten_crop(f) for f in frames], axis=0)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = self.torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size]))
                out.append(self.model(pixel_values=x).image_embeds.float().numpy())
        return np.concatenate(out, axis=0).astype(np.float32)

    def embed_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """[crops, N, 512] for N frames."""
        emb = self.embed_images(self.images(frames))
        return emb.reshape(len(frames), self.crops, -1).transpose(1, 0, 2)


def extract_video(path: str | os.PathLike[str], embedder: ClipEmbedder, snippet_seconds: float | None = None,
                  frames_per_batch: int = 8, progress: Any = None) -> VideoFeatures:
    """Embed one video's snippets; errors name the file."""
    path = Path(path)
    fps, _ = video_info(path)
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    counts: list[int] = []
    for n, frame in iter_snippet_frames(path, snippet_seconds):
        pending.append(frame)
        counts.append(n)
        if len(pending) >= frames_per_batch:
            chunks.append(embedder.embed_frames(pending))
            pending = []
            if progress is not None:
                progress.set_postfix_str(f"{path.name}: {len(counts)} snippets", refresh=False)
    if pending:
        chunks.append(embedder.embed_frames(pending))
    if not chunks:
        need = f"{SNIPPET_FRAMES} frames" if snippet_seconds is None else f"{snippet_seconds} s"
        raise DataError(f"video {path} is too short or has no decodable frames: a snippet needs {need}")
    feats = np.concatenate(chunks, axis=1)
    per = float(SNIPPET_FRAMES) if snippet_seconds is None else snippet_seconds * fps
    return VideoFeatures(name=path.stem, source=path, features=feats, fps=fps, n_frames=int(sum(counts)),
                         snippet_frames=per)


def _read_rows(csv_path: Path) -> list[tuple[str, str]]:
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]


def extract_features(videos: Sequence[str | os.PathLike[str]], clip: str, out: str | os.PathLike[str],
                     crops: int = 1, snippet_seconds: float | None = None, label: str = "Normal",
                     list_name: str = DEFAULT_LIST, batch_size: int = 32, show_progress: bool = True) -> Path:
    """Extract features of ``videos`` into ``out`` (see the module docstring); returns the list CSV."""
    from tqdm import tqdm

    from engine.clip import resolve_clip_dir

    if snippet_seconds is not None and snippet_seconds <= 0:
        raise DataError(f"--snippet-seconds must be positive, got {snippet_seconds}")
    if not videos:
        raise DataError("no videos given")
    paths = [Path(v) for v in videos]
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems and stems[p.stem] != p:
            raise DataError(f"videos {stems[p.stem]} and {p} have the same name {p.stem!r}: feature files would collide")
        stems[p.stem] = p
        if not p.is_file():
            raise DataError(f"video {p} does not exist")
    out = Path(out)
    clip_dir = resolve_clip_dir(clip)
    embedder = ClipEmbedder(clip_dir, crops=crops, batch_size=batch_size)
    feat_dir = out / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    new_rows: list[tuple[str, str]] = []
    details: dict[str, dict[str, Any]] = {}
    bar = tqdm(paths, unit="video", desc="extract-features", disable=not show_progress)
    for p in bar:
        res = extract_video(p, embedder, snippet_seconds, progress=bar)
        for k in range(res.features.shape[0]):
            target = feat_dir / f"{res.name}__{k}.npy"
            np.save(target, res.features[k])
            new_rows.append((target.relative_to(out).as_posix(), label))
        details[res.name] = {"source": str(p), "fps": res.fps, "frames_used": res.n_frames,
                             "snippets": int(res.features.shape[1]), "snippet_frames": res.snippet_frames}
    bar.close()
    csv_path = out / "list" / list_name
    replaced = {r[0] for r in new_rows}
    rows = [r for r in _read_rows(csv_path) if r[0] not in replaced] + new_rows
    write_list(csv_path, rows)
    _write_info(out, details, crops, snippet_seconds, clip_dir)
    return csv_path


def _write_info(out: Path, details: dict[str, dict[str, Any]], crops: int, snippet_seconds: float | None,
                clip_dir: Path) -> None:
    """Merge per-video details into DIR/snippets.json and record the data set's snippet timing."""
    old: dict[str, Any] = {}
    info_path = out / SNIPPET_INFO_FILE
    if info_path.is_file():
        try:
            old = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        old_seconds_mode = old.get("snippet_mode") == "seconds"
        changed_mode = old_seconds_mode != (snippet_seconds is not None)
        changed_seconds = snippet_seconds is not None and old_seconds_mode and \
            abs(float(old.get("snippet_seconds", snippet_seconds)) - snippet_seconds) > 1e-9
        if old.get("source") == "extract-features" and (changed_mode or changed_seconds):
            raise DataError(f"{out} already holds features cut differently ({info_path}): use another --out")
    videos = {**old.get("videos", {}), **details}
    fps = statistics.median(v["fps"] for v in videos.values())
    if max(abs(v["fps"] - fps) for v in videos.values()) > 0.01 * fps:
        log.warning("videos in %s have different frame rates (%s): snippet durations differ", out,
                    sorted({round(v["fps"], 3) for v in videos.values()}))
    if snippet_seconds is None:
        frames, seconds, mode = SNIPPET_FRAMES, SNIPPET_FRAMES / fps, "frames"
    else:
        frames, seconds, mode = max(1, round(snippet_seconds * fps)), snippet_seconds, "seconds"
    write_snippet_info(out, frames, fps, seconds, source="extract-features", snippet_mode=mode,
                       frame_rule=FRAME_RULE, frame_offset=FRAME_RULE_TEXT, crops=crops,
                       clip=str(clip_dir), videos=videos)
