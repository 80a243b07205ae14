"""`rnnwatch evaluate nab|tep|fleet`: labelled benchmarks through the daemon's scoring pipeline (TEP:
`evaluate_tep`; simulated fleets: `fleet_quality`).

`rnnwatch evaluate nab --nab-dir DIR --output-dir OUT`: the NAB benchmark.

All 58 NAB series are replayed together through the daemon's scoring pipeline (each file one device),
the outputs written as `OUT/<category>/<file>.csv` exactly as `rnnwatch replay` writes them, then scored
from those files with rnnwatch's NAB scorer (`model.evaluation.nab_scorer`). It prints the standard,
reward-low-FP and reward-low-FN scores, writes them to `OUT/scores.json`, and draws one PNG per file
(`OUT/plots/<category>/<file>.png`: series, score, threshold, labelled windows) plus `OUT/summary.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.errors import ConfigError
from streamer.scoring.kernel import PATHS
from streamer.tools import evaluate_tep, fleet_quality
from streamer.tools.replay import Series, SeriesResult, read_series, replay, write_result

if TYPE_CHECKING:
    from model.evaluation.nab_scorer import ProfileResult

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="benchmark the detector on a labelled corpus")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    nab = bench.add_parser("nab", help="Numenta Anomaly Benchmark: replay all files, score, plot")
    nab.add_argument("--nab-dir", type=Path, required=True, help="NAB checkout (data/, labels/, config/)")
    nab.add_argument("--output-dir", type=Path, required=True)
    nab.add_argument("--model", default=None, help="model artifact directory (default: the shipped model)")
    nab.add_argument("--device", default="auto")
    nab.add_argument("--scoring-path", choices=PATHS, default=PATHS[0],
                     help="on the CPU: the compiled kernel (default) or the torch waves (the same scores)")
    nab.add_argument("--no-plots", action="store_true", help="skip the PNGs (they need rnnwatch[plots])")
    nab.set_defaults(func=run_nab)
    evaluate_tep.register(bench)
    fleet_quality.register(bench)


def run_nab(args: argparse.Namespace) -> int:
    from model.evaluation import nab_plots
    from streamer.scoring.factory import build_pipeline
    from streamer.scoring.pipeline import PipelineConfig

    if not args.no_plots:
        try:  # before a replay of minutes, not after it
            nab_plots.figure_class()
        except ImportError as exc:
            raise ConfigError(f"{exc}; or pass --no-plots") from None
    data = args.nab_dir / "data"
    files = sorted(data.glob("*/*.csv"))
    if not files:
        raise ConfigError(f"no NAB data under {data}: point --nab-dir at a NAB checkout "
                          "(e.g. ../shared/datasets/nab)")
    series = [read_series(f, f"{f.parent.name}/{f.name}", "timestamp", ["value"]) for f in files]
    started = time.monotonic()
    results = replay(series, build_pipeline(args.model, args.device, PipelineConfig(path=args.scoring_path)))
    replay_s = time.monotonic() - started
    outputs = {}
    for s, res in zip(series, results, strict=True):
        outputs[s.name] = args.output_dir / s.name
        write_result(outputs[s.name], s, res)
    scored = _score_outputs(args.nab_dir, outputs)
    summary: dict[str, object] = {
        name: {"score": round(r.normalised_score, 2), "threshold": r.threshold, "windows_detected": r.tp,
               "windows_missed": r.fn, "false_positive_rows": r.fp}
        for name, r in scored.items()
    }
    summary["replay"] = {"readings": int(sum(len(s.ts) for s in series)), "seconds": round(replay_s, 1)}
    (args.output_dir / "scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plots:
        _plots(args, series, results, scored)
    print(" / ".join(f"{p} {scored[p].normalised_score:.2f}" for p in PROFILES))
    print(f"evaluate: outputs, scores.json and plots in {args.output_dir}", file=sys.stderr)
    return 0


def _score_outputs(nab_dir: Path, outputs: dict[str, Path]) -> dict[str, ProfileResult]:
    """Score the replay output files as written (an empty score, a dropped row, counts as 0)."""
    import numpy as np

    from model.evaluation import nab_scorer

    detections = {}
    for key, path in outputs.items():
        cols = nab_scorer.read_csv_columns(path)
        scores = np.array([float(v) if v else 0.0 for v in cols["anomaly_score"]])
        detections[key] = (nab_scorer.parse_timestamps(cols["timestamp"]), scores)
    windows = nab_scorer.load_windows(nab_dir / "labels" / "combined_windows.json")
    profiles = nab_scorer.load_profiles(nab_dir / "config" / "profiles.json")
    return nab_scorer.score_corpus(detections, windows, profiles)


def _plots(args: argparse.Namespace, series: list[Series], results: list[SeriesResult],
           scored: dict[str, ProfileResult]) -> None:
    import numpy as np

    from model.evaluation import nab_plots, nab_scorer

    windows = nab_scorer.load_windows(args.nab_dir / "labels" / "combined_windows.json")
    threshold = scored["standard"].threshold
    for s, res in zip(series, results, strict=True):
        ts = nab_scorer.parse_timestamps(s.raw_ts)
        nab_plots.plot_file(args.output_dir / "plots" / s.name.replace(".csv", ".png"), ts, s.values[:, 0],
                            np.nan_to_num(res.scores.astype(np.float64)), windows.get(s.name, []), threshold,
                            title=s.name)
    nab_plots.plot_summary(args.output_dir / "summary.png", scored, "standard", title="rnnwatch on NAB")
