"""A device's clock and channel set under hostile input: re-based and re-initialised, never silenced for good.

The pipeline-level rules of `streamer.scoring.event_time` and `streamer.scoring.shape`, and the property
that makes them safe to batch: scoring readings in one batch equals scoring them one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.scoring.factory import build_pipeline
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline
from streamer.scoring.readings import DropReason, ReadingBatch

MISMATCH, OUT_OF_ORDER = DropReason.CHANNEL_MISMATCH, DropReason.OUT_OF_ORDER
Row = tuple[str, float, Sequence[float], tuple[str, ...] | None]  # device, ts, values, names (None: a list)


def pipeline(**config: Any) -> ScoringPipeline:
    return build_pipeline(None, "cpu", PipelineConfig(**config))


def batch(rows: Sequence[Row]) -> ReadingBatch:
    return ReadingBatch.from_rows([r[0] for r in rows], [r[1] for r in rows], [list(r[2]) for r in rows],
                                  [r[3] for r in rows])


def statuses(pipe: ScoringPipeline, rows: Sequence[Row]) -> list[int]:
    return pipe.score(batch(rows)).status.tolist()


def series(device: str, start: int, count: int, width: int = 2, names: tuple[str, ...] | None = None,
           t0: float = 1e9) -> list[Row]:
    return [(device, t0 + 60.0 * (start + i), [float((start + i) % 5 + c) for c in range(width)], names)
            for i in range(count)]


# ---- channel shape ----------------------------------------------------------------------------------------
def test_a_list_is_never_paired_by_position_with_named_channels():
    pipe = pipeline()
    assert statuses(pipe, series("d", 0, 3, names=("a", "b"))) == [0, 0, 0]
    assert statuses(pipe, series("d", 3, 2)) == [MISMATCH, MISMATCH]
    positional = pipeline()
    assert statuses(positional, series("p", 0, 3) + series("p", 3, 2)) == [0] * 5  # always lists: fine


def test_a_run_of_one_new_shape_reinitialises_and_the_old_shape_breaks_the_run():
    pipe = pipeline(reshape_after=3)
    assert statuses(pipe, series("d", 0, 4)) == [0] * 4
    flip_flop = [r for i in range(4)
                 for r in (series("d", 4 + 2 * i, 1, width=3) + series("d", 5 + 2 * i, 1))]
    assert statuses(pipe, flip_flop) == [MISMATCH, 0] * 4  # two producers interleaving: never re-initialised
    scored = pipe.score(batch(series("d", 20, 5, width=3)))
    assert scored.status.tolist() == [MISMATCH, MISMATCH, 0, 0, 0] and scored.reshaped == 1
    slot = pipe.store.slot("d")
    assert pipe.store.cols["n_channels"][slot] == 3 and pipe.store.cols["steps"][slot] == 3
    assert statuses(pipe, series("d", 30, 2)) == [MISMATCH, MISMATCH]  # the old shape is now the wrong one


def test_reinitialising_resets_the_state_but_keeps_the_clock_and_offset():
    pipe = pipeline(reshape_after=1)
    pipe.score(batch(series("d", 0, 50)))
    slot = pipe.store.slot("d")
    pipe.store.cols["source_offset"][slot] = 41
    scored = pipe.score(batch(series("d", 50, 1, width=3, names=("x", "y", "z"))))
    assert scored.status.tolist() == [0] and scored.reshaped == 1 and scored.scores[0] == 0.0
    cols = pipe.store.cols
    assert cols["last_ts"][slot] == 1e9 + 60 * 50 and cols["source_offset"][slot] == 41
    assert cols["steps"][slot] == 1 and pipe.store.channel_names(slot) == ("x", "y", "z")
    rows = pipe.store.rows_of(np.array([slot]))[0]
    assert pipe.store.rows["norm_count"][rows].tolist() == [1.0, 1.0, 1.0]  # a new device's normaliser


# ---- event time ------------------------------------------------------------------------------------------
def test_a_run_of_older_readings_rebases_the_clock_and_keeps_the_normaliser():
    pipe = pipeline(rebase_after=4)
    pipe.score(batch(series("gw", 0, 40)))
    slot = pipe.store.slot("gw")
    rows = pipe.store.rows_of(np.array([slot]))[0]
    count = pipe.store.rows["norm_count"][rows].tolist()
    interrupted = series("gw", -100, 2) + series("gw", 40, 1) + series("gw", -98, 2)
    assert statuses(pipe, interrupted) == [OUT_OF_ORDER, OUT_OF_ORDER, 0, OUT_OF_ORDER, OUT_OF_ORDER]
    scored = pipe.score(batch(series("gw", -96, 6)))  # the run goes on across batches: 3, then 4 re-bases
    assert scored.status.tolist() == [OUT_OF_ORDER, 0, 0, 0, 0, 0] and scored.rebased == 1
    assert pipe.store.cols["last_ts"][slot] == 1e9 + 60 * (-96 + 5)
    assert pipe.store.rows["norm_count"][rows].tolist() == [c + 6 for c in count]  # kept, then 6 more
    assert pipe.store.cols["steps"][slot] == 5  # the recurrent state started again at the re-basing reading


def test_duplicates_count_as_older_readings():
    pipe = pipeline(rebase_after=3)
    once = series("d", 0, 1)
    assert statuses(pipe, once * 4) == [0, OUT_OF_ORDER, OUT_OF_ORDER, 0]  # the third repeat re-bases


# ---- batched equals sequential, whatever the shapes and clocks do --------------------------------------
SHAPE_CHOICES: list[tuple[int, tuple[str, ...] | None]] = [(2, None), (3, None), (2, ("a", "b")),
                                                          (2, ("a", "c"))]


@st.composite
def hostile_streams(draw: st.DrawFn) -> list[Row]:
    rows: list[Row] = []
    clocks = {"d0": 0, "d1": 0}
    for _ in range(draw(st.integers(1, 40))):
        device = draw(st.sampled_from(sorted(clocks)))
        width, names = draw(st.sampled_from(SHAPE_CHOICES))
        clocks[device] += draw(st.sampled_from([1, 1, 1, 0, -50]))  # mostly forward, some repeats, jumps back
        values = [draw(st.floats(-5, 5, allow_nan=False)) for _ in range(width)]
        rows.append((device, 1e9 + 60.0 * clocks[device], values, names))
    return rows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=hostile_streams(), reshape_after=st.integers(1, 3), rebase_after=st.integers(1, 3))
def test_one_batch_equals_one_reading_at_a_time(rows, reshape_after, rebase_after):
    together = pipeline(reshape_after=reshape_after, rebase_after=rebase_after).score(batch(rows))
    alone = pipeline(reshape_after=reshape_after, rebase_after=rebase_after)
    one_by_one = [alone.score(batch([row])) for row in rows]
    assert together.status.tolist() == [int(s.status[0]) for s in one_by_one]
    np.testing.assert_allclose(together.scores, [s.scores[0] for s in one_by_one], atol=1e-6, equal_nan=True)
    assert together.reshaped == sum(s.reshaped for s in one_by_one)
    assert together.rebased == sum(s.rebased for s in one_by_one)


@pytest.mark.parametrize("bad", [0, -1])
def test_the_run_lengths_must_be_positive(bad):
    with pytest.raises(ValueError, match="must be >= 1"):
        pipeline(reshape_after=bad)
    with pytest.raises(ValueError, match="must be >= 1"):
        pipeline(rebase_after=bad)


def test_a_reinitialised_device_keeps_the_checkpointers_bookkeeping():
    from streamer.checkpoint import state_codec
    from streamer.scoring import shape

    assert shape.BOOKKEEPING_PREFIX == state_codec.BOOKKEEPING_PREFIX
