"""The compiled kernel scores as the torch path does: same scores (1e-5), alerts, events, drops, top
channel, on random fleets of 1 to 20 channels, GRU and LSTM, any batch shape; batched equals sequential."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_parity import CONFIG, Fleet, assert_same, batch, chunks, pipelines, stream

from streamer.scoring import relation
from streamer.scoring.kernel.half import to_bits, to_float
from streamer.scoring.readings import AlertEvent


@pytest.mark.slow  # compiles the kernel (about a minute cold) and steps two pipelines
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("channels", [(1, 1, 1), (4, 4, 2, 3), (8, 8, 1), (20, 3)])
def test_kernel_equals_torch_on_fleets_with_faults(cell: str, channels: tuple[int, ...]) -> None:
    rows = stream(Fleet(channels, 500, seed=sum(channels)))
    kernel, reference = pipelines(cell)
    events = 0
    for part in chunks(rows, np.random.default_rng(len(channels)), 150):
        b = batch(part)
        got, want = kernel.score(b), reference.score(b)
        assert_same(got, want)
        events += len(want.events)
    assert events >= 2 * len(channels)  # episodes opened and closed: the policy was exercised
    assert kernel.kernel_fallbacks == 0
    ids = sorted(reference.store.device_ids())
    mine, theirs = kernel.store.lookup(ids), reference.store.lookup(ids)
    for name in ("alert_state", "alert_hits", "alert_below", "alert_started_at", "alert_peak", "cal_count"):
        np.testing.assert_array_equal(kernel.store.cols[name][mine], reference.store.cols[name][theirs], name)
    np.testing.assert_allclose(kernel.store.cols["cal_mean"][mine], reference.store.cols["cal_mean"][theirs],
                               rtol=1e-4, atol=1e-5)
    # the relation's packed covariance cells and the level of its residuals, row by row
    for a, b in ((kernel.store, mine), (reference.store, theirs)):
        assert a.cells_of(b, "relation").size == sum(relation.cells(c) for c in channels)
    cells_k = kernel.store.blocks["relation"][kernel.store.cells_of(mine, "relation")]
    cells_t = reference.store.blocks["relation"][reference.store.cells_of(theirs, "relation")]
    np.testing.assert_allclose(cells_k.numpy(), cells_t.numpy(), rtol=1e-5, atol=1e-6)
    level_k = kernel.store.rows["rel_level"][kernel.store.rows_of(mine)[0]].float()
    level_t = reference.store.rows["rel_level"][reference.store.rows_of(theirs)[0]].float()
    np.testing.assert_allclose(level_k.numpy(), level_t.numpy(), rtol=2e-3, atol=1e-3)
    assert (level_t > 0).any() == any(c > 1 for c in channels)  # multichannel devices learned a level


@pytest.mark.slow  # compiles the kernel (about a minute cold) and steps two pipelines
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channels=st.lists(st.sampled_from([1, 2, 4, 8, 17]), min_size=1, max_size=4),
       steps=st.integers(40, 260), seed=st.integers(0, 10_000), largest=st.integers(1, 400),
       cell=st.sampled_from(["gru", "lstm"]))
def test_kernel_equals_torch_for_any_fleet_and_batch_shape(channels: list[int], steps: int, seed: int,
                                                          largest: int, cell: str) -> None:
    rows = stream(Fleet(tuple(channels), steps, seed))
    kernel, reference = pipelines(cell)
    for part in chunks(rows, np.random.default_rng(seed), largest):
        b = batch(part)
        assert_same(kernel.score(b), reference.score(b))


@pytest.mark.slow  # compiles the kernel (about a minute cold) and steps two pipelines
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_kernel_batched_equals_sequential(cell: str) -> None:
    """One batch of everything, batches of any size, and one reading at a time all score the same."""
    rows = stream(Fleet((4, 1, 8), 300, seed=5))
    whole, _ = pipelines(cell)
    together = whole.score(batch(rows))
    one, _ = pipelines(cell)
    singles = [one.score(batch([row])) for row in rows]
    np.testing.assert_allclose(together.scores, np.concatenate([s.scores for s in singles]), atol=1e-6)
    np.testing.assert_array_equal(together.alerting, np.concatenate([s.alerting for s in singles]))
    np.testing.assert_array_equal(together.status, np.concatenate([s.status for s in singles]))
    def key(e: AlertEvent) -> tuple[float, str, str]:
        return e.ts, e.device_id, e.state

    assert sorted(map(key, together.events)) == sorted(key(e) for s in singles for e in s.events)
    assert together.events and whole.kernel_fallbacks == 0


@pytest.mark.slow  # compiles the kernel (about a minute cold) and steps two pipelines
def test_clock_rebase_and_reshape_fall_back_to_the_waves() -> None:
    """A batch in which a device's clock re-bases, or its channel set changes, is scored by the waves
    (and counted); the next batches by the kernel again, still equal to the torch path."""
    kernel, reference = pipelines("gru", CONFIG)
    late = [("a", 1000.0 + 60 * k, [1.0 + k % 3, 2.0]) for k in range(30)]
    back = [("a", 10.0 + k, [1.0, 2.0]) for k in range(25)]  # clock went back: re-based at the 20th
    wider = [("a", 5000.0 + k, [1.0, 2.0, 3.0]) for k in range(6)]  # re-initialised at the 5th
    after = [("a", 9000.0 + 60 * k, [float(k % 5), 2.0, 3.0]) for k in range(20)]
    for part, fallbacks in ((late, 0), (back, 1), (wider, 2), (after, 2)):
        got, want = kernel.score(batch(part)), reference.score(batch(part))
        assert_same(got, want)
        assert kernel.kernel_fallbacks == fallbacks


def test_half_conversion_matches_numpy_bit_for_bit() -> None:
    every = np.arange(65536, dtype=np.uint16)
    values = every.view(np.float16)
    finite = np.isfinite(values)
    exact = values[finite].astype(np.float32)
    assert all(to_float(b) == v for b, v in zip(every[finite], exact, strict=True))
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(0, 1, 3000) * 10.0 ** rng.integers(-9, 6, 3000),
                         values[finite].astype(np.float64) + 1e-12, [6.0e-8, 2.98e-8, 65519.9, -65520.0]])
    want = xs.astype(np.float16).view(np.uint16)  # overflow to inf: intended
    got = np.array([to_bits(float(x)) for x in xs], dtype=np.uint16)
    np.testing.assert_array_equal(got, want)
