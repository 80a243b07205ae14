"""Checkpoint and restore without a broker: restore equals uninterrupted, whatever a crash interrupts.

The changelog is an in-memory fake with kafka-python's producer and consumer surface, so these run in
the fast suite; the same code runs against a real broker in test_durable_state.py.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from kafka import TopicPartition

from streamer.checkpoint.changelog import ChangelogReader, ChangelogWriter, CheckpointError
from streamer.checkpoint.checkpointer import DIRTY, Checkpointer
from streamer.checkpoint.manager import StateManager
from streamer.checkpoint.restore import Restorer
from streamer.checkpoint.state_codec import encode_states
from streamer.scoring.factory import build_pipeline
from streamer.scoring.model_change import MODEL_SIGNALS
from streamer.scoring.readings import DropReason, ReadingBatch
from streamer.scoring.signals import SIGNALS
from streamer.scoring.state_store import StateStore
from streamer.service.metrics import Metrics

TOPIC = "g.state"
PARTS = (0, 1)


# ---- an in-memory changelog with the producer / consumer surface the checkpoint code uses -------------
@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class _Future:
    is_done = True

    def __init__(self, exc: BaseException | None = None) -> None:
        self.exception = exc


class FakeLog:
    def __init__(self) -> None:
        self.parts: dict[int, list[Rec]] = defaultdict(list)
        self.fail_after: int | None = None  # acknowledge this many more sends, then fail every send
        self.producers = 0

    def write(self, partition: int, key: str, value: bytes | None) -> None:
        log = self.parts[partition]
        log.append(Rec(TOPIC, partition, len(log), key.encode(), value))

    def producer(self) -> Any:
        self.producers += 1
        return _Producer(self)

    def consumer(self) -> Any:
        return _Consumer(self)


class _Producer:
    def __init__(self, log: FakeLog) -> None:
        self.log = log

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> _Future:
        if self.log.fail_after is not None:
            if self.log.fail_after <= 0:
                return _Future(ConnectionError("broker gone"))
            self.log.fail_after -= 1
        self.log.write(partition, key.decode(), value)
        return _Future()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class _Consumer:
    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.pos: dict[Any, int] = {}

    def assign(self, tps: list[Any]) -> None:
        self.pos = {tp: 0 for tp in tps}

    def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: 0 for tp in tps}

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: len(self.log.parts[tp.partition]) for tp in tps}

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.pos[tp] = 0

    def poll(self, timeout_ms: int = 0) -> dict[Any, list[Rec]]:
        out = {}
        for tp in self.pos:
            chunk = self.log.parts[tp.partition][self.pos[tp]:self.pos[tp] + 7]  # small chunks on purpose
            if chunk:
                out[tp] = chunk
                self.pos[tp] += len(chunk)
        return out

    def position(self, tp: Any) -> int:
        return self.pos[tp]

    def highwater(self, tp: Any) -> int:
        return len(self.log.parts[tp.partition])

    def close(self, autocommit: bool = False) -> None:
        pass


# ---- a stream over two partitions --------------------------------------------------------------------
Reading = tuple[str, float, list[float], int, int]  # device, ts, values, partition, offset


def stream(n_devices: int = 10, n_steps: int = 140, seed: int = 3) -> list[Reading]:
    """Readings interleaved at random (each device in time order), with per-partition offsets."""
    rng = np.random.default_rng(seed)
    cursors = [0] * n_devices
    offsets = defaultdict(int)
    out: list[Reading] = []
    base = rng.normal(0, 3, (n_devices, 2))
    while any(c < n_steps for c in cursors):
        d = int(rng.choice([i for i in range(n_devices) if cursors[i] < n_steps]))
        t = cursors[d]
        cursors[d] += 1
        spike = 6.0 if t == 120 and d % 3 == 0 else 0.0
        values = list(base[d] + np.sin(t / 5 + d) + rng.normal(0, 0.2, 2) + spike)
        p = d % 2
        out.append((f"dev-{d}", 1_000.0 + 30 * t, values, p, offsets[p]))
        offsets[p] += 1
    return out


def as_batch(rows: list[Reading]) -> ReadingBatch:
    return ReadingBatch.from_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                  [("a", "b")] * len(rows), [r[3] for r in rows], [r[4] for r in rows])


def chunks(rows: list[Reading], size: int) -> list[list[Reading]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, float], float]:
    return uninterrupted_scores()


def uninterrupted_scores() -> dict[tuple[str, float], float]:
    """Scores of one uninterrupted run: {(device, ts): score}."""
    pipe = build_pipeline(None, "cpu")
    out = {}
    for rows in chunks(stream(), 50):
        scored = pipe.score(as_batch(rows))
        assert (scored.status == 0).all()
        out.update({(r[0], r[1]): float(s) for r, s in zip(rows, scored.scores, strict=True)})
    assert sum(s > 0 for s in out.values()) > 50, "past warm-up some scores must be non-zero"
    return out


class Member:
    """A pipeline with its checkpointer over `log`, committing into `committed`."""

    def __init__(self, log: FakeLog, committed: dict[int, int], metrics: Metrics | None = None) -> None:
        self.pipe = build_pipeline(None, "cpu")
        self.committed = committed
        self.writer = ChangelogWriter(log.producer, TOPIC, chunk=5)
        store, version = self.pipe.store, self.pipe.model_version
        self.checkpointer = Checkpointer(store, self.writer, version, interval_s=1e9, commit=committed.update,
                                         metrics=metrics)
        self.restorer = Restorer(store, ChangelogReader(log.consumer, TOPIC), version, metrics=metrics,
                                 on_installed=self.checkpointer.adopt)
        self.scores: dict[tuple[str, float], list[float]] = defaultdict(list)
        self.skipped = 0

    def run(self, rows: list[Reading], size: int) -> None:
        for part in chunks(rows, size):
            batch = as_batch(part)
            scored = self.pipe.score(batch)
            self.skipped += int((scored.status == DropReason.ALREADY_APPLIED).sum())
            for r, s, st in zip(part, scored.scores, scored.status, strict=True):
                if st == 0:
                    self.scores[(r[0], r[1])].append(float(s))
            offsets = {}
            for r in part:
                offsets[r[3]] = r[4] + 1
            self.checkpointer.track(batch, scored, offsets)


def replay_from(rows: list[Reading], committed: dict[int, int]) -> list[Reading]:
    return [r for r in rows if r[4] >= committed.get(r[3], 0)]


def assert_matches(reference: dict, *members: Member) -> None:
    seen = set()
    for member in members:
        for key, values in member.scores.items():
            seen.add(key)
            for value in values:
                assert abs(value - reference[key]) <= 1e-5, (key, value, reference[key])
    assert seen == set(reference), f"{len(set(reference) - seen)} readings never scored"


# ---- restore equals uninterrupted --------------------------------------------------------------------
def test_restore_equals_uninterrupted_after_a_crash_between_state_write_and_commit(reference):
    rows, log, committed, metrics = stream(), FakeLog(), {}, Metrics()
    first = Member(log, committed, metrics)
    first.run(rows[:600], 50)
    first.checkpointer.checkpoint(PARTS)  # states written, offsets committed
    first.run(rows[600:1000], 50)
    first.checkpointer.checkpoint(PARTS, commit=False)  # killed after the states, before the commit
    first.run(rows[1000:1150], 50)  # scored and published, neither written nor committed: then kill -9

    second = Member(log, committed, metrics)
    second.restorer.request(PARTS)
    assert second.restorer.restore() == 10
    second.run(replay_from(rows, committed), 37)  # another batching, from the committed offsets
    assert second.skipped > 0, "readings the restored states already hold must be skipped"
    assert second.skipped == sum(1 for r in rows[600:1000])  # exactly those, per device
    assert_matches(reference, first, second)
    assert metrics.registry.get_sample_value("rnnwatch_restored_devices_total") == 10
    assert metrics.registry.get_sample_value("rnnwatch_checkpoints_total") == 2


def test_a_checkpoint_interrupted_half_way_corrupts_nothing(reference):
    rows, log, committed = stream(), FakeLog(), {}
    first = Member(log, committed)
    first.run(rows[:500], 50)
    first.checkpointer.checkpoint(PARTS)
    first.run(rows[500:900], 50)
    log.fail_after = 4  # the broker takes 4 of the 10 states, then goes away
    with pytest.raises(CheckpointError, match="stay dirty"):
        first.checkpointer.checkpoint(PARTS)
    assert log.producers == 3, "each failed try builds a new producer"
    assert committed == {p: o + 1 for p, o in _last_offsets(rows[:500]).items()}, "nothing committed"
    assert first.checkpointer.dirty_count() == 10

    second = Member(log, committed)
    second.restorer.request(PARTS)
    second.restorer.restore()  # 4 devices as of offset ~900, 6 as of offset ~500
    second.run(replay_from(rows, committed), 64)
    assert second.skipped > 0
    assert_matches(reference, first, second)


def _last_offsets(rows: list[Reading]) -> dict[int, int]:
    last: dict[int, int] = {}
    for r in rows:
        last[r[3]] = max(last.get(r[3], -1), r[4])
    return last


# ---- which record wins ---------------------------------------------------------------------------------
def test_the_record_covering_most_readings_wins_and_tombstones_remove():
    log = FakeLog()
    store = StateStore(2, initial_devices=4)

    def state(device: str, offset: int, mark: float) -> bytes:
        slots, _ = store.slots_for([device], np.array([1], np.int16), [None])
        store.cols["source_offset"][slots] = offset
        store.cols["last_ts"][slots] = mark
        value = encode_states(store, slots, "v")[0]
        store.evict(device)
        return value

    log.write(0, "x", state("x", 10, 1.0))
    log.write(0, "x", state("x", 5, 2.0))  # a stale writer (a member that lost the partition)
    log.write(0, "y", state("y", 3, 3.0))
    log.write(0, "y", None)  # evicted
    log.write(0, "z", None)
    log.write(0, "z", state("z", 8, 4.0))  # evicted, came back
    log.write(0, "w", state("w", 4, 5.0))
    log.write(0, "w", state("w", 4, 6.0))  # a tie: the later record
    log.write(0, "v", b"not a state record")
    target = StateStore(2, initial_devices=4)
    restorer = Restorer(target, ChangelogReader(log.consumer, TOPIC), "v")
    restorer.request([0])
    restorer.restore()
    cols = target.cols
    held = {d: (int(cols["source_offset"][target.slot(d)]), float(cols["last_ts"][target.slot(d)]))
            for d in target.device_ids()}
    assert held == {"x": (10, 1.0), "z": (8, 4.0), "w": (4, 6.0)}
    assert restorer.last["invalid"] == 1


def test_states_counted_in_another_incarnation_of_the_topic_keep_state_but_not_offsets():
    rows, log, committed = stream(), FakeLog(), {}
    first = Member(log, committed)
    first.checkpointer.log_id = b"A" * 16
    first.run(rows[:400], 50)
    first.checkpointer.checkpoint(PARTS)
    second = Member(log, committed)
    second.restorer.log_id = b"B" * 16  # the readings topic was recreated (or the broker lost its log)
    second.restorer.request(PARTS)
    second.restorer.restore()
    store = second.pipe.store
    assert second.restorer.last["relogged"] == 10
    assert (store.cols["source_offset"][store.live] == -1).all()
    assert (store.cols["steps"][store.live] > 0).all(), "the recurrent state itself is kept"
    second.run([(d, ts + 1e6, v, p, 0) for d, ts, v, p, _ in rows[:10]], 10)  # offset 0 again: applied
    assert second.skipped == 0 and len(second.scores) == 10


# ---- model version mismatch: the model's part is forgotten, the rest kept ------------------------------
def test_a_state_from_another_model_version_keeps_all_but_what_the_model_taught(reference):
    rows, log, committed, metrics = stream(), FakeLog(), {}, Metrics()
    first = Member(log, committed)
    first.pipe.model_version = first.checkpointer.model_version = "an-older-model"
    first.run(rows[:1000], 50)
    first.checkpointer.checkpoint(PARTS)
    old = first.pipe.store
    norm_before = {d: old.rows["norm_mean"][torch.from_numpy(old.rows_of(np.array([old.slot(d)]))[0])].clone()
                   for d in old.device_ids()}
    kept_signals = [s for s in range(SIGNALS) if s not in MODEL_SIGNALS]

    second = Member(log, committed, metrics)
    second.restorer.request(PARTS)
    second.restorer.restore()
    store = second.pipe.store
    assert metrics.registry.get_sample_value("rnnwatch_state_version_mismatch_total") == 10
    for device in store.device_ids():
        slot = store.slot(device)
        rows_t = torch.from_numpy(store.rows_of(np.array([slot]))[0])
        was = old.slot(device)
        assert store.cols["steps"][slot] == 0
        assert store.cols["alert_state"][slot] == old.cols["alert_state"][was]
        assert float(store.rows["hidden"][rows_t].abs().sum()) == 0.0
        assert torch.equal(store.rows["norm_mean"][rows_t], norm_before[device])  # the sensor's scale stays
        assert (store.cols["cal_count"][slot][list(MODEL_SIGNALS)] == 0).all()  # the forecast signals re-warm
        assert (store.cols["cal_mean"][slot][kept_signals] == old.cols["cal_mean"][was][kept_signals]).all()
        assert store.cols["source_offset"][slot] == old.cols["source_offset"][old.slot(device)]
        assert store.cols[DIRTY][slot], "the reset state is written at the next checkpoint"
    second.run(replay_from(rows, committed), 50)
    warm = [values[0] for key, values in sorted(second.scores.items(), key=lambda kv: kv[0][1])]
    assert any(s > 0 for s in warm[:10]), "no blind period: the kept signals score from the first reading"


# ---- the manager: revoke, budget, tombstones, rewinds ------------------------------------------------
def manager(log: FakeLog, committed: dict[int, int], **kwargs: Any) -> StateManager:
    pipe = build_pipeline(None, "cpu")
    options = {"interval_s": 1e9, "max_devices": 1_000, "ttl_s": 1e9, **kwargs}
    return StateManager(pipe, ChangelogWriter(log.producer, TOPIC), ChangelogReader(log.consumer, TOPIC),
                        commit=committed.update, metrics=Metrics(), **options)


def feed(state: StateManager, rows: list[Reading]) -> np.ndarray:
    batch = as_batch(rows)
    scored = state.admit_and_score(batch)
    offsets = {}
    for r in rows:
        offsets[r[3]] = r[4] + 1
    state.applied(batch, scored, offsets)
    return scored.status


def test_revoke_checkpoints_commits_and_hands_the_devices_over():
    rows, log, committed = stream(), FakeLog(), {}
    state = manager(log, committed)
    state.on_assigned([TopicPartition("r", 0), TopicPartition("r", 1)])
    assert not state.readiness()[0]
    state.restore_pending()
    assert state.readiness() == (True, "device state restored")
    feed(state, rows[:300])
    state.release({1})
    assert committed == {1: _last_offsets(rows[:300])[1] + 1}
    assert {d for d in state.store.device_ids()} == {f"dev-{d}" for d in range(0, 10, 2)}  # partition 0 stays
    assert len(log.parts[1]) == 5 and not log.parts[0]


def test_a_flood_of_new_devices_stays_within_the_budget_and_every_reading_is_scored():
    log, committed = FakeLog(), {}
    state = manager(log, committed, max_devices=50)
    sizes: list[int] = []
    score = state.pipeline.score
    state.pipeline.score = lambda batch: (sizes.append(len(state.store)), score(batch))[1]
    known = [(f"known-{i}", 1.0 + t, [1.0, 2.0 + t], 0, 10 * t + i) for t in range(5) for i in range(10)]
    feed(state, known)  # 10 established devices (5 readings each)
    capacity = state.store.device_capacity
    offset, steps = 50, 5
    for wave in range(20):  # 19 batches of 30 unseen devices, then one of 200: four times the budget
        size = 200 if wave == 19 else 30
        flood = [(f"flood-{wave}-{i}", 2.0, [1.0, 2.0], 0, offset + i) for i in range(size)]
        offset += size
        tail = [(f"known-{i}", 10.0 + wave, [1.0, 2.0], 0, offset + i) for i in range(10)]
        offset += 10
        status = feed(state, flood[: size // 2] + tail + flood[size // 2:])
        assert (status == DropReason.SCORED).all()
        steps += 1
        held = [state.store.slot(f"known-{i}") for i in range(10)]
        assert None not in held and (state.store.cols["steps"][held] == steps).all(), "known state kept"
    assert max(sizes) <= 50 and len(state.store) <= 50
    assert len(sizes) >= 20 + 4, "the 200-device batch is scored in parts"
    assert state.store.device_capacity <= max(capacity, 64), "no growth past the budget's slab"
    assert state.evictor.evicted >= 19 * 30 + 200 - 50


def test_only_when_nothing_is_evictable_are_new_devices_dropped():
    log, committed = FakeLog(), {}
    state = manager(log, committed, max_devices=5)
    held = [(f"h{i}", 1.0, [1.0, 1.0], 0, i) for i in range(5)]
    feed(state, held)
    again = [(f"h{i}", 2.0, [1.0, 1.0], 0, 5 + i) for i in range(5)]
    status = feed(state, [("new", 1.0, [1.0, 1.0], 0, 10), *again])  # every held device comes later
    assert status[0] == DropReason.CAPACITY and (status[1:] == DropReason.SCORED).all()
    assert state.evictor.refused == 1


def test_evicted_devices_get_tombstones_only_when_the_changelog_holds_them():
    log, committed = FakeLog(), {}
    state = manager(log, committed, max_devices=3)
    feed(state, [(f"a{i}", 1.0, [1.0, 1.0], 0, i) for i in range(3)])
    state.checkpointer.checkpoint([0])  # a0..a2 written
    feed(state, [(f"b{i}", 2.0, [1.0, 1.0], 0, 3 + i) for i in range(3)])  # evicts a0..a2
    feed(state, [(f"c{i}", 3.0, [1.0, 1.0], 0, 6 + i) for i in range(3)])  # evicts b0..b2, never written
    state.checkpointer.checkpoint([0])
    keys = [(r.key.decode(), r.value is None) for r in log.parts[0]]
    assert sorted(keys[3:6]) == [("a0", True), ("a1", True), ("a2", True)]
    assert not any(k.startswith("b") for k, _ in keys), "b* never reached the changelog: no tombstone"
    assert sorted(keys[6:]) == [("c0", False), ("c1", False), ("c2", False)]


def test_idle_devices_leave_after_the_ttl():
    now = [1_000.0]
    log, committed = FakeLog(), {}
    state = manager(log, committed, ttl_s=60)
    state.store.clock = lambda: now[0]
    state.evictor._clock = lambda: now[0]
    feed(state, [("old", 1.0, [1.0, 1.0], 0, 0)])
    now[0] += 50
    feed(state, [("new", 1.0, [1.0, 1.0], 0, 1)])
    now[0] += 30
    assert state.evictor.expire() == 1
    assert state.store.device_ids() == ["new"]


def test_a_partition_that_goes_back_in_offsets_forgets_its_device_offsets():
    log, committed = FakeLog(), {}
    state = manager(log, committed)
    feed(state, [("d", 1.0 + i, [1.0, 2.0], 0, 100 + i) for i in range(5)])
    status = feed(state, [("d", 10.0 + i, [1.0, 2.0], 0, i) for i in range(3)])  # the log was recreated
    assert (status == DropReason.SCORED).all()


# ---- a state record of an earlier release --------------------------------------------------------------
def _restore_fixture(rev: str) -> tuple[dict[str, np.ndarray], int, dict[str, Any], Any, Any]:
    """Restore tests/data/state_record_<rev>.hex (written by that commit) through the upgrader into a fresh
    pipeline: (its store's columns, the device's slot, the values the fixture recorded, the record, the
    pipeline)."""
    import json
    from pathlib import Path

    from streamer.checkpoint.migrate import Upgrader
    from streamer.checkpoint.state_codec import decode_state, install_states
    from streamer.checkpoint.state_schema import StateSchema

    data = Path(__file__).parent / "data"
    record = decode_state(bytes.fromhex((data / f"state_record_{rev}.hex").read_text().strip()))
    expect = json.loads((data / f"state_record_{rev}.json").read_text())
    pipe = build_pipeline(None, "cpu")
    schema = StateSchema.of(pipe.store)
    assert not record.payload_known(schema), "the old layout differs from today's"
    upgrader = Upgrader(pipe.store, schema)
    (upgraded,) = upgrader.upgrade([record])
    slots, known = install_states(pipe.store, [upgraded], schema)
    assert known.all() and upgrader.upgraded == 1
    return pipe.store.cols, int(slots[0]), expect, record, pipe


def test_a_state_record_of_the_previous_release_is_upgraded_not_reset():
    """tests/data/state_record_883a5ee.hex was written by commit 883a5ee (before silences, the episode peak,
    whole-second last_seen and 16-bit M-of-N hits): restored today, it keeps its calibration and alert
    state instead of starting afresh."""
    cols, slot, expect, record, pipe = _restore_fixture("883a5ee")
    assert np.allclose(cols["cal_mean"][slot], expect["cal_mean"]) and np.allclose(cols["cal_var"][slot],
                                                                                   expect["cal_var"])
    assert cols["alert_state"][slot] == expect["alert_state"] == 1  # an open episode carries on
    assert cols["alert_started_at"][slot] == expect["alert_started_at"]
    assert cols["alert_hits"][slot] == expect["alert_hits"] and cols["steps"][slot] == expect["steps"]
    assert cols["last_seen"][slot] == int(expect["last_seen"]) and cols["silence_until"][slot] == 0
    assert float(cols["alert_peak"][slot]) == pytest.approx(expect["alert_hold"])  # from the held alarm
    assert record.model_version == expect["version"] == pipe.model_version  # the same model: nothing re-warms


def test_a_state_record_from_before_the_refractory_is_upgraded_with_its_cooldown_in_whole_seconds():
    """tests/data/state_record_46e4646.hex was written by commit 46e4646 (cooldown as float64 seconds, no
    refractory memory): restored today it keeps its episode, calibration and cooldown, and remembers
    no fire."""
    cols, slot, expect, record, pipe = _restore_fixture("46e4646")
    assert np.allclose(cols["cal_mean"][slot], expect["cal_mean"]) and np.allclose(cols["cal_var"][slot],
                                                                                   expect["cal_var"])
    assert cols["cal_peak"][slot] == pytest.approx(expect["cal_peak"])
    assert cols["alert_state"][slot] == expect["alert_state"] == 1  # an open episode carries on
    assert cols["alert_started_at"][slot] == expect["alert_started_at"]
    assert float(cols["alert_peak"][slot]) == pytest.approx(expect["alert_peak"])
    assert cols["alert_cooldown_until"][slot] == expect["alert_cooldown_until"]  # whole seconds already
    assert cols["last_seen"][slot] == expect["last_seen"] and cols["steps"][slot] == expect["steps"]
    assert cols["cal_since"][slot] == 255 and cols["cal_fired"][slot] == 0  # no fire remembered
    assert record.model_version == expect["version"] == pipe.model_version


def test_a_state_record_from_before_the_relation_level_keeps_its_covariance_packed():
    """tests/data/state_record_9810623.hex was written by commit 9810623 (a 4-channel device in an open
    episode; its relation stored as the full 4 x 4 matrix, no level of r_k^2): restored today, the
    covariance is the same matrix in its packed lower triangle, the level starts at 0 and the episode,
    calibration and per-channel state carry on."""
    from streamer.scoring import relation

    cols, slot, expect, record, pipe = _restore_fixture("9810623")
    store = pipe.store
    cells = store.blocks["relation"][store.cells_of(np.array([slot]), "relation").reshape(-1)].numpy()
    assert len(cells) == relation.cells(4) == 10 and len(expect["relation"]) == 16
    (full,) = relation.unpack(cells, 4)
    assert np.array_equal(full, np.asarray(expect["relation"], dtype=np.float32).reshape(4, 4))
    rows = store.rows_of(np.array([slot]))[0]
    assert np.array_equal(store.rows["level"][rows].numpy(), np.asarray(expect["level"], dtype=np.float32))
    assert (store.rows["rel_level"][rows] == 0).all()
    assert np.allclose(cols["cal_mean"][slot], expect["cal_mean"]) and cols["steps"][slot] == expect["steps"]
    assert cols["alert_state"][slot] == expect["alert_state"] == 1  # an open episode carries on
    assert cols["alert_started_at"][slot] == expect["alert_started_at"]
    assert record.model_version == expect["version"] == pipe.model_version
