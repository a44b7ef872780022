"""``--clip tiny`` builds the cached tiny CLIP once, atomically: a folder is complete or absent, so several
processes resolving it at once (parallel test workers, two ``dsanet`` commands) never load a half-written one."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.clip import TINY_VERSION, load_vision_model, resolve_clip_dir


def test_tiny_clip_is_built_once_into_the_cache_and_then_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "tiny-clip"
    first = resolve_clip_dir("tiny", cache_dir=cache)
    assert first == cache and f"version {TINY_VERSION}" in (cache / "TINY_RANDOM_CLIP").read_text()
    weights = next(cache.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert resolve_clip_dir("tiny", cache_dir=cache) == cache and weights.stat().st_mtime_ns == stamp
    assert [p.name for p in cache.parent.iterdir()] == ["tiny-clip"]  # no temporary folder left beside it


def test_a_stale_tiny_clip_is_replaced_whole(tmp_path: Path) -> None:
    cache = tmp_path / "tiny-clip"
    cache.mkdir()
    (cache / "config.json").write_text("{}")
    (cache / "TINY_RANDOM_CLIP").write_text("version 0\n")
    (cache / "left-over").write_text("from the old recipe")
    resolve_clip_dir("tiny", cache_dir=cache)
    assert f"version {TINY_VERSION}" in (cache / "TINY_RANDOM_CLIP").read_text()
    assert not (cache / "left-over").exists()  # the old folder went as a whole, not file by file
    assert load_vision_model(cache) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-clip"]


def test_concurrent_resolves_all_get_a_complete_folder(tmp_path: Path) -> None:
    cache = tmp_path / "tiny-clip"
    got: list[Path] = []
    errors: list[Exception] = []

    def resolve() -> None:
        try:
            folder = resolve_clip_dir("tiny", cache_dir=cache)
            load_vision_model(folder)  # loads: never a half-written folder
            got.append(folder)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [cache] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-clip"]
