"""The type-check ratchet (.ci/typecheck.py): counts per module, and a count that grows fails."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / ".ci" / "typecheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ratchet_counts_errors_per_module_and_fails_only_when_one_grows() -> None:
    tc = load()
    out = ("stream/a.py:3: error: Incompatible types  [assignment]\n"
           "stream/a.py:3: note: see here\n"
           "stream/a.py:9: error: Missing return  [return]\n"
           "engine/b.py:1: error: x  [misc]\n"
           "Found 3 errors in 2 files (checked 9 source files)\n")
    counts = tc.count_errors(out)
    assert counts == {"engine/b.py": 1, "stream/a.py": 2}
    worse, better = tc.compare(counts, {"stream/a.py": 2, "engine/b.py": 3})
    assert worse == [] and better == ["engine/b.py: 1 error(s), baseline 3"]
    worse, _ = tc.compare(counts, {"stream/a.py": 1, "engine/b.py": 1})
    assert worse == ["stream/a.py: 2 error(s), baseline allows 1"]
    worse, _ = tc.compare({"stream/new.py": 1}, {})  # a module not in the baseline is allowed none
    assert worse == ["stream/new.py: 1 error(s), baseline allows 0"]


def test_baseline_covers_only_modules_in_the_checked_scope() -> None:
    baseline = json.loads((ROOT / ".ci" / "mypy-baseline.json").read_text())
    assert all(p.startswith(("stream/", "engine/")) and (ROOT / p).is_file() for p in baseline)
    assert all(isinstance(n, int) and n > 0 for n in baseline.values())
