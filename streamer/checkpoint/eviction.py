"""Device lifecycle: a memory budget (`RNNWATCH_MAX_DEVICES`) and an idle limit (`RNNWATCH_DEVICE_TTL_S`).

- Before a batch is scored, `admit` makes room for the devices it brings that the store does not hold:
  devices *not in the rest of this batch* leave, least recently seen first; *probationary* devices
  (fewer than `probation` readings applied) go first, and established ones only when no probationary
  one is left, at most an eighth of the budget at a time: a flood of one-shot ids then evicts itself,
  not the fleet (the scan resistance of a segmented LRU).
- When the batch brings more new devices than there is room for, it is scored in consecutive parts:
  `admit(batch, start)` says where the part that fits ends; after scoring it, the next call evicts
  the part's one-shot devices to make room for the next. Every reading is scored and memory never
  grows past the budget, whatever a flood of unseen device ids does. Only when nothing is evictable
  (every held device has readings later in this batch) are new devices' readings dropped as
  `DropReason.CAPACITY` (counted and logged, never silently).
- At each checkpoint interval `expire` evicts devices silent for longer than the TTL.

An evicted device's slot and rows are reused; if the changelog holds a state of it, a tombstone is
written at the next checkpoint (through `forget`), so a restore does not bring it back. If it sends
again it starts as a new device (warm-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from streamer.scoring.readings import ReadingBatch
from streamer.scoring.state_store import StateStore

if TYPE_CHECKING:
    from streamer.contracts import EvictionMetrics

log = logging.getLogger(__name__)


class DeviceEvictor:
    """Keeps `store` within `max_devices` devices and evicts those idle for `ttl_s` seconds.

    forget(slots) is told about devices just before they leave (the checkpointer queues tombstones).
    The clock is wall-clock seconds, the scale of the store's `last_seen` column.
    """

    def __init__(self, store: StateStore, *, max_devices: int, ttl_s: float, probation: int = 3,
                 forget: Callable[[np.ndarray], None] = lambda slots: None,
                 metrics: EvictionMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices}")
        self.store = store
        self.max_devices = max_devices
        self.ttl_s = ttl_s
        self.probation = probation
        self._forget = forget
        self._metrics = metrics
        self._clock = clock
        self.evicted = 0
        self.refused = 0

    def admit(self, batch: ReadingBatch, start: int = 0) -> tuple[int, np.ndarray | None]:
        """Make room for the new devices of batch[start:]; return (end, mask).

        Score batch[start:end] next; `mask` (end - start,) is None when all of it may be scored, else
        False where a reading is dropped for lack of room.
        """
        ids, n = batch.device_ids, len(batch)
        rest = ids[start:] if start else ids
        slots = self.store.lookup(rest)
        new = slots < 0
        if not new.any():
            return n, None
        arriving = list(dict.fromkeys(rest[i] for i in np.flatnonzero(new).tolist()))  # arrival order
        self._make_room(len(self.store) + len(arriving) - self.max_devices, slots, len(arriving))
        room = self.max_devices - len(self.store)
        if room >= len(arriving):
            return n, None
        if room > 0:  # the part up to the first reading of the first device that does not fit
            return start + list(rest).index(arriving[room]), None
        refused = set(arriving)
        self.refused += len(refused)
        if self.refused == len(refused) or self.refused % 100_000 < len(refused):
            log.warning("state store full (%d devices, RNNWATCH_MAX_DEVICES); %d new devices in this batch "
                        "dropped as capacity (%d so far)", self.max_devices, len(refused), self.refused)
        return n, np.fromiter((d not in refused for d in rest), dtype=bool, count=len(rest))

    def enforce(self) -> int:
        """Evict least recently seen devices until the budget holds (after a restore brought many)."""
        return self._evict(self.store.lru_slots(len(self.store) - self.max_devices, rank=self._rank()),
                           "capacity")

    def _make_room(self, over: int, protect: np.ndarray, arriving: int) -> None:
        if over <= 0:
            return
        established = self.store.cols["steps"] >= self.probation
        probationary_only = np.concatenate([protect, np.flatnonzero(established & self.store.live)])
        over -= self._evict(self.store.lru_slots(over, protect=probationary_only), "capacity")
        room = self.max_devices - len(self.store)
        wanted = min(arriving, max(1, self.max_devices // 8))  # enough for a part of the batch
        if over > 0 and room < wanted:
            self._evict(self.store.lru_slots(min(over, wanted - room), protect=protect), "capacity")

    def _rank(self) -> np.ndarray:
        """Eviction order: probationary devices by last seen, then established ones by last seen."""
        cols = self.store.cols
        return cols["last_seen"] + np.where(cols["steps"] >= self.probation, 1e12, 0.0)

    def expire(self) -> int:
        """Evict the devices idle for more than the TTL; return how many left."""
        return self._evict(self.store.idle_slots(self._clock(), self.ttl_s), "ttl")

    def _evict(self, slots: np.ndarray, why: str) -> int:
        if len(slots) == 0:
            return 0
        self._forget(slots)
        self.store.evict_slots(slots)
        self.evicted += len(slots)
        if self._metrics is not None:
            self._metrics.device_evictions.inc(len(slots))
        log.debug("evicted %d devices (%s)", len(slots), why)
        return len(slots)
