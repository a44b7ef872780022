"""Snippet cutting by capture time at various camera rates: counts, spans, the embedded frame, filling of
empty snippets on slow cameras, outages, and that only embedded frames are converted to RGB."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.reader import LazyFrame
from stream.snippets import SnippetCutter, SnippetSpec, cut_frames, snippet_frame_offset

UCF = SnippetSpec(16, 30.0)
T0 = 1_750_000_000.0  # a realistic UNIX time: boundaries must not lose precision


class FakeAvFrame:
    """Stands in for a PyAV frame: counts RGB conversions."""

    conversions = 0

    def __init__(self, i: int, w: int = 32, h: int = 18):
        self.i, self.width, self.height = i, w, h

    def to_ndarray(self, format: str) -> np.ndarray:  # noqa: A002 - PyAV's name
        assert format == "rgb24"
        FakeAvFrame.conversions += 1
        img = np.zeros((self.height, self.width, 3), np.uint8)
        img[0, 0, 0] = self.i % 256
        return img


def feed(times: list[float], spec: SnippetSpec = UCF, max_fill: float = 3.0, flush: bool = True):
    out = []
    cutter = SnippetCutter("cam", spec, out.append, max_fill=max_fill)
    for i, t in enumerate(times):
        cutter.on_frame(LazyFrame("cam", i, t, 0.0, None, av_frame=FakeAvFrame(i)))
    if flush:
        cutter.on_discontinuity()
    return out, cutter


def expected_choice(fps: float, n: int, spec: SnippetSpec) -> list[tuple[int, int]]:
    """Independent reference: (snippet k, frame index) for every snippet that holds frames; the embedded
    frame is the extractor's, the middle one (n // 2) of the frames the snippet holds."""
    d = spec.seconds
    by_k: dict[int, list[int]] = {}
    for i in range(n):
        k = math.floor((i / fps) / d + 1e-9)
        by_k.setdefault(k, []).append(i)
    return [(k, by_k[k][len(by_k[k]) // 2]) for k in sorted(by_k)]


@pytest.mark.parametrize("fps", [5, 12.5, 15, 25, 30, 60])
def test_counts_spans_and_chosen_frame(fps):
    seconds = 20.0
    n = int(seconds * fps)
    times = [T0 + i / fps for i in range(n)]
    FakeAvFrame.conversions = 0
    snippets, _ = feed(times)
    exp = expected_choice(fps, n, UCF)
    assert len(snippets) == len(exp)
    assert len(snippets) == math.ceil(((n - 1) / fps + 1e-9) / UCF.seconds)  # the whole span, no gaps
    for s, (k, i) in zip(snippets, exp, strict=True):
        assert s.index == k
        assert s.start_time == pytest.approx(T0 + k * UCF.seconds, abs=1e-6)
        assert s.end_time - s.start_time == pytest.approx(16 / 30, abs=1e-6)
        assert s.frame.index == i
        assert s.start_time - 1e-6 <= s.frame.capture_time < s.end_time
        assert s.n_frames >= 1
    assert sum(s.n_frames for s in snippets) == n
    # only the embedded frames were converted to RGB
    assert FakeAvFrame.conversions == len(snippets)


def test_camera_at_training_rate_embeds_the_extractors_frame():
    n = 30 * 16
    snippets, _ = feed([T0 + i / 30 for i in range(n)])
    assert [s.frame.index for s in snippets] == [16 * k + 8 for k in range(30)]
    assert all(s.n_frames == 16 for s in snippets)


def test_rule_is_the_contract_and_the_spec_reads_a_bundle():
    from engine import snippet_contract

    assert snippet_frame_offset is snippet_contract.embedded_frame_index
    assert SnippetSpec is snippet_contract.SnippetSpec

    class B:
        snippet_frames, snippet_fps = 16, 30.0

    assert SnippetSpec.from_bundle(B).seconds == pytest.approx(16 / 30)


@pytest.mark.parametrize(("fps", "by_time"), [(30, False), (30, True), (15, True), (12.5, True)])
def test_live_cutting_and_feature_extraction_embed_the_same_frames(tmp_path, fps, by_time):
    """The live side (``dsanet score`` cuts a file exactly as a camera) and the training feature extractor
    pick the very same decoded frames of one generated video: same pixels, same frames per snippet."""
    extract = pytest.importorskip("export.extract")
    from stream.offline import iter_snippets
    from tests.fixtures.clips import make_clip

    clip = make_clip(tmp_path / f"c{fps}.mp4", width=64, height=48, fps=fps, seconds=3.4, event=(0.0, 3.4))
    live = list(iter_snippets(clip, UCF))
    extracted = list(extract.iter_snippet_frames(clip, snippet_seconds=UCF.seconds if by_time else None))
    assert len(extracted) >= 5
    # the live side also emits the last partial snippet; the extractor keeps it only when complete
    assert 0 <= len(live) - len(extracted) <= 1
    for snip, (n, image) in zip(live, extracted, strict=False):
        assert snip.n_frames == n
        assert np.array_equal(snip.frame.image, image)
    if fps == 30:  # at the training rate, snippet k embeds decoded frame 16k + 8
        assert [s.frame.index for s in live[:len(extracted)]] == [16 * k + 8 for k in range(len(extracted))]
    # every frame of the event differs from its neighbours, so equal pixels mean the same frame
    images = [s.frame.image for s in live]
    assert all(not np.array_equal(a, b) for a, b in zip(images, images[1:], strict=False))


def test_dropped_frames_still_pick_the_middle_of_what_arrived():
    times = [T0 + i / 30 for i in range(32) if i not in (1, 2, 3, 4, 5, 20)]
    snippets, _ = feed(times)
    first = [i for i in range(16) if i not in (1, 2, 3, 4, 5)]
    second = [i for i in range(16, 32) if i != 20]
    # frame indices are positions in the arrival order; map back to the original frame numbers
    arrived = [i for i in range(32) if i not in (1, 2, 3, 4, 5, 20)]
    assert [arrived[s.frame.index] for s in snippets] == [first[len(first) // 2], second[len(second) // 2]]


@pytest.mark.parametrize("fps", [1.0, 0.8])
def test_slow_camera_fills_empty_snippets_with_previous_frame(fps):
    seconds = 30.0
    n = int(seconds * fps)
    times = [T0 + i / fps for i in range(n)]
    FakeAvFrame.conversions = 0
    snippets, cutter = feed(times)
    # the time axis is preserved: one snippet per 16/30 s of capture time
    span = times[-1] - times[0]
    assert len(snippets) == math.floor(span / UCF.seconds + 1e-9) + 1
    assert [s.index for s in snippets] == list(range(len(snippets)))
    for a, b in zip(snippets, snippets[1:], strict=False):
        assert b.start_time == pytest.approx(a.end_time, abs=1e-6)  # contiguous
    filled = [s for s in snippets if s.n_frames == 0]
    assert filled and cutter.filled == len(filled)
    for i, s in enumerate(snippets):
        if s.n_frames == 0:  # reuses the frame of the snippet before it
            assert s.frame is snippets[i - 1].frame
    assert FakeAvFrame.conversions == n  # every real frame embedded once, fills reuse it


def test_outage_restarts_the_grid_instead_of_filling():
    times = [T0 + i / 25 for i in range(50)] + [T0 + 60 + i / 25 for i in range(50)]
    snippets, _ = feed(times, max_fill=3.0)
    assert all(s.n_frames > 0 for s in snippets)
    second = [s for s in snippets if s.start_time >= T0 + 60 - 1e-6]
    assert second and second[0].start_time == pytest.approx(T0 + 60, abs=1e-6)
    assert [s.index for s in snippets] == list(range(len(snippets)))  # indices stay contiguous


def test_short_gap_is_filled_and_grid_kept():
    times = [T0 + i / 25 for i in range(25)] + [T0 + 2.5 + i / 25 for i in range(25)]
    snippets, _ = feed(times, max_fill=3.0)
    starts = [s.start_time - T0 for s in snippets]
    np.testing.assert_allclose(np.diff(starts), UCF.seconds, atol=1e-6)  # one grid, no restart
    assert any(s.n_frames == 0 for s in snippets)


def test_discontinuity_emits_partial_snippet_and_resumes():
    out = []
    cutter = SnippetCutter("cam", UCF, out.append)
    for i in range(20):  # 16 frames = one full snippet + 4 frames of the next
        cutter.on_frame(LazyFrame("cam", i, T0 + i / 30, 0.0, None, av_frame=FakeAvFrame(i)))
    assert len(out) == 1
    cutter.on_discontinuity()
    assert len(out) == 2 and out[1].n_frames == 4 and out[1].frame.index == 18  # middle of 16..19
    cutter.on_discontinuity()  # idempotent
    assert len(out) == 2
    # reconnect 1.5 s later: the short gap is filled, the grid continues
    for i in range(20, 40):
        cutter.on_frame(LazyFrame("cam", i, T0 + 1.5 + i / 30, 0.0, None, av_frame=FakeAvFrame(i)))
    cutter.on_discontinuity()
    assert [s.index for s in out] == list(range(len(out)))
    starts = np.array([s.start_time for s in out]) - T0
    np.testing.assert_allclose(np.diff(starts), UCF.seconds, atol=1e-6)


def test_jittered_arrivals_and_resolution_change():
    rng = np.random.default_rng(0)
    n = 200
    times = np.cumsum(rng.uniform(0.02, 0.06, size=n)) + T0
    frames = []
    for i, t in enumerate(times):
        h, w = (36, 64) if i < n // 2 else (72, 128)
        frames.append((float(t), np.full((h, w, 3), i % 256, np.uint8)))
    snippets = cut_frames("cam", frames, UCF)
    assert {s.frame.image.shape for s in snippets} == {(36, 64, 3), (72, 128, 3)}
    assert sum(s.n_frames for s in snippets) == n
    for s in snippets:
        assert s.start_time - 1e-6 <= s.frame.capture_time < s.end_time + 1e-6


def test_spec_validation():
    with pytest.raises(ValueError):
        snippet_frame_offset(0)
    with pytest.raises(ValueError):
        SnippetSpec(0, 30.0)


def test_prepare_runs_once_per_embedded_frame_in_the_cutter():
    calls = []

    def prepare(img: np.ndarray) -> np.ndarray:
        calls.append(img.shape)
        return np.full((3, 4, 4), float(img[0, 0, 0]), np.float32)

    out = []
    cutter = SnippetCutter("cam", UCF, out.append, prepare=prepare)
    for i, t in enumerate([T0 + i for i in range(5)]):  # 1 fps: most snippets are filled
        cutter.on_frame(LazyFrame("cam", i, t, 0.0, None, av_frame=FakeAvFrame(i)))
    cutter.on_discontinuity()
    assert len(calls) == 5 and len(out) > 5
    for s in out:
        assert s.pixels is not None and s.pixels[0, 0, 0] == s.frame.index
    filled = [i for i, s in enumerate(out) if s.n_frames == 0]
    assert all(out[i].pixels is out[i - 1].pixels for i in filled)


def test_middle_frame_holder_keeps_only_frames_that_can_still_be_the_middle():
    from engine.snippet_contract import MiddleFrameHolder

    holder: MiddleFrameHolder[int] = MiddleFrameHolder()
    for k in range(1, 40):
        holder.add(k - 1)  # frame value = its position in the snippet
        assert holder.chosen() == k // 2  # the middle of the k frames so far
        assert holder.held == k - k // 2  # about half a snippet, never the whole of it
    holder.reset()
    assert holder.count == 0 and holder.held == 0
    with pytest.raises(ValueError):
        holder.chosen()
