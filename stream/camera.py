"""One camera's pipeline and the registry that holds them.

A :class:`CameraPipeline` owns everything that belongs to one camera: its reader thread, snippet cutter,
embedding window, event machine, evidence packet ring, live status and metric names. The shared parts
(the batching encoder and head workers, the evidence writer, the sinks) are not in it; the service
routes each camera's records through them by camera name, looking the pipeline up in the
:class:`CameraRegistry`. Adding or removing a camera while the service runs is adding or removing one
pipeline there (``Service.add_camera`` / ``remove_camera``).

Threads: the reader thread drives the cutter; the encoder worker calls :meth:`CameraPipeline.push_embedding`;
the head worker calls :meth:`CameraPipeline.push_score`; control calls (thresholds, close, snapshot) come
from any thread. ``lock`` guards the event machine and the status, the only state two threads touch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from stream.config import CameraConfig, EventsConfig
from stream.control import CameraSnapshot
from stream.events import Event, EventMachine
from stream.gate import StillGate
from stream.reader import CameraReader, CameraState
from stream.redact import redact_url
from stream.snippets import SnippetCutter
from stream.stride import StrideController
from stream.types import SnippetEmbedding, WindowScore
from stream.window import EmbeddingWindow, WindowJob

RATE_WINDOW = 5.0  # seconds of frame counts behind a snapshot's fps


@dataclass
class CameraStatus:
    """Live per-camera numbers for the status line and snapshots (written by the head worker)."""

    score: float | None = None
    category: str | None = None
    lag: float | None = None
    scored: int = 0
    open_event: str | None = None
    last_alert: str | None = None
    frames_at_last_status: int = 0
    fps: float = 0.0


@dataclass
class RateMeter:
    """Frames per second over the last ``RATE_WINDOW`` seconds, from samples of a growing counter."""

    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def rate(self, count: int, now: float) -> float:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        return (count - c0) / (now - t0) if now - t0 > 1e-3 else 0.0


class CameraPipeline:
    """Reader -> cutter -> (shared encoder) -> window -> (shared head) -> event machine, for one camera."""

    def __init__(self, cfg: CameraConfig, events: EventsConfig, reader: CameraReader, cutter: SnippetCutter,
                 window: EmbeddingWindow, machine: EventMachine, stride: StrideController | None = None,
                 gate: StillGate | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.events = events
        self.reader = reader
        self.cutter = cutter
        self.window = window
        self.machine = machine
        self.stride = stride  # adaptive head stride (None: every snippet scored)
        self.gate = gate  # still-scene gate of the encoder (None: off)
        self.status = CameraStatus()
        self.enabled = cfg.enabled
        self.lock = threading.Lock()
        self._rate = RateMeter()

    # -- data path ---------------------------------------------------------------------------------
    def push_embedding(self, embedding: SnippetEmbedding, now: float) -> WindowJob | None:
        """Encoder worker: add one embedding to the window; returns the head job it makes, if any."""
        return self.window.push(embedding, now=now)

    def push_score(self, ws: WindowScore) -> list[Event]:
        """Head worker: feed the event machine; returns the events this score causes."""
        with self.lock:
            events = self.machine.push(ws)
            if self.stride is not None:
                busy = self.machine.state != EventMachine.IDLE
                self.window.stride = self.stride.observe(ws.score, ws.ahead_max, self.events.on_threshold, busy)
                if self.gate is not None:
                    self.gate.calm = self.stride.calm
            return events

    def note_score(self, ws: WindowScore, category: str | None, lag: float) -> None:
        """Head worker, after the score's events went out: a status line never precedes its alert."""
        with self.lock:
            st = self.status
            st.score, st.lag, st.scored, st.category = ws.score, lag, st.scored + 1, category

    def note_event(self, ev: Event) -> None:
        with self.lock:
            self.status.open_event = None if ev.type == "end" else ev.category
            self.status.last_alert = ev.short()

    def close(self, reason: str) -> Event | None:
        """End the open event (shutdown, camera removed or disabled)."""
        with self.lock:
            return self.machine.close(reason)

    # -- control -----------------------------------------------------------------------------------
    def set_thresholds(self, on_threshold: float | None, off_threshold: float | None) -> EventsConfig:
        """New on/off thresholds for the event machine, validated like the config; returns them."""
        with self.lock:
            update = {k: v for k, v in (("on_threshold", on_threshold), ("off_threshold", off_threshold))
                      if v is not None}
            new = self.events.derive(update, f"camera {self.name!r}: events")
            self.events = new
            self.machine.settings = new
            return new

    def snapshot(self, now: float | None = None) -> CameraSnapshot:
        now = time.monotonic() if now is None else now
        stats = self.reader.stats
        with self.lock:
            st = self.status
            fps = self._rate.rate(stats.frames, now) if self.enabled else 0.0
            return CameraSnapshot(
                name=self.name, url=redact_url(self.cfg.url), enabled=self.enabled,
                state=self.reader.state.value if self.enabled else "disabled", fps=fps,
                lag_seconds=st.lag, score=st.score, category=st.category,
                on_threshold=self.events.on_threshold, off_threshold=self.events.off_threshold,
                event_open=self.machine.open_event_id is not None, frames=stats.frames,
                snippets=self.cutter.emitted, scores=st.scored, reconnects=stats.reconnects)

    def status_line(self, interval: float) -> str:
        """One line for the console status (``interval``: seconds since the previous line)."""
        r = self.reader
        with self.lock:
            st = self.status
            frames = r.stats.frames
            fps = (frames - st.frames_at_last_status) / interval if interval > 0 else 0.0
            st.frames_at_last_status, st.fps = frames, fps
            score = "  -  " if st.score is None else f"{st.score:.3f}"
            lag = "  -  " if st.lag is None else f"{st.lag:.2f}s"
            extra = f" EVENT {st.open_event}" if st.open_event else ""
        state = r.state.value if self.enabled else "disabled"
        err = f" ({r.stats.last_error})" if r.state != CameraState.STREAMING and r.stats.last_error else ""
        return (f"[{self.name}] {state:11s} score={score} lag={lag} fps={fps:4.1f} "
                f"snippets={self.cutter.emitted} reconnects={r.stats.reconnects}{extra}{err}")


