"""`rnnwatch evaluate tep --tep-dir DIR --output-dir OUT`: the Tennessee Eastman benchmark.

Each test file ``test/dNN.csv`` (NN = 00..21) becomes one device whose stream is ``normal_history.csv``
followed by that file; the 22 devices are replayed together through the daemon's scoring pipeline and
their outputs written as ``OUT/dNN.csv`` exactly as `rnnwatch replay` writes them. The decision is the
product's own ``alert`` column (alert open after each reading), read back from those files, over the
test part of each stream. A PCA baseline (``model.evaluation.tep_pca``: T², Q and "T² or Q", limits from
the history alone) is scored on the same readings, plus, labelled as hindsight, PCA's Q at the
threshold that gives rnnwatch's own false-alarm rate. Figures (``model.evaluation.tep_metrics``) go to
stdout and ``OUT/tep.json``; ``OUT/plots/dNN.png`` and ``OUT/summary.png`` unless ``--no-plots``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.evaluation.tep_metrics import ONSET, TepFigures, tep_figures
from model.evaluation.tep_pca import PcaMonitor, fit_pca, matched_threshold
from model.evaluation.tep_report import figures_json, format_table
from streamer.errors import ConfigError
from streamer.scoring.kernel import PATHS
from streamer.tools.replay import Series, SeriesResult, read_series, replay, write_result

HISTORY_FILE = "normal_history.csv"
TEST_FILES = tuple(range(22))  # d00 (normal) .. d21
PCA_VARIANCE = 0.90
PCA_CONFIDENCE = 0.99
HINDSIGHT = "pca_q_hindsight"


@dataclass(frozen=True)
class TepData:
    """The benchmark as read: the normal history and each test file, keyed by fault number (0 = d00)."""

    history: Series
    tests: dict[int, Series]


@dataclass(frozen=True)
class PcaRun:
    """The fitted baseline and its statistics on every test file."""

    monitor: PcaMonitor
    t2: dict[int, np.ndarray]  # fault -> (T,)
    q: dict[int, np.ndarray]  # fault -> (T,)


def register(bench: argparse._SubParsersAction) -> None:
    """Add `tep` under `rnnwatch evaluate`."""
    tep = bench.add_parser("tep", help="Tennessee Eastman process: replay history + each fault, PCA baseline")
    tep.add_argument("--tep-dir", type=Path, required=True,
                     help="folder with normal_history.csv and test/d00.csv .. test/d21.csv")
    tep.add_argument("--output-dir", type=Path, required=True)
    tep.add_argument("--model", default=None, help="model artifact directory (default: the shipped model)")
    tep.add_argument("--device", default="auto")
    tep.add_argument("--scoring-path", choices=PATHS, default=PATHS[0],
                     help="on the CPU: the compiled kernel (default) or the torch waves (the same scores)")
    tep.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    tep.set_defaults(func=run_tep)


def load(tep_dir: Path) -> TepData:
    """Read the history and the 22 test files; check they share channels and the test files' length."""
    paths = [tep_dir / HISTORY_FILE, *(tep_dir / "test" / f"d{n:02d}.csv" for n in TEST_FILES)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise ConfigError(f"Tennessee Eastman files missing: {missing[:3]}{more}; "
                          "point --tep-dir at the data set (e.g. ../shared/datasets/tep)")
    history = read_series(paths[0], HISTORY_FILE)
    tests = {n: read_series(p, f"d{n:02d}.csv") for n, p in zip(TEST_FILES, paths[1:], strict=True)}
    for s in tests.values():
        if s.channels != history.channels:
            raise ConfigError(f"{s.name}: channels differ from {HISTORY_FILE}'s; "
                              "every file needs the same columns")
        if len(s.ts) <= ONSET:
            raise ConfigError(f"{s.name}: {len(s.ts)} readings, but the fault starts after reading {ONSET}")
        if s.ts[0] <= history.ts[-1]:
            raise ConfigError(f"{s.name}: its timestamps must continue after {HISTORY_FILE}'s last one "
                              f"({history.raw_ts[-1]}), got {s.raw_ts[0]}")
    return TepData(history, tests)


def device_stream(history: Series, test: Series) -> Series:
    """One device: the history's readings, then the test file's, named after the test file."""
    return Series(name=test.name, device_id=f"tep-{Path(test.name).stem}",
                  raw_ts=history.raw_ts + test.raw_ts, ts=np.concatenate([history.ts, test.ts]),
                  values=np.vstack([history.values, test.values]), channels=test.channels)


def written_alerts(path: Path, skip: int) -> np.ndarray:
    """The ``alert`` column of a replay output file, its first ``skip`` rows dropped: (rows - skip,) bool."""
    with path.open(newline="") as f:
        return np.array([row["alert"] == "1" for row in csv.DictReader(f)][skip:], dtype=bool)


def fit_baseline(data: TepData) -> PcaRun:
    monitor = fit_pca(data.history.values, PCA_VARIANCE, PCA_CONFIDENCE)
    stats = {n: monitor.statistics(s.values) for n, s in data.tests.items()}
    return PcaRun(monitor, {n: t2 for n, (t2, _) in stats.items()}, {n: q for n, (_, q) in stats.items()})


def baseline_figures(pca: PcaRun, rnnwatch_false_alarm_rate: float) -> tuple[dict[str, TepFigures], float]:
    """PCA T², Q, "T² or Q" at the history-only limits, and Q at rnnwatch's false-alarm rate (hindsight)."""
    m = pca.monitor
    t2 = {n: s > m.t2_limit for n, s in pca.t2.items()}
    q = {n: s > m.q_limit for n, s in pca.q.items()}
    normal_q = np.concatenate([pca.q[0], *(s[:ONSET] for n, s in pca.q.items() if n != 0)])
    threshold = matched_threshold(normal_q, rnnwatch_false_alarm_rate)
    return {"pca_t2": tep_figures(t2), "pca_q": tep_figures(q),
            "pca_t2_or_q": tep_figures({n: t2[n] | q[n] for n in t2}),
            HINDSIGHT: tep_figures({n: s > threshold for n, s in pca.q.items()})}, threshold


def run_tep(args: argparse.Namespace) -> int:
    from streamer.scoring.factory import build_pipeline
    from streamer.scoring.pipeline import PipelineConfig

    data = load(args.tep_dir)
    streams = [device_stream(data.history, data.tests[n]) for n in TEST_FILES]
    started = time.monotonic()
    results = replay(streams, build_pipeline(args.model, args.device, PipelineConfig(path=args.scoring_path)))
    replay_s = time.monotonic() - started
    skip = len(data.history.ts)
    alerts = {}
    for n, s, res in zip(TEST_FILES, streams, results, strict=True):
        write_result(args.output_dir / s.name, s, res)
        alerts[n] = written_alerts(args.output_dir / s.name, skip)
    figures = {"rnnwatch": tep_figures(alerts)}
    pca = fit_baseline(data)
    baseline, threshold = baseline_figures(pca, figures["rnnwatch"].false_alarm_rate)
    figures.update(baseline)
    readings = sum(len(s.ts) for s in streams)
    report = {**figures_json(figures), "pca": _pca_json(pca.monitor, threshold),
              "replay": {"devices": len(streams), "readings": readings, "seconds": round(replay_s, 1),
                         "readings_per_second": round(readings / max(replay_s, 1e-9))}}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "tep.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_plots:
        _plots(args.output_dir, data, results, pca, figures)
    print(format_table(figures))
    print(f"replay: {readings} readings from {len(streams)} devices in {replay_s:.1f} s; "
          f"PCA: {pca.monitor.components} components", file=sys.stderr)
    print(f"evaluate: outputs, tep.json and plots in {args.output_dir}", file=sys.stderr)
    return 0


def _pca_json(monitor: PcaMonitor, hindsight_threshold: float) -> dict[str, object]:
    return {"components": monitor.components, "variance_share": PCA_VARIANCE, "confidence": PCA_CONFIDENCE,
            "t2_limit": monitor.t2_limit, "q_limit": monitor.q_limit,
            "limits": "from normal_history.csv alone: F-distribution limit (T²), Jackson-Mudholkar (Q)",
            HINDSIGHT: {"q_threshold": hindsight_threshold,
                        "note": "HINDSIGHT upper bound: Q threshold chosen on the test files' normal "
                                "readings to match rnnwatch's false-alarm rate; not a deployable detector"}}


def _plots(out: Path, data: TepData, results: list[SeriesResult], pca: PcaRun,
           figures: dict[str, TepFigures]) -> None:
    from model.evaluation import tep_plots

    skip, m = len(data.history.ts), pca.monitor
    for n, res in zip(TEST_FILES, results, strict=True):
        test = data.tests[n]
        z = (test.values - m.mean) / m.std  # (T, C)
        onset = None if n == 0 else ONSET
        keys = tep_plots.moving_channels(z, onset)
        title = f"{test.name} (normal run)" if n == 0 else (
            f"{test.name}: IDV({n}); detection rnnwatch {figures['rnnwatch'].faults[n].detection_rate:.2f}, "
            f"PCA Q {figures['pca_q'].faults[n].detection_rate:.2f}")
        tep_plots.plot_fault(out / "plots" / f"d{n:02d}.png", z[:, keys], [test.channels[k] for k in keys],
                             res.scores[skip:], res.alert[skip:], pca.q[n], m.q_limit, onset, title)
    tep_plots.plot_summary(out / "summary.png", {k: figures[k] for k in ("rnnwatch", "pca_t2", "pca_q")},
                           title="rnnwatch and PCA (history-only 99 % limits), Tennessee Eastman process")
