"""Adaptive head stride and still-scene gating: the window never skips or repeats a score, the stride falls
back to 1 near the threshold or with an event open, the gate reuses only still frames (counted, capped,
only while calm), both are off by default, config errors name their key; and the real service with a
tiny bundle on ONNX Runtime, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.config import ConfigError, ScoringConfig, StillGateConfig, parse_config
from stream.gate import StillGate, luma_thumbnail, scene_change
from stream.metrics import Metrics
from stream.scoring import DropOldestQueue, EncoderWorker
from stream.stride import StrideController
from stream.types import Frame, Snippet
from stream.window import EmbeddingWindow, score_jobs
from tests.test_service import read_events, write_config
from tests.test_service import service_factory as service_factory  # noqa: F401  (the fixture)


def row_id_head(feats: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score of a row = its embedding's first value (the snippet index): shows which row was read."""
    s = feats[:, :, 0].copy()
    return s, np.stack([1 - s, s], axis=-1)


# ------------------------------------------------------------------------------------------- window


@pytest.mark.parametrize(("length", "lookahead", "max_stride", "pattern"), [
    (16, 2, 4, [4] * 40),  # always calm
    (16, 2, 4, [1] * 40),  # never calm
    (16, 4, 4, [1] * 7 + [4] * 9 + [1] * 3 + [4] * 12 + [1] * 9),  # calm, alarm, calm, alarm
    (8, 4, 4, [4, 1, 4, 4, 1, 1, 4, 4, 4, 1] * 4),  # stride flips every few pushes; L + k == W
    (12, 0, 3, [3, 3, 1, 3, 2, 3] * 7),  # lookahead 0
])
def test_stride_reports_every_snippet_once_in_order_from_the_right_row(length, lookahead, max_stride, pattern):
    win = EmbeddingWindow(length, lookahead, camera="c", max_stride=max_stride)
    got: list[int] = []
    seen_delay: list[int] = []
    for i, k in enumerate(pattern):
        win.stride = k
        job = win.push(np.full(4, i, np.float32), index=i, start_time=i, end_time=i + 1)
        if job is not None:
            for ws in score_jobs([job], row_id_head):
                assert ws.score == ws.index  # the read-out row is the snippet's own row
                assert ws.newest_index == i
                seen_delay.append(i - ws.index)
                got.append(ws.index)
    last = win.flush()
    if last is not None:
        got += [ws.index for ws in score_jobs([last], row_id_head)]
    assert got == list(range(len(pattern)))  # none skipped, none repeated, in order
    # a row is read with at least `lookahead` rows of future and at most lookahead + max_stride - 1
    assert min(seen_delay) >= lookahead and max(seen_delay) <= lookahead + max_stride - 1
    calm_jobs = win.jobs
    if all(k == 1 for k in pattern):
        assert calm_jobs == len(pattern) - lookahead + (1 if lookahead else 0)
    if all(k == max_stride for k in pattern):
        assert calm_jobs <= len(pattern) // max_stride + 2


def test_stride_1_window_is_unchanged():
    a, b = EmbeddingWindow(16, 3), EmbeddingWindow(16, 3, max_stride=5)  # b stays at its start stride, 1
    for i in range(30):
        ja, jb = a.push(np.full(4, i, np.float32)), b.push(np.full(4, i, np.float32))
        assert (ja is None) == (jb is None)
        if ja is not None and jb is not None:
            assert ja.readout == jb.readout == (len(ja.features) - 1 - 3,)


def test_window_rejects_a_stride_that_does_not_fit():
    with pytest.raises(ValueError, match="adaptive_stride"):
        EmbeddingWindow(8, 4, max_stride=5)


def test_ahead_max_is_the_newest_unreported_rows_peak():
    win = EmbeddingWindow(16, 3)
    job = None
    for i in range(10):
        job = win.push(np.full(4, i / 10, np.float32)) or job
    assert job is not None
    (ws,) = score_jobs([job], row_id_head)
    assert ws.score == pytest.approx(0.6) and ws.ahead_max == pytest.approx(0.9)


# --------------------------------------------------------------------------------------- controller