class CameraRegistry(Mapping[str, CameraPipeline]):
    """The service's cameras by name; safe to read from any thread while control adds or removes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cams: dict[str, CameraPipeline] = {}

    def add(self, pipeline: CameraPipeline) -> None:
        with self._lock:
            if pipeline.name.lower() in (n.lower() for n in self._cams):
                raise ValueError(f"camera {pipeline.name!r}: a camera of that name is already watched")
            self._cams[pipeline.name] = pipeline

    def replace(self, pipeline: CameraPipeline) -> None:
        with self._lock:
            if pipeline.name not in self._cams:
                raise KeyError(pipeline.name)
            self._cams[pipeline.name] = pipeline

    def pop(self, name: str) -> CameraPipeline:
        with self._lock:
            try:
                return self._cams.pop(name)
            except KeyError:
                raise KeyError(f"camera {name!r}: no such camera") from None

    def get_camera(self, name: str) -> CameraPipeline:
        cam = self.get(name)
        if cam is None:
            raise KeyError(f"camera {name!r}: no such camera")
        return cam

    def __getitem__(self, name: str) -> CameraPipeline:
        with self._lock:
            return self._cams[name]

    def get(self, name: str, default: CameraPipeline | None = None) -> CameraPipeline | None:  # type: ignore[override]
        with self._lock:
            return self._cams.get(name, default)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._cams))

    def __len__(self) -> int:
        with self._lock:
            return len(self._cams)

    def values(self) -> list[CameraPipeline]:  # type: ignore[override]
        """A copy: safe to iterate while cameras come and go."""
        with self._lock:
            return list(self._cams.values())

    def items(self) -> list[tuple[str, CameraPipeline]]:  # type: ignore[override]
        with self._lock:
            return list(self._cams.items())



