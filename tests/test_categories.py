"""Categories chosen at deployment (issue 17): text.onnx + head_open.onnx parity, edit resolution,
config validation, the runtime swap on a running service, and the two commands.

Everything runs on the tiny random CLIP: the figures are structural parity (the deployed path computes
what the model computes), never a claim about how well a new category is recognised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import load_bundle
from engine.categories import (
    AddedCategory,
    CategoryEdit,
    CategoryError,
    OpenHeadModel,
    TextEncoder,
    build,
    parse_add,
    resolve,
)
from stream.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- bundle contents and parity -------------------------------------------------------------------
def test_bundle_carries_text_tower_tokenizer_and_open_head_with_parity(tiny_bundle_dir: Path) -> None:
    b = load_bundle(tiny_bundle_dir)
    assert b.text is not None and b.head_open is not None
    for name in ("text.onnx", "head_open.onnx", "tokenizer/tokenizer.json"):
        assert name in b.files and (tiny_bundle_dir / name).is_file()
    assert len(b.text.class_prompts) == b.num_classes
    t, o = b.parity["text"], b.parity["head_open"]
    assert t["passed"] and t["max_abs"] <= 1e-5 and t["token_mismatches"] == []
    assert o["passed"] and o["max_abs"] <= 1e-5 and len(o["cases"]) >= 4
    print(f"parity (bundle.json): text max|diff| {t['max_abs']:.3g}, head_open max|diff| {o['max_abs']:.3g} "
          f"over {len(o['cases'])} cases")
    assert "editable (text.onnx, head_open.onnx)" in b.describe()


def test_text_onnx_reproduces_the_baked_class_features(tiny_bundle_dir: Path) -> None:
    """Independent of the exporter's own check: the class features the deployed path computes (tokenizers +
    text.onnx on ONNX Runtime, no torch) against the buffer baked into the torch head weights."""
    from safetensors.numpy import load_file

    b = load_bundle(tiny_bundle_dir)
    baked = load_file(str(tiny_bundle_dir / "head.safetensors"))["text_features"]
    got = build(b, CategoryEdit()).features
    assert got is not None and got.shape == baked.shape
    diff = float(np.abs(got - baked).max())
    print(f"parity: deployed class features vs head.safetensors max|diff| {diff:.3g}")
    assert diff <= 1e-5


def test_head_open_matches_baked_head_for_the_bundles_own_classes(tiny_bundle_dir: Path) -> None:
    from engine.runtime import load_models

    bundle, _, head = load_models(tiny_bundle_dir, runtime="onnxruntime", threads=1)
    open_head = OpenHeadModel(bundle, build(bundle, CategoryEdit()), threads=1)
    rng = np.random.default_rng(7)
    worst = 0.0
    for b, t in ((1, 1), (3, 20), (2, bundle.max_window)):
        feats = rng.standard_normal((b, t, bundle.embedding_width), dtype=np.float32)
        lengths = np.resize(np.array([t, max(1, t // 3), 1], dtype=np.int64), b)
        s0, p0 = head.score(feats, lengths)
        s1, p1 = open_head.score(feats, lengths)
        worst = max(worst, float(np.abs(s0 - s1).max()), float(np.abs(p0 - p1).max()))
    print(f"parity: head_open.onnx vs head.onnx (ONNX Runtime) max|diff| {worst:.3g}")
    assert worst <= 1e-5


def test_torch_runtime_open_head_matches_the_baked_head_and_takes_new_classes(tiny_bundle_dir: Path) -> None:
    """The torch runtime's open head (head.safetensors as DSANetOpenHead, class features as an input):
    for the bundle's own classes it matches the baked-in head on torch and on ONNX Runtime within 1e-5;
    Models on the torch runtime picks it for an edit, and an added class gets a column."""
    pytest.importorskip("torch")
    from engine.categories import open_head_for
    from engine.runtime import load_models
    from engine.runtimes.torch import TorchOpenHeadModel
    from stream.config import CategoriesConfig, ModelConfig
    from stream.models import Models

    bundle, _, torch_head = load_models(tiny_bundle_dir, runtime="torch", threads=1)
    _, _, ort_head = load_models(tiny_bundle_dir, runtime="onnxruntime", threads=1)
    own = build(bundle, CategoryEdit())
    open_head = open_head_for(bundle, own, torch_head, threads=1)
    assert isinstance(open_head, TorchOpenHeadModel) and open_head.describe()["runtime"] == "torch"
    rng = np.random.default_rng(11)
    worst = {"torch": 0.0, "onnxruntime": 0.0}
    for b, t in ((1, 1), (3, 20), (2, bundle.max_window)):
        feats = rng.standard_normal((b, t, bundle.embedding_width), dtype=np.float32)
        lengths = np.resize(np.array([t, max(1, t // 3), 1], dtype=np.int64), b)
        s1, p1 = open_head.score(feats, lengths)
        for name, head in (("torch", torch_head), ("onnxruntime", ort_head)):
            s0, p0 = head.score(feats, lengths)
            worst[name] = max(worst[name], float(np.abs(s0 - s1).max()), float(np.abs(p0 - p1).max()))
    print("parity: torch open head vs " + ", ".join(f"{k} baked head max|diff| {v:.3g}" for k, v in worst.items()))
    assert max(worst.values()) <= 1e-5, worst
    more = build(bundle, CategoryEdit(add=(AddedCategory("Person falling", ("a person falls down",)),)))
    open_head.set_categories(more)
    _, p2 = open_head.score(rng.standard_normal((1, 8, bundle.embedding_width), dtype=np.float32),
                            np.array([8]))
    assert p2.shape == (1, 8, len(more)) and open_head.last_used is more
    cfg = ModelConfig(bundle=str(tiny_bundle_dir), runtime="torch", threads=1,
                      categories=CategoriesConfig.model_validate({"drop": ["Arrest"]}))
    models = Models.load(cfg)
    assert isinstance(models.open_head, TorchOpenHeadModel)
    assert "Arrest" not in models.current_classes()[1]


def test_text_parity_with_several_prompts_per_class(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """The model averages a class's raw prompt features then normalises; text.onnx + that rule agree."""
    import torch

    from engine.clip import load_fast_tokenizer
    from engine.model import DSANetConfig, build_model, text_width_of
    from engine.model.text import PromptFeatureGraph
    from export.onnx_export import export_text_onnx
    from export.parity import text_parity

    cfg = DSANetConfig(text_width=text_width_of(tiny_clip_dir), class_names=["normal", "fall", "smoke"],
                       class_prompts=[["normal"], ["a person falls down", "someone collapses on the floor"],
                                      ["smoke", "thick smoke fills the room", "a fire starts"]])
    torch.manual_seed(3)
    text = build_model(cfg, tiny_clip_dir).eval().text
    tok = load_fast_tokenizer(tiny_clip_dir)
    tok.save_pretrained(str(tmp_path / "tok"))
    eos = int(tok.eos_token_id)
    export_text_onnx(PromptFeatureGraph(text, eos), tmp_path / "text.onnx")
    figures = text_parity(text, tmp_path / "text.onnx", tmp_path / "tok" / "tokenizer.json", cfg.class_prompts,
                          eos, int(tok.pad_token_id))
    assert figures["passed"], figures
    assert figures["prompts"] == 6 and figures["max_abs"] <= 1e-5
    print(f"parity: text.onnx + averaging vs torch, 3 classes / 6 prompts, max|diff| {figures['max_abs']:.3g}")


