"""The NAB scorer reproduces NAB's published results, and each scoring rule holds on tiny corpora."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.evaluation import nab_plots
from model.evaluation.nab_scorer import (
    Profile,
    load_corpus,
    load_profiles,
    load_windows,
    probation_length,
    read_csv_columns,
    scaled_sigmoid,
    score_at_threshold,
    score_corpus,
    score_files,
)
from streamer.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
NAB_DIR = Path(os.environ.get("NAB_DIR", REPO_ROOT.parent / "shared" / "datasets" / "nab"))

STANDARD = Profile("standard", 1.0, 0.11, 1.0)
LOW_FP = Profile("reward_low_FP_rate", 1.0, 0.22, 1.0)
LOW_FN = Profile("reward_low_FN_rate", 1.0, 0.11, 2.0)
PROFILES = {p.name: p for p in (STANDARD, LOW_FP, LOW_FN)}
S_MINUS_1 = 2.0 / (1.0 + math.exp(-5.0)) - 1.0


def sigmoid(y: float) -> float:
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def hourly(n: int) -> np.ndarray:
    return np.datetime64("2020-01-01T00:00:00", "us") + np.arange(n) * np.timedelta64(1, "h")


def corpus_of(n: int, windows: list[tuple[int, int]], hits: dict[int, float], key: str = "cat/a.csv"):
    """One file of n hourly rows, windows given by row index, scores 0 except ``hits`` {row: score}."""
    ts = hourly(n)
    scores = np.zeros(n)
    for row, score in hits.items():
        scores[row] = score
    return {key: (ts, scores)}, {key: [(ts[a], ts[b]) for a, b in windows]}


# N = 100 rows -> probation 15; one window on rows 40..49 (W = 10).
WINDOW = (40, 49)


def test_probation_and_sigmoid_follow_nab():
    assert [probation_length(n) for n in (100, 4999, 5000, 22695)] == [15, 749, 750, 750]
    assert float(scaled_sigmoid(np.array(-1.0))) == pytest.approx(0.98661, abs=1e-5)
    assert float(scaled_sigmoid(np.array(0.0))) == 0.0
    assert float(scaled_sigmoid(np.array(3.0001))) == -1.0


@pytest.mark.parametrize("profile", [STANDARD, LOW_FP, LOW_FN])
def test_earliest_row_of_a_window_earns_exactly_a_tp(profile):
    detections, windows = corpus_of(100, [WINDOW], {40: 1.0})
    result = score_at_threshold(detections, windows, profile, 0.5)
    assert result.raw_score == pytest.approx(profile.a_tp, abs=1e-12)
    assert result.normalised_score == pytest.approx(100.0)
    assert (result.tp, result.fp, result.fn) == (1, 0, 0)


def test_later_rows_of_a_window_earn_less_and_only_the_earliest_counts():
    earned = []
    for row in range(WINDOW[0], WINDOW[1] + 1):
        detections, windows = corpus_of(100, [WINDOW], {row: 1.0, WINDOW[1]: 1.0})
        earned.append(score_at_threshold(detections, windows, STANDARD, 0.5).raw_score)
    assert all(a > b for a, b in itertools.pairwise(earned))
    assert earned[-1] == pytest.approx(sigmoid(-1 / 10) / S_MINUS_1, abs=1e-12)  # last row: y = −1/W


@pytest.mark.parametrize("profile", [STANDARD, LOW_FP, LOW_FN])
def test_detection_before_any_window_costs_a_fp(profile):
    detections, windows = corpus_of(100, [WINDOW], {20: 1.0, 40: 1.0})
    result = score_at_threshold(detections, windows, profile, 0.5)
    assert result.raw_score == pytest.approx(profile.a_tp - profile.a_fp, abs=1e-12)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)


def test_detection_after_a_window_is_weighted_by_its_distance():
    for row, y in [(50, 1 / 9), (58, 1.0), (76, 3.0), (80, 31 / 9)]:
        detections, windows = corpus_of(100, [WINDOW], {40: 1.0, row: 1.0})
        raw = score_at_threshold(detections, windows, STANDARD, 0.5).raw_score
        assert raw == pytest.approx(1.0 + 0.11 * sigmoid(y), abs=1e-12), row
    assert sigmoid(31 / 9) == -1.0


@pytest.mark.parametrize("profile", [STANDARD, LOW_FP, LOW_FN])
def test_window_without_detection_costs_a_fn(profile):
    detections, windows = corpus_of(100, [WINDOW, (70, 79)], {70: 1.0})
    result = score_at_threshold(detections, windows, profile, 0.5)
    assert result.raw_score == pytest.approx(profile.a_tp - profile.a_fn, abs=1e-12)
    assert (result.tp, result.fp, result.fn) == (1, 0, 1)
    assert score_corpus(*corpus_of(100, [WINDOW], {}), {"p": profile})["p"].normalised_score == 0.0


def test_probation_rows_are_neither_scored_nor_threshold_candidates():
    detections, windows = corpus_of(100, [WINDOW], {5: 1.0, 40: 0.5})
    result = score_corpus(detections, windows, {"standard": STANDARD})["standard"]
    assert (result.threshold, result.fp, result.tp) == (0.5, 0, 1)
    assert result.raw_score == pytest.approx(1.0, abs=1e-12)


def test_window_inside_probation_is_not_counted():
    detections, windows = corpus_of(100, [(2, 5), WINDOW], {40: 1.0})
    result = score_at_threshold(detections, windows, STANDARD, 0.5)
    assert (result.tp, result.fn, result.normalised_score) == (1, 0, pytest.approx(100.0))


def test_ties_in_raw_score_go_to_the_higher_threshold():
    # θ = 0.9 and θ = 0.5 both detect the window at its first row: same raw score, keep 0.9.
    detections, windows = corpus_of(100, [WINDOW], {40: 0.9, 45: 0.5})
    result = score_corpus(detections, windows, {"standard": STANDARD})["standard"]
    assert (result.threshold, result.raw_score) == (0.9, pytest.approx(1.0, abs=1e-12))


def test_rows_with_equal_scores_switch_on_together():
    # The window start and a later false positive share 0.7: no threshold detects one without the other.
    detections, windows = corpus_of(100, [WINDOW], {40: 0.7, 60: 0.7})
    result = score_corpus(detections, windows, {"standard": STANDARD})["standard"]
    assert result.threshold == 0.7
    assert result.raw_score == pytest.approx(1.0 + 0.11 * sigmoid(11 / 9), abs=1e-12)
    assert (result.tp, result.fp) == (1, 1)
    # With 20 false positives tied to the window start, 0.7 costs more than it earns: detect nothing.
    # (A sweep that switched tied rows on one by one would see 0.7 earn +1 before paying.)
    detections, windows = corpus_of(100, [WINDOW], {40: 0.7} | {row: 0.7 for row in range(60, 80)})
    result = score_corpus(detections, windows, {"standard": STANDARD})["standard"]
    assert (result.threshold, result.raw_score, result.tp, result.fp) == (1.1, -1.0, 0, 0)


def test_nothing_detected_beats_a_costly_threshold():
    detections, windows = corpus_of(100, [WINDOW], {20: 0.9, 21: 0.9, 22: 0.9})
    result = score_corpus(detections, windows, {"standard": STANDARD})["standard"]
    assert (result.threshold, result.raw_score, result.fp) == (1.1, -1.0, 0)


@pytest.mark.parametrize("seed", range(6))
def test_sweep_equals_brute_force_over_every_threshold(seed):
    rng = np.random.default_rng(seed)
    detections, windows = {}, {}
    for f in range(4):
        n = int(rng.integers(40, 300))
        starts = np.sort(rng.choice(np.arange(0, n - 12, 12), size=int(rng.integers(0, 4)), replace=False))
        spans = [(int(a), int(a + rng.integers(0, 11))) for a in starts]
        key = f"cat/f{f}.csv"
        ts = hourly(n)
        detections[key] = (ts, rng.integers(0, 12, n) / 11.0)  # coarse scores: many ties
        windows[key] = [(ts[a], ts[b]) for a, b in spans]
    if not any(windows.values()):
        windows["cat/f0.csv"] = [(detections["cat/f0.csv"][0][-5], detections["cat/f0.csv"][0][-1])]
    swept = score_corpus(detections, windows, PROFILES)
    for name, profile in PROFILES.items():
        thresholds = [1.1, *sorted({float(s) for _, sc in detections.values() for s in sc}, reverse=True)]
        raw = [score_at_threshold(detections, windows, profile, t).raw_score for t in thresholds]
        best = max(raw)
        first_best = next(t for t, r in zip(thresholds, raw, strict=True) if r > best - 1e-9)
        assert swept[name].raw_score == pytest.approx(best, abs=1e-9)
        assert swept[name].threshold == first_best


def test_window_limit_off_the_rows_is_rejected():
    detections, _ = corpus_of(100, [], {})
    bad = {"cat/a.csv": [(np.datetime64("2020-01-02T00:30:00"), np.datetime64("2020-01-02T05:00:00"))]}
    with pytest.raises(ValueError, match="not a row timestamp"):
        score_corpus(detections, bad, {"standard": STANDARD})


def write_tiny_nab(root: Path) -> dict[str, np.ndarray]:
    """A two-file NAB layout under root; returns each file's scores."""
    ts = hourly(100)
    text = [str(t).replace("T", " ") for t in ts.astype("datetime64[s]")]
    scores = {"catA/one.csv": np.where(np.arange(100) == 40, 0.8, 0.1),
              "catB/two.csv": np.where(np.arange(100) == 30, 0.8, 0.2)}
    for key in scores:
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("timestamp,value\n" + "".join(f"{t},{i % 7}\n" for i, t in enumerate(text)))
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(
        {"catA/one.csv": [[text[40] + ".000000", text[49] + ".000000"]], "catB/two.csv": []}))
    (root / "config").mkdir()
    (root / "config" / "profiles.json").write_text(json.dumps(
        {p.name: {"CostMatrix": {"tpWeight": p.a_tp, "fpWeight": p.a_fp, "fnWeight": p.a_fn, "tnWeight": 1}}
         for p in PROFILES.values()}))
    return scores


