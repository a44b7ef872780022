"""``dsanet import-official``: fidelity to the official DSANet code, validation, tokenizer, CLIP files.

The reference numbers in tests/fixtures/official/ were produced by running the authors' own code on
the weights ``tests.fixtures.official_ckpt`` generates (see the README there); here the same weights
are regenerated, imported with the real command, and the bundle (ONNX Runtime) and our torch model
must reproduce the official outputs within 1e-4 on the valid rows.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.model.config import UCF_CLASSES, XD_CLASSES
from tests.fixtures.official_ckpt import (
    TINY_CLIP,
    fixed_features,
    fixed_images,
    official_state_dict,
    write_official_checkpoint,
)

torch = pytest.importorskip("torch")

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "official_outputs.npz"
TOL = 1e-4
SEEDS = {"ucf": 0, "xd": 1}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ucf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_official_checkpoint(tmp_path_factory.mktemp("official") / "model_ucf.pth", "ucf", seed=SEEDS["ucf"])


@pytest.fixture(scope="module")
def ucf_bundle(ucf_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stream.cli import main

    out = tmp_path_factory.mktemp("official-bundle") / "bundle"
    assert main(["import-official", str(ucf_checkpoint), "--preset", "ucf", "--out", str(out)]) == 0
    return out


def _valid_rows(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([x[b, :n] for b, n in enumerate(lengths)])


def test_bundle_reproduces_the_official_outputs(ucf_bundle: Path, ucf_checkpoint: Path,
                                                ref: dict[str, np.ndarray]) -> None:
    from engine.bundle import load_bundle
    from engine.runtime import load_models
    from export.official.load import sha256_of

    bundle, encoder, head = load_models(ucf_bundle, runtime="onnxruntime")
    x, lengths = fixed_features()
    assert np.array_equal(lengths, ref["ucf_lengths"])
    scores, probs = head.score(x, lengths)
    official_scores = 1.0 / (1.0 + np.exp(-ref["ucf_anomaly_logits"].astype(np.float64)))
    assert np.abs(_valid_rows(scores, lengths) - _valid_rows(official_scores, lengths)).max() <= TOL
    assert np.abs(_valid_rows(probs, lengths) - ref["ucf_class_probs"]).max() <= TOL
    emb = encoder.embed(fixed_images(size=TINY_CLIP.image_resolution))
    assert np.abs(emb - ref["ucf_image_features"]).max() <= TOL

    info = load_bundle(ucf_bundle)
    assert info.class_names == tuple(UCF_CLASSES)
    assert info.source.preset == "ucf"
    assert info.source.checkpoint == "model_ucf.pth"
    assert info.source.checkpoint_sha256 == sha256_of(ucf_checkpoint)
    assert info.source.clip.startswith("official:")
    assert info.preprocessing.size == TINY_CLIP.image_resolution
    assert info.parity["head"]["passed"] and info.parity["encoder"]["min_cosine"] >= 0.9999


@pytest.mark.parametrize("preset", ["ucf", "xd"])
def test_torch_model_matches_every_official_output(preset: str, ref: dict[str, np.ndarray]) -> None:
    from export.official.importer import official_model
    from export.official.load import validate

    ck = validate(official_state_dict(preset, TINY_CLIP, seed=SEEDS[preset]), Path(f"model_{preset}.pth"), preset)
    model = official_model(ck)
    x, lengths = fixed_features()
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(lengths), with_sgnm=False)
        _, probs = model.infer(torch.from_numpy(x), torch.from_numpy(lengths))
    diffs = {
        "text_features": np.abs(out.text_features.numpy() - ref[f"{preset}_text_features"]).max(),
        "anomaly_logits": np.abs(_valid_rows(out.logits.numpy(), lengths)
                                 - _valid_rows(ref[f"{preset}_anomaly_logits"], lengths)).max(),
        "class_logits": np.abs(_valid_rows(out.align_logits.numpy(), lengths)
                               - _valid_rows(ref[f"{preset}_class_logits"], lengths)).max(),
        "class_probs": np.abs(_valid_rows(probs.numpy(), lengths) - ref[f"{preset}_class_probs"]).max(),
    }
    assert all(v <= TOL for v in diffs.values()), diffs
    assert model.config.class_names == (UCF_CLASSES if preset == "ucf" else XD_CLASSES)


def test_int8_encoder_bundle_and_xd_preset(tmp_path: Path, ref: dict[str, np.ndarray]) -> None:
    from engine.runtime import load_models
    from stream.cli import main

    ckpt = write_official_checkpoint(tmp_path / "model_xd.pth", "xd", seed=SEEDS["xd"])
    out = tmp_path / "bundle"
    assert main(["import-official", str(ckpt), "--preset", "xd", "--out", str(out), "--encoder-int8",
                 "--no-torch-weights"]) == 0
    bundle, encoder, head = load_models(out, runtime="onnxruntime")
    assert bundle.class_names == tuple(XD_CLASSES) and bundle.encoder.quantization == "int8-dynamic"
    assert bundle.parity["encoder_int8"]["min_cosine"] >= 0.995
    x, lengths = fixed_features()
    _, probs = head.score(x, lengths)
    assert np.abs(_valid_rows(probs, lengths) - ref["xd_class_probs"]).max() <= TOL
    emb = encoder.embed(fixed_images(size=TINY_CLIP.image_resolution))
    official = ref["xd_image_features"]
    cos = (emb * official).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(official, axis=1))
    assert cos.min() >= 0.995


# --- validation: one line naming the file ------------------------------------------------------------
@pytest.fixture(scope="module")
def ucf_state() -> dict:
    return official_state_dict("ucf", TINY_CLIP, seed=SEEDS["ucf"])


def _error(state: dict, preset: str = "ucf") -> str:
    from export.official.load import OfficialCheckpointError, unwrap_state_dict, validate

    path = Path("/data/model_x.pth")
    with pytest.raises(OfficialCheckpointError) as info:
        validate(unwrap_state_dict(state, path), path, preset)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


def test_wrong_preset_is_named(ucf_state: dict) -> None:
    msg = _error(ucf_state, "xd")
    assert "use --preset ucf" in msg and "2 temporal layer(s) and 3 text adapter(s)" in msg


def test_vadclip_checkpoint_is_recognised(ucf_state: dict) -> None:
    vad = {k: v for k, v in ucf_state.items() if not k.startswith(("video_anomaly_refiner.", "clip_adapter."))}
    vad["text_prompt_embeddings.weight"] = torch.zeros(77, 512)
    assert "VadCLIP" in _error(vad)


def test_missing_unexpected_and_misshaped_keys_are_listed(ucf_state: dict) -> None:
    state = dict(ucf_state)
    del state["gc1.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["classifier.weight"] = torch.zeros(2, 512)
    msg = _error(state)
    assert "1 missing (gc1.weight)" in msg and "1 unexpected (extra.weight)" in msg
    assert "classifier.weight (2, 512) expected (1, 512)" in msg


def test_nan_weights_and_our_own_checkpoints_are_refused(ucf_state: dict) -> None:
    state = dict(ucf_state)
    state["mlp1.c_fc.bias"] = torch.full((2048,), float("nan"))
    assert "mlp1.c_fc.bias holds NaN" in _error(state)
    assert "use `dsanet export`" in _error({"backbone.linear.weight": torch.zeros(2, 2)})


def test_wrapped_prefixed_fp32_checkpoint_is_accepted(ucf_state: dict) -> None:
    from export.official.load import unwrap_state_dict, validate

    fp32 = {k: v.float() for k, v in ucf_state.items()}  # as a checkpoint saved from a CPU run
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in fp32.items()}}
    ck = validate(unwrap_state_dict(wrapped, Path("w.pth")), Path("w.pth"), "ucf")
    assert ck.clip_geometry == TINY_CLIP and ck.clip_dtype == "float32"
    assert validate(dict(ucf_state), Path("h.pth"), "ucf").clip_dtype == "float16"


def test_truncated_and_foreign_files_fail_in_one_line(ucf_checkpoint: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    cut = tmp_path / "cut.pth"
    cut.write_bytes(ucf_checkpoint.read_bytes()[: 1 << 20])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    evil = tmp_path / "evil.pth"  # a pickle that would create a file if it were ever unpickled
    evil.write_bytes(pickle.dumps(_Boom(str(tmp_path / "PWNED"))))
    for bad in (cut, text, evil, tmp_path / "absent.pth"):
        assert main(["import-official", str(bad), "--preset", "ucf", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dsanet import-official: {bad}:") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "PWNED").exists()


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def test_full_size_geometry_is_inferred_like_build_model() -> None:
    from export.official.layout import (
        PRESET_HEADS,
        VIT_B_16,
        infer_clip_geometry,
        infer_head_geometry,
        official_shapes,
    )

    shapes = official_shapes(VIT_B_16, PRESET_HEADS["xd"])
    assert infer_clip_geometry(shapes, "clipmodel.") == VIT_B_16
    assert infer_head_geometry(shapes) == PRESET_HEADS["xd"]
    assert VIT_B_16.vision_heads == 12 and VIT_B_16.grid == 14
    assert shapes["clipmodel.visual.positional_embedding"] == (197, 768)


# --- tokenizer --------------------------------------------------------------------------------------
def test_bpe_tokenizer_gives_the_official_ids(ref: dict[str, np.ndarray]) -> None:
    from engine.model.config import UCF_PROMPTS, XD_PROMPTS
    from engine.tokenizer import ClipBPETokenizer

    tok = ClipBPETokenizer.from_bpe_file()
    for preset, prompts in (("ucf", UCF_PROMPTS), ("xd", XD_PROMPTS)):
        official = ref[f"{preset}_token_ids"]
        ids = tok.tokenize([p[0] for p in prompts])
        assert ids.shape == (len(prompts), 77)
        assert np.array_equal(ids[:, : official.shape[1]], official) and not ids[:, official.shape[1]:].any()


def test_hf_folder_tokenizer_gives_the_same_ids(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from engine.clip_formats import write_tokenizer_files
    from engine.model.config import UCF_PROMPTS, XD_PROMPTS
    from engine.tokenizer import ClipBPETokenizer

    tok = ClipBPETokenizer.from_bpe_file()
    folder = write_tokenizer_files(tok, tmp_path / "tok")
    hf = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = [p[0] for p in UCF_PROMPTS + XD_PROMPTS] + ["RoadAccidents", "a man is Fighting in the street",
                                                         "two cars crash, at night!", "shoplifting 2 items"]
    for text in texts:
        assert hf(text)["input_ids"] == [tok.bos_token_id, *tok.encode(text), tok.eos_token_id], text
    assert np.array_equal(ClipBPETokenizer.from_hf_folder(folder).tokenize(texts), tok.tokenize(texts))


def test_vocabulary_is_read_without_importing_open_clip() -> None:
    code = ("import sys; from engine.tokenizer import find_bpe_vocab; p = find_bpe_vocab(); "
            "from transformers import CLIPTextModel, CLIPTokenizer; "
            "assert 'open_clip' not in sys.modules and 'torchvision' not in sys.modules, 'imported'; print(p)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("bpe_simple_vocab_16e6.txt.gz")


# --- --clip as an OpenAI / open_clip file -------------------------------------------------------------
class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict, path: Path) -> Path:
    """A TorchScript archive whose weights carry OpenAI's names, as OpenAI's released ViT-B-16.pt does."""
    root = _Holder()
    for key, value in state.items():
        *parts, leaf = key.split(".")
        module = root
        for part in parts:
            if part not in module._modules:
                module.add_module(part, torch.nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def test_clip_files_embed_like_the_official_image_tower(tmp_path: Path, ucf_state: dict, ref: dict[str, np.ndarray],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from engine.clip import load_vision_model, resolve_clip_dir
    from engine.preprocess import Preprocessing

    monkeypatch.setenv("DSANET_CACHE", str(tmp_path / "cache"))
    clip = {k[len("clipmodel."):]: v for k, v in ucf_state.items() if k.startswith("clipmodel.")}
    plain = tmp_path / "ViT-tiny.pt"
    torch.save(clip, str(plain))
    open_clip_file = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.items()}, str(open_clip_file))
    archive = _torchscript_archive(clip, tmp_path / "ViT-tiny-jit.pt")
    images = torch.from_numpy(fixed_images(size=TINY_CLIP.image_resolution))
    embeddings = []
    for f in (plain, open_clip_file, archive):
        folder = resolve_clip_dir(f)
        assert resolve_clip_dir(f) == folder  # converted once, then cached
        assert Preprocessing.from_clip_dir(folder).size == TINY_CLIP.image_resolution
        with torch.no_grad():
            emb = load_vision_model(folder)(pixel_values=images).image_embeds.numpy()
        assert np.abs(emb - ref["ucf_image_features"]).max() <= TOL, f.name
        embeddings.append(emb)
    for other in embeddings[1:]:
        cos = (other * embeddings[0]).sum(1) / (np.linalg.norm(other, axis=1) * np.linalg.norm(embeddings[0], axis=1))
        assert cos.min() >= 0.9999


def test_a_foreign_clip_file_is_one_line(tmp_path: Path) -> None:
    from engine.clip import resolve_clip_dir
    from engine.errors import ClipLoadError

    bad = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(ClipLoadError, match=r"weights\.pt: not an OpenAI/open_clip ViT CLIP checkpoint"):
        resolve_clip_dir(bad)


# --- dsanet eval on an official checkpoint or a bundle ---------------------------------------------------
def test_eval_takes_an_official_checkpoint_and_its_bundle(ucf_checkpoint: Path, ucf_bundle: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    data = tmp_path / "data"
    assert main(["synth-features", "--out", str(data), "--preset", "ucf", "--videos", "16", "--seed", "3"]) == 0
    figures = []
    for i, source in enumerate((ucf_checkpoint, ucf_bundle)):
        out = tmp_path / f"eval{i}.json"
        assert main(["eval", "--checkpoint", str(source), "-c", "ucf", "--data-root", str(data), "--json", str(out),
                     "--no-progress"]) == 0
        assert "AUC" in capsys.readouterr().out
        figures.append(json.loads(out.read_text()))
    torch_fig, onnx_fig = figures
    assert torch_fig["n_videos"] == onnx_fig["n_videos"] >= 4
    assert abs(torch_fig["auc"] - onnx_fig["auc"]) <= 1e-4 and abs(torch_fig["ap"] - onnx_fig["ap"]) <= 1e-4
    from engine.errors import CheckpointError
    from export.data import read_list
    from export.official.evaluation import score_bundle

    rows = read_list(data / "list" / "ucf_CLIP_rgbtest.csv", data)
    with pytest.raises(CheckpointError, match="not the xd test classes"):
        score_bundle(ucf_bundle, rows, "xd")
    # the open-vocabulary split: one test class held out as novel, base = the others, normal in both
    novel = next(r.label for r in rows if r.label != "Normal")
    out = tmp_path / "split.json"
    assert main(["eval", "--checkpoint", str(ucf_bundle), "-c", "ucf", "--data-root", str(data), "--json", str(out),
                 "--no-progress", "--novel-classes", novel]) == 0
    printed = capsys.readouterr().out
    assert f"novel: {novel}" in printed and "top-1 novel: video" in printed
    split = json.loads(out.read_text())
    normal = sum(r.label == "Normal" for r in rows)
    assert split["novel"]["n_anomalous_videos"] == sum(r.label == novel for r in rows)
    assert split["novel"]["n_videos"] - split["novel"]["n_anomalous_videos"] == normal
    assert split["base"]["n_videos"] + split["novel"]["n_anomalous_videos"] == len(rows)
    # top-1 per subset: every anomalous (single-label) test video counted once, in its subset
    top1 = split["top1"]
    assert top1["novel"]["n_videos"] == split["novel"]["n_anomalous_videos"]
    assert top1["base"]["n_videos"] == split["base"]["n_anomalous_videos"]
    assert top1["all"]["n_videos"] == len(rows) - normal and top1["n_multi_class_skipped"] == 0
    assert sum(sum(row.values()) for row in top1["confusion"].values()) == top1["all"]["n_videos"]
    assert split["auc"] == onnx_fig["auc"]  # the whole-list figures are unchanged
    assert main(["eval", "--checkpoint", str(ucf_bundle), "-c", "ucf", "--data-root", str(data),
                 "--no-progress", "--novel-classes", "Loitering"]) == 2


# --- categories on an imported bundle ----------------------------------------------------------------
def test_imported_bundle_carries_the_text_tower_with_official_token_ids(ucf_bundle: Path,
                                                                       ref: dict[str, np.ndarray]) -> None:
    """text.onnx + tokenizer/tokenizer.json (from OpenAI's BPE) + head_open.onnx: the bundle's tokenizer
    gives the official ids, its own class list through the open head matches the baked-in head, and a
    class added in words scores without re-export."""
    from engine.bundle import load_bundle
    from engine.categories import AddedCategory, CategoryEdit, OpenHeadModel, TextEncoder, build
    from engine.model.config import UCF_PROMPTS
    from engine.runtime import load_models

    info = load_bundle(ucf_bundle)
    assert info.text is not None and info.head_open is not None
    assert info.parity["text"]["passed"] and info.parity["text"]["token_mismatches"] == []
    assert info.parity["head_open"]["passed"]
    enc = TextEncoder(info)
    official = ref["ucf_token_ids"]
    ids = enc.token_ids([p[0] for p in UCF_PROMPTS])
    for row, want in zip(ids, official, strict=True):
        n = int(np.count_nonzero(want))
        assert row[:n].tolist() == want[:n].tolist()
    own = build(info, CategoryEdit(), enc)
    _, _, head = load_models(ucf_bundle, runtime="onnxruntime")
    x, lengths = fixed_features()
    s0, p0 = head.score(x, lengths)
    s1, p1 = OpenHeadModel(info, own).score(x, lengths)
    assert np.abs(_valid_rows(s1, lengths) - _valid_rows(s0, lengths)).max() <= 1e-5
    assert np.abs(_valid_rows(p1, lengths) - _valid_rows(p0, lengths)).max() <= 1e-5
    more = build(info, CategoryEdit(add=(AddedCategory("Person falling", ("a person falls down",)),)), enc)
    _, p2 = OpenHeadModel(info, more).score(x, lengths)
    assert p2.shape[-1] == len(UCF_CLASSES) + 1 and np.allclose(p2.sum(-1)[0, : lengths[0]], 1.0, atol=1e-4)
