"""The timeline PNG of ``dsanet score``: what an operator looks at to check a recording.

Top panel: the anomaly score of every snippet (a step per snippet, so a span on the plot is the span of
video it covers), the on/off thresholds of the event machine, and every event shaded over its span and
labelled with its category. Bottom panel: the probability of each anomaly class over time (normal
excluded), so one sees which category drove an event. Time axis in mm:ss from the first frame, like a
video player's clock. The title names the video and the bundle that scored it.

matplotlib is only in the ``train`` extra (the service does not need it), so it is imported here on use;
without it :class:`PlotUnavailable` says what to install. The figure is drawn on an Agg canvas directly
(no pyplot, no global backend state), so this works headless and in threads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DsanetError
from stream.offline import ScoreResult, format_mmss

INSTALL_HINT = "pip install 'dsanet-stream[train]' (or just: pip install matplotlib)"
# "nice" tick steps in seconds for an mm:ss axis
_TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_MAX_TICKS = 12


class PlotUnavailable(DsanetError):
    """matplotlib is not installed, so no timeline plot can be drawn."""


def require_matplotlib() -> Any:
    """Import matplotlib (Agg) or raise :class:`PlotUnavailable` naming the package to install.

    Called before scoring when a plot is asked for, so a missing package fails in a second, not after
    scoring a long video.
    """
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    return matplotlib


def time_ticks(duration: float, max_ticks: int = _MAX_TICKS) -> np.ndarray:
    """Tick positions in seconds at a step a person reads easily on an mm:ss axis (10 s, 30 s, 1 min, ...)."""
    duration = max(float(duration), 1e-9)
    step = next((s for s in _TICK_STEPS if duration / s <= max_ticks - 1), None)
    if step is None:
        step = 3600 * int(np.ceil(duration / 3600 / (max_ticks - 1)))
    return np.arange(0.0, duration + 1e-9, step)


def _event_colours(keys: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    order = sorted(set(keys))
    # tab10's red (index 3) reads as "alarm"; give it to the first category, then the others in order
    idx = [3, 1, 4, 6, 8, 9, 0, 2, 5, 7]
    return {k: cmap(idx[i % len(idx)]) for i, k in enumerate(order)}


def plot_timeline(result: ScoreResult, out: str | os.PathLike[str], width: float = 12.0, height: float = 6.0,
                  dpi: int = 100) -> Path:
    """Draw ``result``'s timeline to ``out`` (PNG); returns the path."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter

    from stream.offline import _prepare_output

    path = _prepare_output(out)
    n = result.n_snippets
    duration = max(result.duration_s, result.snippet_seconds)
    anomaly_cols = list(range(1, result.class_probs.shape[1])) if result.class_probs.ndim == 2 else []
    with_classes = bool(anomaly_cols) and n > 0

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    if with_classes:
        gs = fig.add_gridspec(2, 2, height_ratios=[3, 2], width_ratios=[60, 1])
        ax = fig.add_subplot(gs[0, 0])
        axc = fig.add_subplot(gs[1, 0], sharex=ax)
        cax = fig.add_subplot(gs[1, 1])
        fig.add_subplot(gs[0, 1]).set_axis_off()  # keeps both panels the same width
    else:
        ax = fig.add_subplot(1, 1, 1)
        axc = cax = None

    s = result.settings
    title = f"{result.video.name}  \u2014  {result.bundle_name}"
    sub = (f"{n} snippets of {result.snippet_seconds:.2f} s, {format_mmss(result.duration_s)}; window "
           f"{result.window}, lookahead {result.lookahead}; {len(result.spans())} event(s)")
    fig.suptitle(f"{title}\n{sub}", fontsize=11)

    # --- score panel
    if n:
        edges = np.append(result.start_s, result.end_s[-1])
        vals = np.append(result.scores, result.scores[-1])
        ax.step(edges, vals, where="post", color="#1f3b73", linewidth=1.4, label="anomaly score")
        ax.fill_between(edges, 0, vals, step="post", color="#1f3b73", alpha=0.12, linewidth=0)
    ax.axhline(s.on_threshold, color="#c0392b", linestyle="--", linewidth=1.1,
               label=f"on threshold {s.on_threshold:g}")
    ax.axhline(s.off_threshold, color="#e67e22", linestyle=":", linewidth=1.3,
               label=f"off threshold {s.off_threshold:g}")
    spans = result.spans()
    colours = _event_colours([sp.category_key for sp in spans])
    last_x, level = -np.inf, 0
    for sp in spans:
        c = colours[sp.category_key]
        ax.axvspan(sp.start_s, sp.end_s, color=c, alpha=0.22, linewidth=0)
        if axc is not None:
            axc.axvspan(sp.start_s, sp.end_s, facecolor="none", edgecolor=c, linewidth=1.5)
        # labels sit above the score range (y > 1); neighbours too close to share a row alternate rows
        x = (sp.start_s + sp.end_s) / 2
        level = 1 - level if x - last_x < 0.14 * duration else 0
        last_x = x
        label = f"{sp.category} ({sp.category_score:.2f})  {format_mmss(sp.start_s)}\u2013{format_mmss(sp.end_s)}"
        # near either end the label grows inwards so it is never cut off by the frame
        ha, tx = ("left", max(sp.start_s, 0.0)) if x < 0.1 * duration else (
            ("right", min(sp.end_s, duration)) if x > 0.9 * duration else ("center", x))
        ax.text(tx, 1.16 - 0.09 * level, label, ha=ha, va="center", fontsize=8.5, color="black",
                bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": c, "alpha": 0.9})
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlim(0, duration)
    ax.set_ylabel("anomaly score")
    ax.grid(True, axis="y", alpha=0.3)
    # legend above the panel, outside it: the curve and the event labels keep the whole plot area
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False, ncols=3,
              borderaxespad=0.2)

    # --- class panel
    bottom = ax
    if axc is not None and cax is not None:
        probs = np.asarray(result.class_probs[:, anomaly_cols], dtype=np.float32).T  # [C-1, N]
        names = [result.display_names[i] for i in anomaly_cols]
        im = axc.imshow(probs, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0,
                        vmax=max(0.05, float(probs.max())), origin="upper",
                        extent=(float(result.start_s[0]), float(result.end_s[-1]), len(names) - 0.5, -0.5))
        axc.set_yticks(range(len(names)))
        axc.set_yticklabels(names, fontsize=7 if len(names) > 8 else 8)
        axc.set_ylabel("class", fontsize=9)
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("probability", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        ax.tick_params(labelbottom=False)
        bottom = axc

    ticks = time_ticks(duration)
    bottom.xaxis.set_major_locator(FixedLocator(ticks))
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: format_mmss(x)))
    bottom.set_xlabel("time in the video (mm:ss)")
    bottom.set_xlim(0, duration)

    try:
        fig.savefig(path, format="png", dpi=dpi)
    except OSError as exc:
        raise DsanetError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    return path
