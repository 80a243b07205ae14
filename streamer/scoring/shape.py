"""A device's channel set (its *shape*) and what happens when it changes.

A device's state has one row per channel, fixed by its first reading: a count (4 channels), their
names (`("rpm", "temp")`) or, for list values, positions (`None`). A reading of another shape (a
channel added, removed or renamed, list ↔ dict) cannot be scored against that state; it is dropped
as `DropReason.CHANNEL_MISMATCH` (and dead-lettered by the daemon). A list is never paired with
named channels by position, unless that device has always sent lists.

A device that keeps sending one new shape has changed, for good (new firmware, a sensor added): after
`reshape_after` readings *in a row* in that same new shape, the device is **re-initialised** for it
at the reading that completes the run, which is scored as the device's first reading: fresh rows for
the new channels, and every column reset as for a new device except its event time, its last
applied offset, when it was seen, and the checkpointer's bookkeeping (`ckpt_*`). So it warms up
again (its scores are 0 while the calibration learns the new channels). Logged and counted
(`ScoredBatch.reshaped`, `rnnwatch_device_reshaped_total`). A reading in the device's current shape
in between starts the count again, so two producers that interleave two shapes under one id never
re-initialise it back and forth; `reshape_after=1` re-initialises at once.

Re-initialisation happens between waves (`apply`), right before the reading that completes the run is
stepped, so the device's earlier readings in the same batch are still scored in the old shape.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streamer.scoring.readings import ReadingBatch
    from streamer.scoring.state_store import StateStore

log = logging.getLogger(__name__)

RESHAPE_AFTER = 5  # default of RNNWATCH_RESHAPE_AFTER
KEEP_COLUMNS = frozenset({"row_start", "n_channels", "last_ts", "last_seen", "source_offset",
                          "silence_until"})
# the checkpointer's bookkeeping columns (streamer.checkpoint.state_codec.BOOKKEEPING_PREFIX, which
# scoring does not import; tests/test_device_guards.py keeps the two equal)
BOOKKEEPING_PREFIX = "ckpt_"
Shape = tuple[int, "tuple[str, ...] | None"]  # (channel count, names or None for positional)


class ShapeTracker:
    """Decides, reading by reading, which mismatches are a device changing shape for good."""

    def __init__(self, store: StateStore, reshape_after: int = RESHAPE_AFTER) -> None:
        if reshape_after < 1:
            raise ValueError(f"reshape_after must be >= 1, got {reshape_after}")
        self.store = store
        self.reshape_after = reshape_after
        self._pending: dict[int, tuple[str | None, Shape, int]] = {}  # slot -> (device, new shape, run)
        self._due: dict[int, tuple[int, Shape]] = {}  # batch row -> (slot, shape) re-initialised before it
        self.reshaped = 0  # devices re-initialised so far

    def resolve(self, batch: ReadingBatch, slots: np.ndarray, mismatch: np.ndarray, skip: np.ndarray
                ) -> np.ndarray:
        """The mismatch mask (n,) against each device's shape *at that reading*, re-inits scheduled.

        mismatch (n,): against the shape the store holds now (`StateStore.slots_for`); skip (n,): rows
        dropped for another reason, which neither count nor break a run. Call `apply` before each wave.
        """
        self._due = {}
        involved = np.unique(slots[mismatch & ~skip])
        if self._pending:
            involved = np.union1d(involved, np.fromiter(self._pending, dtype=np.int64))
        if len(involved) == 0:
            return mismatch & ~skip
        out = mismatch & ~skip
        current: dict[int, Shape] = {}
        for i in np.flatnonzero(np.isin(slots, involved) & ~skip).tolist():
            slot = int(slots[i])
            held = current.get(slot) or self._shape_of(slot)
            shape: Shape = (int(batch.n_channels[i]), batch.channels[i])
            out[i] = not _same(shape, held) and not self._completes(slot, shape)
            if _same(shape, held):
                self._pending.pop(slot, None)
            elif not out[i]:
                current[slot] = shape
                self._due[i] = (slot, shape)
        return out

    @property
    def due(self) -> bool:
        """Whether `resolve` scheduled a re-initialisation in the batch it saw."""
        return bool(self._due)

    def apply(self, idx: np.ndarray) -> int:
        """Re-initialise the devices whose new shape starts at one of these rows; return how many."""
        if not self._due:
            return 0
        done = 0
        for i in idx.tolist():
            due = self._due.pop(i, None)
            if due is not None:
                self._reinitialise(*due)
                done += 1
        return done

    def _shape_of(self, slot: int) -> Shape:
        return int(self.store.cols["n_channels"][slot]), self.store.channel_names(slot)

    def _completes(self, slot: int, shape: Shape) -> bool:
        """One more reading in `shape`, not the device's; True when it is the `reshape_after`-th in a row."""
        device = self.store.device_id(slot)
        held = self._pending.get(slot)
        run = held[2] + 1 if held is not None and held[0] == device and _same(held[1], shape) else 1
        if run < self.reshape_after:
            self._pending[slot] = (device, shape, run)
            return False
        self._pending.pop(slot, None)
        return True

    def _reinitialise(self, slot: int, shape: Shape) -> None:
        store = self.store
        old = self._shape_of(slot)
        store.reshape(slot, *shape)
        store.reset_devices(np.array([slot]), keep=kept_columns(store))
        self.reshaped += 1
        device = (store.device_id(slot) or "")[:64]
        log.warning("device %r changed its channels from %s to %s: re-initialised after %d readings in the "
                    "new shape, warming up again (RNNWATCH_RESHAPE_AFTER)", device, describe(old),
                    describe(shape), self.reshape_after, extra={"event": "device_reshaped"})


def kept_columns(store: StateStore) -> set[str]:
    """What a re-initialised device keeps: identity, event time, offset, the checkpointer's bookkeeping."""
    return {*KEEP_COLUMNS, *(name for name in store.columns if name.startswith(BOOKKEEPING_PREFIX))}


def describe(shape: Shape) -> str:
    """'3 positional channels' or "2 channels ('rpm', 'temp')" (names cut after 8)."""
    n, names = shape
    if names is None:
        return f"{n} positional channels"
    shown = ", ".join(repr(name[:32]) for name in names[:8]) + (", ..." if n > 8 else "")
    return f"{n} channels ({shown})"


def _same(a: Shape, b: Shape) -> bool:
    return a[0] == b[0] and (a[1] is b[1] or a[1] == b[1])