def test_score_files_reads_nab_and_rnnwatch_layouts(tmp_path):
    scores = write_tiny_nab(tmp_path / "nab")
    text = read_csv_columns(tmp_path / "nab" / "data" / "catA" / "one.csv")["timestamp"]
    for key, s in scores.items():
        category, name = key.split("/")
        nab_style = tmp_path / "results" / "det" / category / f"det_{name}"
        own_style = tmp_path / "ours" / category / name
        for path in (nab_style, own_style):
            path.parent.mkdir(parents=True, exist_ok=True)
        nab_style.write_text("timestamp,anomaly_score\n" + "".join(f"{t},{v}\n" for t, v in zip(text, s,
                                                                                                strict=True)))
        own_style.write_text("anomaly_score\n" + "".join(f"{v}\n" for v in s))
    (tmp_path / "results" / "det" / "catA" / "det_standard_scores.csv").write_text("a,b\n1,2\n")
    answers = [score_files(tmp_path / "nab", tmp_path / "results" / "det"),
               score_files(tmp_path / "nab", tmp_path / "ours"),
               score_files(tmp_path / "nab", {k: tmp_path / "ours" / k for k in scores})]
    for answer in answers:
        assert answer["standard"].threshold == 0.8
        assert answer["standard"].raw_score == pytest.approx(1.0 - 0.11, abs=1e-12)
        assert answer["standard"].per_file["catB/two.csv"].fp == 1
    with pytest.raises(ValueError, match="no result CSV"):
        score_files(tmp_path / "nab", tmp_path / "empty")


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_valid_pngs(tmp_path):
    detections, windows = corpus_of(200, [(60, 79), (120, 129)], {60: 0.9, 100: 0.95, 125: 0.6})
    ts, scores = detections["cat/a.csv"]
    results = score_corpus(detections, windows, PROFILES)
    file_png = nab_plots.plot_file(tmp_path / "files" / "a.png", ts, np.sin(np.arange(200) / 5), scores,
                                   windows["cat/a.csv"], results["standard"].threshold, title="cat/a.csv")
    summary_png = nab_plots.plot_summary(tmp_path / "summary.png", results, title="tiny")
    assert file_png == tmp_path / "files" / "a.png" and is_png(file_png)
    assert summary_png == tmp_path / "summary.png" and is_png(summary_png)


