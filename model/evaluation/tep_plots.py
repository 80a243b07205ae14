"""PNG plots of a Tennessee Eastman run: one figure per test file and one benchmark summary.

Drawn on matplotlib's Agg canvas directly (no pyplot), as ``nab_plots`` does, so importing this module
leaves the process's backend and global figure state alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from model.evaluation.nab_plots import save_png
from model.evaluation.tep_metrics import UNDETECTABLE, TepFigures


def moving_channels(z: np.ndarray, onset: int | None, count: int = 3) -> np.ndarray:
    """Indices of the ``count`` channels of (T, C) z-scores that move most after ``onset``.

    "Move" is the root-mean-square departure of readings ``onset..`` from the channel's mean before the
    onset (so a shift and a widened spread both count); with ``onset`` None, from the channel's mean
    over the whole file.

    >>> z = np.zeros((10, 4)); z[5:, 2] = 3.0; z[5:, 0] = 1.0
    >>> moving_channels(z, 5, 2).tolist()
    [2, 0]
    """
    z = np.asarray(z, dtype=np.float64)
    before, after = (z, z) if onset is None else (z[:onset], z[onset:])
    departure = np.sqrt(np.mean((after - before.mean(axis=0)) ** 2, axis=0))  # (C,)
    return np.argsort(-departure, kind="stable")[:count]


def _shade(ax: Axes, flags: np.ndarray, color: str, label: str) -> None:
    """Shade each run of ``flags`` (T,) over x = 1..T (reading numbers)."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    for i, (start, stop) in enumerate(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1),
                                          strict=True)):
        ax.axvspan(start + 0.5, stop + 0.5, color=color, alpha=0.25, lw=0, label=label if i == 0 else None)


def plot_fault(path: Path, z: np.ndarray, channels: Sequence[str], scores: np.ndarray, alert: np.ndarray,
               q: np.ndarray, q_limit: float, onset: int | None, title: str = "") -> Path:
    """One test file: (T, k) z-scored key channels, rnnwatch's score with its alert band, PCA's Q.

    ``scores``, ``alert`` and ``q`` are (T,) over the file's readings; ``onset`` is the 0-based first
    faulty reading (None for the normal run), drawn as a line at reading ``onset + 1``.
    """
    x = np.arange(1, len(scores) + 1)
    if not (z.shape[0] == len(alert) == len(q) == len(x)) or z.shape[1] != len(channels):
        raise ValueError(f"arrays must align: z {z.shape}, {len(channels)} channel names, scores "
                         f"{np.shape(scores)}, alert {np.shape(alert)}, q {np.shape(q)}")
    fig = Figure(figsize=(14, 8))
    top, middle, bottom = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    for j, name in enumerate(channels):
        top.plot(x, z[:, j], lw=0.7, label=name)
    top.set_ylabel("z-score (history mean / std)")
    middle.plot(x, np.nan_to_num(scores), lw=0.7, color="tab:purple", label="rnnwatch anomaly score")
    _shade(middle, np.asarray(alert, bool), "tab:red", f"rnnwatch alert open ({int(np.sum(alert))} readings)")
    middle.set_ylabel("anomaly score")
    bottom.semilogy(x, np.maximum(q, 1e-6), lw=0.7, color="tab:green", label="PCA Q (SPE)")
    bottom.axhline(q_limit, color="tab:red", ls="--", lw=1, label=f"Q limit {q_limit:.3g}")
    bottom.set_ylabel("Q")
    bottom.set_xlabel("reading of the test file (1-based)")
    for ax in (top, middle, bottom):
        if onset is not None:
            ax.axvline(onset + 0.5, color="black", lw=1, label=f"fault onset (reading {onset + 1})")
        ax.legend(loc="upper left", fontsize=7)
    top.set_title(title)
    return save_png(fig, path)


def plot_summary(path: Path, figures: Mapping[str, TepFigures], title: str = "") -> Path:
    """Detection rate per fault for each detector (left), false-alarm rates (right)."""
    if not figures:
        raise ValueError("no detector figures to plot; pass tep_figures()'s answers")
    fig = Figure(figsize=(15, 5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4, 1]})
    names = list(figures)
    faults = sorted(next(iter(figures.values())).faults)
    x, width = np.arange(len(faults)), 0.8 / len(names)
    for j, name in enumerate(names):
        rates = [figures[name].faults[n].detection_rate for n in faults]
        left.bar(x + (j - (len(names) - 1) / 2) * width, rates, width, label=name)
    left.set_xticks(x, [f"{n}*" if n in UNDETECTABLE else str(n) for n in faults])
    left.set_xlabel("fault (IDV); * = practically undetectable, left out of the mean")
    left.set_ylabel("detection rate (readings 161..960 flagged)")
    left.set_ylim(0, 1.05)
    left.legend(fontsize=8)
    bars = right.bar(names, [100 * figures[n].false_alarm_rate for n in names],
                     color=[f"C{j}" for j in range(len(names))])
    right.bar_label(bars, fmt="%.2f")
    right.set_ylabel("false alarms, % of normal readings")
    right.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    return save_png(fig, path)
