"""Each device's event-time clock, which one bad reading cannot poison and a clock reset cannot freeze.

A reading is scored only when its timestamp is newer than its device's last one (`last_ts`); older
ones are dropped as `DropReason.OUT_OF_ORDER` (and dead-lettered by the daemon). Two ways that rule
could silence a device for good, and what stops them:

- *one reading far in the future* (a ts of 2999) would become the clock, and every later reading
  would be "out of order". The decoder refuses a ts more than `RNNWATCH_MAX_FUTURE_S` ahead of the
  wall clock (`future_timestamp`), so it never reaches this clock: a clock can run ahead of the wall
  clock by that much at most, and real readings catch up with it within that time.
- *a device whose clock went back* (RTC reset, a replaced gateway) sends readings that are all older
  than its last one, forever. After `rebase_after` readings *in a row* that are not newer (any newer
  reading in between starts the count again), the device's clock is **re-based** to the reading
  that completes the run, which is scored. Choice documented: the device **re-warms** on the new
  timeline, keeping only its normaliser statistics (the sensor and its scale are the same): every
  other field is reset as for a new device, because each one that holds event time (alert episode
  start and cooldown, time-of-day profile, the calibration's learning window, the recurrent state's
  memory of the last minutes) belongs to the old timeline. It is the policy of a state restored under
  another model version (`streamer.checkpoint.restore`), with the same caveat: an alert open when the
  clock went back is not resolved by an event. Logged and counted (`ScoredBatch.rebased`,
  `rnnwatch_device_clock_rebased_total`). The readings of the run before it stay dropped
  (dead-lettered as `out_of_order`): they may be replays.

The runs are held in a small map of the devices currently behind (none in a healthy stream), not in
the state store: a restart only restarts a count.

>>> import numpy as np
>>> from streamer.scoring.state_store import StateStore
>>> store = StateStore(state_size=2)
>>> slots, _ = store.slots_for(["gw"], np.array([1]), [None])
>>> store.cols["last_ts"][slots] = 1000.0
>>> clock = EventClock(store, rebase_after=3)
>>> [bool(clock.admit(slots, np.array([t]))[0]) for t in (10.0, 11.0, 12.0, 13.0)]
[False, False, True, True]
>>> clock.rebased
1
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from streamer.scoring.shape import kept_columns

if TYPE_CHECKING:
    from streamer.scoring.state_store import StateStore

log = logging.getLogger(__name__)

REBASE_AFTER = 20  # default of RNNWATCH_CLOCK_REBASE_AFTER
NORMALISER_ROWS = ("norm_count", "norm_mean", "norm_var")  # what a re-based device keeps of its rows


class EventClock:
    """Decides which readings of a wave are new enough, and re-bases devices whose clock went back."""

    def __init__(self, store: StateStore, rebase_after: int = REBASE_AFTER) -> None:
        if rebase_after < 1:
            raise ValueError(f"rebase_after must be >= 1, got {rebase_after}")
        self.store = store
        self.rebase_after = rebase_after
        self._behind: dict[int, tuple[str | None, int]] = {}  # slot -> (device id, readings in a row)
        self.rebased = 0  # devices re-based so far

    def admit(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Which readings to apply: slots (m,) (each device once), ts (m,) -> fresh (m,) bool.

        A device re-based here has `last_ts` -inf and `steps` 0 afterwards (a new timeline).
        """
        fresh = ts > self.store.cols["last_ts"][slots]
        if self._behind and fresh.any():
            for slot in self._behind.keys() & set(slots[fresh].tolist()):
                del self._behind[slot]
        stale = np.flatnonzero(~fresh)
        if len(stale) == 0:
            return fresh
        rebase = [j for j in stale.tolist() if self._count(int(slots[j]))]
        if rebase:
            where = np.asarray(rebase, dtype=np.int64)
            self._rebase(slots[where], ts[where])
            fresh[where] = True
        return fresh

    def runs(self, slots: np.ndarray) -> np.ndarray:
        """Each device's current run of readings behind its clock: slots (g,) -> (g,) int64."""
        out = np.zeros(len(slots), dtype=np.int64)
        if self._behind:
            for j, slot in enumerate(slots.tolist()):
                held = self._behind.get(slot)
                if held is not None and held[0] == self.store.device_id(slot):
                    out[j] = held[1]
        return out

    def set_runs(self, slots: np.ndarray, runs: np.ndarray) -> None:
        """Record each device's run behind its clock after a batch applied elsewhere (`runs` (g,), 0:
        caught up); none may be complete (`rebase_after` or more)."""
        for j in np.flatnonzero(runs).tolist():
            slot = int(slots[j])
            self._behind[slot] = (self.store.device_id(slot), int(runs[j]))
        if self._behind:
            for slot in set(slots[runs == 0].tolist()) & self._behind.keys():
                del self._behind[slot]

    def _count(self, slot: int) -> bool:
        """One more reading of this device not newer than its clock; True when its run is complete."""
        device = self.store.device_id(slot)
        held = self._behind.get(slot)
        run = held[1] + 1 if held is not None and held[0] == device else 1
        if run < self.rebase_after:
            self._behind[slot] = (device, run)
            return False
        self._behind.pop(slot, None)
        return True

    def _rebase(self, slots: np.ndarray, ts: np.ndarray) -> None:
        store = self.store
        old = store.cols["last_ts"][slots].copy()
        store.reset_devices(slots, keep=kept_columns(store), keep_rows=NORMALISER_ROWS)
        store.cols["last_ts"][slots] = -np.inf
        self.rebased += len(slots)
        for slot, was, now in zip(slots.tolist(), old.tolist(), ts.tolist(), strict=True):
            log.warning("device %r sent %d readings in a row older than its clock (%s): clock re-based to "
                        "%s, warming up again with its normaliser kept (RNNWATCH_CLOCK_REBASE_AFTER)",
                        (store.device_id(slot) or "")[:64], self.rebase_after, iso(was), iso(now),
                        extra={"event": "clock_rebased"})


def iso(ts: float) -> str:
    """RFC 3339 UTC text of epoch seconds (their repr when out of datetime's range)."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(ts)
