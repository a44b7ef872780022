"""Where the embedded demo lives: the one place that names its folder, its files and the default config.

``dsanet run`` without ``-c`` runs ``configs/demo.yaml``, whose camera, bundle, event log and spool
sit under ``${DSANET_DEMO_DIR}`` (default ``.cache/demo`` in the repository); ``dsanet prepare-demo``
(``export.demo``) builds that folder. Both sides read the names from here, so they cannot disagree.
This sits in ``engine`` because it is the floor that ``stream`` and ``export`` share (``stream`` never
imports ``export``); it holds paths only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DsanetError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR_ENV = "DSANET_DEMO_DIR"
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"  # the default deployment of `dsanet run`
DEMO_DIR = REPO_ROOT / ".cache" / "demo"  # the demo folder unless $DSANET_DEMO_DIR says otherwise
TRAIN_PRESET_DIR = REPO_ROOT / "configs" / "train"

DEMO_BANNER = """\
==============================================================================================
 dsanet demo: a SYNTHETIC model (tiny random CLIP + a head trained on synthetic clips) watches
 a synthetic camera clip with calm stretches and three abnormal events, looped in real time.
 Its scores and categories only show the pipeline working; they mean nothing on real video.
 For real cameras: copy configs/example.yaml, set your RTSP URLs, and point model.bundle at a
 bundle made by `dsanet export` from a checkpoint trained with real CLIP ViT-B/16 weights
 (see docs/reproduce.md). Metrics: http://127.0.0.1:9108/metrics   Stop: Ctrl-C
=============================================================================================="""


@dataclass(frozen=True)
class DemoLayout:
    """The files of one demo folder (what ``prepare-demo`` writes and ``configs/demo.yaml`` reads)."""

    root: Path

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def camera(self) -> Path:
        return self.root / "camera.mp4"

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.json"

    def is_built(self) -> bool:
        return (self.bundle / "bundle.json").is_file() and self.camera.is_file()


def demo_dir() -> Path:
    """The demo folder: ``$DSANET_DEMO_DIR`` when set, else ``.cache/demo`` in the repository."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env) if env else DEMO_DIR


def use_demo_defaults() -> Path:
    """Point ``${DSANET_DEMO_DIR}`` in the demo config at the repository's demo cache unless set."""
    return Path(os.environ.setdefault(DEMO_DIR_ENV, str(DEMO_DIR)))


def resolve_run_config(config: str | None) -> tuple[Path, str | None]:
    """(deployment file to run, banner to print first or None) for ``dsanet run [-c FILE]``.

    No ``-c``: the default config, the embedded demo. Running the demo config (by default or by name)
    points ``${DSANET_DEMO_DIR}`` at the repository's cache and refuses, with the command that fixes
    it, when the demo has not been built yet.
    """
    if config is None and not DEMO_CONFIG.is_file():
        raise DsanetError(f"no -c/--config given and the default config {DEMO_CONFIG} is missing; pass your "
                          "deployment file with -c FILE")
    path = DEMO_CONFIG if config is None else Path(config)
    if path.resolve() != DEMO_CONFIG:
        return path, None
    layout = DemoLayout(use_demo_defaults())
    if not (layout.bundle / "bundle.json").is_file():
        raise DsanetError(f"the demo model is not built yet ({layout.root}); run `dsanet prepare-demo` first "
                          "(`make demo` does both)")
    return path, DEMO_BANNER