def test_without_matplotlib_the_plots_name_the_extra_to_install(tmp_path, monkeypatch):
    from streamer.tools.evaluate import run_nab

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if the `plots` extra were missing
    detections, windows = corpus_of(50, [(20, 29)], {25: 0.9})
    with pytest.raises(ImportError, match=re.escape("pip install 'rnnwatch[plots]'")):
        nab_plots.plot_summary(tmp_path / "summary.png", score_corpus(detections, windows, PROFILES))
    args = argparse.Namespace(nab_dir=tmp_path, output_dir=tmp_path / "out", no_plots=False)
    with pytest.raises(ConfigError, match=r"rnnwatch\[plots\].*--no-plots"):  # before any replay
        run_nab(args)


# --- NAB's published detector outputs ---------------------------------------------------------------

REFERENCE = {  # standard / reward_low_FP_rate / reward_low_FN_rate, from NAB's scoreboard
    "numenta": (70.10, 63.21, 74.32),
    "windowedGaussian": (39.65, 20.87, 47.41),
}


@pytest.fixture(scope="module")
def nab_dir() -> Path:
    if not (NAB_DIR / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found at {NAB_DIR}; put it at ../shared/datasets/nab or set NAB_DIR")
    return NAB_DIR


@pytest.fixture(scope="module")
def nab_corpus(nab_dir):
    """(windows, profiles, corpus) of the NAB checkout, read once for every detector."""
    return (load_windows(nab_dir / "labels" / "combined_windows.json"),
            load_profiles(nab_dir / "config" / "profiles.json"), load_corpus(nab_dir))


@pytest.mark.parametrize("detector", sorted(REFERENCE))
def test_reproduces_published_nab_scores(nab_dir, nab_corpus, detector):
    windows, profiles, corpus = nab_corpus
    assert (len(corpus), sum(len(w) for w in windows.values())) == (58, 116)
    columns = {key: read_csv_columns(nab_dir / "results" / detector / key) for key in corpus}
    detections = {key: (ts, np.asarray(columns[key]["anomaly_score"], dtype=np.float64))
                  for key, (ts, _) in corpus.items()}
    started = time.perf_counter()
    results = score_corpus(detections, windows, profiles)
    elapsed = time.perf_counter() - started
    names = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
    got = tuple(results[name].normalised_score for name in names)
    assert got == pytest.approx(REFERENCE[detector], abs=0.01)
    assert all(results[name].tp + results[name].fn == 116 for name in names)
    n_rows = sum(len(s) for _, s in detections.values())
    assert elapsed < 10.0, f"sweep over {n_rows} rows took {elapsed:.1f} s"
    assert score_files(nab_dir, nab_dir / "results" / detector)["standard"] == results["standard"]