def test_old_bundle_without_text_tower_still_loads_and_only_renames(tiny_bundle_dir: Path, copy_bundle) -> None:
    old = copy_bundle(tiny_bundle_dir)
    meta = json.loads((old / "bundle.json").read_text())
    for key in ("text", "head_open"):
        meta.pop(key)
    meta["files"] = {k: v for k, v in meta["files"].items()
                     if not k.startswith(("text.onnx", "head_open.onnx", "tokenizer/"))}
    (old / "bundle.json").write_text(json.dumps(meta))
    b = load_bundle(old)
    assert b.text is None and "fixed (no text tower" in b.describe()
    cats = resolve(b, CategoryEdit(rename={"Abuse": "Mistreatment"}))
    assert cats.names[1] == "Mistreatment" and cats.keys[1] == "abuse"
    with pytest.raises(CategoryError, match=r"model\.categories: bundle .* has no text tower"):
        resolve(b, CategoryEdit(add=(AddedCategory("Smoke", ("smoke",)),)))


# --- edit resolution --------------------------------------------------------------------------------
FALL = AddedCategory("Person falling", ("a person falls down", "someone collapses on the floor"))

RESOLVE_CASES = [
    ("unchanged", CategoryEdit(), 14, {}),
    ("rename by key", CategoryEdit(rename={"roadAccidents": "Car crash"}), 14, {8: ("roadAccidents", "Car crash")}),
    ("rename by display name", CategoryEdit(rename={"Road accident": "Crash"}), 14, {8: ("roadAccidents", "Crash")}),
    ("rename normal", CategoryEdit(rename={"Normal": "Nothing"}), 14, {0: ("normal", "Nothing")}),
    ("drop", CategoryEdit(drop=("Arrest",)), 13, {2: ("arson", "Arson")}),
    ("add", CategoryEdit(add=(FALL,)), 15, {14: ("Person falling", "Person falling")}),
    ("all three", CategoryEdit(add=(FALL,), rename={"Fighting": "Crowd fight"}, drop=("arrest", "Abuse")), 13,
     {0: ("normal", "Normal"), 5: ("fighting", "Crowd fight"), 12: ("Person falling", "Person falling")}),
]


@pytest.mark.parametrize("label,edit,count,expect", RESOLVE_CASES, ids=[c[0] for c in RESOLVE_CASES])
def test_resolve_edits(tiny_bundle_dir: Path, label: str, edit: CategoryEdit, count: int,
                       expect: dict[int, tuple[str, str]]) -> None:
    b = load_bundle(tiny_bundle_dir)
    cats = resolve(b, edit)
    assert len(cats) == count == len(cats.names) == len(cats.prompts)
    assert cats.keys[0] == "normal"  # Normal stays first
    for i, (key, name) in expect.items():
        assert (cats.keys[i], cats.names[i]) == (key, name)
    kept = [k for k, a in zip(cats.keys, cats.added, strict=True) if not a]
    assert all(k in b.class_names for k in kept)  # original classes keep their bundle key
    assert [k for k in kept] == [k for k in b.class_names if k in kept]  # and their order
    for d in edit.drop:
        assert d.lower() not in [k.lower() for k in cats.keys]


