"""Device lifecycle: a memory budget (`RNNWATCH_MAX_DEVICES`) and an idle limit (`RNNWATCH_DEVICE_TTL_S`).

- Before a batch is scored, `admit` makes room for the devices it brings that the store does not hold:
  the least recently seen devices *not in this batch* leave first. If the batch alone brings more new
  devices than the budget allows, the first ones (in arrival order) are admitted and the readings of
  the rest are dropped as `DropReason.CAPACITY` (counted, never silently): memory never grows past the
  budget, whatever a flood of unseen device ids does, and known devices keep being scored.
- At each checkpoint interval `expire` evicts devices silent for longer than the TTL.

An evicted device's slot and rows are reused; if the changelog holds a state of it, a tombstone is
written at the next checkpoint (through `forget`), so a restore does not bring it back. If it sends
again it starts as a new device (warm-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamer.scoring.readings import ReadingBatch
from streamer.scoring.state_store import StateStore

log = logging.getLogger(__name__)


class DeviceEvictor:
    """Keeps `store` within `max_devices` devices and evicts those idle for `ttl_s` seconds.

    forget(slots) is told about devices just before they leave (the checkpointer queues tombstones).
    The clock is wall-clock seconds, the scale of the store's `last_seen` column.
    """

    def __init__(self, store: StateStore, *, max_devices: int, ttl_s: float,
                 forget: Callable[[np.ndarray], None] = lambda slots: None, metrics: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices}")
        self.store = store
        self.max_devices = max_devices
        self.ttl_s = ttl_s
        self._forget = forget
        self._metrics = metrics
        self._clock = clock
        self.evicted = 0
        self.refused = 0

    def admit(self, batch: ReadingBatch) -> np.ndarray | None:
        """Make room for the batch's new devices; a mask of the readings that may be scored (None: all)."""
        slots = self.store.lookup(batch.device_ids)
        new = slots < 0
        if not new.any():
            return None
        ids = batch.device_ids
        arriving = list(dict.fromkeys(ids[i] for i in np.flatnonzero(new).tolist()))  # arrival order
        over = len(self.store) + len(arriving) - self.max_devices
        if over > 0:
            self._evict(self.store.lru_slots(over, protect=slots), "capacity")
        room = self.max_devices - len(self.store)
        if room >= len(arriving):
            return None
        refused = set(arriving[max(room, 0):])
        self.refused += len(refused)
        if self.refused == len(refused) or self.refused % 100_000 < len(refused):
            log.warning("state store full (%d devices, RNNWATCH_MAX_DEVICES); %d new devices in this batch "
                        "dropped as capacity (%d so far)", self.max_devices, len(refused), self.refused)
        return np.fromiter((d not in refused for d in ids), dtype=bool, count=len(ids))

    def enforce(self) -> int:
        """Evict least recently seen devices until the budget holds (after a restore brought many)."""
        return self._evict(self.store.lru_slots(len(self.store) - self.max_devices), "capacity")

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