@pytest.mark.parametrize(("scores", "ahead", "busy", "expected"), [
    # (reported scores, ahead_max of each, event pending/open, strides after each)
    ([0.1] * 6, [None] * 6, [False] * 6, [1, 1, 1, 4, 4, 4]),  # calm after k calm scores
    ([0.1] * 4 + [0.45, 0.1], [None] * 6, [False] * 6, [1, 1, 1, 4, 1, 1]),  # within the margin: back to 1
    ([0.1] * 5, [0.1, 0.1, 0.1, 0.1, 0.5], [False] * 5, [1, 1, 1, 4, 1]),  # a newer row is near: back to 1
    ([0.1] * 5, [None] * 5, [False, False, False, False, True], [1, 1, 1, 4, 1]),  # event pending/open
    ([0.39] * 4, [None] * 4, [False] * 4, [1, 1, 1, 4]),  # just below on - margin = 0.4
])
def test_stride_controller_falls_back_near_the_threshold_or_with_an_event(scores, ahead, busy, expected):
    ctl = StrideController(ScoringConfig(adaptive_stride=4, stride_margin=0.2))
    got = [ctl.observe(s, a, 0.6, b) for s, a, b in zip(scores, ahead, busy, strict=True)]
    assert got == expected


def test_stride_controller_off_by_default():
    ctl = StrideController(ScoringConfig())
    assert ScoringConfig().adaptive_stride == 1
    assert [ctl.observe(0.0, None, 0.6, False) for _ in range(5)] == [1] * 5
    assert ctl.calm  # the gate may still use the calm signal at stride 1


# --------------------------------------------------------------------------------------------- gate


def frame_snippet(cam: str, i: int, image: np.ndarray) -> Snippet:
    f = Frame(cam, i, float(i), float(i), image)
    return Snippet(cam, i, float(i), float(i) + 0.5, f, 1)


STATIC = np.random.default_rng(0).integers(0, 255, (72, 128, 3)).astype(np.uint8)


