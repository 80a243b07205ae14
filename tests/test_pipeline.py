"""The scoring pipeline: batched equals sequential, event-time rules, drops, alerts and attribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.artifact import ModelArtifact, load
from model.forecaster import ForecasterConfig, RecurrentForecaster
from model.normaliser import NormaliserConfig
from streamer.scoring.alert_policy import AlertPolicyConfig
from streamer.scoring.calibration import STATE_SIGNALS, CalibrationConfig, Calibrator
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline, _wave_ranks
from streamer.scoring.readings import DropReason, ReadingBatch
from streamer.scoring.signals import SIGNALS, Signal
from streamer.scoring.state_store import StateStore


def _artifact(cell: str = "gru", seed: int = 0) -> ModelArtifact:
    torch.manual_seed(seed)
    model = RecurrentForecaster(ForecasterConfig(cell=cell, hidden_size=16))  # type: ignore[arg-type]
    return ModelArtifact(model=model.eval(), version=f"test-{cell}", normaliser=NormaliserConfig())


def _stream(n_devices: int, n_steps: int, seed: int = 1) -> list[tuple[str, float, list[float]]]:
    """Readings of devices with 1..3 channels, interleaved in a random (per-device ordered) order."""
    rng = np.random.default_rng(seed)
    per_device = []
    for d in range(n_devices):
        c = 1 + d % 3
        base = rng.normal(0, 5, c)
        per_device.append([(f"d{d}", 1000.0 + 60 * t, list(base + np.sin(t / 7 + d) + rng.normal(0, .3, c)))
                           for t in range(n_steps)])
    out, cursors = [], [0] * n_devices
    while any(cur < n_steps for cur in cursors):
        d = int(rng.choice([i for i in range(n_devices) if cursors[i] < n_steps]))
        out.append(per_device[d][cursors[d]])
        cursors[d] += 1
    return out


def _batch(rows: list[tuple[str, float, list[float]]]) -> ReadingBatch:
    return ReadingBatch.from_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


@pytest.mark.parametrize("cell", ["gru", pytest.param("lstm", marks=pytest.mark.slow)])
def test_batched_equals_sequential(cell: str) -> None:
    rows = _stream(n_devices=12, n_steps=90)
    batched = ScoringPipeline(_artifact(cell))
    chunks = [rows[i : i + 97] for i in range(0, len(rows), 97)]
    scores_b = np.concatenate([batched.score(_batch(chunk)).scores for chunk in chunks])
    assert max(batched.score(_batch(rows[:0])).waves, 0) == 0

    scores_s = np.empty(len(rows), dtype=np.float32)
    alone: dict[str, ScoringPipeline] = {}
    for i, row in enumerate(rows):  # every device in its own pipeline, one reading at a time
        pipe = alone.setdefault(row[0], ScoringPipeline(_artifact(cell)))
        scores_s[i] = pipe.score(_batch([row])).scores[0]

    np.testing.assert_allclose(scores_b, scores_s, atol=1e-5, rtol=0)
    assert np.isfinite(scores_b).all()
    assert (scores_b[-200:] > 0).any(), "past warm-up some scores must be non-zero"
    for dev, pipe in alone.items():
        rows_b, _ = batched.store.rows_of(np.array([batched.store.slot(dev)]))
        rows_s, _ = pipe.store.rows_of(np.array([pipe.store.slot(dev)]))
        torch.testing.assert_close(batched.store.rows["hidden"][rows_b], pipe.store.rows["hidden"][rows_s],
                                   atol=1e-5, rtol=0)


def test_waves_follow_per_device_order() -> None:
    slots = np.array([5, 3, 5, 5, 3, 9])
    np.testing.assert_array_equal(_wave_ranks(slots), [0, 0, 1, 2, 1, 0])
    pipe = ScoringPipeline(_artifact())
    out = pipe.score(_batch([("a", 1.0, [1.0]), ("b", 1.0, [1.0]), ("a", 2.0, [2.0]), ("a", 3.0, [3.0])]))
    assert out.waves == 3
    assert (out.status == DropReason.SCORED).all()


def test_event_time_and_validation_drops() -> None:
    pipe = ScoringPipeline(_artifact())
    out = pipe.score(ReadingBatch.from_rows(
        ["a", "a", "a", "b", "c", "c"],
        [10.0, 10.0, 5.0, 1.0, 1.0, 2.0],
        [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [float("nan")], [1.0], [1.0, 2.0]],
    ))
    assert [DropReason(s) for s in out.status] == [
        DropReason.SCORED, DropReason.OUT_OF_ORDER, DropReason.OUT_OF_ORDER,
        DropReason.NON_FINITE, DropReason.SCORED, DropReason.CHANNEL_MISMATCH,
    ]
    assert np.isnan(out.scores[1:4]).all() and np.isfinite(out.scores[[0, 4]]).all()
    assert out.dropped_counts() == {DropReason.OUT_OF_ORDER: 2, DropReason.NON_FINITE: 1,
                                    DropReason.CHANNEL_MISMATCH: 1}
    # a non-finite reading never touched the state: the device's normaliser saw nothing
    rows, _ = pipe.store.rows_of(np.array([pipe.store.slot("b")]))
    assert float(pipe.store.rows["norm_count"][rows].sum()) == 0.0


def test_named_channels_must_stay_the_same() -> None:
    pipe = ScoringPipeline(_artifact())
    ab, ba = ("a", "b"), ("b", "c")
    batch = ReadingBatch.from_rows(["d", "d"], [1.0, 2.0], [[1.0, 2.0], [1.0, 2.0]], channels=[ab, ba])
    out = pipe.score(batch)
    assert [DropReason(s) for s in out.status] == [DropReason.SCORED, DropReason.CHANNEL_MISMATCH]


def test_offsets_already_applied_are_skipped() -> None:
    pipe = ScoringPipeline(_artifact())
    first = ReadingBatch.from_rows(["a", "a"], [1.0, 2.0], [[1.0], [2.0]], partitions=[0, 0], offsets=[7, 8])
    pipe.score(first)
    again = ReadingBatch.from_rows(["a", "a"], [2.0, 3.0], [[2.0], [3.0]], partitions=[0, 0], offsets=[8, 9])
    out = pipe.score(again)
    assert [DropReason(s) for s in out.status] == [DropReason.ALREADY_APPLIED, DropReason.SCORED]


def test_gap_resets_recurrent_state_but_keeps_normaliser() -> None:
    pipe = ScoringPipeline(_artifact(), PipelineConfig(gap_reset_s=3600))
    rows = [("a", 60.0 * t, [float(np.sin(t))]) for t in range(30)]
    pipe.score(_batch(rows))
    slot = pipe.store.slot("a")
    r, _ = pipe.store.rows_of(np.array([slot]))
    assert float(pipe.store.rows["hidden"][r].abs().sum()) > 0
    pipe.score(_batch([("a", 60.0 * 29 + 7200, [0.5])]))  # two hours of silence
    assert int(pipe.store.cols["steps"][slot]) == 1  # stepped once from a fresh state
    assert float(pipe.store.rows["norm_count"][r][0]) == 31  # the normaliser kept counting


def _shipped() -> ScoringPipeline:
    return ScoringPipeline(load())


def _sine_stream(n: int, seed: int, spike_at: int | None = None, shift_at: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 0.3, n)
    if spike_at is not None:
        y[spike_at] += 8
    if shift_at is not None:
        y[shift_at:] += 6
    return y


def _episodes(pipe: ScoringPipeline, values: np.ndarray, device: str = "dev") -> tuple[np.ndarray, list]:
    events = []
    scores = []
    for start in range(0, len(values), 50):
        chunk = values[start : start + 50]
        out = pipe.score(ReadingBatch.from_rows([device] * len(chunk),
                                                60.0 * np.arange(start, start + len(chunk)),
                                                [[v] for v in chunk]))
        events += out.events
        scores.append(out.scores)
    return np.concatenate(scores), events


@pytest.mark.slow  # five devices, 2,000 readings each
def test_noise_stays_below_alert_threshold() -> None:
    """Five noisy sines streamed together (one wave steps all five): no score reaches the threshold."""
    pipe = _shipped()
    threshold = pipe.policy.config.open_threshold
    streams = np.stack([_sine_stream(2000, seed) for seed in range(5)], 1)  # (2000, 5)
    devices = [f"noise-{seed}" for seed in range(5)]
    scores, events = [], []
    for start in range(0, 2000, 200):
        part = streams[start : start + 200]  # (t, 5), flattened time-major: devices interleave
        ts = np.repeat(60.0 * np.arange(start, start + len(part)), 5)
        out = pipe.score(ReadingBatch.from_rows(devices * len(part), ts, [[v] for v in part.reshape(-1)]))
        scores.append(out.scores.reshape(-1, 5))
        events += out.events
    top = np.nanmax(np.concatenate(scores), axis=0)
    assert (top < threshold).all(), f"max score per seed {np.round(top, 3)}"
    assert events == []


def test_planted_spike_raises_exactly_one_episode_that_recovers() -> None:
    at = 1500
    values = _sine_stream(2500, 11, spike_at=at)
    scores, events = _episodes(_shipped(), values)
    firing = [e for e in events if e.state == "firing"]
    assert len(firing) == 1, [(e.state, e.ts / 60) for e in events]
    assert at * 60 <= firing[0].ts <= (at + 5) * 60
    assert firing[0].started_at == firing[0].ts
    assert firing[0].channels[0].direction == "above" and firing[0].channels[0].share == 1.0
    assert scores[:at].max() < scores[at : at + 5].max()
    resolved = [e for e in events if e.state == "resolved"]
    assert [e.reason for e in resolved] == ["recovered"]
    # a one-reading spike holds the episode for the held alarm's memory plus the resolve span, not longer
    assert resolved[0].duration_s == resolved[0].ts - firing[0].ts < 2 * 3600


def test_persistent_shift_keeps_one_episode_open_until_it_ends() -> None:
    """The alert means "abnormal now": open for the whole shift, then exactly one `recovered`."""
    at, until = 1600, 2000
    values = _sine_stream(2600, 11)
    values[at:until] += 6
    _, events = _episodes(_shipped(), values)
    assert [e.state for e in events] == ["firing", "resolved"], [(e.state, e.ts / 60) for e in events]
    assert at * 60 <= events[0].ts <= (at + 10) * 60
    assert until * 60 <= events[1].ts <= (until + 60) * 60
    assert events[1].reason == "recovered"
    assert events[1].duration_s == pytest.approx(events[1].ts - events[0].ts)


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_a_young_device_never_says_recovered_while_its_shift_goes_on(path: str) -> None:
    """A device younger than a day does not lock its alarm to the normal it held (it has not seen a
    whole cycle): the live normal learns a long shift and the episode closes while the shift goes on.
    That close must not claim the device is back: against the normal of before it would still fire."""
    at = 700  # 11.7 hours of readings: not mature
    values = _sine_stream(1400, 11)
    values[at:] += 8
    pipe = ScoringPipeline(load(), PipelineConfig(path=path))
    _, events = _episodes(pipe, values)
    assert [e.state for e in events] == ["firing", "resolved"], [(e.state, e.ts / 60) for e in events]
    assert at * 60 <= events[0].ts <= (at + 5) * 60 and events[1].ts < 1300 * 60  # closed during the shift
    assert events[1].reason == "accepted_new_normal"
    spike = _sine_stream(1400, 11, spike_at=at)  # the same young device after a one-reading spike
    _, events = _episodes(ScoringPipeline(load(), PipelineConfig(path=path)), spike)
    assert [(e.state, e.reason) for e in events] == [("firing", None), ("resolved", "recovered")]


@pytest.mark.slow  # 3,600 readings of one device
def test_permanent_shift_is_accepted_as_the_new_normal_after_the_maximum() -> None:
    at = 1600
    values = _sine_stream(3600, 11)
    values[at:] += 6
    policy = AlertPolicyConfig(max_episode_s=6 * 3600)
    pipe = ScoringPipeline(load(), PipelineConfig(policy=policy))
    _, events = _episodes(pipe, values)
    assert [e.state for e in events] == ["firing", "resolved"], [(e.state, e.ts / 60) for e in events]
    assert events[1].reason == "accepted_new_normal"
    assert events[1].duration_s == pytest.approx(6 * 3600, abs=60)
    slot = np.array([pipe.store.slot("dev")])
    assert not pipe.calibrator.holding(pipe.store, slot).any()  # the hold ended ...
    assert pipe.store.cols["cal_count"][slot[0], :Signal.RELATION].min() > 3000  # ... the live normal stays


def test_a_firing_device_does_not_learn_the_fault_as_normal() -> None:
    """The alarm of an open episode judges against the normal held from just before it opened: that held
    normaliser and calibration equal the live ones of before the fault and do not move while it lasts,
    while the live ones (what the published score is measured against) go on learning the fault."""
    at = 1600
    values = _sine_stream(2200, 11)
    values[at:] += 6
    pipe = _shipped()
    _episodes(pipe, values[:at])
    slot = pipe.store.slot("dev")
    rows = torch.from_numpy(pipe.store.rows_of(np.array([slot]))[0])
    cols, rows_of = pipe.store.cols, pipe.store.rows
    state = list(STATE_SIGNALS)
    live_cal = cols["cal_mean"][slot][state].copy(), np.sqrt(cols["cal_var"][slot][state])
    live_norm = rows_of["norm_mean"][rows].clone(), rows_of["norm_var"][rows].clone()
    out = pipe.score(ReadingBatch.from_rows(["dev"], np.array([60.0 * at]), [[values[at]]]))
    assert out.alerting[0] and cols["alert_state"][slot] == 1  # the fault's first reading opens it
    held = (cols["cal_held_mean"][slot].copy(), cols["cal_held_std"][slot].copy(),
            rows_of["held_mean"][rows].clone(), rows_of["held_sd"][rows].clone())
    np.testing.assert_allclose(held[0], live_cal[0], rtol=1e-3)  # float16
    floor = pipe.calibrator.config.min_std
    np.testing.assert_allclose(held[1][:4], np.maximum(live_cal[1][:4], floor), rtol=1e-3)
    assert np.isnan(held[1][4:]).all()  # one channel: no relation to hold
    assert torch.equal(held[2], live_norm[0].to(torch.float32))
    assert torch.allclose(held[3], live_norm[1].sqrt())

    scores, _ = _episodes_from(pipe, values, at + 1)
    assert cols["alert_state"][slot] == 1
    np.testing.assert_array_equal(cols["cal_held_mean"][slot], held[0])
    np.testing.assert_array_equal(cols["cal_held_std"][slot], held[1])
    assert torch.equal(rows_of["held_mean"][rows], held[2]) and torch.equal(rows_of["held_sd"][rows], held[3])
    assert float(rows_of["norm_mean"][rows][0] - live_norm[0][0]) > 1.0  # the live normal learned the shift
    assert scores[-100:].max() < 0.5  # so the published score has faded while the alert stays open


def _episodes_from(pipe: ScoringPipeline, values: np.ndarray, start: int) -> tuple[np.ndarray, list]:
    """Score values[start:] on the 60 s timeline of `_episodes`, in chunks of 50."""
    scores, events = [], []
    for first in range(start, len(values), 50):
        chunk = values[first : first + 50]
        ts = 60.0 * np.arange(first, first + len(chunk))
        out = pipe.score(ReadingBatch.from_rows(["dev"] * len(chunk), ts, [[v] for v in chunk]))
        scores.append(out.scores)
        events += out.events
    return np.concatenate(scores), events


@pytest.mark.slow  # one device, 2,400 readings
def test_relation_only_fault_opens_an_episode() -> None:
    """Two channels that stop moving together, each inside its usual range, are caught by the relation."""
    rng = np.random.default_rng(5)
    n = 2400
    common = 2 * np.sin(2 * np.pi * np.arange(n) / 150)  # a shared driver
    at = 1650  # a zero crossing: b flips without a jump, and stays a sine of the same range
    a = common + rng.normal(0, 0.1, n)
    b = common + rng.normal(0, 0.1, n)
    b[at:] = -common[at:] + rng.normal(0, 0.1, n - at)  # b now moves against a, same range
    values = np.stack([a, b, rng.normal(0, 1, n)], 1)
    pipe = _shipped()
    events = []
    for start in range(0, n, 100):
        sl = slice(start, start + 100)
        names = [("a", "b", "c")] * len(values[sl])
        out = pipe.score(ReadingBatch.from_rows(["rel"] * len(values[sl]), 60.0 * np.arange(n)[sl],
                                                values[sl].tolist(), channels=names))
        events += out.events
    firing = [e for e in events if e.state == "firing" and e.ts >= at * 60]
    assert firing and firing[0].ts <= (at + 60) * 60, ([(e.state, e.ts / 60) for e in events], at)
    top = max(firing[0].channels, key=lambda c: c.share)
    assert top.channel in ("a", "b")  # the channels that broke the relation, not the independent one
    # each channel alone is an ordinary sine again: only the relation keeps the episode open
    assert pipe.store.cols["alert_state"][pipe.store.slot("rel")] == 1


def test_four_channel_state_fits_in_one_kib() -> None:
    assert _shipped().store.bytes_per_device(4) <= 1024


@pytest.mark.slow  # two replays of 900 readings
def test_alert_ids_are_deterministic_across_replays() -> None:
    values = _sine_stream(900, 11, spike_at=600)
    _, first = _episodes(_shipped(), values)
    _, second = _episodes(_shipped(), values)
    assert first and [e.alert_id for e in first] == [e.alert_id for e in second]
    resolved = [e for e in first if e.state == "resolved"]
    assert resolved and resolved[0].alert_id == first[0].alert_id  # one id per episode


@pytest.mark.slow  # one device, 2,000 readings
def test_attribution_names_the_faulty_channel() -> None:
    rng = np.random.default_rng(3)
    n, at = 1800, 1500
    t = np.arange(n)
    values = np.stack([5 + np.sin(2 * np.pi * t / 96 + k) + rng.normal(0, .2, n) for k in range(3)], 1)
    values[at, 1] -= 9  # channel "b" drops
    pipe = _shipped()
    events = []
    for start in range(0, n, 100):
        sl = slice(start, start + 100)
        out = pipe.score(ReadingBatch.from_rows(["m"] * len(t[sl]), 60.0 * t[sl], values[sl].tolist(),
                                                channels=[("a", "b", "c")] * len(t[sl])))
        events += out.events
    firing = [e for e in events if e.state == "firing"]
    assert len(firing) == 1
    shares = {c.channel: c for c in firing[0].channels}
    assert abs(sum(c.share for c in firing[0].channels) - 1) < 1e-5
    assert max(shares.values(), key=lambda c: c.share).channel == "b"
    assert shares["b"].direction == "below"


@pytest.mark.parametrize("margin", [0.05, pytest.param(float("inf"), marks=pytest.mark.slow)])
def test_a_value_beyond_the_running_range_scores_high_at_once(margin: float) -> None:
    """Bounded noise in [0, 1], then 1.2: beyond the running max by 20 % of the range, though only ~2.4
    sigma from the mean. The out-of-range rule lifts it to at least `range_lift` (0.5); without the rule
    (margin inf) the same reading scores well below it."""
    pipe = ScoringPipeline(load(), PipelineConfig(range_margin=margin))
    values = np.random.default_rng(3).uniform(0.0, 1.0, 2000)
    pipe.score(ReadingBatch.from_rows(["dev"] * len(values), 60.0 * np.arange(len(values)),
                                      [[v] for v in values]))
    out = pipe.score(ReadingBatch.from_rows(["dev"], np.array([60.0 * len(values)]), [[1.2]]))
    if margin < 1:
        assert out.scores[0] >= 0.5
    else:
        assert out.scores[0] < 0.4


def test_the_onset_memory_learns_the_lifted_score() -> None:
    """An out-of-range reading that calibrates quiet still scores >= range_lift, and the peak memory
    learns that lifted score (so a reading after it that is only as loud is damped)."""
    cal = Calibrator(CalibrationConfig())
    store = StateStore(4, columns=Calibrator.columns())
    slots, _ = store.slots_for(["d"], np.array([1], np.int16), [None])
    quiet = np.zeros((1, SIGNALS))
    cold = cal.score(store, slots, quiet, quiet, np.array([True]))
    assert cold.score[0] == 0.0, "warm-up: a device whose calibration has not learned scores 0"
    rng = np.random.default_rng(0)
    for _ in range(cal.config.skip + cal.config.warmup):  # warm the calibration up on ordinary evidence
        noise = rng.random((1, SIGNALS))
        cal.learn(store, slots, noise, cal.score(store, slots, noise, noise, np.array([False])))
    first = cal.score(store, slots, quiet, quiet, np.array([True]))
    assert first.score[0] >= cal.config.range_lift and first.alarm[0] == 0.0
    cal.learn(store, slots, quiet, first)
    assert store.cols["cal_peak"][slots][0] >= cal.config.range_lift


@pytest.mark.slow  # 1,200 readings, 20 a call
def test_a_young_firing_device_keeps_its_relation_covariance() -> None:
    """A device too young to lock its alarm to a held normal (it holds one only to label the close) still
    does not teach its channels' covariance the fault while its episode is open: the cells stay as they
    were at the opening reading, and learn again after."""
    rng = np.random.default_rng(5)
    n, at = 1200, 900
    common = 2 * np.sin(2 * np.pi * np.arange(n) / 150)
    a, b = common + rng.normal(0, 0.1, n), common + rng.normal(0, 0.1, n)
    b[at:] = -common[at:] + rng.normal(0, 0.1, n - at)
    values = np.stack([a, b], 1)
    pipe = ScoringPipeline(load(), PipelineConfig(mature_s=math.inf))  # never old enough to hold
    slot, opened_cells, frozen = None, None, []
    for i in range(0, n, 20):  # the cells are compared after every 20 readings
        pipe.score(ReadingBatch.from_rows(["young"] * 20, 60.0 * np.arange(i, i + 20),
                                          values[i : i + 20].tolist(), channels=[("a", "b")] * 20))
        slot = pipe.store.slot("young")
        cells = pipe.store.blocks["relation"][torch.from_numpy(pipe.store.cells_of(np.array([slot]),
                                                                                   "relation"))].clone()
        firing = pipe.store.cols["alert_state"][slot] == 1
        assert pipe.calibrator.holding(pipe.store, np.array([slot])).any() == firing
        if firing and opened_cells is None:
            opened_cells = cells
        elif firing:
            frozen.append(torch.equal(cells, opened_cells))
    assert opened_cells is not None and len(frozen) > 5, "the relation break opened no episode"
    assert all(frozen)


@pytest.mark.parametrize("path", ["torch", "kernel"])
def test_a_stuck_channel_is_the_one_an_alert_attributes(path: str) -> None:
    """The repeat run is device-level evidence, but an alert it opens names the channel that repeats
    (each channel's share is its own run beyond the grace), not the one with the largest forecast error."""
    rng = np.random.default_rng(3)
    n, at = 500, 420
    values = rng.normal(0, 1, (n, 3)).round(3)
    values[at:, 1] = values[at, 1]  # channel b sticks
    pipe = ScoringPipeline(load(), PipelineConfig(path=path))
    events = []
    for i in range(0, n, 50):
        out = pipe.score(ReadingBatch.from_rows(["s"] * 50, 60.0 * np.arange(i, i + 50),
                                                values[i : i + 50].tolist(), channels=[("a", "b", "c")] * 50))
        events += out.events
    firing = [e for e in events if e.state == "firing" and e.ts >= at * 60]
    assert firing, [(e.state, e.ts / 60) for e in events]
    shares = {c.channel: c.share for c in firing[0].channels}
    assert shares == {"a": 0.0, "b": 1.0, "c": 0.0}, (firing[0].ts / 60, shares)
