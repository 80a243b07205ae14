"""A consistent copy of some devices' states, taken between two batches: what a checkpoint writes.

Taking one is the only part of a checkpoint that runs on the scoring loop's thread, so it is a copy
and nothing more: per field one numpy / torch copy, no Python object per device beyond the id list.
When the devices hold a large share of the slabs' rows (a checkpoint where most of the fleet
changed), the used part of every row and cell slab is copied whole (a memcpy, several times faster
than a gather) and the devices' rows are gathered from that private copy later, by `gather()`, in
whichever thread encodes the snapshot. Encoding and writing then run in the background
(`background.py`) while the loop keeps scoring and changing the store: the snapshot shares no memory
with it.

Shapes: m devices, r = sum of their channel counts, k = sum of their cells per block. After
`gather()` every array is in device order: the rows of device i are
rows[row_first[i] : row_first[i] + n_channels[i]].
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from streamer.checkpoint.state_schema import StateSchema
from streamer.scoring.state_store import StateStore

WHOLE_SLAB_SHARE = 0.25  # copy the used slabs whole when the devices hold at least this share of rows


class SlabPool:
    """Whole-slab copy buffers, handed back once gathered and reused by the next snapshot.

    Copying a slab into memory already mapped takes a tenth of the time of copying it into fresh
    memory (which page-faults on every page: ~1 s per GB measured here), and the copy is what holds
    the scoring loop. Holds one set of buffers between checkpoints (about the size of the store's used
    rows). Thread-safe: the loop takes, the worker gives back.
    """

    def __init__(self) -> None:
        self._free: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def copy(self, key: str, source: np.ndarray) -> np.ndarray:
        """A buffer for `key` holding a copy of `source` in its first len(source) entries."""
        with self._lock:
            buf = self._free.pop(key, None)
        fits = buf is not None and buf.dtype == source.dtype and buf.shape[1:] == source.shape[1:]
        if buf is None or not fits or len(buf) < len(source):
            buf = np.empty((len(source) + len(source) // 4 + 1, *source.shape[1:]), source.dtype)  # headroom
        np.copyto(buf[: len(source)], source)
        return buf

    def give_back(self, key: str, buf: np.ndarray) -> None:
        with self._lock:
            self._free[key] = buf

    def warm(self, key: str, length: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Have a buffer of `length` x `shape` entries ready, its pages touched (off the loop thread:
        then the copy that holds the loop never page-faults, even as the store grows)."""
        with self._lock:
            held = self._free.get(key)
        if held is not None and held.dtype == dtype and held.shape[1:] == shape and len(held) >= length:
            return
        buf = np.empty((length + length // 4 + 1, *shape), dtype)
        buf.fill(0)  # touch every page now
        self.give_back(key, buf)

    def warm_for(self, store: StateStore, schema: StateSchema) -> None:
        """Buffers for a whole-slab snapshot of `store` as it is now."""
        for name, _, _ in schema.rows:
            slab = store.rows[name]
            self.warm("r:" + name, store.rows_used, tuple(slab.shape[1:]), _np_dtype(slab))
        for block in schema.blocks:
            slab = store.blocks[block.name]
            self.warm("b:" + block.name, store.cells_used(block.name), tuple(slab.shape[1:]), _np_dtype(slab))


class StateSnapshot:
    """Copies of m devices' states (the fields of `schema`) and where they were in the store."""

    def __init__(self, schema: StateSchema, slots: np.ndarray, device_ids: list[str],
                 channels: list[tuple[str, ...] | None], cols: dict[str, np.ndarray],
                 rows: dict[str, np.ndarray], blocks: dict[str, np.ndarray],
                 starts: dict[str, np.ndarray] | None = None, pool: SlabPool | None = None) -> None:
        self.schema = schema
        self.slots = slots  # (m,) int64: their slots when taken (bookkeeping goes back by slot and id)
        self.device_ids = device_ids  # (m,)
        self.channels = channels  # (m,) channel names, None for positional values
        self.n_channels = cols["n_channels"].astype(np.int64)  # (m,)
        self.source_offset = cols["source_offset"]  # (m,) int64
        self.last_ts = cols["last_ts"]  # (m,) float64
        self.cols = cols  # name -> (m,) or (m, width)
        self._rows = rows  # name -> (r, ...) rows, or (rows used, ...) whole slabs until gathered
        self._blocks = blocks  # name -> (k,) cells, or (cells used,) whole slabs until gathered
        self._starts = starts  # "" -> (m,) first row, block name -> (m,) first cell; None: gathered
        self._pool = pool  # where the whole-slab buffers go back once gathered

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """name -> (r,) or (r, width): the devices' rows, in device order (gathered on first use)."""
        self.gather()
        return self._rows

    @property
    def blocks(self) -> dict[str, np.ndarray]:
        """name -> (k,): the devices' cells, in device order (gathered on first use)."""
        self.gather()
        return self._blocks

    def gather(self) -> None:
        """Pick the devices' rows and cells out of whole-slab copies (off the loop thread)."""
        if self._starts is None:
            return
        starts, self._starts = self._starts, None
        index = _expand(starts[""], self.n_channels)  # (r,) rows in the slab copies
        slabs, self._rows = self._rows, {name: slab[index] for name, slab in self._rows.items()}
        self._give_back("r:", slabs)
        cells = {b.name: _expand(starts[b.name], cells_per_device(b.cells, self.n_channels))
                 for b in self.schema.blocks}  # (k,) each
        slabs, self._blocks = self._blocks, {name: slab[cells[name]] for name, slab in self._blocks.items()}
        self._give_back("b:", slabs)

    def _give_back(self, prefix: str, slabs: dict[str, np.ndarray]) -> None:
        if self._pool is not None:
            for name, slab in slabs.items():
                self._pool.give_back(prefix + name, slab)

    def row_spans(self, where: np.ndarray) -> np.ndarray:
        """Row indices (into `rows`) of the devices at positions `where`: (w,) -> (their channels,)."""
        return _spans(self.n_channels, where)

    def cell_spans(self, name: str, where: np.ndarray) -> np.ndarray:
        """Cell indices (into `blocks[name]`) of the devices at positions `where`."""
        block = next(b for b in self.schema.blocks if b.name == name)
        return _spans(cells_per_device(block.cells, self.n_channels), where)


def take_snapshot(store: StateStore, slots: np.ndarray, schema: StateSchema | None = None,
                  pool: SlabPool | None = None) -> StateSnapshot:
    """Copy the states of the devices in `slots` (m,) out of `store`; the store is not changed.

    `pool`: where whole-slab copies take their buffers (a checkpointer keeps one across checkpoints).
    """
    pool = pool or SlabPool()
    schema = schema or StateSchema.of(store)
    slots = np.asarray(slots, dtype=np.int64)
    cols = {name: store.cols[name][slots] for name in _column_names(schema)}
    whole = int(cols["n_channels"].sum()) >= WHOLE_SLAB_SHARE * store.rows_used
    ids, names_of = store.ids_and_names(slots)
    if whole:  # copy the used slabs; which rows and cells are whose is worked out when gathered
        rows = {name: _copy(pool, "r:" + name, store.rows[name][: store.rows_used])
                for name, _, _ in schema.rows}
        blocks = {b.name: _copy(pool, "b:" + b.name, store.blocks[b.name][: store.cells_used(b.name)])
                  for b in schema.blocks}
        starts = {"": store.cols["row_start"][slots]} | {
            b.name: store.cols[b.start_column][slots] for b in schema.blocks}  # (m,) each
        return StateSnapshot(schema, slots, ids, names_of, cols, rows, blocks, starts, pool)
    index = torch.from_numpy(store.rows_of(slots)[0]).to(store.device)  # (r,)
    rows = {name: _to_numpy(store.rows[name].index_select(0, index)) for name, _, _ in schema.rows}
    blocks = {}
    for block in schema.blocks:
        cells = torch.from_numpy(store.cells_of(slots, block.name)).to(store.device)  # (k,)
        blocks[block.name] = _to_numpy(store.blocks[block.name].index_select(0, cells))
    return StateSnapshot(schema, slots, ids, names_of, cols, rows, blocks)


def _column_names(schema: StateSchema) -> list[str]:
    return ["n_channels", "source_offset", "last_ts", *(name for name, _, _ in schema.cols)]


def cells_per_device(cells: Callable[[int], int], n_channels: np.ndarray) -> np.ndarray:
    """`cells(c)` for every channel count in `n_channels` (m,) -> (m,) int64, one call per distinct c."""
    counts, inverse = np.unique(n_channels, return_inverse=True)
    per_count = np.array([cells(int(c)) for c in counts.tolist()], dtype=np.int64)
    return per_count[inverse.reshape(-1)] if len(n_channels) else np.zeros(0, dtype=np.int64)


def _expand(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The runs [starts[i], starts[i] + sizes[i]) concatenated: (m,), (m,) -> (sum of sizes,) int64."""
    offsets = np.cumsum(sizes) - sizes  # (m,) where each run begins in the output
    return np.repeat(starts.astype(np.int64) - offsets, sizes) + np.arange(int(sizes.sum()))


def _spans(sizes: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Indices of the consecutive spans of `sizes` (m,) at positions `where`, concatenated."""
    first = np.cumsum(sizes) - sizes  # (m,)
    picked = sizes[where]
    starts = np.repeat(first[where] - (np.cumsum(picked) - picked), picked)
    return starts + np.arange(int(picked.sum()))


def _copy(pool: SlabPool, key: str, tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of a slab slice (n, ...), in a pooled buffer of at least n entries (indexed by the
    gather, so the extra entries never show): a memcpy on CPU, a device-to-host copy on CUDA."""
    return pool.copy(key, tensor.numpy()) if tensor.device.type == "cpu" else tensor.cpu().numpy()


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy array that owns its memory (index_select already copied; .cpu() copies off CUDA)."""
    return tensor.cpu().numpy()


def _np_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype
