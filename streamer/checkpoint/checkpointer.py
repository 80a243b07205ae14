"""Checkpoints: which device states changed, and writing them before the offsets that they cover.

Per device the checkpointer keeps three bookkeeping columns in the state store (never serialised):
its readings partition, whether its state changed since it was last written (`dirty`), and whether
the changelog may hold a state of it (`written`, so that evicting it needs a tombstone).

A checkpoint of some partitions runs in three steps, so that only the first stops scoring:

    begin   (loop thread)  flush outputs: alerts / scores / dead letters of every batch applied so far
                           are acknowledged; then a *snapshot*: a copy of every dirty device's state
                           (`snapshot.py`), the tombstones due and the positions after the last applied
                           batch of those partitions. The devices are clean again from here on.
    write   (any thread)   encode the snapshot, write the tombstones, then the states, acknowledged;
                           touches nothing the loop uses (`background.py` runs it beside scoring).
    finish  (loop thread)  commit the snapshot's positions; or, when the write failed, make its devices
                           dirty again and keep its tombstones and positions for the next checkpoint.

So the order flush outputs → write state → commit offsets (Quix Streams' order, for the same reason)
holds per snapshot: no state covers a reading whose output could be lost, no offset is committed
before the states that cover it. Readings scored while a snapshot is written make their devices
dirty for the next one.

A state that can never be written (too large, refused by the codec or the broker) does not stop the
others: its device is quarantined (`quarantine.py`) and the checkpoint goes on. A crash anywhere
leaves a consistent pair: states never older than the committed offsets, and each state knowing
which readings it already holds (`source_offset`). Offsets are committed only here, so a restart
replays at most the readings since the last finished checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from streamer.checkpoint.changelog import ChangelogWriter, CheckpointError, Record
from streamer.checkpoint.quarantine import QUARANTINED, STATE_RECORD_MAX_BYTES, encode_checkpointable
from streamer.checkpoint.snapshot import SlabPool, StateSnapshot, take_snapshot
from streamer.checkpoint.state_codec import NO_LOG_ID, StateSchema, bookkeeping
from streamer.errors import BrokerError, StateError
from streamer.scoring.readings import DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.state_store import Column, StateStore

if TYPE_CHECKING:
    from streamer.contracts import CheckpointMetrics

log = logging.getLogger(__name__)

PARTITION = bookkeeping("partition")  # readings partition of the device
DIRTY = bookkeeping("dirty")  # state changed since it was last snapshotted
WRITTEN = bookkeeping("written")  # the changelog may hold a state of this device
COLUMNS: tuple[Column, ...] = (Column(PARTITION, np.int32, fill=-1), Column(DIRTY, np.bool_),
                               Column(WRITTEN, np.bool_),
                               Column(QUARANTINED, np.bool_))  # never written again (quarantine.py)


@dataclass
class CheckpointJob:
    """One checkpoint between `begin` and `finish`: what to write, and what it commits."""

    partitions: list[int]
    snapshot: StateSnapshot
    partition_of: np.ndarray  # (m,) readings partition of each snapshot device
    written_before: np.ndarray  # (m,) bool: the changelog may hold an older state of it
    tombstones: dict[int, set[str]]  # partition -> evicted devices whose state must go
    offsets: dict[int, int]  # partition -> next offset: committed once the states are acknowledged
    started: float  # perf_counter at begin
    model_version: str | list[str]  # what the states were computed with (one per state while a hot swap
    # runs), and the readings topic id their offsets
    log_id: bytes  # count in: both as of the snapshot (a restore may change them while it is written)
    paused_s: float = 0.0  # time `begin` held the loop
    written_s: float = 0.0  # from the snapshot until the states were acknowledged
    # filled by `write` (any thread), read by `finish` (loop thread)
    states: int = 0
    tombstones_written: int = 0
    quarantined: list[tuple[int, str]] = field(default_factory=list)  # (position in snapshot, why)
    error: BrokerError | StateError | None = None
    feedback_offsets: dict[int, int] = field(default_factory=dict)  # the feedback topic's, likewise


class Checkpointer:
    """Dirty tracking per partition and the flush → write → commit sequence.

    commit({partition: next offset}) commits readings offsets (the daemon's consumer); flush_outputs()
    blocks until the published output is acknowledged.
    """

    def __init__(
        self,
        store: StateStore,
        writer: ChangelogWriter,
        model_version: str,
        *,
        interval_s: float,
        commit: Callable[[Mapping[int, int]], None],
        flush_outputs: Callable[[], None] = lambda: None,
        commit_feedback: Callable[[Mapping[int, int]], None] = lambda offsets: None,
        metrics: CheckpointMetrics | None = None,
        write_timeout_s: float = 20.0,
        max_record_bytes: int = STATE_RECORD_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        store.add_columns(COLUMNS)
        self.store = store
        self.writer = writer
        self.model_version = model_version
        self.interval_s = interval_s
        self._commit = commit
        self._commit_feedback = commit_feedback
        self._flush_outputs = flush_outputs
        self._metrics = metrics
        self.write_timeout_s = write_timeout_s
        self.max_record_bytes = max_record_bytes
        self.quarantined = 0  # device states quarantined so far
        self._clock = clock
        self._positions: dict[int, int] = {}  # partition -> next offset, applied but not committed
        self._feedback_positions: dict[int, int] = {}  # the same for the feedback topic
        self._tombstones: dict[int, set[str]] = {}
        self._next_at = clock() + interval_s
        self._pool = SlabPool()  # snapshot buffers, reused from one checkpoint to the next
        self.log_id = NO_LOG_ID  # topic id of the readings topic the offsets count in (set at restore)
        # while a hot swap runs: the model version of each device (streamer.scoring.swap); None: all the same
        self.versions: Callable[[Sequence[str]], list[str]] | None = None

    # ---- tracking -------------------------------------------------------------------------------------
    def track(self, batch: ReadingBatch, scored: ScoredBatch, offsets: Mapping[int, int]) -> None:
        """Record a batch whose output is acknowledged: its devices' partitions, who changed, positions."""
        slots = self.store.lookup(batch.device_ids)
        held = slots >= 0
        cols = self.store.cols
        cols[PARTITION][slots[held]] = batch.partitions[held]
        cols[DIRTY][slots[held & (scored.status == DropReason.SCORED)]] = True
        self._positions.update(offsets)

    def track_feedback(self, changed: np.ndarray, offsets: Mapping[int, int]) -> None:
        """Feedback applied: the devices it changed (slots) are dirty; its offsets go with the next commit."""
        self.store.cols[DIRTY][changed] = True
        self._feedback_positions.update(offsets)

    def mark_dirty(self, partitions: Iterable[int]) -> int:
        """Every held device of these partitions is written at the next checkpoint; how many."""
        cols = self.store.cols
        slots = np.flatnonzero(self.store.live & np.isin(cols[PARTITION], sorted(set(partitions)))
                               & ~cols[QUARANTINED])
        cols[DIRTY][slots] = True
        return len(slots)

    def forget(self, slots: np.ndarray) -> None:
        """Devices about to be evicted: those the changelog holds get a tombstone at the next checkpoint."""
        cols = self.store.cols
        written = slots[cols[WRITTEN][slots]]
        for slot, partition in zip(written.tolist(), cols[PARTITION][written].tolist(), strict=True):
            device = self.store.device_id(slot)
            if device is not None:
                self._tombstones.setdefault(partition, set()).add(device)

    def adopt(self, slots: np.ndarray, partition: int, stale: np.ndarray) -> None:
        """Devices just restored from `partition`: written already, dirty where restore reset them."""
        cols = self.store.cols
        cols[PARTITION][slots] = partition
        cols[WRITTEN][slots] = True
        cols[DIRTY][slots] = stale

    def due(self) -> bool:
        return self._clock() >= self._next_at

    def dirty_count(self) -> int:
        return int(np.count_nonzero(self.store.live & self.store.cols[DIRTY]))

    # ---- checkpoint -----------------------------------------------------------------------------------
    def checkpoint(self, partitions: Iterable[int], *, commit: bool = True) -> int:
        """Flush outputs, write the partitions' changed states, then commit; return states written.

        All three steps on the caller's thread (revoke, shutdown). Raises `CheckpointError` (nothing
        committed, the devices stay dirty) when the changelog does not acknowledge the writes.
        """
        job = self.begin(partitions)
        self.write(job, beat=True)
        return self.finish(job, commit=commit)

    def begin(self, partitions: Iterable[int]) -> CheckpointJob:
        """Flush outputs, then snapshot the partitions' dirty states, tombstones and positions (loop)."""
        started = time.perf_counter()
        parts = sorted(set(partitions))
        self._flush_outputs()
        store, cols = self.store, self.store.cols
        mine = np.isin(cols[PARTITION], parts)
        slots = np.flatnonzero(store.live & cols[DIRTY] & mine & ~cols[QUARANTINED])  # (m,)
        tombstones = {p: {d for d in self._tombstones.pop(p, ()) if not self._rewritten(d)} for p in parts}
        snapshot = take_snapshot(store, slots, pool=self._pool)
        version = self.model_version if self.versions is None else self.versions(snapshot.device_ids)
        job = CheckpointJob(parts, snapshot, cols[PARTITION][slots], cols[WRITTEN][slots], tombstones,
                            {p: self._positions.pop(p) for p in parts if p in self._positions}, started,
                            version, self.log_id,
                            feedback_offsets={p: self._feedback_positions.pop(p) for p in parts
                                              if p in self._feedback_positions})
        cols[DIRTY][slots] = False  # changes from now on belong to the next checkpoint
        cols[WRITTEN][slots] = True  # an eviction while it is written must leave a tombstone
        job.paused_s = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.checkpoint_pause.observe(job.paused_s)
        return job

    def write(self, job: CheckpointJob, *, beat: bool = False) -> None:
        """Encode and write the job's tombstones and states (any thread); failures go into `job.error`.

        `beat`: call the writer's heartbeat per chunk (only from a thread that may: not a background one).
        """
        try:
            self._encode_and_write(job, beat)
        except (BrokerError, StateError) as exc:
            job.error = exc
            return
        except Exception as exc:  # a client error nobody wrapped, or a bug: never commit what was not written
            log.exception("writing a checkpoint failed unexpectedly; its devices stay dirty")
            job.error = CheckpointError(f"writing the checkpoint failed: {type(exc).__name__}: {exc}")
            return
        job.written_s = time.perf_counter() - job.started
        _log_written(job)
        self.warm_buffers(job.snapshot.schema)  # for the next snapshot, while the loop scores

    def warm_buffers(self, schema: StateSchema | None = None) -> None:
        """Have the snapshot buffers for the store as it is now allocated and touched (any thread: a
        worker after each write, the loop after a restore, before scoring the restored partitions)."""
        self._pool.warm_for(self.store, schema or StateSchema.of(self.store))

    def _encode_and_write(self, job: CheckpointJob, beat: bool) -> None:
        values, refused = encode_checkpointable(job.snapshot, job.model_version, job.log_id,
                                                self.max_record_bytes)
        job.quarantined = refused
        gone: list[Record] = [(p, d, None) for p, devices in job.tombstones.items() for d in devices]
        gone += [self._tombstone(job, i) for i, _ in refused if job.written_before[i]]
        self.writer.write(gone, self.write_timeout_s, beat=beat)  # before states: no reordering
        job.tombstones_written = len(gone)
        job.states = self._write_states(job, values, {i for i, _ in refused}, beat)

    def _write_states(self, job: CheckpointJob, values: list[bytes], skip: set[int], beat: bool) -> int:
        """Write the encoded states (return how many); one the broker refuses is quarantined."""
        snap = job.snapshot
        keep = [i for i in range(len(snap)) if i not in skip] if skip else range(len(snap))
        refused: list[tuple[Record, str]] = []
        parts = job.partition_of.tolist()
        self.writer.write(((parts[i], snap.device_ids[i], values[i]) for i in keep), self.write_timeout_s,
                          reject=lambda record, why: refused.append((record, why)), beat=beat)
        position = {snap.device_ids[i]: i for i in keep} if refused else {}
        tombstones: list[Record] = []
        for (_, device, _), why in refused:
            i = position[device]
            job.quarantined.append((i, f"the broker refused its record: {why}"))
            if job.written_before[i]:
                tombstones.append(self._tombstone(job, i))
        self.writer.write(tombstones, self.write_timeout_s, beat=beat)  # its old state must not return
        return len(keep) - len(refused)

    @staticmethod
    def _tombstone(job: CheckpointJob, i: int) -> Record:
        return int(job.partition_of[i]), job.snapshot.device_ids[i], None

    def finish(self, job: CheckpointJob, *, commit: bool = True) -> int:
        """Commit what the written job covers (loop thread); states written. A failed job is rolled back
        (its devices dirty again, its tombstones and positions kept) and its error raised."""
        if job.error is not None:
            self._roll_back(job)
            raise job.error
        for i, why in job.quarantined:
            self._quarantine(job, i, why)
        if commit and job.offsets:
            self._commit(job.offsets)
        if commit and job.feedback_offsets:
            self._commit_feedback(job.feedback_offsets)
        elapsed = time.perf_counter() - job.started
        self._observe(elapsed)
        log.log(logging.INFO if job.offsets else logging.DEBUG,
                "checkpoint of partitions %s committed offsets %s, %.3f s after its snapshot (scoring paused "
                "%.3f s for it)", job.partitions, job.offsets, elapsed, job.paused_s,
                extra={"event": "checkpoint_committed", "states": job.states, "seconds": round(elapsed, 4),
                       "paused_s": round(job.paused_s, 4)})
        return job.states

    def _roll_back(self, job: CheckpointJob) -> None:
        held = self._still_held(job)
        self.store.cols[DIRTY][job.snapshot.slots[held]] = True
        for p, devices in job.tombstones.items():
            self._tombstones.setdefault(p, set()).update(devices)
        for p, offset in job.offsets.items():
            self._positions.setdefault(p, offset)  # a later batch's position covers it
        for p, offset in job.feedback_offsets.items():
            self._feedback_positions.setdefault(p, offset)

    def _still_held(self, job: CheckpointJob) -> np.ndarray:
        """(m,) bool: the snapshot's slots still hold the same devices (none evicted or reused since)."""
        ids, _ = self.store.ids_and_names(job.snapshot.slots)
        live = self.store.live[job.snapshot.slots]
        return live & np.fromiter((a == b for a, b in zip(ids, job.snapshot.device_ids, strict=True)),
                                  dtype=bool, count=len(ids))

    def _quarantine(self, job: CheckpointJob, i: int, why: str) -> None:
        """Never write this device's state again while it is held (its old one got a tombstone)."""
        device = job.snapshot.device_ids[i]
        slot = self.store.slot(device)
        cols = self.store.cols
        if slot is not None and slot == int(job.snapshot.slots[i]):
            cols[QUARANTINED][slot] = True
            cols[DIRTY][slot] = False
            cols[WRITTEN][slot] = False
        self.quarantined += 1
        if self._metrics is not None:
            self._metrics.state_quarantined.inc()
        log.warning("device %r: its state cannot be checkpointed (%s); quarantined: it keeps being scored "
                    "from memory but its state is not written while this process holds it, and every other "
                    "device's checkpoint goes on", device[:64], why, extra={"event": "state_quarantined"})

    def _rewritten(self, device: str) -> bool:
        """An evicted device that came back and changed: its new state supersedes the old one."""
        slot = self.store.slot(device)
        cols = self.store.cols
        return slot is not None and bool(cols[DIRTY][slot]) and not bool(cols[QUARANTINED][slot])

    def schedule(self) -> None:
        """Start the next interval now (after a checkpoint, successful or not)."""
        self._next_at = self._clock() + self.interval_s

    def release(self, partitions: Iterable[int]) -> int:
        """Forget the partitions' devices (after their checkpoint): another member owns them now."""
        parts = sorted(set(partitions))
        mine = np.flatnonzero(self.store.live & np.isin(self.store.cols[PARTITION], parts))
        self.store.evict_slots(mine)
        for p in parts:
            self._positions.pop(p, None)
            self._feedback_positions.pop(p, None)
            self._tombstones.pop(p, None)
        return len(mine)

    def _observe(self, seconds: float) -> None:
        m = self._metrics
        if m is not None:
            m.checkpoints.inc()
            m.checkpoint_duration.observe(seconds)


def _log_written(job: CheckpointJob) -> None:
    """Logged by the thread that wrote the job, the moment its records are acknowledged."""
    log.log(logging.INFO if job.states or job.tombstones_written else logging.DEBUG,
            "checkpoint of partitions %s: %d states, %d tombstones acknowledged %.3f s after the snapshot",
            job.partitions, job.states, job.tombstones_written, job.written_s,
            extra={"event": "checkpoint_written", "states": job.states, "tombstones": job.tombstones_written,
                   "seconds": round(job.written_s, 4)})
