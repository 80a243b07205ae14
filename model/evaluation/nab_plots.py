"""PNG plots of a NAB run: one figure per data file and one corpus summary.

Every function takes plain arrays / results, writes one PNG and returns its path. Figures are drawn
on matplotlib's Agg canvas directly (no pyplot), so importing this module leaves the process's
backend and global figure state alone and it is safe off the main thread.

matplotlib is the optional extra `plots` (the daemon's image leaves it out): this module imports
without it, and drawing then raises an ImportError that names the extra to install.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.evaluation.nab_scorer import ProfileResult, probation_length

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'rnnwatch[plots]'"


def figure_class() -> type[Figure]:
    """matplotlib's `Figure`; an ImportError that says what to install when the extra is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"the NAB plots need matplotlib, which is not installed: {INSTALL_HINT} "
                          f"(`make install` has it)") from exc
    return Figure


def plot_file(path: Path, timestamps: np.ndarray, values: np.ndarray, scores: np.ndarray,
              windows: Sequence[tuple[np.datetime64, np.datetime64]], threshold: float,
              title: str = "") -> Path:
    """Value and anomaly score of one file: windows shaded, probation greyed, detections marked.

    ``timestamps``, ``values`` and ``scores`` are (N,) arrays of one data file; ``windows`` are its
    labelled (start, end) spans; a row after probation is a detection when its score >= ``threshold``.
    """
    ts = np.asarray(timestamps).astype("datetime64[us]")
    values = np.asarray(values, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (ts.shape == values.shape == scores.shape):
        raise ValueError(f"timestamps, values and scores must align, got {ts.shape}, {values.shape}, "
                         f"{scores.shape}")
    probation = probation_length(len(ts))
    detected = np.flatnonzero(scores >= threshold)
    detected = detected[detected >= probation]
    fig = figure_class()(figsize=(14, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.plot(ts, values, lw=0.6, color="tab:blue", label="value")
    top.scatter(ts[detected], values[detected], s=14, color="tab:red", zorder=3,
                label=f"detection ({len(detected)})")
    bottom.plot(ts, scores, lw=0.6, color="tab:purple", label="anomaly score")
    bottom.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    for ax in (top, bottom):
        for i, (start, end) in enumerate(windows):
            label = "labelled window" if i == 0 else None
            ax.axvspan(start, end, color="tab:orange", alpha=0.25, label=label)
        if 0 < probation < len(ts):
            ax.axvspan(ts[0], ts[probation], color="grey", alpha=0.15, label=f"probation ({probation} rows)")
            ax.axvline(ts[probation], color="grey", lw=1)
        ax.legend(loc="upper left", fontsize=7)
    top.set_ylabel("value")
    bottom.set_ylabel("anomaly score")
    top.set_title(title)
    fig.autofmt_xdate()
    return save_png(fig, path)


def plot_summary(path: Path, results: Mapping[str, ProfileResult], profile: str = "standard",
                 title: str = "") -> Path:
    """Normalised score per profile (left) and windows detected / missed and FP rows per category
    at ``profile``'s threshold (right; falls back to the first profile when it is absent)."""
    if not results:
        raise ValueError("no profile results to plot; pass score_corpus()'s answer")
    fig = figure_class()(figsize=(14, 5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    names = list(results)
    bars = left.bar(names, [results[n].normalised_score for n in names], color="tab:blue")
    left.bar_label(bars, fmt="%.2f")
    left.set_ylabel("NAB score (null = 0, perfect = 100)")
    left.tick_params(axis="x", labelrotation=15)
    chosen = results.get(profile, results[names[0]])
    categories = sorted({key.split("/", 1)[0] for key in chosen.per_file})
    counts = {c: np.zeros(3, dtype=int) for c in categories}  # (tp, fp, fn)
    for key, tally in chosen.per_file.items():
        counts[key.split("/", 1)[0]] += (tally.tp, tally.fp, tally.fn)
    x = np.arange(len(categories))
    for j, (label, color) in enumerate([("TP windows", "tab:green"), ("FP rows", "tab:red"),
                                        ("FN windows", "tab:grey")]):
        heights = [counts[c][j] for c in categories]
        right.bar_label(right.bar(x + (j - 1) * 0.27, heights, 0.27, label=label, color=color), fontsize=7)
    right.set_xticks(x, categories, rotation=20, fontsize=8)
    right.set_yscale("symlog")
    right.set_title(f"{chosen.profile}: threshold {chosen.threshold:.4g}", fontsize=9)
    right.legend(fontsize=8)
    fig.suptitle(title)
    return save_png(fig, path)


def save_png(fig: Figure, path: Path) -> Path:
    """Lay out ``fig`` and write it to ``path`` as a 100-dpi PNG (parent folders made); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path
