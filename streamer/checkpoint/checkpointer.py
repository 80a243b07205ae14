"""Checkpoints: which device states changed, and writing them before the offsets that they cover.

Per device the checkpointer keeps three bookkeeping columns in the state store (never serialised):
its readings partition, whether its state changed since it was last written (`dirty`), and whether
the changelog holds a state of it (`written`, so that evicting it needs a tombstone).

A checkpoint of some partitions runs in this order (Quix Streams' order, for the same reason):

    1. flush outputs   alerts / scores / dead letters of every batch applied so far are acknowledged,
                       so no state can cover a reading whose output could still be lost;
    2. write state     tombstones of evicted devices, then every dirty device's state, acknowledged;
    3. commit offsets  the positions after the last applied batch of those partitions.

A state that can never be written (too large, refused by the codec or the broker) does not stop the
others: its device is quarantined (`quarantine.py`) and the checkpoint goes on. A crash anywhere
leaves a consistent pair: states never older than the committed offsets, and each
state knowing which readings it already holds (`source_offset`). Offsets are committed only here, so
a restart replays at most one checkpoint interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from streamer.checkpoint.changelog import ChangelogWriter, Record
from streamer.checkpoint.quarantine import QUARANTINED, STATE_RECORD_MAX_BYTES, encode_checkpointable
from streamer.checkpoint.state_codec import NO_LOG_ID, bookkeeping
from streamer.scoring.readings import DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.state_store import Column, StateStore

if TYPE_CHECKING:
    from streamer.contracts import CheckpointMetrics

log = logging.getLogger(__name__)

PARTITION = bookkeeping("partition")  # readings partition of the device
DIRTY = bookkeeping("dirty")  # state changed since it was last written
WRITTEN = bookkeeping("written")  # the changelog holds a state of this device
COLUMNS: tuple[Column, ...] = (Column(PARTITION, np.int32, fill=-1), Column(DIRTY, np.bool_),
                               Column(WRITTEN, np.bool_),
                               Column(QUARANTINED, np.bool_))  # never written again (quarantine.py)


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
        self._flush_outputs = flush_outputs
        self._metrics = metrics
        self.write_timeout_s = write_timeout_s
        self.max_record_bytes = max_record_bytes
        self.quarantined = 0  # device states quarantined so far
        self._clock = clock
        self._positions: dict[int, int] = {}  # partition -> next offset, applied but not committed
        self._tombstones: dict[int, set[str]] = {}
        self._next_at = clock() + interval_s
        self.log_id = NO_LOG_ID  # topic id of the readings topic the offsets count in (set at restore)

    # ---- tracking -------------------------------------------------------------------------------------
    def track(self, batch: ReadingBatch, scored: ScoredBatch, offsets: Mapping[int, int]) -> None:
        """Record a batch whose output is acknowledged: its devices' partitions, who changed, positions."""
        slots = self.store.lookup(batch.device_ids)
        held = slots >= 0
        cols = self.store.cols
        cols[PARTITION][slots[held]] = batch.partitions[held]
        cols[DIRTY][slots[held & (scored.status == DropReason.SCORED)]] = True
        self._positions.update(offsets)

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

        Raises `CheckpointError` (nothing committed, the devices stay dirty) when the changelog does
        not acknowledge the writes.
        """
        parts = sorted(set(partitions))
        started = time.perf_counter()
        self._flush_outputs()
        store, cols = self.store, self.store.cols
        mine = np.isin(cols[PARTITION], parts)
        slots = np.flatnonzero(store.live & cols[DIRTY] & mine & ~cols[QUARANTINED])
        slots, values, refused = encode_checkpointable(store, slots, self.model_version, self.log_id,
                                                       self.max_record_bytes)
        tombstones: list[Record] = [(p, device, None) for p in parts for device in self._tombstones.get(p, ())
                                    if not self._rewritten(device)]
        tombstones += [t for slot, why in refused if (t := self._quarantine(slot, why)) is not None]
        self.writer.write(tombstones, self.write_timeout_s)  # before states: a resend cannot reorder them
        for p in parts:
            self._tombstones.pop(p, None)
        written = self._write_states(slots, values)
        offsets = {p: self._positions.pop(p) for p in parts if p in self._positions}
        if commit and offsets:
            self._commit(offsets)
        elapsed = time.perf_counter() - started
        self._observe(elapsed)
        level = logging.INFO if written or tombstones else logging.DEBUG
        log.log(level, "checkpoint of partitions %s: %d states, %d tombstones, offsets %s in %.3f s", parts,
                written, len(tombstones), offsets, elapsed,
                extra={"states": written, "tombstones": len(tombstones), "seconds": round(elapsed, 4)})
        return written

    def _write_states(self, slots: np.ndarray, values: list[bytes]) -> int:
        """Write the states (return how many); one the broker refuses for what it is is quarantined."""
        store, cols = self.store, self.store.cols
        ids = [store.device_id(s) or "" for s in slots.tolist()]
        refused: list[tuple[Record, str]] = []
        written_before = cols[WRITTEN][slots]  # (m,) a copy: fancy indexing
        self.writer.write(zip(cols[PARTITION][slots].tolist(), ids, values, strict=True),
                          self.write_timeout_s, reject=lambda record, why: refused.append((record, why)))
        cols[DIRTY][slots] = False
        cols[WRITTEN][slots] = True
        tombstones: list[Record] = []
        for (_, device, _), why in refused:
            slot = store.slot(device)
            if slot is not None:
                cols[WRITTEN][slot] = bool(written_before[slots == slot].any())
                tombstone = self._quarantine(slot, f"the broker refused its record: {why}")
                tombstones += [tombstone] if tombstone is not None else []
        self.writer.write(tombstones, self.write_timeout_s)  # the state it had written must not come back
        return len(slots) - len(refused)

    def _quarantine(self, slot: int, why: str) -> Record | None:
        """Never write this device's state again while it is held; the tombstone to write if it was."""
        cols = self.store.cols
        device = self.store.device_id(slot) or ""
        cols[QUARANTINED][slot] = True
        cols[DIRTY][slot] = False
        tombstone = (int(cols[PARTITION][slot]), device, None) if cols[WRITTEN][slot] else None
        cols[WRITTEN][slot] = False
        self.quarantined += 1
        if self._metrics is not None:
            self._metrics.state_quarantined.inc()
        log.warning("device %r: its state cannot be checkpointed (%s); quarantined: it keeps being scored "
                    "from memory but its state is not written while this process holds it, and every other "
                    "device's checkpoint goes on", device[:64], why, extra={"event": "state_quarantined"})
        return tombstone

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
            self._tombstones.pop(p, None)
        return len(mine)

    def _observe(self, seconds: float) -> None:
        m = self._metrics
        if m is not None:
            m.checkpoints.inc()
            m.checkpoint_duration.observe(seconds)
