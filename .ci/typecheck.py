#!/usr/bin/env python3
"""Type-check ratchet: run mypy (scope and options in pyproject.toml [tool.mypy]) and fail when any module
has more errors than .ci/mypy-baseline.json allows. The baseline may only shrink: a module whose count
went down is reported so the baseline can be lowered (``--update`` rewrites it, refusing to raise a count),
and a module not in the baseline is allowed zero errors.

    .venv/bin/python .ci/typecheck.py            # CI: exit 1 when a count grew
    .venv/bin/python .ci/typecheck.py --update   # after fixing errors: lower the baseline
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / ".ci" / "mypy-baseline.json"
_ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):\d+: error: ")


def count_errors(output: str) -> dict[str, int]:
    """mypy output -> errors per file (notes and the summary line do not count)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in output.splitlines():
        m = _ERROR.match(line)
        if m:
            counts[m["path"]] += 1
    return dict(sorted(counts.items()))


def compare(counts: dict[str, int], baseline: dict[str, int]) -> tuple[list[str], list[str]]:
    """(modules over their allowance, modules under it) as readable lines."""
    worse = [f"{p}: {n} error(s), baseline allows {baseline.get(p, 0)}" for p, n in counts.items()
             if n > baseline.get(p, 0)]
    better = [f"{p}: {counts.get(p, 0)} error(s), baseline {b}" for p, b in baseline.items() if counts.get(p, 0) < b]
    return worse, better


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="lower the baseline to the current counts")
    args = ap.parse_args(argv)
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    summary = re.search(r"^(Success: no issues found in \d+ source files?|Found \d+ errors? in \d+ files?)", proc.stdout, re.M)
    if proc.returncode not in (0, 1) or summary is None:  # 2 or no summary: mypy itself did not run
        sys.stdout.write(proc.stdout + proc.stderr)
        print("typecheck: mypy did not run", file=sys.stderr)
        return 2
    counts = count_errors(proc.stdout)
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    worse, better = compare(counts, baseline)
    if args.update:
        if worse and BASELINE.exists():  # the first run records where we start
            print("typecheck: refusing to raise the baseline:\n  " + "\n  ".join(worse), file=sys.stderr)
            return 1
        BASELINE.write_text(json.dumps({p: n for p, n in counts.items() if n}, indent=2, sort_keys=True) + "\n")
        print(f"typecheck: baseline now {sum(counts.values())} error(s) in {len(counts)} module(s)")
        return 0
    if worse:
        sys.stdout.write(proc.stdout)
        print("typecheck: more mypy errors than the baseline allows:\n  " + "\n  ".join(worse), file=sys.stderr)
        return 1
    for line in better:
        print(f"typecheck: fewer errors than the baseline, lower it with --update: {line}")
    print(f"typecheck: ok, {sum(counts.values())} error(s) within the baseline of {sum(baseline.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
