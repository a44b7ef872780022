"""VadCLIP data format: lists, re-rooting, feature checks, length handling, labels and ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import DataError
from export.data import (
    LABEL_MAPS,
    FeatureDataset,
    ListRow,
    batch_labels,
    chunk_lengths,
    class_names,
    default_lists,
    load_features,
    process_feat,
    process_split,
    read_list,
    snippet_info,
    split_normal,
    uniform_pool,
    video_name,
    write_list,
    write_snippet_info,
)
from export.gt import (
    build_ground_truth,
    load_ground_truth,
    parse_ucf_annotations,
    parse_xd_annotations,
    save_ground_truth,
)


def ramp(t: int, d: int = 512) -> np.ndarray:
    """Row i is all i: pooled and chunked rows are easy to check by value."""
    return np.repeat(np.arange(t, dtype=np.float32)[:, None], d, axis=1)


def save(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


# ------------------------------------------------------------------------------------ labels


def test_label_maps_and_class_names_follow_the_spec_order():
    assert class_names("ucf")[0] == "normal" and len(class_names("ucf")) == 14
    assert class_names("ucf")[8] == "roadAccidents"
    assert class_names("xd") == ["normal", "fighting", "shooting", "riot", "abuse", "car accident", "explosion"]
    assert list(LABEL_MAPS["xd"]) == ["A", "B1", "B2", "B4", "B5", "B6", "G"]
    with pytest.raises(DataError, match="unknown data preset"):
        class_names("kinetics")


def test_batch_labels_one_hot_ucf_and_multi_hot_xd():
    ucf = batch_labels(["Normal", "Abuse", "Vandalism"], "ucf")
    assert ucf.shape == (3, 14) and ucf.dtype == np.float32
    assert ucf.argmax(1).tolist() == [0, 1, 13] and ucf.sum(1).tolist() == [1, 1, 1]
    xd = batch_labels(["B2-G-0", "A", "B1", "B4-B5-B6"], "xd")
    assert xd[0].nonzero()[0].tolist() == [2, 6]  # shooting + explosion; '0' ignored
    assert xd[1].nonzero()[0].tolist() == [0]
    assert xd[2].nonzero()[0].tolist() == [1]
    assert xd[3].nonzero()[0].tolist() == [3, 4, 5]


def test_batch_labels_unknown_labels_are_named():
    with pytest.raises(DataError, match="'Jaywalking'"):
        batch_labels(["Abuse", "Jaywalking"], "ucf")
    with pytest.raises(DataError, match="'B9'"):
        batch_labels(["B2-B9-0"], "xd")
    with pytest.raises(DataError, match="names no class"):
        batch_labels(["0-0-0"], "xd")


def test_split_normal_per_preset():
    rows = [ListRow(path=__import__("pathlib").Path(f"v{i}__0.npy"), label=lab)
            for i, lab in enumerate(["Abuse", "Normal", "A", "B1-0-0"])]
    n, a = split_normal(rows, "ucf")
    assert [r.label for r in n] == ["Normal"] and len(a) == 3
    n, a = split_normal(rows, "xd")
    assert [r.label for r in n] == ["A"] and len(a) == 3


def test_video_name_and_crop_of_any_crop_index():
    assert video_name("/x/Abuse/Abuse028_x264__5.npy") == "Abuse028_x264"
    assert video_name("v=ab__#1_label_B2-0-0__0.npy") == "v=ab__#1_label_B2-0-0"
    assert ListRow(path=__import__("pathlib").Path("/a/b__12.npy"), label="A").crop == 12


# ------------------------------------------------------------------------------------ length handling


def test_process_feat_pools_long_videos_uniformly():
    pooled, length = process_feat(ramp(512))
    assert pooled.shape == (256, 512) and pooled.dtype == np.float32 and length == 256
    assert np.allclose(pooled[:, 0], np.arange(256) * 2 + 0.5)  # mean of rows 2i, 2i+1
    pooled, length = process_feat(ramp(257))
    # edges int(i * 257 / 256): every bin one row except the last, which holds rows 255 and 256
    assert np.allclose(pooled[:255, 0], np.arange(255)) and pooled[255, 0] == pytest.approx(255.5)


def test_process_feat_pads_short_videos_and_keeps_length():
    feat = ramp(100) + 1
    padded, length = process_feat(feat)
    assert padded.shape == (256, 512) and length == 100
    assert np.array_equal(padded[:100], feat) and not padded[100:].any()
    same, length = process_feat(ramp(256))
    assert length == 256 and np.array_equal(same, ramp(256))


def test_uniform_pool_empty_bins_copy_the_left_edge_row():
    out = uniform_pool(ramp(3, 4) + 10, 5)  # edges [0,0,1,1,2,3]
    assert out[:, 0].tolist() == [10, 10, 11, 11, 12]


@pytest.mark.parametrize("t, lengths", [(100, [100]), (255, [255]), (256, [256, 256]), (300, [256, 44]),
                                        (512, [256, 256, 256]), (600, [256, 256, 88])])
def test_process_split_chunks_and_official_lengths(t, lengths):
    feat = ramp(t) + 1
    chunks, got = process_split(feat)
    assert got == lengths == chunk_lengths(t)
    assert chunks.shape == (len(lengths), 256, 512) and chunks.dtype == np.float32
    flat = chunks.reshape(-1, 512)
    assert np.array_equal(flat[:t], feat) and not flat[t:].any()


def test_process_split_multiple_of_256_has_an_all_zero_extra_chunk():
    chunks, lengths = process_split(ramp(256) + 1)
    assert chunks.shape[0] == 2 and not chunks[1].any()
    assert lengths == [256, 256]  # the official loop never subtracts the first chunk here


def test_feature_dataset_train_and_test_items(tmp_path):
    save(tmp_path / "a__0.npy", ramp(300))
    save(tmp_path / "b__0.npy", ramp(40).astype(np.float64))
    rows = [ListRow(tmp_path / "a__0.npy", "Abuse"), ListRow(tmp_path / "b__0.npy", "Normal")]
    train = FeatureDataset(rows)
    assert len(train) == 2
    x, label, length = train[0]
    assert x.shape == (256, 512) and label == "Abuse" and length == 256
    x, label, length = train[1]
    assert x.dtype == np.float32 and length == 40
    test = FeatureDataset(rows, test_mode=True)
    x, label, lengths = test[0]
    assert x.shape == (2, 256, 512) and lengths == [256, 44]
    x, _, lengths = test[1]
    assert x.shape == (1, 256, 512) and lengths == [40]


# ------------------------------------------------------------------------------------ lists and features


def test_read_list_reroots_official_absolute_paths(tmp_path):
    root = tmp_path / "UCFClipFeatures"
    save(root / "Abuse" / "Abuse001_x264__0.npy", ramp(5))
    save(root / "flat__0.npy", ramp(5))
    save(root / "features" / "rel__3.npy", ramp(5))
    csv = write_list(tmp_path / "list" / "l.csv", [
        ("/home/xbgydx/Desktop/UCFClipFeatures/Abuse/Abuse001_x264__0.npy", "Abuse"),  # last two components
        ("/elsewhere/deep/dir/flat__0.npy", "Normal"),  # basename
        ("features/rel__3.npy", "Normal"),  # relative path
    ])
    rows = read_list(csv, data_root=root)
    assert [r.path for r in rows] == [root / "Abuse" / "Abuse001_x264__0.npy", root / "flat__0.npy",
                                      root / "features" / "rel__3.npy"]
    assert [r.label for r in rows] == ["Abuse", "Normal", "Normal"]
    assert rows[0].video == "Abuse001_x264" and rows[2].crop == 3


def test_read_list_relative_paths_resolve_against_the_data_set_folder(tmp_path):
    save(tmp_path / "ds" / "features" / "v__0.npy", ramp(3))
    csv = write_list(tmp_path / "ds" / "list" / "l.csv", [("features/v__0.npy", "A")])
    assert read_list(csv)[0].path == tmp_path / "ds" / "features" / "v__0.npy"


def test_read_list_errors_name_the_problem(tmp_path):
    csv = write_list(tmp_path / "list" / "l.csv", [("/nowhere/Abuse/gone__0.npy", "Abuse")])
    with pytest.raises(DataError, match=r"line 2: feature file /nowhere/Abuse/gone__0.npy does not exist"):
        read_list(csv, data_root=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_list(tmp_path / "missing.csv")
    empty = write_list(tmp_path / "empty.csv", [])
    with pytest.raises(DataError, match="no rows"):
        read_list(empty)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.npy,A\n")
    with pytest.raises(DataError, match="header 'path,label'"):
        read_list(bad)
    short = tmp_path / "short.csv"
    short.write_text("path,label\nx.npy\n")
    with pytest.raises(DataError, match="line 2"):
        read_list(short)


def test_read_list_accepts_windows_line_endings(tmp_path):
    save(tmp_path / "v__5.npy", ramp(2))
    csv = tmp_path / "l.csv"
    csv.write_bytes(b"path,label\r\n" + str(tmp_path / "v__5.npy").encode() + b",Normal\r\n")
    assert read_list(csv)[0].label == "Normal"


def test_load_features_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_features(tmp_path / "nope.npy")
    save(tmp_path / "w.npy", np.zeros((4, 768), np.float32))
    with pytest.raises(DataError, match=r"w.npy has width 768: expected 512"):
        load_features(tmp_path / "w.npy")
    save(tmp_path / "d.npy", np.zeros((2, 4, 512), np.float32))
    with pytest.raises(DataError, match=r"d.npy has shape \(2, 4, 512\)"):
        load_features(tmp_path / "d.npy")
    save(tmp_path / "e.npy", np.zeros((0, 512), np.float32))
    with pytest.raises(DataError, match="e.npy is empty"):
        load_features(tmp_path / "e.npy")
    (tmp_path / "c.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(DataError, match="c.npy is not a readable .npy"):
        load_features(tmp_path / "c.npy")
    save(tmp_path / "ok.npy", np.ones((3, 512), np.float64))
    ok = load_features(tmp_path / "ok.npy")
    assert ok.dtype == np.float32 and ok.shape == (3, 512)


def test_snippet_info_round_trip(tmp_path):
    assert snippet_info(tmp_path) is None
    write_snippet_info(tmp_path, 16, 30.0)
    info = snippet_info(tmp_path)
    assert info["snippet_frames"] == 16 and info["snippet_seconds"] == pytest.approx(16 / 30)
    (tmp_path / "snippets.json").write_text('{"snippet_frames": 16}')
    with pytest.raises(DataError, match="lacks keys"):
        snippet_info(tmp_path)


def test_default_lists_use_official_names(tmp_path):
    assert [p.name for p in default_lists("ucf", tmp_path)] == ["ucf_CLIP_rgb.csv", "ucf_CLIP_rgbtest.csv"]
    assert default_lists("xd", tmp_path)[1] == tmp_path / "list" / "xd_CLIP_rgbtest.csv"


# ------------------------------------------------------------------------------------ ground truth

UCF_ANN = (
    "Abuse001_x264  Abuse  10  40  60  70  \n"
    "Arson002_x264  Arson  70  500  -1  -1  \n"
    "Normal_Videos_003_x264  Normal  -1  -1  -1  -1  \n"
)


def make_ucf(tmp_path):
    feats = tmp_path / "feats"
    save(feats / "Abuse" / "Abuse001_x264__5.npy", ramp(5))
    save(feats / "Arson" / "Arson002_x264__5.npy", ramp(6))
    save(feats / "Testing_Normal_Videos_Anomaly" / "Normal_Videos_003_x264__5.npy", ramp(3))
    (tmp_path / "list").mkdir(exist_ok=True)
    (tmp_path / "list" / "Temporal_Anomaly_Annotation.txt").write_text(UCF_ANN)
    csv = write_list(tmp_path / "list" / "ucf_CLIP_rgbtest.csv", [
        ("/home/x/UCFClipFeatures/Abuse/Abuse001_x264__5.npy", "Abuse"),
        ("/home/x/UCFClipFeatures/Arson/Arson002_x264__5.npy", "Arson"),
        ("/home/x/UCFClipFeatures/Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264__5.npy", "Normal"),
    ])
    return read_list(csv, data_root=feats)


def test_ucf_annotations_parse():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.txt"
        p.write_text(UCF_ANN)
        ann = parse_ucf_annotations(p)
    assert ann["Abuse001_x264"] == ("Abuse", [(10, 40), (60, 70)])
    assert ann["Arson002_x264"] == ("Arson", [(70, 500)])
    assert ann["Normal_Videos_003_x264"] == ("Normal", [])


def test_ucf_ground_truth_from_annotations_uses_the_listed_crop(tmp_path):
    rows = make_ucf(tmp_path)  # crop __5, which the official scripts skipped
    gt = load_ground_truth("ucf", tmp_path, rows)
    assert gt.lengths == [5, 6, 3]
    assert gt.frame_gt.shape == (16 * 14,) and gt.frame_gt.dtype == np.float32
    v0 = gt.frame_gt[:80]
    expect = np.zeros(80)
    expect[10:40] = 1
    expect[60:70] = 1
    assert np.array_equal(v0, expect)
    v1 = gt.frame_gt[80:176]
    assert v1[:70].sum() == 0 and v1[70:].all()  # interval past the end is clipped to 16*T
    assert not gt.frame_gt[176:].any()
    assert gt.segments == [[(10, 40), (60, 70)], [(70, 500)], [(0, 48)]]
    assert gt.labels == [["Abuse", "Abuse"], ["Arson"], ["A"]]
    assert gt.videos == ["Abuse001_x264", "Arson002_x264", "Normal_Videos_003_x264"]


def test_ground_truth_save_load_round_trip_and_stale_files(tmp_path):
    rows = make_ucf(tmp_path)
    built = load_ground_truth("ucf", tmp_path, rows)
    paths = save_ground_truth(built, tmp_path / "list", "ucf")
    assert [p.name for p in paths] == ["gt_ucf.npy", "gt_segment_ucf.npy", "gt_label_ucf.npy"]
    (tmp_path / "list" / "Temporal_Anomaly_Annotation.txt").unlink()  # now only the saved files can serve
    loaded = load_ground_truth("ucf", tmp_path, rows)
    assert np.array_equal(loaded.frame_gt, built.frame_gt)
    assert loaded.segments == built.segments and loaded.labels == built.labels
    # a GT made for other features: lengths no longer match
    save(rows[0].path, ramp(7))
    with pytest.raises(DataError, match="gt_ucf.npy has 224 frames but .* 16 snippets = 256 frames"):
        load_ground_truth("ucf", tmp_path, rows)
    save(rows[0].path, ramp(5))
    with pytest.raises(DataError, match="have 3 / 3 videos but the test list has 2"):
        np.save(tmp_path / "list" / "gt_ucf.npy", built.frame_gt[:176])
        load_ground_truth("ucf", tmp_path, rows[:2])


def test_official_string_segments_load(tmp_path):
    rows = make_ucf(tmp_path)
    seg = np.empty(3, dtype=object)
    seg[0], seg[1], seg[2] = [["10", "40"], ["60", "70"]], [["70", "500"]], [[0, 48]]
    lab = np.empty(3, dtype=object)
    lab[0], lab[1], lab[2] = ["Abuse", "Abuse"], ["Arson"], ["A"]
    np.save(tmp_path / "list" / "gt_segment_ucf.npy", seg, allow_pickle=True)
    np.save(tmp_path / "list" / "gt_label_ucf.npy", lab, allow_pickle=True)
    gt = load_ground_truth("ucf", tmp_path, rows)
    assert gt.segments[0] == [(10, 40), (60, 70)]


def test_missing_annotation_is_an_error_naming_the_video(tmp_path):
    rows = make_ucf(tmp_path)
    (tmp_path / "list" / "Temporal_Anomaly_Annotation.txt").write_text(UCF_ANN.splitlines()[0] + "\n")
    with pytest.raises(DataError, match="Arson002_x264 .* has no line in annotation file"):
        load_ground_truth("ucf", tmp_path, rows)
    (tmp_path / "list" / "Temporal_Anomaly_Annotation.txt").unlink()
    with pytest.raises(DataError, match="no ground truth for the ucf test list"):
        load_ground_truth("ucf", tmp_path, rows)


def make_xd(tmp_path, multiclass: bool):
    for name, t in (("a_label_B2-0-0", 6), ("b_label_B1-G-0", 8), ("c_label_A", 4)):
        save(tmp_path / "f" / f"{name}__0.npy", ramp(t))
    (tmp_path / "list").mkdir(exist_ok=True)
    (tmp_path / "list" / "annotations.txt").write_text("a_label_B2-0-0 16 48\nb_label_B1-G-0 0 32 64 200\n")
    if multiclass:
        (tmp_path / "list" / "annotations_multiclasses.txt").write_text(
            "a_label_B2-0-0 B2 16 48\nb_label_B1-G-0 B1 0 32 G 64 200\n")
    csv = write_list(tmp_path / "list" / "xd_CLIP_rgbtest.csv", [
        ("/d/XDTestClipFeatures/a_label_B2-0-0__0.npy", "B2-0-0"),
        ("/d/XDTestClipFeatures/b_label_B1-G-0__0.npy", "B1-G-0"),
        ("/d/XDTestClipFeatures/c_label_A__0.npy", "A"),
    ])
    return read_list(csv, data_root=tmp_path / "f")


def test_xd_ground_truth_with_multiclass_annotations(tmp_path):
    rows = make_xd(tmp_path, multiclass=True)
    gt = load_ground_truth("xd", tmp_path, rows)
    assert gt.segments == [[(16, 48)], [(0, 32), (64, 200)], [(0, 64)]]
    assert gt.labels == [["B2"], ["B1", "G"], ["A"]]
    assert gt.frame_gt.shape == (16 * 18,)
    assert gt.frame_gt[16:48].all() and gt.frame_gt[:16].sum() == 0 and gt.frame_gt[48:96].sum() == 0
    v1 = gt.frame_gt[96:224]
    assert v1[:32].all() and not v1[32:64].any() and v1[64:].all()
    paths = save_ground_truth(gt, tmp_path / "list", "xd")
    assert [p.name for p in paths] == ["gt.npy", "gt_segment.npy", "gt_label.npy"]


def test_xd_plain_annotations_need_multiclass_file_for_multi_label_videos(tmp_path):
    rows = make_xd(tmp_path, multiclass=False)
    with pytest.raises(DataError, match="b_label_B1-G-0 has several classes"):
        load_ground_truth("xd", tmp_path, rows)
    single = build_ground_truth("xd", [rows[0], rows[2]], tmp_path / "list" / "annotations.txt")
    assert single.labels == [["B2"], ["A"]]  # one class in the name: segments take it
    parsed = parse_xd_annotations(tmp_path / "list" / "annotations.txt")
    assert parsed["b_label_B1-G-0"] == [(None, 0, 32), (None, 64, 200)]
