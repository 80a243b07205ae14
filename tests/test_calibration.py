"""The calibrator on its own: warm-up, ranked signals, onset memory, protect gate, held normal."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.scoring.calibration import (
    FIRE_LEVEL,
    RANKED_SIGNALS,
    STATE_SIGNALS,
    CalibrationConfig,
    Calibrator,
    squash,
)
from streamer.scoring.signals import SIGNALS, Signal
from streamer.scoring.state_store import StateStore

CFG = CalibrationConfig(warmup=20, skip=2)


def _store(devices: int) -> tuple[StateStore, np.ndarray]:
    store = StateStore(8, columns=Calibrator.columns())
    ids = [f"d{i}" for i in range(devices)]
    slots, _ = store.slots_for(ids, np.ones(devices, dtype=np.int64), [None] * devices)
    return store, slots


def _teach(cal: Calibrator, store: StateStore, slots: np.ndarray, readings: int, seed: int = 0) -> None:
    """Readings of noisy, unremarkable evidence (every signal near 1) for every device."""
    rng = np.random.default_rng(seed)
    for _ in range(readings):
        live = 1.0 + 0.1 * rng.standard_normal((len(slots), SIGNALS))
        cal.learn(store, slots, live, cal.score(store, slots, live, live))


def _evidence(m: int, signal: Signal, value: float) -> np.ndarray:
    live = np.ones((m, SIGNALS))
    live[:, signal] = value
    return live


def test_a_device_scores_zero_until_warmed_up() -> None:
    cal = Calibrator(CFG)
    store, slots = _store(1)
    _teach(cal, store, slots, CFG.skip + CFG.warmup - 1)
    young = cal.score(store, slots, _evidence(1, Signal.DEVIATION, 1e3), _evidence(1, Signal.DEVIATION, 1e3))
    assert young.score[0] == 0.0 and young.alarm[0] == 0.0
    _teach(cal, store, slots, 1)
    ready = cal.score(store, slots, _evidence(1, Signal.DEVIATION, 1e3), _evidence(1, Signal.DEVIATION, 1e3))
    assert ready.score[0] > 0.9 and ready.alarm[0] > 0.9


def test_the_score_ranks_every_signal_but_the_forecast_error_which_the_alarm_still_watches() -> None:
    assert Signal.FORECAST not in RANKED_SIGNALS and len(RANKED_SIGNALS) == SIGNALS - 1
    cal = Calibrator(CFG)
    store, slots = _store(2)
    _teach(cal, store, slots, 100)
    live = np.vstack([_evidence(1, Signal.FORECAST, 50.0), _evidence(1, Signal.LEVEL, 50.0)])
    out = cal.score(store, slots, live, live)
    assert out.alarm[0] > 0.9 and out.signal[0] == Signal.FORECAST  # the alert sees the forecast miss
    assert out.score[0] < 0.05  # the published ranking does not
    assert out.score[1] > 0.9 and out.alarm[1] > 0.9  # any other signal counts for both


def test_a_score_that_does_not_beat_the_recent_peak_is_damped() -> None:
    cal = Calibrator(CFG)
    store, slots = _store(1)
    _teach(cal, store, slots, 100)
    live = _evidence(1, Signal.LEVEL, 30.0)
    first = cal.score(store, slots, live, live)
    cal.learn(store, slots, live, first)
    second = cal.score(store, slots, live, live)
    assert second.score[0] < first.score[0]
    assert second.score[0] == second.alarm[0] * (1 - CFG.damp)  # damped; the alarm is not


def test_out_of_range_lifts_the_score_not_the_alarm() -> None:
    cal = Calibrator(CFG)
    store, slots = _store(1)
    _teach(cal, store, slots, 100)
    live = _evidence(1, Signal.LEVEL, 1.0)
    out = cal.score(store, slots, live, live, out_of_range=np.array([True]))
    assert out.score[0] >= CFG.range_lift and out.alarm[0] < 0.1
    assert out.remembered[0] == out.score[0]


def _step(cal: Calibrator, store: StateStore, slots: np.ndarray, live: np.ndarray,
          out_of_range: np.ndarray | None) -> tuple[float, bool]:
    """Score and learn one reading; its published score and whether it fired."""
    out = cal.score(store, slots, live, live, out_of_range=out_of_range)
    cal.learn(store, slots, live, out)
    return float(out.score[0]), bool(out.fired[0])


@pytest.mark.parametrize("refractory", [3, 0])
def test_a_repeat_inside_the_refractory_period_fires_only_if_it_is_worse(refractory: int) -> None:
    """Edge trigger: out-of-range readings in a row each score above FIRE_LEVEL; only the first fires, a
    repeat within `refractory` readings is published just below the level unless it beats the latest
    fire by `refire`; after the period the same reading fires again. 0 readings: every high score fires."""
    cal = Calibrator(CalibrationConfig(warmup=20, skip=2, refractory=refractory))
    store, slots = _store(1)
    _teach(cal, store, slots, 100)
    quiet, mild, worse = (_evidence(1, Signal.LEVEL, v) for v in (1.0, 2.0, 1e3))
    outside = np.array([True])
    first, fired = _step(cal, store, slots, mild, outside)
    assert first >= FIRE_LEVEL and fired
    repeat, fired = _step(cal, store, slots, mild, outside)
    if not refractory:
        assert repeat >= FIRE_LEVEL and fired
        return
    assert repeat < FIRE_LEVEL and not fired  # it would have scored >= the level: a repeat
    assert _step(cal, store, slots, worse, outside)[1], "a repeat that beats the latest fire by refire fires"
    assert not _step(cal, store, slots, worse, outside)[1]
    for _ in range(refractory):
        assert _step(cal, store, slots, quiet, None)[0] < FIRE_LEVEL
    again, fired = _step(cal, store, slots, mild, outside)
    assert again >= FIRE_LEVEL and fired  # the period is over


def test_the_protect_gate_keeps_an_outlier_from_teaching_the_distribution() -> None:
    gated, open_gate = Calibrator(CFG), Calibrator(CalibrationConfig(warmup=20, skip=2, protect_z=1e9))
    results = []
    for cal in (gated, open_gate):
        store, slots = _store(1)
        _teach(cal, store, slots, 100)
        live = _evidence(1, Signal.LEVEL, 1e6)
        cal.learn(store, slots, live, cal.score(store, slots, live, live))
        results.append(float(store.cols["cal_mean"][slots[0], Signal.LEVEL]))
    assert results[0] < 10.0 < results[1]


def test_a_held_normal_keeps_alarming_while_the_live_one_learns_the_fault() -> None:
    cal = Calibrator(CFG)
    store, slots = _store(1)
    _teach(cal, store, slots, 100)
    cal.hold(store, slots)
    assert cal.holding(store, slots)[0]
    fault = _evidence(1, Signal.LEVEL, 20.0)
    for _ in range(3000):  # long enough for the live distribution to take the fault as usual
        cal.learn(store, slots, fault, cal.score(store, slots, fault, fault))
    out = cal.score(store, slots, fault, fault)
    assert out.alarm[0] > 0.9 and out.signal[0] in STATE_SIGNALS  # against the normal of before
    assert out.score[0] < 0.2  # the live ranking has learned it
    cal.release(store, slots)
    assert not cal.holding(store, slots)[0]
    assert cal.score(store, slots, fault, fault).alarm[0] < 0.2


def test_squash_is_monotone_and_half_at_z_half() -> None:
    z = np.array([-1.0, 0.0, 5.0, 10.0, 1e4])
    s = squash(z, 10.0)
    assert s[0] == s[1] == 0.0 and s[3] == 0.5 and np.all(np.diff(s[1:]) > 0) and s[-1] < 1.0