ERROR_CASES = [
    (CategoryEdit(rename={"Nope": "X"}), r"model\.categories\.rename: no category named 'Nope'"),
    (CategoryEdit(drop=("Nope",)), r"model\.categories\.drop: no category named 'Nope'"),
    (CategoryEdit(drop=("Normal",)), r"model\.categories\.drop: 'Normal' is the normal class"),
    (CategoryEdit(add=(AddedCategory("Abuse", ("x",)),)), r"model\.categories\.add\[0\]: 'Abuse' already names"),
    (CategoryEdit(add=(AddedCategory("Smoke", ()),)), r"model\.categories\.add\[0\]: 'Smoke' needs at least one"),
    (CategoryEdit(rename={"Abuse": "Arson"}),
     r"model\.categories\.rename: 'Abuse' -> 'Arson' would share the name of another category \('Arson', key 'arson'\)"),
    (CategoryEdit(drop=tuple(c for c in ("abuse", "arrest", "arson", "assault", "burglary", "explosion",
                                          "fighting", "roadAccidents", "robbery", "shooting", "shoplifting",
                                          "stealing", "vandalism"))),
     r"model\.categories: at least one anomaly category must remain"),
    (CategoryEdit(drop=("Nope",), where=""), r"^--drop: no category named 'Nope'"),
]


@pytest.mark.parametrize("edit,message", ERROR_CASES)
def test_resolve_errors_name_the_key(tiny_bundle_dir: Path, edit: CategoryEdit, message: str) -> None:
    with pytest.raises(CategoryError, match=message):
        resolve(load_bundle(tiny_bundle_dir), edit)


def _add(name: str, *prompts: str) -> AddedCategory:
    return AddedCategory(name, prompts or ("something happens",))


# What a demanding user may try, and the one-line error naming the key that each must give.
EDGE_ERROR_CASES = [
    ("newline in an added name", CategoryEdit(add=(_add("Smoke\nalarm"),)),
     r"^model\.categories\.add\[0\]: the name 'Smoke\\nalarm' holds control or invisible characters \(U\+000A\)$"),
    ("tab in a new name", CategoryEdit(rename={"Abuse": "Mis\ttreatment"}),
     r"^model\.categories\.rename: the new name for 'Abuse' holds control or invisible characters \(U\+0009\)$"),
    ("zero-width space", CategoryEdit(add=(_add("Smo\u200bke"),)), r"add\[0\]: .* invisible characters \(U\+200B\)"),
    ("NUL", CategoryEdit(add=(_add("a", "b"), _add("x\x00y"))), r"^model\.categories\.add\[1\]: .*\(U\+0000\)$"),
    ("name too long", CategoryEdit(add=(_add("x" * 65),)), r"add\[0\]: the name 'x+' is 65 characters long \(at most 64\)"),
    ("blank added name", CategoryEdit(add=(_add("   "),)), r"^model\.categories\.add\[0\]: the name '   ' is empty$"),
    ("blank prompt", CategoryEdit(add=(_add("Smoke", "smoke", "  "),)), r"add\[0\]: 'Smoke' needs at least one prompt, none of them empty"),
    ("duplicate added names", CategoryEdit(add=(_add("Smoke"), _add("smoke"))),
     r"^model\.categories\.add\[1\]: 'smoke' already names a category$"),
    ("added name equal to a key", CategoryEdit(add=(_add("roadaccidents"),)), r"add\[0\]: 'roadaccidents' already names"),
    ("added name equal to a new name", CategoryEdit(rename={"Abuse": "Smoke"}, add=(_add("Smoke"),)),
     r"add\[0\]: 'Smoke' already names"),
    ("rename onto a display name", CategoryEdit(rename={"Fighting": "road accident"}),
     r"rename: 'Fighting' -> 'road accident' would share the name of another category \('Road accident', key 'roadAccidents'\)"),
    ("rename onto another key", CategoryEdit(rename={"Fighting": "ARSON"}), r"rename: 'Fighting' -> 'ARSON' would share"),
    ("swap two names", CategoryEdit(rename={"Abuse": "Arson", "Arson": "Abuse"}), r"rename: 'Abuse' -> 'Arson' would share"),
    ("rename one class twice", CategoryEdit(rename={"roadAccidents": "Crash", "Road accident": "Collision"}),
     r"^model\.categories\.rename: 'Road accident' and an earlier entry both rename 'Road accident' "
     r"\(key 'roadAccidents'\)$"),
    ("drop twice", CategoryEdit(drop=("Arrest", "arrest")), r"^model\.categories\.drop: 'arrest' is listed twice"),
    ("drop and rename", CategoryEdit(rename={"Arrest": "Detention"}, drop=("Arrest",)),
     r"^model\.categories\.drop: 'Arrest' is also renamed in model\.categories\.rename"),
    ("drop normal by key", CategoryEdit(drop=("normal",)), r"drop: 'normal' is the normal class"),
    ("drop by the new name", CategoryEdit(rename={"Arrest": "Detention"}, drop=("Detention",)),
     r"drop: no category named 'Detention'"),
    ("flag form", CategoryEdit(add=(_add("Smoke\n"), _add("x\ny")), where=""), r"^--add: the name 'x\\ny' holds control"),
]


@pytest.mark.parametrize("label,edit,message", EDGE_ERROR_CASES, ids=[c[0] for c in EDGE_ERROR_CASES])
def test_resolve_edge_cases_fail_with_the_key(tiny_bundle_dir: Path, label: str, edit: CategoryEdit,
                                              message: str) -> None:
    with pytest.raises(CategoryError, match=message):
        resolve(load_bundle(tiny_bundle_dir), edit)


