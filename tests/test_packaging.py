"""Packaging rules: torch-free live side, dependency direction, the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_importing_stream_and_engine_does_not_import_torch() -> None:
    code = ("import sys, importlib, pkgutil\n"
            "skip = ('engine.model', 'engine.runtimes.torch', 'engine.runtimes.tensorrt')\n"
            "def walk(name):\n"
            "    mod = importlib.import_module(name)\n"
            "    for info in pkgutil.iter_modules(getattr(mod, '__path__', [])):\n"
            "        full = name + '.' + info.name\n"
            "        if not full.startswith(skip):\n"
            "            walk(full)\n"
            "walk('stream'); walk('engine')\n"
            "bad = [m for m in ('torch', 'transformers', 'export') if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_dependency_direction_stream_to_engine_never_to_export() -> None:
    for pkg, forbidden in (("stream", {"export"}), ("engine", {"export", "stream"})):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = _imports(path) & forbidden
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_cli_help_lists_commands() -> None:
    res = subprocess.run([sys.executable, "-m", "stream.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "check-config" in res.stdout
