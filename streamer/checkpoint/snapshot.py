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

from collections.abc import Callable

import numpy as np
import torch

from streamer.checkpoint.state_schema import StateSchema
from streamer.scoring.state_store import StateStore

WHOLE_SLAB_SHARE = 0.25  # copy the used slabs whole when the devices hold at least this share of rows


class StateSnapshot:
    """Copies of m devices' states (the fields of `schema`) and where they were in the store."""

    def __init__(self, schema: StateSchema, slots: np.ndarray, device_ids: list[str],
                 channels: list[tuple[str, ...] | None], cols: dict[str, np.ndarray],
                 rows: dict[str, np.ndarray], blocks: dict[str, np.ndarray],
                 row_index: np.ndarray | None = None,
                 cell_index: dict[str, np.ndarray] | None = None) -> None:
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
        self._row_index = row_index  # (r,) rows of the devices in the slab copies; None: gathered
        self._cell_index = cell_index or {}

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
        if self._row_index is not None:
            index, self._row_index = self._row_index, None
            self._rows = {name: slab[index] for name, slab in self._rows.items()}
        if self._cell_index:
            cells, self._cell_index = self._cell_index, {}
            self._blocks = {name: slab[cells[name]] for name, slab in self._blocks.items()}

    def row_spans(self, where: np.ndarray) -> np.ndarray:
        """Row indices (into `rows`) of the devices at positions `where`: (w,) -> (their channels,)."""
        return _spans(self.n_channels, where)

    def cell_spans(self, name: str, where: np.ndarray) -> np.ndarray:
        """Cell indices (into `blocks[name]`) of the devices at positions `where`."""
        block = next(b for b in self.schema.blocks if b.name == name)
        return _spans(cells_per_device(block.cells, self.n_channels), where)


def take_snapshot(store: StateStore, slots: np.ndarray, schema: StateSchema | None = None) -> StateSnapshot:
    """Copy the states of the devices in `slots` (m,) out of `store`; the store is not changed."""
    schema = schema or StateSchema.of(store)
    slots = np.asarray(slots, dtype=np.int64)
    row_index = store.rows_of(slots)[0]  # (r,)
    whole = len(row_index) >= WHOLE_SLAB_SHARE * store.rows_used
    names = [name for name, _, _ in schema.rows]
    if whole:
        rows = {name: _copy(store.rows[name][: store.rows_used]) for name in names}
    else:
        index = torch.from_numpy(row_index).to(store.device)
        rows = {name: _to_numpy(store.rows[name].index_select(0, index)) for name in names}
    blocks, cell_index = {}, {}
    for block in schema.blocks:
        cells = store.cells_of(slots, block.name)  # (k,)
        if whole:
            blocks[block.name] = _copy(store.blocks[block.name][: store.cells_used(block.name)])
            cell_index[block.name] = cells
        else:
            index = torch.from_numpy(cells).to(store.device)
            blocks[block.name] = _to_numpy(store.blocks[block.name].index_select(0, index))
    cols = {name: store.cols[name][slots] for name in _column_names(schema)}
    ids, names_of = store.ids_and_names(slots)
    return StateSnapshot(schema, slots, ids, names_of, cols, rows, blocks,
                         row_index if whole else None, cell_index)


def _column_names(schema: StateSchema) -> list[str]:
    return ["n_channels", "source_offset", "last_ts", *(name for name, _, _ in schema.cols)]


def cells_per_device(cells: Callable[[int], int], n_channels: np.ndarray) -> np.ndarray:
    """`cells(c)` for every channel count in `n_channels` (m,) -> (m,) int64, one call per distinct c."""
    counts, inverse = np.unique(n_channels, return_inverse=True)
    per_count = np.array([cells(int(c)) for c in counts.tolist()], dtype=np.int64)
    return per_count[inverse.reshape(-1)] if len(n_channels) else np.zeros(0, dtype=np.int64)


def _spans(sizes: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Indices of the consecutive spans of `sizes` (m,) at positions `where`, concatenated."""
    first = np.cumsum(sizes) - sizes  # (m,)
    picked = sizes[where]
    starts = np.repeat(first[where] - (np.cumsum(picked) - picked), picked)
    return starts + np.arange(int(picked.sum()))


def _copy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of a (contiguous) slab slice: a memcpy on CPU, a device-to-host copy on CUDA."""
    return tensor.cpu().numpy().copy() if tensor.device.type == "cpu" else tensor.cpu().numpy()


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy array that owns its memory (index_select already copied; .cpu() copies off CUDA)."""
    return tensor.cpu().numpy()