# ... and what is fine, with the list it gives.
EDGE_OK_CASES = [
    ("unicode name", CategoryEdit(add=(_add("Sturz (Person) – 跌倒"),)), 14, ("Sturz (Person) – 跌倒", "Sturz (Person) – 跌倒")),
    ("spaces around a name are trimmed", CategoryEdit(add=(_add("  Smoke  "),)), 14, ("Smoke", "Smoke")),
    ("punctuation and digits", CategoryEdit(add=(_add("Gate 3: loitering > 5 min"),)), 14,
     ("Gate 3: loitering > 5 min", "Gate 3: loitering > 5 min")),
    ("64 characters", CategoryEdit(add=(_add("y" * 64),)), 14, ("y" * 64, "y" * 64)),
    ("rename ignoring case", CategoryEdit(rename={"ROADACCIDENTS": "Crash"}), 8, ("roadAccidents", "Crash")),
    ("rename a class to its own key", CategoryEdit(rename={"Road accident": "roadAccidents"}), 8,
     ("roadAccidents", "roadAccidents")),
    ("rename onto a dropped class's name", CategoryEdit(rename={"Fighting": "Arrest"}, drop=("Arrest",)), 6,
     ("fighting", "Arrest")),
    ("rename normal", CategoryEdit(rename={"normal": "All quiet"}), 0, ("normal", "All quiet")),
]


@pytest.mark.parametrize("label,edit,index,expect", EDGE_OK_CASES, ids=[c[0] for c in EDGE_OK_CASES])
def test_resolve_edge_cases_that_are_fine(tiny_bundle_dir: Path, label: str, edit: CategoryEdit, index: int,
                                          expect: tuple[str, str]) -> None:
    cats = resolve(load_bundle(tiny_bundle_dir), edit)
    assert (cats.keys[index], cats.names[index]) == expect
    assert len({n.lower() for n in cats.names}) == len(cats)


def test_an_added_prompt_longer_than_the_text_tower_reads_is_refused(tiny_bundle_dir: Path) -> None:
    b = load_bundle(tiny_bundle_dir)
    enc = TextEncoder(b, threads=1)
    limit = b.text.max_tokens

    def n_tokens(words: int) -> int:
        return len(enc.tokenizer.encode(" ".join(["smoke"] * words)).ids)

    words = 1
    while words < 4 * limit and n_tokens(words + 1) <= limit:
        words += 1
    fits, long = " ".join(["smoke"] * words), " ".join(["smoke"] * (words + 1))
    assert n_tokens(words) <= limit < n_tokens(words + 1)  # the tokenizer itself does not truncate
    with pytest.raises(CategoryError, match=rf"^model\.categories\.add: prompt 2 of 'Smoke' is \d+ tokens, more "
                                            rf"than the {limit} the text tower reads"):
        build(b, CategoryEdit(add=(AddedCategory("Smoke", ("smoke", long)),)), enc)
    with pytest.raises(CategoryError, match=r"^--add: prompt 1 of 'Smoke'"):
        build(b, CategoryEdit(add=(AddedCategory("Smoke", (long,)),), where=""), enc)
    assert build(b, CategoryEdit(add=(AddedCategory("Smoke", (fits,)),)), enc).names[-1] == "Smoke"


