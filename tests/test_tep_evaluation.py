"""Tennessee Eastman evaluation: the metric rules on hand-made alerts, the PCA limits on Gaussian data,
the quantiles against published tables, and `rnnwatch evaluate tep` end to end on the real data."""

from __future__ import annotations

import doctest
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from model.evaluation import quantiles, tep_metrics, tep_pca, tep_plots, tep_report
from model.evaluation.quantiles import betainc, f_ppf, normal_ppf
from model.evaluation.tep_metrics import FaultFigures, fault_figures, tep_figures
from model.evaluation.tep_pca import components_for, fit_pca, matched_threshold
from streamer.cli import main
from streamer.tools.evaluate_tep import written_alerts

REPO_ROOT = Path(__file__).resolve().parents[1]
TEP_DIR = Path(os.environ.get("TEP_DIR", REPO_ROOT.parent / "shared" / "datasets" / "tep"))


def flags(text: str) -> np.ndarray:
    return np.array([c == "1" for c in text], dtype=bool)


# --- metrics -----------------------------------------------------------------------------------------

def test_fault_figures_on_hand_made_alerts() -> None:
    assert fault_figures(flags("0000000000"), onset=4) == FaultFigures(0.0, None, 0, 0.0)
    # an episode open across the onset is not one opened during the fault; the later one is
    assert fault_figures(flags("0011100110"), onset=3) == FaultFigures(4 / 7, 0, 1, 1 / 3)
    # an episode opening exactly at the onset counts, delay 0
    assert fault_figures(flags("0001101"), onset=3) == FaultFigures(0.75, 0, 2, 0.0)
    assert fault_figures(flags("1100000011"), onset=2) == FaultFigures(0.25, 6, 1, 1.0)


def test_tep_figures_pool_false_alarms_and_leave_out_3_9_15() -> None:
    alerts = {0: flags("1000010000"),  # d00: 2 of 10
              1: flags("0100111100"),  # 1 false alarm of 4, detection 4/6
              3: flags("0000000011"),  # detection 2/6, left out of the 18-fault mean
              7: flags("0000000000")}
    f = tep_figures(alerts, onset=4)
    assert f.false_alarm_rate == 3 / (10 + 3 * 4)
    assert f.normal_run_false_alarm_rate == 0.2
    assert f.mean_detection_rate == pytest.approx((4 / 6 + 0) / 2)
    assert f.mean_detection_rate_all == pytest.approx((4 / 6 + 2 / 6 + 0) / 3)
    assert sorted(f.faults) == [1, 3, 7] and f.faults[7].delay is None and f.faults[1].delay == 0
    assert tep_figures({0: flags("0000"), 9: flags("0011")}, onset=2).mean_detection_rate is None


def test_tep_figures_reject_bad_input_with_a_reason() -> None:
    with pytest.raises(ValueError, match="d00"):
        tep_figures({1: flags("0011")}, onset=2)
    with pytest.raises(ValueError, match="bool"):
        tep_figures({0: np.zeros(4), 1: flags("0011")}, onset=2)
    with pytest.raises(ValueError, match="onset 5"):
        fault_figures(flags("0011"), onset=5)


def test_report_json_and_table_carry_every_detector() -> None:
    figs = {"rnnwatch": tep_figures({0: flags("0000"), 1: flags("0011")}, onset=2),
            "pca_q": tep_figures({0: flags("1000"), 1: flags("0001")}, onset=2)}
    doc = tep_report.figures_json(figs)
    assert doc["faults"] == {"1": {"rnnwatch": {"detection_rate": 1.0, "delay": 0, "episodes": 1,
                                                "false_alarm_rate": 0.0},
                                   "pca_q": {"detection_rate": 0.5, "delay": 1, "episodes": 1,
                                             "false_alarm_rate": 0.0}}}
    assert doc["overall"]["pca_q"]["false_alarm_rate"] == 1 / 6
    table = tep_report.format_table(figs)
    assert "pca_q det" in table and "16.67" in table


# --- PCA ---------------------------------------------------------------------------------------------

