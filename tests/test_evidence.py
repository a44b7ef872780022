"""Evidence per event, with real parts: real clips read by the real reader into the real packet ring,
real MP4 remuxing checked by decoding it, real JPEGs, real retention on disk, and the service end to end.

Where the tiny random model cannot be made to score an event on cue, the reader's consumer plays the
pipeline: at chosen frames it feeds window scores and start/end events to the evidence manager, in the
reader's own thread, exactly as the head worker would (only the scores are synthetic).
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.config import EvidenceConfig
from stream.events import Event, parse_iso_utc
from stream.evidence import (
    EvidenceError,
    EvidenceManager,
    PacketRing,
    camera_slug,
    enforce_retention,
    safe_camera_dir,
)
from stream.metrics import Metrics
from stream.reader import CameraReader, LazyFrame, ReaderSettings
from stream.types import Frame, WindowScore
from tests import test_service as _ts
from tests.test_service import write_config

service_factory = _ts.service_factory  # the fixture lives in test_service; re-exported for the tests here

FPS = 25


# --------------------------------------------------------------------------------------------- helpers


def ev_cfg(directory: Path, pre: float = 3.0, post: float = 2.0, age_days: float = 7.0,
           total_mb: float = 500.0) -> EvidenceConfig:
    return EvidenceConfig(enabled=True, directory=str(directory), pre_roll=pre, post_roll=post,
                           max_age_days=age_days, max_total_mb=total_mb)


def make_event(typ: str, cam: str, start: float, end: float | None = None, eid: str = "e1", seq: int = 0,
               peak: float = 0.9) -> Event:
    return Event(id=eid, seq=seq, type=typ, camera=cam, category="Fighting", category_key="Fighting",
                 category_score=0.8, score=0.9, peak_score=peak, start_time=start, end_time=end,
                 updated_time=end if end is not None else start + 0.5, snippets=3, model={},
                 evidence=None, reason="shutdown" if typ == "end" else None)


def make_ws(cam: str, i: int, frame: Frame, score: float) -> WindowScore:
    t = frame.capture_time
    return WindowScore(camera=cam, index=i, start_time=t, end_time=t + 0.5, score=score, class_probs=(0.5, 0.5),
                       newest_index=i + 2, newest_end_time=t + 1.5, frame=frame)


class Driver:
    """Reader consumer standing in for the pipeline: records capture times, keeps chosen frames, and runs
    ``actions[frame index](driver, lazy_frame)`` in the reader thread."""

    def __init__(self, actions: dict[int, Callable[[Driver, LazyFrame], None]] | None = None,
                 keep: set[int] | None = None):
        self.actions = actions or {}
        self.keep = keep or set()
        self.captures: dict[int, float] = {}
        self.frames: dict[int, Frame] = {}
        self.errors: list[BaseException] = []
        self.reader: CameraReader | None = None
        self.out: list[Any] = []

    def on_frame(self, lf: LazyFrame) -> None:
        self.captures[lf.index] = lf.capture_time
        if lf.index in self.keep:
            self.frames[lf.index] = lf.to_frame()
        act = self.actions.get(lf.index)
        if act is not None:
            try:
                act(self, lf)
            except BaseException as exc:  # surfaced by the test, not swallowed by the reader
                self.errors.append(exc)

    def on_discontinuity(self) -> None:
        pass


class Dispatched:
    """The dispatch callback: records each event and whether its files existed at that moment."""

    def __init__(self, root: Path):
        self.root = root
        self.events: list[Event] = []
        self.files_existed: list[bool] = []
        self.cv = threading.Condition()

    def __call__(self, ev: Event) -> None:
        ok = True
        if ev.evidence:
            for k in ("snapshot", "clip"):
                if ev.evidence.get(k):
                    ok &= (self.root / ev.evidence[k]).is_file()
        with self.cv:
            self.events.append(ev)
            self.files_existed.append(ok)
            self.cv.notify_all()

    def wait(self, n: int, timeout: float = 60.0) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.events) >= n, timeout), f"only {len(self.events)} events"


def run_reader(url: Path, consumer: Any, ring: PacketRing | None, realtime: bool = False, loop: bool = False,
               name: str = "cam") -> CameraReader:
    r = CameraReader(ReaderSettings(name, str(url), realtime=realtime, loop=loop), consumer, packets=ring)
    if hasattr(consumer, "reader"):
        consumer.reader = r
    r.start()
    assert r.join(120), "reader did not finish"
    return r


def decode_clip(path: Path) -> tuple[list[Any], Any]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.time, f.key_frame, f.width, f.height, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        return frames, s.codec_context.name


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


# ---------------------------------------------------------------------------------- live clip + snapshot


def test_clip_and_peak_snapshot_from_live_reader(tmp_path, clip_factory):
    """The whole evidence path over a real reader: the start arrives mid-stream, the end before the
    post-roll has been read, so the recording keeps taking live packets until end + post_roll."""
    import cv2

    clip = clip_factory(width=640, height=360, fps=FPS, seconds=12, event=(5, 8), gop=50)  # keyframe every 2 s
    root = tmp_path / "ev"
    disp = Dispatched(root)
    metrics = Metrics()
    mgr = EvidenceManager(ev_cfg(root, pre=3.0, post=2.0), disp, metrics)
    ring = mgr.add_camera("cam", on_threshold=0.5, ring_seconds=5.0)
    mgr.start()
    cam = "cam"
    START, PEAK, PRE_PEAK, END = 130, 162, 100, 200  # frames: 5.2 s, 6.48 s, 4.0 s, 8.0 s

    def score(i: int, s: float) -> Callable[[Driver, LazyFrame], None]:
        return lambda d, lf: mgr.observe(make_ws(cam, i, lf.to_frame(), s))

    actions: dict[int, Callable[[Driver, LazyFrame], None]] = {
        PRE_PEAK: score(PRE_PEAK, 0.99),  # a louder blip before the event, then a dip: must not be chosen
        112: score(112, 0.1),
    }
    for i in range(START, END + 1, 8):
        actions[i] = score(i, 0.95 if i == PEAK - 2 else 0.7)
    actions[PEAK] = score(PEAK, 0.97)  # the peak
    actions[140] = lambda d, lf: d.out.append(mgr.handle(make_event("start", cam, d.captures[START])))
    actions[212] = lambda d, lf: d.out.append(
        mgr.handle(make_event("end", cam, d.captures[START], end=d.captures[END], seq=1)))
    driver = Driver(actions, keep={PEAK, PRE_PEAK})
    run_reader(clip, driver, ring)
    assert not driver.errors
    assert driver.out == [False, True]  # start passed through, end held
    disp.wait(1)
    assert mgr.stop(10)
    (end,) = disp.events
    assert disp.files_existed == [True]  # delivered only once both files were on disk
    e = dict(end.evidence or {})
    assert e["errors"] == [] and not e["clip_truncated"]
    assert not os.path.isabs(e["clip"]) and (root / e["clip"]).is_file()

    # the clip: decodes, starts on a keyframe, spans [keyframe <= start - pre_roll, end + post_roll]
    frames, codec = decode_clip(root / e["clip"])
    assert codec == "h264"
    assert frames[0][1] and (frames[0][2], frames[0][3]) == (640, 360)
    t0 = driver.captures[0]
    first_media = parse_iso_utc(e["clip_start"]) - t0
    last_media = parse_iso_utc(e["clip_end"]) - t0
    assert abs(first_media - 2.0) < 1.0  # keyframe at 2 s is the last one at or before 5.2 - 3 = 2.2 s
    assert abs(last_media - 10.0) < 1.0  # end 8 s + post_roll 2 s
    decoded_seconds = frames[-1][0] - frames[0][0] + 1 / FPS
    assert abs(decoded_seconds - 8.0) < 1.0
    assert frames[0][0] == pytest.approx(0.0, abs=1e-6)  # rebased
    # the right video: the clip's first frame is the source frame at 2.0 s, its last the one near 10 s
    from tests.fixtures.clips import render_frame
    assert mad(frames[0][4], render_frame(50, 640, 360, FPS, 12, (5, 8))) < 6
    assert mad(frames[-1][4], render_frame(round(last_media * FPS) - 1, 640, 360, FPS, 12, (5, 8))) < 6

    # the snapshot: the peak frame of the event (not the louder pre-event blip), as a JPEG of full size
    img = cv2.imdecode(np.fromfile(root / e["snapshot"], np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (360, 640, 3)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    assert mad(rgb, driver.frames[PEAK].image) < 4 < mad(rgb, driver.frames[PRE_PEAK].image)
    assert e["snapshot_score"] == pytest.approx(0.97)
    assert parse_iso_utc(e["snapshot_time"]) == pytest.approx(driver.captures[PEAK], abs=0.002)
    assert e["snapshot"].startswith("cam/") and e["snapshot"].endswith(".jpg")
    counts = {(s.labels["kind"], s.labels["result"]): s.value for fam in metrics.registry.collect()
              for s in fam.samples if s.name == "dsanet_evidence_total"}
    assert counts == {("snapshot", "ok"): 1.0, ("clip", "ok"): 1.0}


def test_long_event_clip_is_capped(tmp_path, clip_factory):
    clip = clip_factory(width=320, height=240, fps=FPS, seconds=10, gop=25)
    root = tmp_path / "ev"
    disp = Dispatched(root)
    # a size cap smaller than one clip: retention after the write removes older evidence but never the
    # files the end event is about to name
    mgr = EvidenceManager(ev_cfg(root, pre=1.0, post=1.0, total_mb=0.001), disp, max_clip_seconds=3.0)
    ring = mgr.add_camera("cam", 0.5)
    mgr.start()  # (runs retention once now; the next periodic run is minutes away)
    older = mgr.camera_dir("cam") / "20200101T000000Z_old.mp4"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"x" * 5000)
    actions = {
        50: lambda d, lf: (mgr.observe(make_ws("cam", 0, lf.to_frame(), 0.9)),
                           mgr.handle(make_event("start", "cam", d.captures[50]))),
        240: lambda d, lf: mgr.handle(make_event("end", "cam", d.captures[50], end=d.captures[230], seq=1)),
    }
    driver = Driver(actions)
    run_reader(clip, driver, ring)
    disp.wait(1)
    mgr.stop(10)
    e = dict(disp.events[0].evidence or {})
    assert e["clip_truncated"] is True
    assert disp.files_existed == [True] and not older.exists()
    frames, _ = decode_clip(root / e["clip"])
    # from the keyframe at 1 s (= 2 s - pre_roll) for the cap of 3 s + pre_roll, not to 9.2 s + post_roll
    assert frames[0][1]
    assert abs((frames[-1][0] - frames[0][0]) - 4.0) < 1.0


def test_clip_is_cut_where_the_resolution_changes(tmp_path, clip_factory):
    """A file camera whose file is replaced by a smaller one between loops: the event straddles the
    change, the clip keeps the part with the event start and stops at the change."""
    a = clip_factory("a.mp4", width=640, height=360, fps=FPS, seconds=4, gop=25)
    b = clip_factory("b.mp4", width=320, height=240, fps=FPS, seconds=4, gop=25)
    live = tmp_path / "live.mp4"
    live.write_bytes(a.read_bytes())
    root = tmp_path / "ev"
    disp = Dispatched(root)
    mgr = EvidenceManager(ev_cfg(root, pre=1.0, post=1.0), disp)
    ring = mgr.add_camera("cam", 0.5)
    mgr.start()
    sizes: list[tuple[int, int]] = []

    def start(d: Driver, lf: LazyFrame) -> None:
        mgr.observe(make_ws("cam", 0, lf.to_frame(), 0.9))
        mgr.handle(make_event("start", "cam", d.captures[75]))  # 3.0 s into file a
        os.replace(b, live)  # the next loop opens the smaller file; the open one is unaffected

    def on_b(d: Driver, lf: LazyFrame) -> None:
        sizes.append((lf.width, lf.height))
        if lf.index == 100 + 40:  # 1.6 s into file b: the event ends, and we stop the camera soon after
            mgr.handle(make_event("end", "cam", d.captures[75], end=d.captures[130], seq=1))
        if lf.index == 100 + 90:
            assert d.reader is not None
            d.reader.stop()

    actions: dict[int, Callable[[Driver, LazyFrame], None]] = {80: start}
    for i in range(100, 200):
        actions[i] = on_b
    driver = Driver(actions)
    run_reader(live, driver, ring, loop=True)
    assert not driver.errors and sizes[0] == (320, 240)
    disp.wait(1)
    mgr.stop(10)
    e = dict(disp.events[0].evidence or {})
    assert e["clip_truncated"] is True and e["errors"] == []
    frames, _ = decode_clip(root / e["clip"])
    assert {(f[2], f[3]) for f in frames} == {(640, 360)}
    assert frames[0][1]
    t0 = driver.captures[0]
    assert abs(parse_iso_utc(e["clip_start"]) - t0 - 2.0) < 0.5  # keyframe at 2 s = 3 s - pre_roll
    assert abs(parse_iso_utc(e["clip_end"]) - t0 - 4.0) < 0.5  # cut at the end of file a


# ------------------------------------------------------------------------------------ ring and memory


def test_ring_is_bounded_by_time_whole_gops_and_bytes(tmp_path, clip_factory):
    clip = clip_factory(width=640, height=360, fps=FPS, seconds=12, gop=25)
    ring = PacketRing("cam", max_seconds=4.0)
    run_reader(clip, Driver(), ring)
    st = ring.stats()
    pk = ring.packets()
    assert pk[0].keyframe  # trimming drops whole GOPs only
    assert 4.0 <= st["seconds"] <= 4.0 + 1.0 + 1e-6  # the horizon plus at most one GOP
    assert st["bytes"] == sum(len(p.data) for p in pk)
    small = PacketRing("cam", max_seconds=60.0, max_bytes=20_000)
    run_reader(clip, Driver(), small)
    assert small.stats()["bytes"] <= 20_000 and small.dropped_for_bytes > 0


def test_packet_buffer_memory_640x360_25fps_10s(tmp_path, clip_factory, capsys):
    """The figure the lead asked for: bytes held for 10 s of a 640x360 25 fps camera (H.264, 1 s GOP)."""
    clip = clip_factory(width=640, height=360, fps=FPS, seconds=14, event=(6, 11), gop=25)
    ring = PacketRing("cam", max_seconds=10.0)
    tracemalloc.start()
    try:
        run_reader(clip, Driver(), ring)
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    st = ring.stats()
    assert 10.0 <= st["seconds"] <= 11.0 + 1e-6
    assert 0 < st["bytes"] < 8 * 1024 * 1024
    with capsys.disabled():
        print(f"\n[evidence] ring 640x360@25 over {st['seconds']:.2f} s: {st['packets']} packets, "
              f"{st['bytes']} payload bytes, ~{traced} bytes traced by Python after the read")


# --------------------------------------------------------------------------------------- files on disk


def test_retention_deletes_oldest_beyond_size_and_anything_too_old(tmp_path):
    root = tmp_path / "ev"
    d = root / "cam"
    d.mkdir(parents=True)
    now = time.time()
    made = []
    for i in range(6):  # 100 kB each, one minute apart, oldest first
        f = d / f"{i}.{'jpg' if i % 2 else 'mp4'}"
        f.write_bytes(b"x" * 100_000)
        os.utime(f, (now - 3600 + 60 * i, now - 3600 + 60 * i))
        made.append(f)
    ancient = d / "old.mp4"
    ancient.write_bytes(b"x" * 10)
    os.utime(ancient, (now - 9 * 86400, now - 9 * 86400))
    other = root / "notes.txt"
    other.write_text("not evidence")
    deleted = enforce_retention(root, max_age_seconds=7 * 86400, max_total_bytes=350_000, now=now)
    assert ancient in deleted and not ancient.exists()
    assert set(deleted) - {ancient} == set(made[:3])  # the three oldest go; 300 kB remain
    assert all(f.exists() for f in made[3:]) and other.exists()
    # the manager enforces it on start, with the config's units (days, MB)
    os.utime(made[3], (now - 8 * 86400, now - 8 * 86400))
    mgr = EvidenceManager(ev_cfg(root, age_days=7, total_mb=0.15), print)
    mgr.start()
    mgr.stop(5)
    assert not made[3].exists() and not made[4].exists() and made[5].exists()  # age, then size (0.15 MiB)


@pytest.mark.parametrize("name", ["../../escape", "..", "a/b", "/abs/path", "", "名前", ".hidden",
                                  "cam rtsp://admin:s3cret@10.0.0.1/x", "x" * 300])
def test_unsafe_camera_names_stay_inside_the_directory(tmp_path, name):
    root = tmp_path / "ev"
    root.mkdir()
    p = safe_camera_dir(root, name)
    assert p.parent == root.resolve()
    slug = camera_slug(name)
    assert slug and len(slug) <= 60 and all(c.isalnum() or c in "-_" for c in slug)
    assert "s3cret" not in slug and "admin:" not in slug


def test_camera_folder_symlink_outside_is_refused(tmp_path):
    root = tmp_path / "ev"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "cam").symlink_to(outside)
    with pytest.raises(EvidenceError, match="outside"):
        safe_camera_dir(root, "cam")


def test_unwritable_directory_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(EvidenceError, match="evidence.directory"):
        EvidenceManager(ev_cfg(f / "sub"), print)


def test_full_queue_and_unknown_ends_are_sent_at_once(tmp_path):
    root = tmp_path / "ev"
    disp = Dispatched(root)
    metrics = Metrics()
    mgr = EvidenceManager(ev_cfg(root), disp, metrics, max_pending=0)
    mgr.add_camera("cam", 0.5)
    assert mgr.handle(make_event("end", "cam", 10.0, end=12.0, eid="never-started", seq=3)) is False
    assert mgr.handle(make_event("start", "cam", 10.0)) is False
    assert mgr.handle(make_event("end", "cam", 10.0, end=12.0, seq=1)) is False  # no room: caller sends it
    assert mgr.pending == 0
    dropped = [s for fam in metrics.registry.collect() for s in fam.samples
               if s.name == "dsanet_evidence_total" and s.labels["result"] == "dropped"]
    assert {s.labels["kind"] for s in dropped} == {"snapshot", "clip"}


# ------------------------------------------------------------------------------------------- service


def _service_cfg(tmp_path: Path, clip: Path, bundle: Path, evidence: bool, name: str = "front door") -> Path:
    extra = (f"evidence:\n  enabled: {'true' if evidence else 'false'}\n  directory: \"{tmp_path / 'ev'}\"\n"
             "  pre_roll: 2\n  post_roll: 1\n")
    return write_config(tmp_path, [{"name": name, "url": f"file://{clip}", "realtime": True}], bundle=bundle,
                        extra=extra)


class CheckingSink:
    """A sink that records, at submit time, whether the evidence files of each event exist."""

    name = type_name = "checking"

    def __init__(self, root: Path):
        self.root = root
        self.got: list[tuple[dict, bool]] = []

    def submit(self, ev: Event) -> None:
        d = ev.to_dict()
        ok = all((self.root / d["evidence"][k]).is_file() for k in ("snapshot", "clip")
                 if d["evidence"] and d["evidence"].get(k))
        self.got.append((d, ok))

    def publish_score(self, *a: Any, **k: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 1.0) -> None:
        pass


def test_service_writes_evidence_for_an_event_ended_by_shutdown(tmp_path, clip_factory, tiny_bundle_dir,
                                                                service_factory):
    """Thresholds at 0: the first score opens an event, the end of the file stops the service, and the
    shutdown end arrives with a clip of the whole event (pre-roll clamped at the file start)."""
    import cv2

    clip = clip_factory(width=320, height=240, fps=FPS, seconds=5, event=(2, 4), gop=25)
    cfg = _service_cfg(tmp_path, clip, tiny_bundle_dir, evidence=True)
    sink = CheckingSink(tmp_path / "ev")
    svc = service_factory(cfg, status_interval=0, sinks=[sink])
    assert all(c.reader.packets is not None for c in svc.cameras.values())
    assert svc.run(duration=60, install_signals=False) == 0
    types = [d["type"] for d, _ in sink.got]
    assert types[0] == "start" and types[-1] == "end"
    start, _ = sink.got[0]
    end, existed = sink.got[-1]
    assert start["evidence"] is None and existed
    e = end["evidence"]
    assert e["errors"] == [] and e["clip"].endswith(".mp4") and e["snapshot"].endswith(".jpg")
    assert e["clip"].startswith(camera_slug("front door") + "/")
    frames, _ = decode_clip(tmp_path / "ev" / e["clip"])
    assert frames[0][1] and (frames[0][2], frames[0][3]) == (320, 240)
    # the event starts at the first snippet (~0 s): the clip is the whole file, within a second
    assert abs((frames[-1][0] - frames[0][0] + 1 / FPS) - 5.0) < 1.0
    img = cv2.imdecode(np.fromfile(tmp_path / "ev" / e["snapshot"], np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (240, 320, 3)
    assert parse_iso_utc(e["clip_start"]) <= parse_iso_utc(end["start_time"]) + 1e-3
    assert parse_iso_utc(e["clip_end"]) >= parse_iso_utc(end["end_time"]) - 1.0


def test_service_without_evidence_buffers_no_packets(tmp_path, clip_factory, tiny_bundle_dir, service_factory):
    clip = clip_factory(width=160, height=120, fps=FPS, seconds=2, gop=25)
    cfg = _service_cfg(tmp_path, clip, tiny_bundle_dir, evidence=False)
    sink = CheckingSink(tmp_path / "ev")
    svc = service_factory(cfg, status_interval=0, sinks=[sink])
    assert svc.evidence is None
    assert all(c.reader.packets is None for c in svc.cameras.values())
    svc.run(duration=30, install_signals=False)
    assert all(not c.reader._pending_packets for c in svc.cameras.values())
    assert sink.got and all(d["evidence"] is None for d, _ in sink.got)
    assert not (tmp_path / "ev").exists()


class PtsDriver(Driver):
    """A :class:`Driver` keyed by source frame number (pts x fps), for live sources that join late."""

    def __init__(self, actions: dict[int, Callable[[Driver, LazyFrame], None]], fps: int = FPS):
        super().__init__(actions)
        self.fps = fps
        self.offset: float | None = None  # capture - media time

    def on_frame(self, lf: LazyFrame) -> None:
        assert lf.pts_seconds is not None
        n = round(lf.pts_seconds * self.fps)
        self.offset = lf.capture_time - lf.pts_seconds
        self.captures[n] = lf.capture_time
        act = self.actions.pop(n, None)
        if act is not None:
            try:
                act(self, lf)
            except BaseException as exc:
                self.errors.append(exc)


def test_clip_from_an_rtsp_camera(tmp_path, clip_factory, rtsp_server):
    """The same path over RTSP (RTP timestamps, codec parameters from the SDP): the remuxed clip plays,
    starts on a keyframe and covers the event plus the rolls."""
    from tests.fixtures.clips import render_frame
    from tests.fixtures.rtsp import file_mount

    clip = clip_factory(width=320, height=240, fps=FPS, seconds=10, event=(4, 6), gop=25)
    srv = rtsp_server({"/cam": file_mount(clip)})
    root = tmp_path / "ev"
    disp = Dispatched(root)
    mgr = EvidenceManager(ev_cfg(root, pre=1.5, post=1.5), disp)
    ring = mgr.add_camera("cam", 0.5, ring_seconds=4.0)
    mgr.start()
    START, END = 105, 150  # 4.2 s and 6 s of media time
    actions: dict[int, Callable[[Driver, LazyFrame], None]] = {
        START: lambda d, lf: mgr.observe(make_ws("cam", 0, lf.to_frame(), 0.9)),
        START + 10: lambda d, lf: mgr.handle(make_event("start", "cam", d.captures[START])),
        END + 5: lambda d, lf: mgr.handle(make_event("end", "cam", d.captures[START], end=d.captures[END], seq=1)),
    }
    driver = PtsDriver(actions)
    r = CameraReader(ReaderSettings("cam", srv.url("/cam"), open_timeout=10, read_timeout=5), driver, packets=ring)
    r.start()
    try:
        disp.wait(1, timeout=90)
    finally:
        r.stop()
        r.join(10)
        mgr.stop(10)
    assert not driver.errors and not driver.actions
    e = dict(disp.events[0].evidence or {})
    assert e["errors"] == [] and disp.files_existed == [True]
    frames, codec = decode_clip(root / e["clip"])
    assert codec == "h264" and frames[0][1] and (frames[0][2], frames[0][3]) == (320, 240)
    assert driver.offset is not None
    media_start = parse_iso_utc(e["clip_start"]) - driver.offset
    media_end = parse_iso_utc(e["clip_end"]) - driver.offset
    assert abs(media_start - 2.0) < 1.0  # keyframe at 2 s, the last at or before 4.2 s - pre_roll
    assert abs(media_end - 7.5) < 1.0  # 6 s + post_roll
    assert abs((frames[-1][0] - frames[0][0] + 1 / FPS) - 5.5) < 1.0
    # the right pictures: the clip's first frame is the source frame at clip_start
    assert mad(frames[0][4], render_frame(round(media_start * FPS), 320, 240, FPS, 10, (4, 6))) < 6
