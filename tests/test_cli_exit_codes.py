"""One exit-status rule for every ``dsanet`` command: 2 for bad input or config, 1 for a runtime failure.

Each row runs a real command in-process through ``stream.cli.main`` on real (missing, malformed or
unwritable) files, and checks the status and that the one-line message names what is at fault.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import EXIT_BAD_INPUT, EXIT_FAILURE, build_parser, exit_code, main


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code or 0)


def _bad_yaml(tmp: Path) -> Path:
    p = tmp / "bad.yaml"
    p.write_text("cameras:\n  - name: a\n    url: rtsp://h/x\n    fps_typo: 3\nmodel:\n  bundle: b\n")
    return p


def _not_a_dir(tmp: Path) -> Path:
    p = tmp / "plain-file"
    p.write_text("x")
    return p / "sub"


# (argv builder, expected status, text the message must contain)
CASES = {
    "check-config, missing file": (lambda t: ["check-config", str(t / "nope.yaml")], EXIT_BAD_INPUT, "nope.yaml"),
    "check-config, unknown key": (lambda t: ["check-config", str(_bad_yaml(t))], EXIT_BAD_INPUT, "fps_typo"),
    "run, missing config": (lambda t: ["run", "-c", str(t / "gone.yaml")], EXIT_BAD_INPUT, "gone.yaml"),
    "run, bad option value": (lambda t: ["run", "-c", str(_bad_yaml(t)), "--duration", "-1"], EXIT_BAD_INPUT,
                              "--duration"),
    "score, missing video": (lambda t: ["score", str(t / "v.mp4"), "-b", str(t)], EXIT_BAD_INPUT, "v.mp4"),
    "bundle-info, missing bundle": (lambda t: ["bundle-info", str(t / "nob")], EXIT_BAD_INPUT, "nob"),
    "export, missing checkpoint": (lambda t: ["export", "--checkpoint", str(t / "c.safetensors"), "--clip", "tiny",
                                              "--out", str(t / "o")], EXIT_BAD_INPUT, "c.safetensors"),
    "train, missing preset": (lambda t: ["train", "-c", str(t / "p.yaml"), "--data-root", str(t), "--clip", "tiny",
                                         "--out", str(t / "r")], EXIT_BAD_INPUT, "p.yaml"),
    "extract-features, missing video": (lambda t: ["extract-features", str(t / "x.mp4"), "--clip", "tiny",
                                                   "--out", str(t / "f")], EXIT_BAD_INPUT, "x.mp4"),
    "argparse, unknown option": (lambda t: ["bundle-info", "--no-such-option", "b"], EXIT_BAD_INPUT,
                                 "unrecognized arguments"),
    "synth-features, unwritable output (runtime failure)": (
        lambda t: ["synth-features", "--out", str(_not_a_dir(t)), "--videos", "4"], EXIT_FAILURE, "internal error"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_maps_errors_to_the_same_exit_status(case, tmp_path, capsys):
    build, expected, needle = CASES[case]
    rc = _run(build(tmp_path))
    err = capsys.readouterr().err
    assert rc == expected, err
    assert needle in err
    assert "Traceback" not in err


def test_runtime_failures_exit_1_and_other_user_errors_exit_2():
    from engine.errors import BundleError, DsanetError, RuntimeFailure
    from export.parity import ParityError
    from stream.config import ConfigError

    assert exit_code(ParityError("head differs", {"head": {"passed": False}})) == EXIT_FAILURE
    assert exit_code(RuntimeFailure("training diverged")) == EXIT_FAILURE
    assert exit_code(ValueError("a bug")) == EXIT_FAILURE
    for exc in (DsanetError("x"), BundleError("x"), ConfigError("f.yaml", ["k: bad"])):
        assert exit_code(exc) == EXIT_BAD_INPUT


def test_help_documents_the_exit_status():
    text = build_parser().format_help()
    assert "exit status (every command)" in text and "bad input or config" in text and "runtime failure" in text


def test_run_without_config_resolves_the_default_and_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    """``dsanet run`` with no -c runs the default config (the demo); before ``prepare-demo`` it exits 2."""
    from engine.demo_paths import DEMO_CONFIG, resolve_run_config

    monkeypatch.setenv("DSANET_DEMO_DIR", str(tmp_path / "empty"))
    assert _run(["run"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "dsanet prepare-demo" in err and str(tmp_path / "empty") in err
    other = tmp_path / "site.yaml"
    assert resolve_run_config(str(other)) == (other, None)  # any other file runs as given, no banner
    assert DEMO_CONFIG.is_file()
