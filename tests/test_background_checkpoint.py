"""Background checkpoints: scoring goes on while a snapshot is written; commits wait for its acknowledgement.

The changelog is test_checkpoint's in-memory fake, with a producer whose flush can be held back (a
slow broker), so each test controls exactly when a background write completes.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from test_checkpoint import (
    PARTS,
    TOPIC,
    FakeLog,
    Member,
    _last_offsets,
    _Producer,
    assert_matches,
    feed,
    replay_from,
    stream,
    uninterrupted_scores,
)

from streamer.checkpoint.changelog import ChangelogReader, ChangelogWriter
from streamer.checkpoint.manager import StateManager
from streamer.checkpoint.snapshot import take_snapshot
from streamer.checkpoint.state_codec import decode_state, encode_snapshot, encode_states
from streamer.scoring.factory import build_pipeline
from streamer.service.metrics import Metrics


class SlowLog(FakeLog):
    """A fake changelog whose producer's flush waits until `gate` is set (records land on send)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.flushing = threading.Event()  # a flush is waiting on the gate

    def producer(self) -> Any:
        self.producers += 1
        return _SlowProducer(self)


class _SlowProducer(_Producer):
    log: SlowLog

    def flush(self, timeout: float | None = None) -> None:
        self.log.flushing.set()
        assert self.log.gate.wait(10), "the test never opened the gate"


def slow_manager(log: FakeLog, committed: dict[int, int]) -> StateManager:
    """A manager owning both partitions (restored: empty), checkpointing only when `due` says so."""
    pipe = build_pipeline(None, "cpu")
    state = StateManager(pipe, ChangelogWriter(log.producer, TOPIC, chunk=4),
                         ChangelogReader(log.consumer, TOPIC), interval_s=1e9, max_devices=1_000, ttl_s=1e9,
                         commit=committed.update, metrics=Metrics())
    state.on_assigned([TopicPartition("r", p) for p in PARTS])
    state.restore_pending()
    return state


def due(state: StateManager) -> None:
    """The checkpoint interval is over (the next one is due until a checkpoint starts)."""
    interval, state.checkpointer.interval_s = state.checkpointer.interval_s, 0.0
    state.checkpointer.schedule()
    state.checkpointer.interval_s = interval


def collect(state: StateManager) -> None:
    """Turn the loop until the background checkpoint is finished."""
    for _ in range(1000):
        state.maybe_checkpoint()
        if not state.background.busy:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the background checkpoint never finished")


def test_scoring_goes_on_while_a_checkpoint_is_written_and_only_its_snapshot_is_committed():
    rows, log, committed = stream(), SlowLog(), {}
    state = slow_manager(log, committed)
    feed(state, rows[:400])
    due(state)
    state.maybe_checkpoint()  # snapshot taken, write started: blocks in flush until the gate opens
    assert state.background.busy and log.flushing.wait(5)
    assert state.checkpointer.dirty_count() == 0, "the snapshot took every changed device"
    status = feed(state, rows[400:700])  # scored while the snapshot is written
    assert (status == 0).all()
    state.maybe_checkpoint()
    assert committed == {}, "nothing is committed before the states are acknowledged"
    log.gate.set()
    collect(state)
    assert committed == {p: o + 1 for p, o in _last_offsets(rows[:400]).items()}, "the snapshot's positions"
    assert state.checkpointer.dirty_count() == 10, "devices scored meanwhile are dirty for the next one"
    written = {rec.key.decode(): decode_state(rec.value).source_offset for p in PARTS for rec in log.parts[p]}
    last = {r[0]: r[4] for r in rows[:400]}
    assert written == last, "each state covers exactly the readings applied before the snapshot"


def test_a_due_checkpoint_waits_for_the_one_being_written_then_takes_everything_changed_since():
    rows, log, committed = stream(), SlowLog(), {}
    state = slow_manager(log, committed)
    feed(state, rows[:300])
    due(state)
    state.maybe_checkpoint()
    first = state.background.job
    feed(state, rows[300:600])
    due(state)
    state.maybe_checkpoint()  # due again while the first is being written: no second write
    assert state.background.job is first and committed == {}
    log.gate.set()
    collect(state)  # the first is committed, and (still due) the next starts at once and is written
    assert sum(len(log.parts[p]) for p in PARTS) == 20, "the second snapshot: every device changed since"
    assert committed == {p: o + 1 for p, o in _last_offsets(rows[:600]).items()}