def moved(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[10:30, 20:40] = 255  # a bright object in one corner: a few cells change a lot
    return out


@pytest.mark.parametrize(("frames", "calm", "max_reuse", "fresh"), [
    # frames: "s" static, "m" moved, "n" tiny noise on the static frame; fresh: which snippets hit the encoder
    ("ssssssss", True, 3, [0, 4]),  # reuse capped at 3 in a row
    ("ssssssss", True, 100, [0]),
    ("ssmmsssm", True, 10, [0, 2, 4, 7]),  # moved and back: compared with the last *embedded* frame
    ("snnnnnns", True, 10, [0]),  # noise of +/-1 level is no motion
    ("ssssssss", False, 3, list(range(8))),  # not calm: every snippet embedded
])
def test_gate_reuses_only_still_frames_counted_and_capped(frames, calm, max_reuse, fresh):
    rng = np.random.default_rng(1)
    imgs = {"s": STATIC, "m": moved(STATIC)}
    metrics = Metrics()
    gate = StillGate(StillGateConfig(enabled=True, threshold=4.0, max_reuse=max_reuse))
    gate.calm = calm
    calls: list[np.ndarray] = []

    def embed(x: np.ndarray) -> np.ndarray:
        calls.append(x[:, 0, 0, 0].copy())
        return np.stack([np.full(4, v, np.float32) for v in x[:, 0, 0, 0]])

    out: list = []
    w = EncoderWorker(DropOldestQueue(10), embed, lambda imgs_: np.stack(
        [np.full((3, 2, 2), k, np.float32) for k in range(len(imgs_))]), out.extend, metrics=metrics,
        gate_for=lambda cam: gate)
    for i, c in enumerate(frames):  # one snippet per batch, as a lightly loaded service sees them
        img = imgs.get(c)
        if img is None:
            img = np.clip(STATIC.astype(int) + rng.integers(-1, 2, STATIC.shape), 0, 255).astype(np.uint8)
        w.process([frame_snippet("c", i, img)])
    assert len(calls) == len(fresh)
    reused = [i for i in range(len(frames)) if i not in fresh]
    assert w.gated == len(reused) == metrics.reused_c.labels("c")._value.get()
    for i in reused:  # a reused snippet carries the embedding of the snippet before it
        np.testing.assert_array_equal(out[i].embedding, out[i - 1].embedding)
    assert [o.index for o in out] == list(range(len(frames)))


def test_gate_within_one_batch_and_after_a_failed_encoder_call():
    gate = StillGate(StillGateConfig(enabled=True, max_reuse=10))
    gate.calm = True
    fail = [True]

    def embed(x: np.ndarray) -> np.ndarray:
        if fail[0]:
            fail[0] = False
            raise RuntimeError("device lost")
        return np.ones((x.shape[0], 4), np.float32)

    out: list = []
    w = EncoderWorker(DropOldestQueue(10), embed, lambda imgs: np.zeros((len(imgs), 3, 2, 2), np.float32),
                      out.extend, gate_for=lambda cam: gate)
    with pytest.raises(RuntimeError):
        w.process([frame_snippet("c", 0, STATIC)])
    # the failed frame's reference was forgotten: the next still frame is embedded, not reused from nothing
    w.process([frame_snippet("c", 1, STATIC), frame_snippet("c", 2, STATIC), frame_snippet("c", 3, moved(STATIC))])
    assert w.gated == 1 and [o.index for o in out] == [1, 2, 3]
    np.testing.assert_array_equal(out[0].embedding, out[1].embedding)


def test_thumbnail_sees_a_small_object_and_costs_little():
    img = np.full((360, 640, 3), 100, np.uint8)
    person = img.copy()
    person[200:260, 300:320] = 30  # 20 x 60 px, 0.5% of the picture
    assert luma_thumbnail(img).shape == (9, 16)
    assert scene_change(luma_thumbnail(img), luma_thumbnail(person)) > 8.0
    assert scene_change(luma_thumbnail(img), luma_thumbnail(img)) == 0.0
    tiny = np.zeros((8, 8, 3), np.uint8)  # fewer pixels than cells: still a thumbnail
    assert luma_thumbnail(tiny).shape == (9, 16)


# ------------------------------------------------------------------------------------------- config

BASE = """\
cameras:
  - name: lobby
    url: rtsp://127.0.0.1:8554/cam
{cam}model:
  bundle: scratch/bundle1
{extra}"""


def cfg_problems(cam: str = "", extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.format(cam=cam, extra=extra), "test.yaml")
    return info.value.problems


@pytest.mark.parametrize(("cam", "extra", "key"), [
    ("", "scoring:\n  adaptive_stride: 0\n", "scoring.adaptive_stride"),
    ("", "scoring:\n  stride_margin: 1.5\n", "scoring.stride_margin"),
    ("", "still_gate:\n  treshold: 3\n", "still_gate.treshold"),
    ("", "still_gate:\n  max_reuse: 0\n", "still_gate.max_reuse"),
    ("    still_gate:\n      threshold: -1\n", "", "cameras[0].still_gate.threshold"),
    ("    scoring:\n      adaptive_stride: 61\n", "", "cameras[0].scoring.adaptive_stride"),
    ("", "window:\n  length: 8\n  lookahead: 4\nscoring:\n  adaptive_stride: 5\n", "scoring.adaptive_stride"),
])
def test_config_errors_name_the_key(cam, extra, key):
    msgs = cfg_problems(cam, extra)
    assert any(m.startswith(key) or f" {key}" in m or m.startswith(f"{key} ") for m in msgs), msgs


def test_defaults_off_and_per_camera_overrides_merge():
    cfg = parse_config(BASE.format(cam="", extra=""))
    cam = cfg.cameras[0]
    assert cfg.scoring_for(cam).adaptive_stride == 1 and not cfg.still_gate_for(cam).enabled
    cfg = parse_config(BASE.format(
        cam="    scoring:\n      adaptive_stride: 4\n    still_gate:\n      enabled: true\n",
        extra="scoring:\n  stride_margin: 0.3\nstill_gate:\n  threshold: 6\n"))
    cam = cfg.cameras[0]
    assert cfg.scoring_for(cam) == ScoringConfig(adaptive_stride=4, stride_margin=0.3)
    assert cfg.still_gate_for(cam) == StillGateConfig(enabled=True, threshold=6.0)


# --------------------------------------------------------------------------------------- the service


def still_clip(path: Path, seconds: float, event: tuple[float, float] | None, fps: int = 25) -> Path:
    """A still picture (fixed texture, as a parked-lot camera at night) with a moving bar during ``event``."""
    import av

    rng = np.random.default_rng(3)
    base = rng.integers(60, 160, (96 // 8, 160 // 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = 160, 96, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "18", "x264-params": "bframes=0:keyint=25:scenecut=0"}
        for i in range(int(seconds * fps)):
            img = base.copy()
            t = i / fps
            if event is not None and event[0] <= t < event[1]:
                x = int((t - event[0]) * 200) % 140
                img[20:76, x: x + 20] = 250
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def test_service_calm_camera_is_scored_at_stride_k_busy_one_at_stride_1(tmp_path, clip_factory, tiny_bundle_dir,
                                                                        service_factory):
    # paced like a live camera: scores come back between snippets, so the stride can react
    clip = clip_factory("a.mp4", width=160, height=96, fps=25, seconds=8.0)
    cfg = write_config(tmp_path, [
        {"name": "calm", "url": f"file://{clip}", "realtime": True, "events": {"on_threshold": 1.0}},
        {"name": "busy", "url": f"file://{clip}", "realtime": True},
    ], bundle=tiny_bundle_dir, extra="scoring:\n  adaptive_stride: 4\n  stride_margin: 0.0\n")
    svc = service_factory(cfg, status_interval=0)
    scores: list = []
    orig = svc._on_scores
    svc.head.on_scores = lambda s: (scores.extend(s), orig(s))
    assert svc.run(duration=120, install_signals=False) == 0
    n = {}
    for cam in ("calm", "busy"):
        idx = [s.index for s in scores if s.camera == cam]
        n[cam] = svc.cameras[cam].cutter.emitted
        assert n[cam] >= 14 and idx == list(range(n[cam]))  # every snippet exactly once, in order
    lookahead = 2
    busy_jobs = svc.cameras["busy"].window.jobs
    assert busy_jobs == n["busy"] - lookahead + 1  # thresholds 0: never calm, one head pass per snippet
    # calm: stride 1 until 4 calm scores are back, then one pass per 4 snippets
    assert svc.cameras["calm"].window.jobs <= busy_jobs - 4
    evs = read_events(tmp_path / "events.jsonl")
    assert [e["type"] for e in evs if e["camera"] == "busy"] == ["start", "end"]
    assert not [e for e in evs if e["camera"] == "calm"]


def test_service_gate_reuses_on_a_still_scene_and_still_embeds_the_brief_event(tmp_path, tiny_bundle_dir,
                                                                               service_factory):
    ev = (5.0, 5.8)
    clip = still_clip(tmp_path / "still.mp4", seconds=8.0, event=ev)
    cfg = write_config(tmp_path, [  # paced: the gate works only once the camera's first scores say calm
        {"name": "gated", "url": f"file://{clip}", "realtime": True,
         "still_gate": {"enabled": True, "max_reuse": 3}},
        {"name": "plain", "url": f"file://{clip}", "realtime": True},
    ], bundle=tiny_bundle_dir, events="on_threshold: 1.0\n  off_threshold: 0.0")
    svc = service_factory(cfg, status_interval=0)
    embs: dict[str, list] = {"gated": [], "plain": []}
    orig = svc._on_embeddings
    svc.encoder.on_embeddings = lambda es: ([embs[e.camera].append(e) for e in es], orig(es))
    gate = svc.cameras["gated"].gate
    assert gate is not None
    decisions: list[bool] = []  # the gate's answer for each snippet of the camera, in order
    still = gate.still

    def recording(image: np.ndarray) -> tuple[bool, np.ndarray]:
        out = still(image)
        decisions.append(out[0])
        return out

    gate.still = recording  # type: ignore[method-assign]
    assert svc.run(duration=120, install_signals=False) == 0
    assert svc.cameras["plain"].gate is None  # off unless enabled
    text = svc.metrics.render().decode()
    assert 'dsanet_embeddings_reused_total{camera="plain"} 0.0' in text
    g = embs["gated"]
    assert len(decisions) == len(g)
    reused = sum(decisions)
    assert reused >= len(g) // 4  # a still scene mostly reuses (not before the first scores are back)
    assert svc.encoder.gated == reused
    assert f'dsanet_embeddings_reused_total{{camera="gated"}} {float(reused)}' in text
    for i, r in enumerate(decisions):  # a reused snippet carries the previous snippet's vector
        if r:
            np.testing.assert_array_equal(g[i].embedding, g[i - 1].embedding)
    run = longest = 0
    for r in decisions:
        run = run + 1 if r else 0
        longest = max(longest, run)
    assert longest <= 3  # capped by max_reuse
    # the snippets whose embedded frame shows the moving bar were embedded fresh
    t0 = g[0].start_time
    during = [i for i, e in enumerate(g) if e.frame is not None and ev[0] <= e.frame.capture_time - t0 < ev[1]]
    assert during
    for i in during:
        assert not decisions[i], f"snippet {g[i].index} during the event reused an embedding"
