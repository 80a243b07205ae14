"""Per-device state: recurrent rows in preallocated tensor slabs, per-device columns beside them.

A device with C channels owns C contiguous *rows*: each row holds one channel's hidden state, its
normaliser statistics and the model's forecast of its next value. Rows live in tensors on the scoring
device (CPU or CUDA), so a wave of readings gathers and scatters them in one indexed operation.
Per-device fields (last timestamp, calibration, alert state, ...) live in numpy columns indexed by the
device's *slot*. Components declare the columns they need (`Column`) and the store allocates them.

A component may also need per-device state whose size grows faster than the channel count (the
cross-channel relation model keeps a C x C matrix, see `relation`): a `Block` declares it with its
cell count as a function of C, and the store keeps every device's cells contiguous in one flat
tensor beside the rows (`blocks`, located by the device's `<name>_start` column).

Capacity grows by chunks; freed slots, row blocks and cell blocks are reused. Nothing here knows
about Kafka.

Shapes: S = model state size; row tensors (row_capacity, ...); device columns (device_capacity, width);
block tensors (block_capacity,).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from model.normaliser import DAY_BINS
from streamer.errors import StateError


@dataclass(frozen=True)
class Column:
    """A per-device field: `width` values of `dtype`, reset to `fill` when a slot is (re)allocated."""

    name: str
    dtype: type[np.generic] | np.dtype
    width: int = 1
    fill: float = 0.0


@dataclass(frozen=True)
class Block:
    """Per-device state of `cells(n_channels)` values of `dtype`, zero for a new device. `tag` names the
    cell layout (it goes into the checkpoint schema: another layout is another schema)."""

    name: str
    dtype: torch.dtype
    cells: Callable[[int], int]
    tag: str

    @property
    def start_column(self) -> str:
        return f"{self.name}_start"


# Row-level tensors: name -> (dtype, width); width 0 means the model's state size.
ROW_FIELDS: dict[str, tuple[torch.dtype, int]] = {
    "hidden": (torch.float16, 0),  # recurrent state, stored at half precision (computed in float32)
    "norm_count": (torch.float32, 1),  # exact to 2**24 readings, long after the normaliser's weight floor
    "norm_mean": (torch.float64, 1),
    "norm_var": (torch.float32, 1),
    "pred": (torch.float32, 1),
    "level": (torch.float32, 1),  # short-term level of z (model.normaliser.ewma_update)
    "bias": (torch.float32, 1),  # short-term average of the forecast error (model.normaliser.ewma_update)
    "resid_var": (torch.float32, 1),  # short-term mean squared forecast error (scoring.evidence)
    "vol": (torch.float32, 1),  # short-term mean of z^2 (model.normaliser.ewma_update)
    "last_value": (torch.float32, 1),  # previous raw value, for exact repeats (scoring.evidence)
    "repeat_run": (torch.int16, 1),  # consecutive exact repeats of the value, saturating (scoring.evidence)
    "day_profile": (torch.float16, DAY_BINS),  # time-of-day profile of z, 0 = bin never visited
    "range_low": (torch.float16, 1),  # running minimum, in z of the live normaliser (scoring.evidence)
    "range_high": (torch.float16, 1),  # running maximum, likewise
    "rel_level": (torch.float16, 1),  # short-term level of the relation residual r_k^2 (scoring.relation)
    "held_mean": (torch.float32, 1),  # normaliser mean held while the device's episode is open (pipeline)
    "held_sd": (torch.float32, 1),  # normaliser spread (root of the variance) held with it
}

CORE_COLUMNS: tuple[Column, ...] = (
    Column("row_start", np.int32),  # 2**31 rows: far beyond any one process's memory
    Column("n_channels", np.int16),
    Column("last_ts", np.float64, fill=-np.inf),
    # wall-clock seconds of the last reading, for TTL and LRU: whole seconds (until 2106) pay for
    # silence_until below
    Column("last_seen", np.uint32),
    Column("source_offset", np.int64, fill=-1),  # last applied Kafka offset (exactly-once state effect)
    Column("steps", np.uint16),  # readings applied to the recurrent state since the last reset (saturating)
    # an operator's silence: no alert is announced for readings before this event time (whole seconds, rounded
    # up; 0: none). Set and lifted from the feedback topic (streamer.feedback)
    Column("silence_until", np.uint32),
)


class StateStore:
    """Device-id -> slot map over growable state slabs."""

    def __init__(
        self,
        state_size: int,
        columns: Iterable[Column] = (),
        device: torch.device | str = "cpu",
        initial_devices: int = 1024,
        clock: Callable[[], float] | None = None,
        blocks: Iterable[Block] = (),
    ) -> None:
        import time

        self.state_size = state_size
        self.device = torch.device(device)
        self.clock = clock or time.time
        self.block_fields: dict[str, Block] = {b.name: b for b in blocks}
        starts = tuple(Column(b.start_column, np.int32) for b in self.block_fields.values())
        self.columns: dict[str, Column] = {c.name: c for c in (*CORE_COLUMNS, *starts, *columns)}
        self.blocks: dict[str, torch.Tensor] = {
            b.name: torch.zeros(max(1, initial_devices) * b.cells(4), dtype=b.dtype, device=self.device)
            for b in self.block_fields.values()
        }
        self._free_cells: dict[str, dict[int, list[int]]] = {b: {} for b in self.block_fields}
        self._cells_used: dict[str, int] = dict.fromkeys(self.block_fields, 0)
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._names: list[tuple[str, ...] | None] = []
        self._free_slots: list[int] = []
        self._free_rows: dict[int, list[int]] = {}
        self._rows_used = 0
        self.live = np.zeros(0, dtype=bool)  # (device_capacity,) True where a slot holds a device
        self.cols: dict[str, np.ndarray] = {}
        self.rows: dict[str, torch.Tensor] = {}
        self._alloc_devices(max(1, initial_devices))
        self._alloc_rows(max(1, initial_devices) * 4)

    # ---- capacity -------------------------------------------------------------------------------
    @property
    def device_capacity(self) -> int:
        return len(self._ids)

    @property
    def row_capacity(self) -> int:
        return int(self.rows["hidden"].shape[0])

    @property
    def rows_used(self) -> int:
        """Rows handed out so far (in use or free for reuse): every device's rows lie below it."""
        return self._rows_used

    def cells_used(self, name: str) -> int:
        """Cells of block `name` handed out so far: every device's cells lie below it."""
        return self._cells_used[name]

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._slot

    def _alloc_devices(self, capacity: int) -> None:
        old = len(self._ids)
        for col in self.columns.values():
            shape = (capacity,) if col.width == 1 else (capacity, col.width)
            fresh = np.full(shape, col.fill, dtype=col.dtype)
            if old:
                fresh[:old] = self.cols[col.name]
            self.cols[col.name] = fresh
        self._ids.extend([None] * (capacity - old))
        self._names.extend([None] * (capacity - old))
        self.live = np.concatenate([self.live, np.zeros(capacity - old, dtype=bool)])
        self._free_slots.extend(range(capacity - 1, old - 1, -1))  # pop() hands out low slots first

    def _alloc_rows(self, capacity: int) -> None:
        for name, (dtype, width) in ROW_FIELDS.items():
            shape = (capacity, width or self.state_size) if width != 1 else (capacity,)
            fresh = torch.zeros(shape, dtype=dtype, device=self.device)
            if name in self.rows:
                fresh[: self.rows[name].shape[0]] = self.rows[name]
            self.rows[name] = fresh

    # ---- slots ----------------------------------------------------------------------------------
    def slot(self, device_id: str) -> int | None:
        return self._slot.get(device_id)

    def device_id(self, slot: int) -> str | None:
        return self._ids[slot]

    def channel_names(self, slot: int) -> tuple[str, ...] | None:
        return self._names[slot]

    def device_ids(self) -> list[str]:
        return list(self._slot)

    def ids_and_names(self, slots: np.ndarray) -> tuple[list[str], list[tuple[str, ...] | None]]:
        """Device ids and channel names of these *live* slots: (m,) -> two lists of m."""
        where = np.asarray(slots).tolist()
        if len(where) < 2:
            return [self._ids[s] or "" for s in where], [self._names[s] for s in where]
        pick = operator.itemgetter(*where)  # one C call per list, not a Python loop per device
        return cast(list[str], list(pick(self._ids))), list(pick(self._names))

    def slots_for(
        self,
        device_ids: Sequence[str],
        n_channels: np.ndarray,
        channels: Sequence[tuple[str, ...] | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots for every reading (allocating new devices) and a mask of channel-set mismatches.

        device_ids (n,), n_channels (n,) -> slots (n,) int64, mismatch (n,) bool. Positional (list)
        values match only a device that has always sent lists: a list is never paired with named
        channels by position.
        """
        lookup = self._slot.get
        found = [lookup(dev) for dev in device_ids]  # one dict lookup per reading, no numpy scalars
        if None in found:
            for i, s in enumerate(found):
                if s is None:  # new, or allocated earlier in this very batch
                    again = self._slot.get(device_ids[i])
                    found[i] = self._allocate(device_ids[i], int(n_channels[i]), channels[i]) \
                        if again is None else again
        slots = np.array(found, dtype=np.int64)
        mismatch = self.cols["n_channels"][slots] != n_channels
        names = self._names
        for i, (ch, s) in enumerate(zip(channels, slots.tolist(), strict=True)):
            if names[s] is not ch and names[s] != ch:
                mismatch[i] = True
        self.cols["last_seen"][slots] = self.clock()
        return slots, mismatch

    def _allocate(self, device_id: str, n_channels: int, names: tuple[str, ...] | None) -> int:
        if n_channels < 1:
            raise StateError(f"device {device_id!r}: a reading needs at least one channel")
        if not self._free_slots:
            self._alloc_devices(self.device_capacity * 2)
        slot = self._free_slots.pop()
        row_start = self._take_rows(n_channels)
        for col in self.columns.values():
            self.cols[col.name][slot] = col.fill
        self.cols["row_start"][slot] = row_start
        for block in self.block_fields.values():
            self.cols[block.start_column][slot] = self._take_cells(block, n_channels)
        self.cols["n_channels"][slot] = n_channels
        self._slot[device_id] = slot
        self._ids[slot] = device_id
        self._names[slot] = names
        self.live[slot] = True
        return slot

    def _take_rows(self, count: int) -> int:
        free = self._free_rows.get(count)
        if free:
            start = free.pop()
        else:
            if self._rows_used + count > self.row_capacity:
                self._alloc_rows(max(self.row_capacity * 2, self._rows_used + count))
            start = self._rows_used
            self._rows_used += count
        for tensor in self.rows.values():
            tensor[start : start + count] = 0
        return start

    def _take_cells(self, block: Block, n_channels: int) -> int:
        size = block.cells(n_channels)
        free = self._free_cells[block.name].get(size)
        if free:
            start = free.pop()
        else:
            start = self._cells_used[block.name]
            self._grow_cells(block.name, start + size)
            self._cells_used[block.name] = start + size
        self.blocks[block.name][start : start + size] = 0
        return start

    def _grow_cells(self, name: str, needed: int) -> None:
        old = self.blocks[name]
        if needed > old.shape[0]:
            fresh = torch.zeros(max(2 * old.shape[0], needed), dtype=old.dtype, device=old.device)
            fresh[: old.shape[0]] = old
            self.blocks[name] = fresh

    def reshape(self, slot: int, n_channels: int, names: tuple[str, ...] | None) -> None:
        """Give the device in `slot` zeroed rows and cells for a new channel set (columns untouched)."""
        if n_channels < 1:
            raise StateError(f"device {self._ids[slot]!r}: a reading needs at least one channel")
        old = int(self.cols["n_channels"][slot])
        self._free_rows.setdefault(old, []).append(int(self.cols["row_start"][slot]))
        for block in self.block_fields.values():
            self._free_cells[block.name].setdefault(block.cells(old), []).append(
                int(self.cols[block.start_column][slot]))
        self.cols["row_start"][slot] = self._take_rows(n_channels)
        for block in self.block_fields.values():
            self.cols[block.start_column][slot] = self._take_cells(block, n_channels)
        self.cols["n_channels"][slot] = n_channels
        self._names[slot] = names

    def evict(self, device_id: str) -> None:
        """Forget a device: its slot, rows and cells return to the free lists."""
        slot = self._slot.pop(device_id)
        count = int(self.cols["n_channels"][slot])
        self._free_rows.setdefault(count, []).append(int(self.cols["row_start"][slot]))
        for block in self.block_fields.values():
            self._free_cells[block.name].setdefault(block.cells(count), []).append(
                int(self.cols[block.start_column][slot]))
        self._ids[slot] = None
        self._names[slot] = None
        self.live[slot] = False
        self._free_slots.append(slot)

    # ---- lifecycle: bulk install, idle and least-recently-seen eviction ---------------------------
    def add_columns(self, columns: Iterable[Column]) -> None:
        """Declare more per-device columns after construction (existing slots get the fill value)."""
        fresh = [c for c in columns if c.name not in self.columns]
        for col in fresh:
            self.columns[col.name] = col
            shape = (self.device_capacity,) if col.width == 1 else (self.device_capacity, col.width)
            self.cols[col.name] = np.full(shape, col.fill, dtype=col.dtype)

    def lookup(self, device_ids: Sequence[str]) -> np.ndarray:
        """Slots of these devices, -1 where unknown; allocates nothing: (n,) -> (n,) int64."""
        get = self._slot.get
        return np.fromiter((get(d, -1) for d in device_ids), dtype=np.int64, count=len(device_ids))

    def reserve(self, devices: int, rows: int) -> None:
        """Grow capacity to at least `devices` devices and `rows` rows at once (before a bulk install)."""
        if devices > self.device_capacity:
            self._alloc_devices(devices)
        if rows > self.row_capacity:
            self._alloc_rows(rows)

    def install_devices(
        self, device_ids: Sequence[str], n_channels: np.ndarray, channels: Sequence[tuple[str, ...] | None],
        zero_rows: bool = True,
    ) -> np.ndarray:
        """Fresh slots for these (distinct) devices, replacing any state they had: (n,) -> slots (n,).

        Columns are at their fill value and rows zeroed (unless `zero_rows` is False: the caller
        overwrites every row field), as for a new device; the caller writes the restored values.
        Vectorised: a million devices cost a few numpy operations per field, not a million
        `slots_for` calls.
        """
        held = self._slot
        for dev in [d for d in device_ids if d in held]:
            self.evict(dev)
        n = len(device_ids)
        if n > len(self._free_slots):
            self._alloc_devices(max(self.device_capacity * 2, len(self._slot) + n))
        taken = self._free_slots[len(self._free_slots) - n:]
        del self._free_slots[len(self._free_slots) - n:]
        slots = np.array(taken[::-1], dtype=np.int64)  # the order pop() would have handed them out
        counts = np.asarray(n_channels, dtype=np.int64)
        if n and counts.min() < 1:
            raise StateError("a restored device needs at least one channel")
        starts = np.full(n, -1, dtype=np.int64)  # reuse freed row blocks of the same size first
        for i, c in enumerate(counts.tolist() if any(self._free_rows.values()) else ()):
            if self._free_rows.get(c):
                starts[i] = self._free_rows[c].pop()
        new = starts < 0
        total = int(counts[new].sum())
        if self._rows_used + total > self.row_capacity:
            self._alloc_rows(max(self.row_capacity * 2, self._rows_used + total))
        starts[new] = self._rows_used + np.cumsum(counts[new]) - counts[new]
        self._rows_used += total
        for col in self.columns.values():
            self.cols[col.name][slots] = col.fill
        self.cols["row_start"][slots] = starts
        self.cols["n_channels"][slots] = counts
        for block in self.block_fields.values():
            self.cols[block.start_column][slots] = self._install_cells(block, counts)
        if zero_rows:
            self.zero_state(slots)
        slot_list = slots.tolist()
        held.update(zip(device_ids, slot_list, strict=True))
        ids, names_of = self._ids, self._names
        for dev, slot, names in zip(device_ids, slot_list, channels, strict=True):
            ids[slot] = dev
            names_of[slot] = names
        self.live[slots] = True
        return slots

    def _install_cells(self, block: Block, counts: np.ndarray) -> np.ndarray:
        """Cell starts for devices of these channel counts (n,): freed blocks first, then appended."""
        sizes = _cells_for(block, counts)
        starts = np.full(len(sizes), -1, dtype=np.int64)
        free = self._free_cells[block.name]
        for i, size in enumerate(sizes.tolist() if any(free.values()) else ()):
            if free.get(size):
                starts[i] = free[size].pop()
        new = starts < 0
        used = self._cells_used[block.name]
        starts[new] = used + np.cumsum(sizes[new]) - sizes[new]
        self._cells_used[block.name] = used + int(sizes[new].sum())
        self._grow_cells(block.name, self._cells_used[block.name])
        return starts

    def zero_state(self, slots: np.ndarray) -> None:
        """Zero every row field and cell block of these devices (a new device's recurrent state)."""
        rows = torch.from_numpy(self.rows_of(slots)[0]).to(self.device)
        for tensor in self.rows.values():
            tensor[rows] = 0
        for name in self.block_fields:
            self.blocks[name][torch.from_numpy(self.cells_of(slots, name)).to(self.device)] = 0

    def cells_of(self, slots: np.ndarray, name: str) -> np.ndarray:
        """Flat cell indices of these devices' `name` blocks, device after device: (m,) -> (k,) int64."""
        block = self.block_fields[name]
        sizes = _cells_for(block, self.cols["n_channels"][slots])  # (m,)
        owner = np.repeat(np.arange(len(slots)), sizes)
        first = np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.cols[block.start_column][slots][owner] + (np.arange(len(owner)) - first)

    def idle_slots(self, now: float, ttl_s: float) -> np.ndarray:
        """Slots of the devices not seen for more than `ttl_s` seconds (to pass to `evict_slots`)."""
        return np.flatnonzero(self.live & (self.cols["last_seen"] < now - ttl_s))

    def lru_slots(self, count: int, protect: np.ndarray | None = None, rank: np.ndarray | None = None
                  ) -> np.ndarray:
        """Slots of the `count` least recently seen devices, never one in `protect` (-1 entries ignored).

        `rank` (device_capacity,) replaces `last_seen` as the order: lowest leaves first.
        """
        candidates = self.live.copy()
        if protect is not None and len(protect):
            candidates[protect[protect >= 0]] = False
        slots = np.flatnonzero(candidates)
        if count <= 0 or len(slots) == 0:
            return slots[:0]
        if count < len(slots):
            order = (self.cols["last_seen"] if rank is None else rank)[slots]
            slots = slots[np.argpartition(order, count - 1)[:count]]
        return slots

    def evict_slots(self, slots: np.ndarray) -> list[str]:
        """Evict the devices in these slots; return their ids. Their column values stay readable until the
        slots are reused."""
        ids = [self._ids[s] for s in np.asarray(slots).tolist()]
        for dev in ids:
            if dev is not None:
                self.evict(dev)
        return [dev for dev in ids if dev is not None]

    # ---- rows -----------------------------------------------------------------------------------
    def rows_of(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the devices in `slots`, flattened: slots (m,) -> rows (r,), owner (r,).

        owner[j] is the position in `slots` whose device row j belongs to; a device's rows are in
        channel order.
        """
        counts = self.cols["n_channels"][slots].astype(np.int64)
        owner = np.repeat(np.arange(len(slots)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        rows = self.cols["row_start"][slots][owner] + (np.arange(len(owner)) - first)
        return rows, owner

    def reset_devices(self, slots: np.ndarray, keep: Iterable[str], keep_rows: Iterable[str] = ()) -> None:
        """Give these devices a new device's state (zero rows and cells, columns at their fill) except
        the columns named in `keep` and the row fields in `keep_rows`; identity, channels and where
        their rows and cells live stay."""
        kept = {*keep, "row_start", "n_channels", *(b.start_column for b in self.block_fields.values())}
        for col in self.columns.values():
            if col.name not in kept:
                self.cols[col.name][slots] = col.fill
        kept_rows = set(keep_rows)
        if not kept_rows:
            self.zero_state(slots)
            return
        rows = torch.from_numpy(self.rows_of(slots)[0]).to(self.device)
        for name, tensor in self.rows.items():
            if name not in kept_rows:
                tensor[rows] = 0
        for name in self.block_fields:
            self.blocks[name][torch.from_numpy(self.cells_of(slots, name)).to(self.device)] = 0

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Zero the recurrent state (not the normaliser) of these rows: after a long gap, say."""
        self.rows["hidden"][rows] = 0
        self.rows["pred"][rows] = 0

    # ---- accounting -----------------------------------------------------------------------------
    def bytes_per_device(self, n_channels: int) -> int:
        """Memory one tracked device costs: its rows, its columns and its map entries."""
        row_bytes = sum(
            (w or self.state_size) * torch.empty(0, dtype=dt).element_size() for dt, w in ROW_FIELDS.values()
        )
        col_bytes = sum(np.dtype(c.dtype).itemsize * c.width for c in self.columns.values())
        col_bytes += sum(b.cells(n_channels) * torch.empty(0, dtype=b.dtype).element_size()
                         for b in self.block_fields.values())
        map_bytes = sys.getsizeof("device-000000") + 2 * 8 + 100  # key str + dict entry + list slots
        return row_bytes * n_channels + col_bytes + map_bytes

    def memory_bytes(self) -> int:
        """Bytes allocated for state (capacity, not just what is in use)."""
        rows = sum(t.element_size() * t.nelement() for t in (*self.rows.values(), *self.blocks.values()))
        cols = sum(a.nbytes for a in self.cols.values())
        return rows + cols + len(self._slot) * (sys.getsizeof("device-000000") + 116)


def _cells_for(block: Block, n_channels: np.ndarray) -> np.ndarray:
    """`block.cells(c)` of every device: (m,) channel counts -> (m,) int64, one call per distinct count."""
    if len(n_channels) == 0:
        return np.zeros(0, dtype=np.int64)
    distinct, inverse = np.unique(n_channels, return_inverse=True)
    per_count = np.array([block.cells(int(c)) for c in distinct.tolist()], dtype=np.int64)
    return per_count[inverse.reshape(-1)]