def test_a_failed_background_write_commits_nothing_and_leaves_its_devices_dirty():
    rows, log, committed = stream(), FakeLog(), {}
    state = slow_manager(log, committed)
    feed(state, rows[:300])
    log.fail_after = 3
    due(state)
    state.maybe_checkpoint()
    collect(state)
    assert committed == {} and state.checkpointer.dirty_count() == 10
    assert not state.readiness()[0] and "checkpoint failed" in state.readiness()[1]
    log.fail_after = None
    feed(state, rows[300:400])
    due(state)
    state.maybe_checkpoint()
    collect(state)
    assert committed == {p: o + 1 for p, o in _last_offsets(rows[:400]).items()}
    assert state.readiness()[0]


def test_revoke_finishes_the_background_checkpoint_then_writes_a_final_one():
    rows, log, committed = stream(), SlowLog(), {}
    state = slow_manager(log, committed)
    feed(state, rows[:300])
    due(state)
    state.maybe_checkpoint()
    feed(state, rows[300:500])
    threading.Timer(0.2, log.gate.set).start()
    state.release({0, 1})  # waits for the write in flight, then checkpoints what changed since
    assert committed == {p: o + 1 for p, o in _last_offsets(rows[:500]).items()}
    assert len(state.store) == 0 and not state.background.busy


def test_a_kill_while_a_background_checkpoint_is_half_written_replays_into_the_same_scores(reference):
    """The process dies with a snapshot half written: the next owner restores and replays exactly."""
    rows, log, committed = stream(), FakeLog(), {}
    first = Member(log, committed)
    first.run(rows[:500], 50)
    first.checkpointer.checkpoint(PARTS)
    first.run(rows[500:900], 50)
    job = first.checkpointer.begin(PARTS)
    first.run(rows[900:1000], 50)  # scoring goes on meanwhile
    log.fail_after = 4  # the broker took 4 of the states when the process was killed
    first.checkpointer.write(job)  # never finished: no commit, no rollback (the process is gone)
    assert job.error is not None and committed == {p: o + 1 for p, o in _last_offsets(rows[:500]).items()}
    log.fail_after = None
    second = Member(log, committed)
    second.restorer.request(PARTS)
    assert second.restorer.restore() == 10
    second.run(replay_from(rows, committed), 64)
    assert second.skipped > 0, "the 4 states written past the commit skip what they hold"
    assert_matches(reference, first, second)


def test_a_snapshot_is_a_copy_the_store_can_change_under():
    rows = stream()
    member = Member(FakeLog(), {})
    member.run(rows[:300], 50)
    store = member.pipe.store
    every = np.flatnonzero(store.live)  # most of the slabs: copied whole, gathered when encoded
    some = every[[7, 2]]  # a small share: gathered at once
    expected = {len(slots): encode_states(store, slots, "v") for slots in (every, some)}
    snapshots = [take_snapshot(store, slots) for slots in (every, some)]
    member.run(rows[300:600], 50)  # every state moves on
    assert encode_states(store, every, "v") != expected[len(every)]
    for snapshot in snapshots:
        assert encode_snapshot(snapshot, "v") == expected[len(snapshot)]


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, float], float]:
    return uninterrupted_scores()


def test_an_unexpected_error_in_the_worker_commits_nothing(monkeypatch):
    rows, log, committed = stream(), FakeLog(), {}
    state = slow_manager(log, committed)
    feed(state, rows[:300])

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug in the client")

    monkeypatch.setattr(state.writer, "write", broken)
    due(state)
    state.maybe_checkpoint()
    collect(state)
    assert committed == {} and state.checkpointer.dirty_count() == 10
    assert "RuntimeError: a bug in the client" in state.readiness()[1]
