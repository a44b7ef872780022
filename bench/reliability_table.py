"""Render the figures the reliability tests measured as the tables of docs/reliability.md.

The tests write what they measured when ``DSANET_RESULTS_DIR`` is set (``tests/fixtures/scenario.py``):
``chaos.jsonl`` (tests/test_chaos.py), ``netfaults.jsonl`` (tests/test_netfaults.py), ``redact_fuzz.json``
(tests/test_redact.py) and ``password_hunt.json`` (tests/test_security.py). This script turns them into
Markdown, so the document quotes the tests, not a separate run::

    DSANET_RESULTS_DIR=results .venv/bin/python -m pytest tests/test_chaos.py tests/test_netfaults.py \\
        tests/test_redact.py tests/test_security.py
    .venv/bin/python bench/reliability_table.py results --update docs/reliability.md

``--update`` replaces the text between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->``
markers; without it the tables are printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["scenario"]] = row  # the latest run of a scenario wins
    return list(rows.values())


def _sinks(row: dict[str, Any]) -> str:
    parts = []
    for sink, r in (row.get("sinks") or {}).items():
        extra = f", {r['duplicates']} dup" if r.get("duplicates") else ""
        spooled = f", {r['still_spooled']} still spooled" if r.get("still_spooled") else ""
        parts.append(f"{sink}: {r['delivered']}/{r['expected']}{extra}{spooled}, lost {r['lost']}")
    return "; ".join(parts) or "-"


def _ratio(row: dict[str, Any]) -> str:
    ratios = row.get("healthy_rate_ratio") or row.get("scoring_rate_ratio")
    if not ratios:
        return "n/a"
    kind = "healthy" if "healthy_rate_ratio" in row else "scoring (same cameras)"
    return f"{kind}: " + "; ".join(f"{cam} frames {r['frames']:.2f}x, scores {r['scores']:.2f}x"
                                   for cam, r in ratios.items())


def chaos_table(rows: list[dict[str, Any]]) -> str:
    out = ["| scenario | delivered / expected per sink (after de-duplication on (id, seq)) | rate during fault / before |",
           "|---|---|---|"]
    for row in rows:
        out.append(f"| {row['scenario']} | {_sinks(row)} | {_ratio(row)} |")
    return "\n".join(out)


NET_COLS = ("transport", "fault_s", "frames_sent_estimate", "frames_decoded", "frames_lost", "decode_errors",
            "reconnects", "scores_during_fault")


def netfaults_table(rows: list[dict[str, Any]]) -> str:
    out = ["| fault | " + " | ".join(NET_COLS) + " | injected | events delivered / expected |",
           "|---|" + "---:|" * len(NET_COLS) + "---|---|"]
    for row in rows:
        injected = ", ".join(f"{k} {row[k]}" for k in ("packets_dropped", "packets_delayed", "packets_reordered",
                                                       "qdisc_drops") if k in row)
        ev = row.get("events", {})
        out.append(f"| {row['scenario']} | " + " | ".join(str(row.get(c, "")) for c in NET_COLS)
                   + f" | {injected} | {ev.get('delivered')}/{ev.get('expected')} (lost {ev.get('lost')}) |")
    return "\n".join(out)


def fuzz_text(results: Path) -> str:
    lines = []
    f = results / "redact_fuzz.json"
    if f.exists():
        d = json.loads(f.read_text())
        lines.append(f"- `tests/test_redact.py` property tests: {d.get('registered', 0)} generated passwords "
                     f"masked once registered (raw and URL-encoded forms), {d.get('pattern_only', 0)} masked by "
                     f"the URL pattern alone in encoded form, {d.get('pattern_unencoded', 0)} unencoded "
                     "passwords without `/?#` masked whole by the pattern alone; none leaked.")
    h = results / "password_hunt.json"
    if h.exists():
        d = json.loads(h.read_text())
        lines.append(f"- `tests/test_security.py` real-run hunt: {d.get('runs', 0)} runs against an RTSP server "
                     f"requiring the password, {d.get('outputs_searched', 0)} outputs searched, 0 hits.")
    return "\n".join(lines) or "- (no figures recorded)"


def soak_text(results: Path) -> str:
    f = results / "soak.json"
    if not f.exists():
        return "(not measured yet)"
    d = json.loads(f.read_text())
    s = d["summary"]
    out = [f"`bench/soak.py --cameras {d['cameras']} --minutes {d['minutes']:g}` ({d['source']} cameras; load "
           f"average {d['load_1m']:.1f} at the end): "
           + ("all limits held." if not d["broken"] else "broke " + "; ".join(d["broken"]) + "."), "",
           "| metric | start | after warm-up | end | max |", "|---|---:|---:|---:|---:|"]
    for key in ("rss_mb", "threads", "native_threads", "fds", "encoder_queue", "head_queue", "lag_max_s", "dropped"):
        if key in s:
            v = s[key]
            out.append(f"| {key} | {v['start']} | {v['warm']} | {v['end']} | {v['max']} |")
    out += ["", "After warm-up: " + ", ".join(f"{k} {v}" for k, v in d["figures"].items()) + "."]
    return "\n".join(out)


def render(results: Path) -> dict[str, str]:
    parts = {"chaos": chaos_table(_rows(results / "chaos.jsonl")),
             "netfaults": netfaults_table(_rows(results / "netfaults.jsonl")),
             "redaction": fuzz_text(results)}
    if (results / "soak.json").exists():
        parts["soak"] = soak_text(results)
    return parts


def update(doc: Path, parts: dict[str, str]) -> None:
    text = doc.read_text()
    for name, body in parts.items():
        pat = re.compile(rf"(<!-- BEGIN generated:{name} -->\n).*?(\n<!-- END generated:{name} -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"{doc}: no generated:{name} markers")
        text = pat.sub(lambda m, b=body: m[1] + b + m[2], text)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the DSANET_RESULTS_DIR of a test run")
    ap.add_argument("--update", type=Path, help="rewrite the generated sections of this Markdown file")
    args = ap.parse_args(argv)
    parts = render(args.results)
    if args.update:
        update(args.update, parts)
    else:
        for name, body in parts.items():
            print(f"## {name}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
