"""engine.bundle: bundle.json schema and the refusal of every kind of inconsistent bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import (
    BUNDLE_FORMAT_VERSION,
    BUNDLE_JSON,
    display_name,
    load_bundle,
    onnx_io,
    parse_bundle_json,
    sha256_file,
)
from engine.errors import BundleError


def _edit_json(bundle_dir: Path, **changes) -> None:
    path = bundle_dir / BUNDLE_JSON
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _rehash(bundle_dir: Path, name: str) -> None:
    """Record a replaced file's new hash, so that only the content check can catch it."""
    path = bundle_dir / BUNDLE_JSON
    data = json.loads(path.read_text())
    f = bundle_dir / name
    data["files"][name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    path.write_text(json.dumps(data))


def test_tiny_bundle_contents(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    assert b.format_version == BUNDLE_FORMAT_VERSION
    assert b.num_classes == 14 and b.class_names[0] == "normal"
    assert b.display_names[b.class_names.index("roadAccidents")] == "Road accident"
    assert (b.embedding_width, b.max_window, b.snippet_frames) == (512, 256, 16)
    assert b.snippet_seconds == pytest.approx(16 / b.snippet_fps)
    assert b.tau == 5.0 and b.preprocessing.size == 224
    assert b.parity["head"]["passed"] and b.parity["encoder"]["passed"]
    assert b.parity["head"]["scores_max_abs"] <= 1e-4 and b.parity["encoder"]["min_cosine"] >= 0.9999
    assert {"encoder.onnx", "head.onnx", "head.safetensors"} <= set(b.files)
    assert b.files["head.onnx"].sha256 == sha256_file(tiny_bundle_dir / "head.onnx")
    assert b.onnx_opset and b.onnx_opset >= 17
    assert {"torch", "onnxruntime", "onnx"} <= set(b.tools)
    assert b.source.tiny_clip


def test_json_roundtrip(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    again = parse_bundle_json(json.loads(json.dumps(b.to_json_dict())))
    assert again.to_json_dict() == b.to_json_dict()
    assert again.preprocessing == b.preprocessing


@pytest.mark.parametrize("name, shown", [
    ("roadAccidents", "Road accident"), ("normal", "Normal"), ("car accident", "Car accident"),
    ("shoplifting", "Shoplifting"), ("vandalism", "Vandalism"), ("armed_robberies", "Armed robbery"),
    ("glass", "Glass"), ("trafficJams", "Traffic jam"),
])
def test_display_names(name, shown):
    assert display_name(name) == shown


def test_graph_shapes_are_read_the_same_without_onnx(tiny_bundle_dir):
    """The service installs only onnxruntime: the fallback reader must agree with the onnx package."""
    with_onnx = onnx_io(tiny_bundle_dir / "head.onnx")
    code = ("import sys, json; sys.modules['onnx'] = None\n"
            "from engine.bundle import onnx_io, load_bundle\n"
            f"ins, outs = onnx_io({str(tiny_bundle_dir / 'head.onnx')!r})\n"
            f"load_bundle({str(tiny_bundle_dir)!r})\n"
            "print(json.dumps([ins, outs]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    ins, outs = json.loads(out.strip().splitlines()[-1])
    assert ins["features"][1:] == list(with_onnx[0]["features"][1:]) and ins["features"][2] == 512
    assert outs["class_probs"][-1] == with_onnx[1]["class_probs"][-1] == 14


# --- refusals ----------------------------------------------------------------------------------
def test_missing_directory_and_bundle_json(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="bundle.json: missing"):
        load_bundle(tmp_path)


def test_bad_json(tiny_bundle_dir, copy_bundle):
    d = copy_bundle(tiny_bundle_dir)
    (d / BUNDLE_JSON).write_text('{"format_version": 1, "name": ')
    with pytest.raises(BundleError, match=r"bundle.json: not valid JSON"):
        load_bundle(d)
    (d / BUNDLE_JSON).write_text("[1, 2]")
    with pytest.raises(BundleError, match="JSON object"):
        load_bundle(d)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_format_version(tiny_bundle_dir, copy_bundle, version):
    d = copy_bundle(tiny_bundle_dir)
    _edit_json(d, format_version=version)
    with pytest.raises(BundleError, match="unknown bundle format version"):
        load_bundle(d)


def test_missing_onnx_file(tiny_bundle_dir, copy_bundle):
    d = copy_bundle(tiny_bundle_dir)
    (d / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder\.onnx: missing"):
        load_bundle(d)


def test_damaged_file_fails_the_hash_check(tiny_bundle_dir, copy_bundle):
    d = copy_bundle(tiny_bundle_dir)
    raw = bytearray((d / "head.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "head.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"head\.onnx: sha256 .* does not match"):
        load_bundle(d)
    (d / "head.onnx").write_bytes(bytes(raw[:1000]))
    with pytest.raises(BundleError, match=r"head\.onnx: is 1000 bytes"):
        load_bundle(d)


def test_corrupt_onnx_with_matching_hash(tiny_bundle_dir, copy_bundle):
    d = copy_bundle(tiny_bundle_dir)
    (d / "encoder.onnx").write_bytes(b"\x08\x07this is not a protobuf model at all" * 50)
    _rehash(d, "encoder.onnx")
    with pytest.raises(BundleError, match=r"encoder\.onnx: not a valid ONNX model"):
        load_bundle(d)


def _tiny_encoder_onnx(path: Path, width: int) -> None:
    """A real ONNX image encoder [B,3,224,224] -> [B,width] (pooling + matmul)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, width), dtype=np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["pixel_values"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["image_embeds"])]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                           ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", width])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_encoder_width_must_match_head(tiny_bundle_dir, copy_bundle):
    d = copy_bundle(tiny_bundle_dir)
    _tiny_encoder_onnx(d / "encoder.onnx", 256)
    _rehash(d, "encoder.onnx")
    with pytest.raises(BundleError, match=r"outputs 256-d embeddings but .*head\.onnx takes 512-d"):
        load_bundle(d)


def test_a_same_width_replacement_encoder_is_accepted(tiny_bundle_dir, copy_bundle):
    """The width check is about shapes, not about identity: a 512-d encoder passes."""
    d = copy_bundle(tiny_bundle_dir)
    _tiny_encoder_onnx(d / "encoder.onnx", 512)
    _rehash(d, "encoder.onnx")
    assert load_bundle(d).embedding_width == 512


@pytest.mark.parametrize("change, message", [
    (lambda j: j.update(display_names=j["display_names"][:-1]), "display_names has 13 entries"),
    (lambda j: j.update(snippet_seconds=1.0), "snippet_seconds"),
    (lambda j: j.update(class_names=j["class_names"][:-1], display_names=j["display_names"][:-1],
                        text={**j["text"], "class_prompts": j["text"]["class_prompts"][:-1]}),
     "class_probs has 14 classes but bundle.json lists 13"),
    (lambda j: j["text"].update(class_prompts=j["text"]["class_prompts"][:-1]),
     "text.class_prompts has 13 entries but class_names has 14"),
    (lambda j: j["text"].update(output="nope"), "text.onnx: has no output named 'nope'"),
    (lambda j: j["head_open"].update(text_features="nope"), "head_open.onnx: has no input named 'nope'"),
    (lambda j: j["files"].pop("tokenizer/tokenizer.json"), "no entry for 'tokenizer/tokenizer.json'"),
    (lambda j: j.update(embedding_width=768), "embedding_width 768"),
    (lambda j: j["preprocessing"].update(size=256), "preprocessing.size is 256"),
    (lambda j: j.update(tau=-1), "tau"),
    (lambda j: j.pop("class_names"), "class_names"),
    (lambda j: j.update(surprise=1), "surprise"),
    (lambda j: j["head"].update(features="x"), "has no input named 'x'"),
    (lambda j: j["files"].pop("head.onnx"), "no entry for 'head.onnx'"),
])
def test_inconsistent_bundle_json(tiny_bundle_dir, copy_bundle, change, message):
    d = copy_bundle(tiny_bundle_dir)
    data = json.loads((d / BUNDLE_JSON).read_text())
    change(data)
    (d / BUNDLE_JSON).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(d)
    assert str(d) in str(err.value)  # the message names the bundle file at fault


def test_content_hash_tracks_files(tiny_bundle_dir, copy_bundle):
    d = copy_bundle(tiny_bundle_dir)
    before = load_bundle(d).content_hash
    assert before == load_bundle(tiny_bundle_dir).content_hash
    raw = bytearray((d / "head.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (d / "head.safetensors").write_bytes(bytes(raw))
    _rehash(d, "head.safetensors")
    assert load_bundle(d).content_hash != before


def test_bundle_module_imports_no_torch(tiny_bundle_dir):
    code = (f"import sys; from engine.bundle import load_bundle; load_bundle({str(tiny_bundle_dir)!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
