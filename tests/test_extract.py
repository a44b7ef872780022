"""``dsanet extract-features`` on generated clips with the tiny random CLIP."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from engine.clip import build_tiny_clip
from engine.errors import DataError
from export.data import load_features, read_list, snippet_info
from export.extract import ClipEmbedder, extract_features, iter_snippet_frames, snippet_frame_offset
from stream.cli import main
from tests.fixtures.clips import make_clip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def clip_a(tmp_path_factory):
    # 65 frames at 25 fps: four 16-frame snippets, one trailing frame dropped
    return make_clip(tmp_path_factory.mktemp("v") / "a.mp4", 160, 120, 25, 2.6, event=(1.0, 2.0))


def decoded_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_snippet_frame_offset_is_the_middle_frame():
    assert [snippet_frame_offset(n) for n in (1, 2, 15, 16, 25)] == [0, 1, 7, 8, 12]
    with pytest.raises(ValueError):
        snippet_frame_offset(0)


def test_iter_snippet_frames_frame_and_seconds_mode(clip_a):
    frames = decoded_frames(clip_a)
    assert len(frames) == 65
    got = list(iter_snippet_frames(clip_a))
    assert [n for n, _ in got] == [16] * 4
    for k, (_, f) in enumerate(got):
        assert np.array_equal(f, frames[16 * k + 8])
    # 0.5 s at 25 fps: groups of 13/12 frames; the 2-frame tail (< half a snippet) is dropped
    sec = list(iter_snippet_frames(clip_a, snippet_seconds=0.5))
    assert [n for n, _ in sec] == [13, 12, 13, 12, 13]
    assert np.array_equal(sec[1][1], frames[13 + 6])


def test_extract_ten_crops_embeds_the_middle_frame_of_each_snippet(tiny, clip_a, tmp_path):
    out = tmp_path / "ds"
    csv = extract_features([clip_a], clip=str(tiny), out=out, crops=10, label="Fighting", show_progress=False)
    rows = read_list(csv)
    assert [r.path.name for r in rows] == [f"a__{k}.npy" for k in range(10)]
    assert {r.label for r in rows} == {"Fighting"}
    feats = np.stack([load_features(r.path) for r in rows])
    assert feats.shape == (10, 4, 512) and feats.dtype == np.float32
    # recompute independently from the decoded middle frames
    emb = ClipEmbedder(tiny, crops=10)
    frames = decoded_frames(clip_a)
    expect = emb.embed_frames([frames[16 * k + 8] for k in range(4)])
    assert np.allclose(feats, expect, atol=1e-5)
    # views differ (corners, mirrors) but crop 0 is the plain centre view of the 1-crop run
    assert not np.allclose(feats[0], feats[1])
    one = ClipEmbedder(tiny, crops=1).embed_frames([frames[8]])
    assert np.allclose(one[0, 0], feats[0, 0], atol=1e-5)
    info = snippet_info(out)
    assert info["snippet_frames"] == 16 and info["snippet_fps"] == pytest.approx(25.0)
    assert info["snippet_seconds"] == pytest.approx(16 / 25) and info["frame_rule"] == "middle"
    assert info["videos"]["a"]["snippets"] == 4


def test_rerun_merges_lists_and_seconds_mode(tiny, clip_a, tmp_path):
    b = make_clip(tmp_path / "b.mp4", 128, 96, 30, 1.2)
    out = tmp_path / "ds"
    extract_features([clip_a], clip=str(tiny), out=out, label="Fighting", show_progress=False)
    csv = extract_features([b], clip=str(tiny), out=out, label="Normal", show_progress=False)
    rows = read_list(csv)
    assert [(r.path.name, r.label) for r in rows] == [("a__0.npy", "Fighting"), ("b__0.npy", "Normal")]
    csv = extract_features([clip_a], clip=str(tiny), out=out, label="Abuse", show_progress=False)
    assert [(r.path.name, r.label) for r in read_list(csv)] == [("b__0.npy", "Normal"), ("a__0.npy", "Abuse")]
    assert set(json.loads((out / "snippets.json").read_text())["videos"]) == {"a", "b"}
    with pytest.raises(DataError, match="cut differently"):
        extract_features([b], clip=str(tiny), out=out, snippet_seconds=0.5, show_progress=False)
    sec = tmp_path / "sec"
    extract_features([clip_a], clip=str(tiny), out=sec, snippet_seconds=0.5, show_progress=False)
    assert load_features(sec / "features" / "a__0.npy").shape == (5, 512)
    info = snippet_info(sec)
    assert info["snippet_seconds"] == 0.5 and info["snippet_frames"] == 12  # round(0.5 * 25)


def test_bad_videos_are_named(tiny, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(DataError, match="broken.mp4"):
        extract_features([bad], clip=str(tiny), out=tmp_path / "o", show_progress=False)
    with pytest.raises(DataError, match="missing.mp4 does not exist"):
        extract_features([tmp_path / "missing.mp4"], clip=str(tiny), out=tmp_path / "o", show_progress=False)
    short = make_clip(tmp_path / "short.mp4", 64, 48, 25, 0.4)  # 10 frames < one snippet
    with pytest.raises(DataError, match="short.mp4 is too short"):
        extract_features([short], clip=str(tiny), out=tmp_path / "o", show_progress=False)
    assert main(["extract-features", str(bad), "--clip", str(tiny), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "broken.mp4" in capsys.readouterr().err


def test_cli_extract(tiny, clip_a, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["extract-features", str(clip_a), "--clip", str(tiny), "--out", str(out), "--crops", "1",
                 "--no-progress", "--list-name", "mine.csv"]) == 0
    assert (out / "list" / "mine.csv").is_file()
    assert "mine.csv" in capsys.readouterr().out