def gaussian(n: int, rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """(n, 12) readings: 3 strong latent factors through ``weights`` (3, 12) plus small noise."""
    return 50.0 + rng.normal(size=(n, 3)) @ weights + rng.normal(0.0, 0.3, size=(n, 12))


def test_pca_limits_hold_their_false_alarm_rate_on_fresh_gaussian_data() -> None:
    rng = np.random.default_rng(5)
    weights = rng.normal(0.0, 2.0, size=(3, 12))
    monitor = fit_pca(gaussian(3000, rng, weights), variance=0.90, confidence=0.99)
    assert monitor.components == 3
    t2, q = monitor.statistics(gaussian(40000, rng, weights))
    assert 0.006 < np.mean(t2 > monitor.t2_limit) < 0.016
    assert 0.006 < np.mean(q > monitor.q_limit) < 0.016


def test_a_shift_in_a_low_variance_direction_raises_q_not_t2() -> None:
    rng = np.random.default_rng(6)
    weights = rng.normal(0.0, 2.0, size=(3, 12))
    monitor = fit_pca(gaussian(3000, rng, weights))
    smallest = np.linalg.eigh(np.cov(((gaussian(3000, rng, weights) - monitor.mean) / monitor.std).T))
    direction = smallest.eigenvectors[:, 0]  # (12,) in z-space, the least variance
    size = 1.5 * np.sqrt(monitor.q_limit)  # in z units: Q grows by size² = 2.25 x its limit
    assert size < 1.0 and size > 10 * np.sqrt(smallest.eigenvalues[0])  # < 1 channel std, >> this direction's
    shift = size * direction * monitor.std  # back to raw units
    t2, q = monitor.statistics(gaussian(5000, rng, weights) + shift)
    assert np.mean(q > monitor.q_limit) > 0.9
    assert np.mean(t2 > monitor.t2_limit) < 0.03


def test_components_and_matched_threshold() -> None:
    assert components_for(np.array([5.0, 3.0, 1.0, 1.0]), 0.8) == 2
    assert components_for(np.array([5.0, 3.0, 1.0, 1.0]), 0.81) == 3
    assert components_for(np.array([5.0, 3.0, 1.0, 1.0]), 1.0) == 4
    stat = np.arange(1.0, 101.0)
    assert matched_threshold(stat, 0.05) == 95.0 and np.mean(stat > 95.0) == 0.05
    assert matched_threshold(stat, 0.0) == 100.0
    with pytest.raises(ValueError, match="constant"):
        fit_pca(np.column_stack([np.arange(10.0), np.ones(10)]))


def test_quantiles_match_published_tables() -> None:
    assert normal_ppf(0.99) == pytest.approx(2.3263478740408408, abs=1e-12)
    assert normal_ppf(0.5) == pytest.approx(0.0, abs=1e-15)
    assert normal_ppf(1e-10) == pytest.approx(-6.361340902404056, abs=1e-9)
    assert f_ppf(0.95, 5, 10) == pytest.approx(3.3258, abs=1e-4)
    assert f_ppf(0.95, 1, 1) == pytest.approx(161.4476, abs=1e-3)
    assert f_ppf(0.99, 10, 20) == pytest.approx(3.3682, abs=1e-4)
    assert f_ppf(0.99, 2, 10) == pytest.approx(5 * (0.01 ** -0.2 - 1), rel=1e-10)  # closed form, d1 = 2
    assert betainc(1.0, 3.0, 0.3) == pytest.approx(1 - 0.7**3, rel=1e-12)


@pytest.mark.parametrize("module", [quantiles, tep_metrics, tep_pca, tep_plots])
def test_docstring_examples_run(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_plots_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    alert = np.zeros(300, bool)
    alert[120:200] = True
    fault = tep_plots.plot_fault(tmp_path / "plots" / "d01.png", rng.normal(size=(300, 3)), ["a", "b", "c"],
                                 rng.uniform(size=300), alert, rng.chisquare(3, 300), 9.0, 100, "d01")
    figs = {"rnnwatch": tep_figures({0: alert, 1: alert}, onset=100)}
    summary = tep_plots.plot_summary(tmp_path / "summary.png", figs)
    for png in (fault, summary):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="align"):
        tep_plots.plot_fault(tmp_path / "x.png", np.zeros((10, 3)), ["a", "b", "c"], np.zeros(10),
                             np.zeros(9, bool), np.zeros(10), 1.0, 5)


# --- end to end --------------------------------------------------------------------------------------

def test_evaluate_tep_explains_a_wrong_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "tep", "--tep-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "point --tep-dir at the data set" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_tep_on_the_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (TEP_DIR / "normal_history.csv").is_file():
        pytest.skip(f"TEP data not found at {TEP_DIR}; put it at ../shared/datasets/tep or set TEP_DIR")
    out = tmp_path / "tep"
    assert main(["evaluate", "tep", "--tep-dir", str(TEP_DIR), "--output-dir", str(out), "--no-plots",
                 "--device", "cpu"]) == 0
    report = json.loads((out / "tep.json").read_text())
    assert sorted(report["faults"], key=int) == [str(n) for n in range(1, 22)]
    detectors = {"rnnwatch", "pca_t2", "pca_q", "pca_t2_or_q", "pca_q_hindsight"}
    for per_detector in report["faults"].values():
        assert set(per_detector) == detectors
        for f in per_detector.values():
            assert 0.0 <= f["detection_rate"] <= 1.0 and 0.0 <= f["false_alarm_rate"] <= 1.0
    for overall in report["overall"].values():
        assert 0.0 <= overall["false_alarm_rate"] <= 1.0 and 0.0 <= overall["mean_detection_rate_18"] <= 1.0
    assert report["faults"]["1"]["pca_q"]["detection_rate"] > 0.9
    assert report["faults"]["1"]["pca_t2"]["detection_rate"] > 0.9
    assert report["overall"]["pca_q_hindsight"]["false_alarm_rate"] <= report["overall"]["rnnwatch"][
        "false_alarm_rate"]
    # the figures are recomputable from the replay outputs as written
    alerts = {n: written_alerts(out / f"d{n:02d}.csv", 500) for n in range(22)}
    assert all(len(a) == 960 for a in alerts.values())
    again = tep_report.figures_json({"rnnwatch": tep_figures(alerts)})
    assert again["overall"]["rnnwatch"] == report["overall"]["rnnwatch"]
    assert not (out / "plots").exists() and not (out / "summary.png").exists()
    assert "mean det (18)" in capsys.readouterr().out