def test_added_class_is_a_prompt_ensemble_and_bundle_classes_keep_the_model_rule(tiny_bundle_dir: Path) -> None:
    b = load_bundle(tiny_bundle_dir)
    enc = TextEncoder(b, threads=1)
    vandalism = b.text.class_prompts[13]
    cats = build(b, CategoryEdit(add=(FALL, AddedCategory("Vandal", tuple(vandalism)))), enc)
    raw = enc.prompt_features(list(FALL.prompts)).astype(np.float64)
    expected = _norm(_norm(raw).mean(axis=0))
    assert cats.features is not None
    assert float(np.abs(cats.features[14] - expected).max()) <= 1e-6
    assert float(np.abs(cats.features[14] - _norm(raw.mean(axis=0))).max()) > 0  # not the plain mean
    np.testing.assert_allclose(cats.features[15], cats.features[13], atol=1e-6)  # same words, same features
    np.testing.assert_allclose(np.linalg.norm(cats.features, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("spec,ok", [("Smoke: smoke; a fire starts", ("Smoke", ("smoke", "a fire starts"))),
                                     ("Smoke:smoke", ("Smoke", ("smoke",))), ("Smoke", None), (": smoke", None),
                                     ("Smoke: ;", None)])
def test_parse_add(spec: str, ok: tuple[str, tuple[str, ...]] | None) -> None:
    from engine.errors import InputError

    if ok is None:
        with pytest.raises(InputError, match="expected 'Name: prompt; prompt'"):
            parse_add(spec)
    else:
        assert parse_add(spec) == AddedCategory(*ok)


# --- config -------------------------------------------------------------------------------------------
def _config(categories: str, bundle: str = "scratch/bundle1") -> str:
    return f"""\
cameras:
  - name: lobby
    url: rtsp://127.0.0.1:8554/cam
model:
  bundle: {json.dumps(bundle)}
  categories:
{categories}
sinks:
  - type: jsonl
    path: scratch/events.jsonl
"""


ISSUE_EXAMPLE = """\
    add:
      - name: Person falling
        prompts: ["a person falls down", "someone collapses on the floor"]
    rename: {Fighting: Crowd fight}
    drop: [Arrest]"""


def test_config_accepts_the_issue_example() -> None:
    cfg = parse_config(_config(ISSUE_EXAMPLE))
    edit = cfg.model.categories.to_edit()
    assert edit.add == (FALL,) and edit.rename == {"Fighting": "Crowd fight"} and edit.drop == ("Arrest",)


@pytest.mark.parametrize("block,where", [
    ("    add:\n      - name: Smoke\n        prompts: []", "model.categories.add[0].prompts"),
    ("    add:\n      - prompts: [smoke]", "model.categories.add[0].name"),
    ("    add:\n      - name: Smoke\n        prompts: [smoke]\n        colour: red", "model.categories.add[0].colour"),
    ("    remove: [Arrest]", "model.categories.remove"),
    ("    rename: {Abuse: ''}", "model.categories.rename.Abuse"),
    ("    add:\n      - name: \"Smoke\\nalarm\"\n        prompts: [smoke]", "model.categories.add[0].name"),
    ("    add:\n      - name: Smoke\n        prompts: [smoke, '  ']", "model.categories.add[0].prompts"),
    (f"    add:\n      - name: {'x' * 65}\n        prompts: [smoke]", "model.categories.add[0].name"),
    ("    rename: {Abuse: \"Mis\\ttreatment\"}", "model.categories.rename"),
])
def test_config_errors_name_the_key(block: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(block), "deploy.yaml")
    assert any(where in p for p in info.value.problems), info.value.problems
    assert len(info.value.problems) == 1, info.value.problems


def _run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_check_config_shows_the_resulting_class_list(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(_config(ISSUE_EXAMPLE, str(tiny_bundle_dir)))
    r = _run_cli("check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert "categories (14) [edited]:" in r.stdout
    assert "  6: Crowd fight (key fighting)" in r.stdout and "  13: Person falling (added)" in r.stdout
    assert "Arrest" not in r.stdout.split("categories (14)")[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(_config("    drop: [Riot]", str(tiny_bundle_dir)))
    r = _run_cli("check-config", str(bad))
    assert r.returncode == 2 and "OK" not in r.stdout
    assert "model.categories.drop: no category named 'Riot'" in r.stderr and "Traceback" not in r.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(_config(ISSUE_EXAMPLE, str(tmp_path / "nowhere")))
    r = _run_cli("check-config", str(missing))
    assert r.returncode == 0 and "categories: not shown (bundle not readable here" in r.stdout


# --- the categories command ---------------------------------------------------------------------------
def test_categories_command_prints_the_list_and_warns_on_near_duplicates(tiny_bundle_dir: Path) -> None:
    vandalism = load_bundle(tiny_bundle_dir).text.class_prompts[13][0]
    r = _run_cli("categories", str(tiny_bundle_dir), "--add", "Person falling: a person falls down; someone collapses",
                 "--add", f"Graffiti: {vandalism}", "--rename", "roadAccidents=Car crash", "--drop", "Arrest")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "15 categories" in out and "TINY RANDOM CLIP" in out
    assert "   0: Normal (key normal; 1 prompt)" in out
    assert "   7: Car crash (key roadAccidents; 1 prompt)" in out
    assert "  13: Person falling (added; 2 prompts)" in out and "  14: Graffiti (added; 1 prompt)" in out
    assert "Graffiti ~ Vandalism: 1.0000  WARNING: near-duplicate" in out
    assert "near-duplicate pair(s)" in out
    r = _run_cli("categories", str(tiny_bundle_dir), "--rename", "Nope=X")
    assert r.returncode == 2 and r.stderr.strip() == (
        "dsanet categories: --rename: no category named 'Nope' (categories: Normal, Abuse, Arrest, Arson, Assault, "
        "Burglary, Explosion, Fighting, Road accident, Robbery, Shooting, Shoplifting, Stealing, Vandalism)")
    r = _run_cli("categories", str(tiny_bundle_dir), "--add", "no colon here")
    assert r.returncode == 2 and "expected 'Name: prompt; prompt'" in r.stderr and "Traceback" not in r.stderr


def test_categories_path_does_not_import_torch(tiny_bundle_dir: Path) -> None:
    code = ("import sys\n"
            "from engine.bundle import load_bundle\n"
            "from engine.categories import CategoryEdit, AddedCategory, OpenHeadModel, build\n"
            f"b = load_bundle({str(tiny_bundle_dir)!r})\n"
            "cats = build(b, CategoryEdit(add=(AddedCategory('Smoke', ('smoke',)),)))\n"
            "OpenHeadModel(b, cats)\n"
            "import stream.commands.categories, stream.models\n"
            "print([m for m in ('torch', 'transformers') if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --- a running service ------------------------------------------------------------------------------------
def test_running_service_switches_categories_without_restarting_cameras(tmp_path: Path, clip_factory,
                                                                          tiny_bundle_dir: Path) -> None:
    from stream.config import load_config
    from stream.service import Service
    from stream.types import ScoreRecord
    from tests.test_service import read_events, write_config

    clip = clip_factory("a.mp4", width=160, height=96, fps=15, seconds=12.0)
    cfg = write_config(tmp_path, [{"name": "a", "url": f"file://{clip}", "realtime": True}], bundle=tiny_bundle_dir,
                       events="on_threshold: 0.0\n  off_threshold: 0.0\n  min_duration: 0.0\n  hold: 1.0\n"
                              "  cooldown: 0.0\n  update_interval: 0.0")
    svc = Service(load_config(cfg))
    records: list[ScoreRecord] = []
    lock = threading.Lock()
    changed = threading.Event()

    def listen(item: object) -> None:
        if isinstance(item, ScoreRecord):
            with lock:
                records.append(item)

    svc.add_listener(listen)
    keep = {"abuse"}
    drop = tuple(k for k in load_bundle(tiny_bundle_dir).class_names[1:] if k not in keep)
    edit = CategoryEdit(add=(FALL,), rename={"abuse": "Mistreatment"}, drop=drop)
    try:
        svc.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(records) < 3:
            time.sleep(0.05)
        assert len(records) >= 3, "no scores before the change"
        reader_before = svc.cameras["a"].reader
        cats = svc.set_categories(edit)
        changed.set()
        assert cats.names == ("Normal", "Mistreatment", "Person falling")
        with lock:
            n_before = len(records)
        while time.monotonic() < deadline and not any(r.category in ("Mistreatment", "Person falling")
                                                      for r in records[n_before:]):
            time.sleep(0.05)
        assert svc.cameras["a"].reader is reader_before  # the camera was not restarted
    finally:
        svc.request_stop("test over")
        svc.wait(30)
        svc.shutdown()
    with lock:
        after = records[n_before:]
    new_at = next(i for i, r in enumerate(after) if r.category in ("Mistreatment", "Person falling"))
    assert after[new_at:] and all(r.category in ("Mistreatment", "Person falling") for r in after[new_at:])
    assert all(r.category in load_bundle(tiny_bundle_dir).display_names for r in records[:n_before])
    events = read_events(tmp_path / "events.jsonl")
    assert events[0]["type"] == "start" and events[0]["category_key"] in load_bundle(tiny_bundle_dir).class_names
    last = events[-1]
    assert last["type"] == "end" and last["id"] == events[0]["id"]  # the open event survived the change
    assert (last["category"], last["category_key"]) in (("Mistreatment", "abuse"),
                                                        ("Person falling", "Person falling"))


# --- the event machine across a change ----------------------------------------------------------------
def _ws(i: int, probs: tuple[float, ...], score: float = 0.9) -> object:
    from stream.types import WindowScore

    return WindowScore(camera="c", index=i, start_time=100.0 + i, end_time=101.0 + i, score=score,
                       class_probs=probs, newest_index=i + 2, newest_end_time=103.0 + i)


@pytest.mark.parametrize("keys,names,probs_after,expect", [
    # the open event's category is dropped: the next update names the best remaining one
    (["normal", "smoke", "riot"], ["Normal", "Smoke", "Riot"], (0.1, 0.2, 0.7), ("Riot", "riot")),
    # kept by key and renamed: its running sum carries over and the update shows the new name
    (["normal", "fight", "smoke"], ["Normal", "Crowd fight", "Smoke"], (0.1, 0.5, 0.4), ("Crowd fight", "fight")),
    # kept unchanged: sums carry over, so the old evidence still outweighs one new score
    (["normal", "fight", "smoke"], ["Normal", "Fight", "Smoke"], (0.1, 0.3, 0.6), ("Fight", "fight")),
])
def test_event_machine_switches_class_lists_by_key(keys, names, probs_after, expect) -> None:
    from stream.events import EventMachine
    from stream.events.settings import EventSettings

    m = EventMachine("c", EventSettings(on_threshold=0.5, off_threshold=0.3, min_duration=0.0, hold=5.0,
                                        cooldown=0.0, update_interval=0.0),
                     ["normal", "fight", "theft", "riot"], ["Normal", "Fight", "Theft", "Riot"], {"name": "t"})
    events = []
    for i in range(3):
        events += m.push(_ws(i, (0.1, 0.8, 0.05, 0.05)))
    events += m.push(_ws(3, (0.1, 0.1, 0.8, 0.0)))  # theft now, fight still ahead on the sums
    open_id = events[0].id
    m.set_classes(keys, names)
    m.set_classes(keys, names)  # the service re-applies a list only when it differs; a repeat is harmless
    out = m.push(_ws(4, probs_after))
    end = m.close("shutdown")
    assert end is not None
    out.append(end)
    assert all(e.id == open_id for e in out)
    assert (out[-1].category, out[-1].category_key) == expect
    assert out[-1].type == "end" and len(m.class_names) == 3


def test_config_categories_apply_when_the_models_load(tiny_bundle_dir: Path) -> None:
    from stream.models import Models

    text = _config(ISSUE_EXAMPLE, str(tiny_bundle_dir)).replace("  categories:", "  runtime: onnxruntime\n  categories:")
    models = Models.load(parse_config(text).model)
    keys, names = models.current_classes()
    assert len(keys) == 14 and keys[0] == "normal" and "arrest" not in keys
    assert keys[-1] == names[-1] == "Person falling" and names[keys.index("fighting")] == "Crowd fight"
    feats = np.random.default_rng(0).standard_normal((2, 8, 512), dtype=np.float32)
    scores, probs = models.score(feats, np.array([8, 5]))
    assert probs.shape == (2, 8, 14) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert models.scored_classes() == (keys, names)
    # a names-only edit keeps the configured (baked) head
    renamed = Models.load(parse_config(_config("    rename: {Abuse: Mistreatment}", str(tiny_bundle_dir))
                                       .replace("  categories:", "  runtime: onnxruntime\n  categories:")).model)
    assert renamed.open_head is None and renamed.current_classes()[1][1] == "Mistreatment"
    _, p = renamed.score(feats, np.array([8, 5]))
    assert p.shape == (2, 8, 14) and renamed.category(p[0, 0])[0] in renamed.current_classes()[1]


def test_a_reload_applies_a_categories_change_live_and_only_that() -> None:
    """SIGHUP / `dsanet reload` / POST /api/v1/reload: a change of model.categories alone calls
    set_categories (no restart); the same change beside another model change still needs a restart."""
    from stream.reload import apply_plan, plan_reload
    from tests.fixtures.control_fake import FakeControl

    old = parse_config(_config("    rename: {Abuse: Mistreatment}"))
    new = parse_config(_config(ISSUE_EXAMPLE))
    plan = plan_reload(old, new)
    assert plan.categories_changed and not plan.empty and "model" not in plan.restart_needed
    control = FakeControl([])
    rep = apply_plan(plan, control)
    assert not rep.errors and rep.applied == ["model.categories: Normal, Person falling"]
    (call,) = control.calls
    assert call[0] == "categories" and call[1].add == (FALL,) and call[1].drop == ("Arrest",)
    # removing the section goes back to the bundle's own list (an empty edit)
    back = plan_reload(new, parse_config(_config("    rename: {}").replace("  categories:\n    rename: {}\n", "")))
    assert back.categories_changed and back.categories is None
    apply_plan(back, control)
    assert control.calls[-1][1].empty
    # another model change beside it: a restart, and set_categories is not called
    other = parse_config(_config(ISSUE_EXAMPLE).replace("model:\n", "model:\n  runtime: onnxruntime\n"))
    both = plan_reload(old, other)
    assert not both.categories_changed and "model" in both.restart_needed


# --- dsanet eval --novel-classes ------------------------------------------------------------------------
def _gt(videos: list[tuple[list[str], list[int]]]):
    """GroundTruth of videos given as (labels, per-snippet 0/1 truth); 16 frames a snippet."""
    from export.gt import GroundTruth

    frame_gt = np.concatenate([np.repeat(np.asarray(t, dtype=np.float64), 16) for _, t in videos])
    return GroundTruth(frame_gt=frame_gt, segments=[[(0, 1)] * len(lab) for lab, _ in videos],
                       labels=[lab for lab, _ in videos], lengths=[len(t) for _, t in videos])


def test_base_novel_split_scores_each_subset_with_the_normal_videos() -> None:
    """Novel videos scored badly, base videos well: the split shows it, each subset holding the normal
    videos, named by class word or raw code; unknown and normal names are refused."""
    from engine.errors import DataError
    from export.evaluate import base_novel_split
    from export.metrics import frame_auc_ap

    videos = [(["A"], [0, 0, 0]), (["A"], [0, 0]),                  # normal
              (["Fighting"], [0, 1, 1]), (["Arson"], [1, 1, 0]),   # base
              (["Explosion"], [0, 1, 1, 0])]                         # novel
    truth = [np.asarray(t, dtype=np.float64) for _, t in videos]
    scores = [0.1 + 0.1 * np.arange(3), np.asarray([0.2, 0.1]),
              0.2 + 0.7 * truth[2], 0.2 + 0.7 * truth[3],
              0.6 - 0.5 * truth[4]]                                   # the novel event scores low
    gt = _gt(videos)
    out = base_novel_split(scores, gt, ["explosion"], "ucf")
    assert out["novel_classes"] == ["Explosion"]
    assert out["base"]["n_videos"] == 4 and out["base"]["n_anomalous_videos"] == 2
    assert out["novel"]["n_videos"] == 3 and out["novel"]["n_anomalous_videos"] == 1
    want_base = frame_auc_ap(scores[:4], np.concatenate([np.repeat(t, 16) for t in truth[:4]]))
    assert out["base"]["auc"] == pytest.approx(want_base[0]) and out["base"]["auc"] > 0.9
    assert out["novel"]["auc"] < 0.5
    with pytest.raises(DataError, match="not a ucf class"):
        base_novel_split(scores, gt, ["Loitering"], "ucf")
    with pytest.raises(DataError, match="normal class"):
        base_novel_split(scores, gt, ["Normal"], "ucf")


# --- top-1 class accuracy per subset (dsanet eval) -------------------------------------------------------
UCF_COL = {name: i for i, name in enumerate(["Normal", "Abuse", "Arrest", "Arson", "Assault", "Burglary", "Explosion",
                                             "Fighting", "RoadAccidents", "Robbery", "Shooting", "Shoplifting",
                                             "Stealing", "Vandalism"])}


def _probs(t: int, cells: dict[tuple[int, str], float]) -> np.ndarray:
    """[t, 14] UCF class probabilities: 0.01 everywhere but the (snippet, class) cells given."""
    p = np.full((t, len(UCF_COL)), 0.01)
    for (row, name), value in cells.items():
        p[row, UCF_COL[name]] = value
    return p


def _top1_case():
    """Six anomalous videos whose answers are worked out by hand in the test below, plus a normal one."""
    videos = [(["A"], [0, 0, 0]),                                   # normal: never counted
              (["Fighting"], [0, 1, 1, 0]),                         # base, right by both rules
              (["Arson"], [1, 1, 0]),                               # base, a novel class outside the span
              (["Explosion"], [1, 1, 1, 1] + [0] * 16),             # novel, T=20: top-2 pooling matters
              (["Shooting"], [0, 1]),                               # novel, taken for a base class
              (["Fighting", "Explosion"], [1, 1]),                  # two classes: left out
              (["Fighting"], [0, 0])]                               # no annotated snippet: video rule only
    probs = [_probs(3, {(0, "Fighting"): 0.9, (1, "Fighting"): 0.9}),
             _probs(4, {(1, "Fighting"): 0.8, (2, "Fighting"): 0.7}),
             _probs(3, {(0, "Arson"): 0.5, (1, "Arson"): 0.5, (2, "Explosion"): 0.9}),
             _probs(20, {(1, "Explosion"): 0.9, (10, "Shooting"): 0.5, (11, "Shooting"): 0.5}),
             _probs(2, {(1, "Robbery"): 0.7, (1, "Shooting"): 0.6}),
             _probs(2, {(0, "Fighting"): 0.9}),
             _probs(2, {(0, "Fighting"): 0.8})]
    return videos, probs


def test_video_class_scores_pool_the_top_floor_t_over_16_plus_1_snippets() -> None:
    from export.evaluate import video_class_scores

    for t, k in [(1, 1), (15, 1), (16, 2), (20, 2), (33, 3)]:
        p = np.zeros((t, 3))
        p[:, 1] = np.arange(t, dtype=np.float64)  # top-k mean of 0..t-1 is t - (k + 1) / 2
        p[0, 2] = 6.0
        got = video_class_scores(p)
        assert got[1] == pytest.approx(t - (k + 1) / 2), (t, k)
        assert got[2] == pytest.approx(6.0 / k), (t, k)


def test_top1_accuracy_per_subset_matches_the_hand_count() -> None:
    """By hand: the video rule pools the top floor(T/16)+1 snippets per class over the whole video, the span
    rule averages the annotated snippets; only anomaly classes compete.

    Fighting (base): both right. Arson (base): video rule -> Explosion (0.9 outside the span beats 0.5),
    span -> Arson. Explosion (novel, T=20, k=2): video -> Shooting ((0.5+0.5)/2 > (0.9+0.01)/2; with k=1
    it would be Explosion), span -> Explosion. Shooting (novel): both -> Robbery, a base class. The
    two-class video is skipped; the last Fighting video has no annotated snippet: video rule right, no span.
    """
    from export.evaluate import top1_accuracy

    videos, probs = _top1_case()
    out = top1_accuracy(probs, _gt(videos), "ucf", ["Explosion", "shooting"])
    assert out["n_multi_class_skipped"] == 1
    assert out["all"] == {"n_videos": 5, "video": pytest.approx(2 / 5), "span": pytest.approx(3 / 4),
                          "n_span_videos": 4}
    assert out["base"] == {"n_videos": 3, "video": pytest.approx(2 / 3), "span": pytest.approx(1.0),
                           "n_span_videos": 2, "video_into_novel": pytest.approx(1 / 3)}
    assert out["novel"] == {"n_videos": 2, "video": pytest.approx(0.0), "span": pytest.approx(0.5),
                            "n_span_videos": 2, "video_into_base": pytest.approx(1 / 2)}
    assert out["confusion"] == {"Arson": {"Explosion": 1}, "Explosion": {"Shooting": 1},
                                "Fighting": {"Fighting": 2}, "Shooting": {"Robbery": 1}}
    assert out["per_class"]["Fighting"] == {"n_videos": 2, "video": 1.0, "span": 1.0, "n_span_videos": 1}
    assert set(out["rules"]) == {"video", "span"}
    assert "base" not in top1_accuracy(probs, _gt(videos), "ucf")  # no split without novel classes


def test_top1_in_evaluate_outputs_and_the_table() -> None:
    from export.evaluate import evaluate_outputs, format_table

    videos, probs = _top1_case()
    scores = [1 - p[:, 0] for p in probs]
    res = evaluate_outputs(scores, probs, _gt(videos), "ucf", ["Explosion", "Shooting"])
    assert res["top1"]["novel"]["video"] == 0.0 and res["top1"]["base"]["n_videos"] == 3
    table = format_table(res)
    assert "top-1 all: video  40.00%  span  75.00%  (5 anomalous videos; 1 with several classes not counted)" in table
    assert "top-1 base: video  66.67%  span 100.00%  (3 anomalous videos; 33.33% named a novel class)" in table
    assert "top-1 novel: video   0.00%  span  50.00%  (2 anomalous videos; 50.00% named a base class)" in table


def test_top1_on_xd_codes_and_bad_shapes() -> None:
    """XD-Violence: raw codes in the ground truth, class words or codes for --novel-classes; a
    multi-label video (Riot and Fighting) is left out; mismatched shapes are refused."""
    from engine.errors import DataError
    from export.evaluate import top1_accuracy

    videos = [(["B4"], [1, 1]), (["B1"], [1, 0]), (["B4", "B1"], [1, 1])]
    probs = [np.tile([0.1, 0.1, 0.1, 0.6, 0.05, 0.03, 0.02], (2, 1)),   # riot -> riot
             np.tile([0.1, 0.1, 0.1, 0.6, 0.05, 0.03, 0.02], (2, 1)),   # fighting -> riot (a novel class)
             np.tile([0.1, 0.6, 0.1, 0.1, 0.05, 0.03, 0.02], (2, 1))]
    out = top1_accuracy(probs, _gt(videos), "xd", ["riot"])
    assert out["n_multi_class_skipped"] == 1
    assert out["novel"]["video"] == 1.0 and out["base"]["video"] == 0.0 and out["base"]["video_into_novel"] == 1.0
    assert out["confusion"] == {"B1": {"B4": 1}, "B4": {"B4": 1}}
    with pytest.raises(DataError, match=r"top-1: video 0 has class probabilities \[2, 5\]"):
        top1_accuracy([p[:, :5] for p in probs], _gt(videos), "xd")
    with pytest.raises(DataError, match="2 class-probability arrays for 3"):
        top1_accuracy(probs[:2], _gt(videos), "xd")
