"""Restore: on assignment, read the partitions' changelog to its end and install every device's state.

Which record wins, per device, reading the partition in offset order:
- a tombstone removes the device (it was evicted);
- a state replaces the one held unless the held one covers *more* readings (a larger
  `source_offset`); on a tie the later record wins. Without compaction the log holds every
  checkpoint of a device, and a member that lost its partition may still write a stale state after
  the new owner wrote a fresh one; the offset rule keeps the fresh one either way.

Records are installed chunk by chunk as they arrive, so a restore needs no memory beyond the store.

Model version mismatch (documented policy): a state written by another model version keeps what
describes the sensor and its normal and forgets what the old model produced (`scoring.model_change`):
its hidden state, forecast and forecast-error statistics, and the calibration of the two signals
measured on the forecast error, which warm up again; the normaliser, the other signals' calibration,
the alert state (an open episode carries on under the same alert id), the held normal and a silence
stay, so the device scores and alerts from its first reading on the new model. A record in the layout
of an earlier release is converted field by field first (`migrate.py`); one of an unknown layout keeps
only its header (channels, last event time, last applied offset) and starts as a new device: its first
`warmup` readings score 0. Both are counted in `rnnwatch_state_version_mismatch_total`, and the adapted
state is written at the next checkpoint so that the next restore does not repeat it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.checkpoint.changelog import StateTopicReader
from streamer.checkpoint.migrate import Upgrader
from streamer.checkpoint.state_codec import (
    NO_LOG_ID,
    StateRecord,
    StateSchema,
    decode_state,
    install_states,
)
from streamer.errors import StateError
from streamer.scoring.model_change import forget_the_model
from streamer.scoring.shape import kept_columns
from streamer.scoring.state_store import StateStore

if TYPE_CHECKING:
    from streamer.contracts import RestoreMetrics

log = logging.getLogger(__name__)

_MISSING = object()
Installed = Callable[[np.ndarray, int, np.ndarray], None]  # (slots, partition, adapted-to-this-model mask)


def adapt_to_model(store: StateStore, slots: np.ndarray, payload_known: np.ndarray | bool = True) -> None:
    """States of another model version (m,): where their payload was read (`payload_known`), forget only
    what the old model produced; elsewhere (another schema) keep channels, event time and offset only."""
    if len(slots) == 0:
        return
    known = np.broadcast_to(np.asarray(payload_known, dtype=bool), slots.shape)
    forget_the_model(store, slots[known])
    if not known.all():
        store.reset_devices(slots[~known], keep=kept_columns(store))


class Restorer:
    """Restores requested partitions into `store` on the caller's thread (the daemon's main loop)."""

    def __init__(self, store: StateStore, reader: StateTopicReader, model_version: str, *,
                 metrics: RestoreMetrics | None = None, stall_timeout_s: float = 30.0,
                 on_installed: Installed = lambda slots, partition, stale: None,
                 beat: Callable[[], None] = lambda: None) -> None:
        self._beat = beat
        self.store = store
        self.reader = reader
        self.model_version = model_version
        self._metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self._on_installed = on_installed
        self.pending: set[int] = set()
        self.log_id = NO_LOG_ID  # the readings topic's id now; states counted in another forget offsets
        self.last: dict[str, float] = {}  # figures of the latest restore, for logs, tests and the bench

    def request(self, partitions: Iterable[int]) -> None:
        self.pending |= set(partitions)
        if self.pending and self._metrics is not None:
            self._metrics.restore_progress.set(0.0)

    def cancel(self, partitions: Iterable[int]) -> None:
        self.pending -= set(partitions)
        if not self.pending:
            self._progress(1, 1)

    def restore(self) -> int:
        """Restore every pending partition; return devices installed. `BrokerError` leaves them pending."""
        parts = sorted(self.pending)
        if not parts:
            return 0
        log.info("restoring device state of partitions %s from %s", parts, self.reader.topic)
        started = time.perf_counter()
        before = len(self.store)
        run = _Run(self.store, StateSchema.of(self.store), self.model_version, self._on_installed,
                   self.log_id)
        records = self.reader.read(parts, run.add, on_progress=lambda done, total: self._progress(
            done, total, run), stall_timeout_s=self.stall_timeout_s)
        elapsed = time.perf_counter() - started
        run.installed = len(self.store) - before  # distinct devices (a chunk may replace an earlier one's)
        self.pending -= set(parts)
        self._progress(1, 1)
        self.last = {"partitions": len(parts), "records": records, "devices": run.installed,
                     "mismatched": run.mismatched, "invalid": run.invalid, "relogged": run.relogged,
                     "upgraded": run.upgrader.upgraded,
                     "seconds": elapsed}
        if run.relogged:
            log.warning("%d restored states count offsets in another incarnation of the readings topic "
                        "(deleted and recreated, or a broker that lost its log): they keep their state but "
                        "not their offsets", run.relogged)
        m = self._metrics
        if m is not None:
            m.restored_devices.inc(run.installed)
            m.state_version_mismatch.inc(run.mismatched)
            m.restore_duration.observe(elapsed)
        log.info("restored %d devices of partitions %s in %.2f s (%d records read, %d written by another "
                 "model version or schema and adapted to this one, %d invalid records skipped)",
                 run.installed, parts, elapsed, records, run.mismatched, run.invalid, extra=self.last)
        return run.installed

    def _progress(self, done: int, total: int, run: _Run | None = None) -> None:
        if run is not None:
            run.expected = max(run.expected, total)
            self._beat()
        if self._metrics is not None:
            self._metrics.restore_progress.set(done / total if total else 1.0)


class _Run:
    """One restore: applies chunks of changelog records to the store as they arrive."""

    def __init__(self, store: StateStore, schema: StateSchema, model_version: str,
                 on_installed: Installed, log_id: bytes = NO_LOG_ID) -> None:
        self.store, self.schema, self.model_version = store, schema, model_version
        self.upgrader = Upgrader(store, schema)
        self._on_installed = on_installed
        self.log_id = log_id
        self.installed = self.invalid = self.relogged = 0
        self.expected = 0  # records the changelog holds (from its end offsets), to size the store once
        self._reserved = False
        self._stale: set[str] = set()  # devices whose latest installed record came from another model

    @property
    def mismatched(self) -> int:
        return len(self._stale)

    def add(self, records: list[Any]) -> None:
        """Records of one partition, in offset order (kafka-python ConsumerRecords)."""
        winners: dict[str, Any] = {}
        for record in records:
            self._choose(record, winners)
        store = self.store
        gone = [device for device, rec in winners.items() if rec is None and device in store]
        store.evict_slots(np.array([store.slot(d) for d in gone], dtype=np.int64))
        states: list[StateRecord] = [rec for rec in winners.values() if rec is not None]
        if not states:
            return
        if not self._reserved and self.expected > len(states):  # one allocation, not a doubling series
            per_device = sum(rec.n_channels for rec in states) / len(states)
            store.reserve(len(store) + self.expected, int(store.row_capacity + self.expected * per_device))
            self._reserved = True
        states = self.upgrader.upgrade(states)  # an earlier release's layout: read by field name
        slots, known = install_states(store, states, self.schema)
        versions = np.array([rec.model_version == self.model_version for rec in states])
        stale = ~known | ~versions
        adapt_to_model(store, slots[stale], payload_known=known[stale])
        relogged = np.array([self.log_id != NO_LOG_ID and rec.log_id != self.log_id for rec in states])
        store.cols["source_offset"][slots[relogged]] = -1  # those offsets counted in a log that is gone
        self.relogged += int(relogged.sum())
        self._on_installed(slots, int(records[0].partition), stale | relogged)
        self.installed += len(states)
        for rec, was_stale in zip(states, stale.tolist(), strict=True):
            if was_stale:
                self._stale.add(rec.device_id)
            elif self._stale:
                self._stale.discard(rec.device_id)
        self._stale.difference_update(gone)

    def _choose(self, record: Any, winners: dict[str, Any]) -> None:
        if record.key is None:
            self._invalid(record, "it has no key")
            return
        device = record.key.decode(errors="replace")
        if record.value is None:
            winners[device] = None
            return
        try:
            state = decode_state(record.value)
        except StateError as exc:
            self._invalid(record, str(exc))
            return
        if state.device_id != device:
            self._invalid(record, f"its key {device!r} names another device than its value")
            return
        held = winners.get(device, _MISSING)
        if held is _MISSING:
            slot = self.store.slot(device)
            held_offset = int(self.store.cols["source_offset"][slot]) if slot is not None else None
        else:
            held_offset = held.source_offset if held is not None else None
        if held_offset is None or state.source_offset >= held_offset:
            winners[device] = state

    def _invalid(self, record: Any, why: str) -> None:
        self.invalid += 1
        if self.invalid <= 5:
            log.warning("state record %s/%d@%d skipped: %s", record.topic, record.partition, record.offset,
                        why)
