"""A consistent copy of some devices' states, taken between two batches: what a checkpoint writes.

Taking one is the only part of a checkpoint that runs on the scoring loop's thread: a gather of the
devices' rows, columns and cells into fresh arrays, field by field (a few numpy / torch copies, no
Python object per device beyond the id list). Encoding and writing then run in the background
(`background.py`) while the loop keeps scoring and changing the store: the snapshot shares no memory
with it.

Shapes: m devices, r = sum of their channel counts, k = sum of their cells per block. Every array is
in device order: the rows of device i are rows[row_first[i] : row_first[i] + n_channels[i]].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from streamer.checkpoint.state_schema import StateSchema
from streamer.scoring.state_store import StateStore


@dataclass(frozen=True)
class StateSnapshot:
    """Copies of m devices' states (the fields of `schema`) and where they were in the store."""

    schema: StateSchema
    slots: np.ndarray  # (m,) int64: their slots when taken (bookkeeping goes back by slot and id)
    device_ids: list[str]  # (m,)
    channels: list[tuple[str, ...] | None]  # (m,) channel names, None for positional values
    n_channels: np.ndarray  # (m,) int64
    source_offset: np.ndarray  # (m,) int64
    last_ts: np.ndarray  # (m,) float64
    rows: dict[str, np.ndarray] = field(repr=False)  # name -> (r,) or (r, width)
    cols: dict[str, np.ndarray] = field(repr=False)  # name -> (m,) or (m, width)
    blocks: dict[str, np.ndarray] = field(repr=False)  # name -> (k,)

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for part in (self.rows, self.cols, self.blocks) for a in part.values())

    def row_spans(self, where: np.ndarray) -> np.ndarray:
        """Row indices (into `rows`) of the devices at positions `where`: (w,) -> (sum of their channels,)."""
        return _spans(self.n_channels, where)

    def cell_spans(self, name: str, where: np.ndarray) -> np.ndarray:
        """Cell indices (into `blocks[name]`) of the devices at positions `where`."""
        return _spans(self._cells(name), where)

    def _cells(self, name: str) -> np.ndarray:
        block = next(b for b in self.schema.blocks if b.name == name)
        return cells_per_device(block.cells, self.n_channels)


def take_snapshot(store: StateStore, slots: np.ndarray, schema: StateSchema | None = None) -> StateSnapshot:
    """Copy the states of the devices in `slots` (m,) out of `store`; the store is not changed."""
    schema = schema or StateSchema.of(store)
    slots = np.asarray(slots, dtype=np.int64)
    rows = torch.from_numpy(store.rows_of(slots)[0]).to(store.device)  # (r,)
    row_copies = {name: _to_numpy(store.rows[name].index_select(0, rows)) for name, _, _ in schema.rows}
    blocks = {}
    for block in schema.blocks:
        cells = torch.from_numpy(store.cells_of(slots, block.name)).to(store.device)  # (k,)
        blocks[block.name] = _to_numpy(store.blocks[block.name].index_select(0, cells))
    cols = store.cols
    ids, names = store.ids_and_names(slots)
    return StateSnapshot(
        schema=schema, slots=slots, device_ids=ids, channels=names,
        n_channels=cols["n_channels"][slots].astype(np.int64), source_offset=cols["source_offset"][slots],
        last_ts=cols["last_ts"][slots], rows=row_copies,
        cols={name: cols[name][slots] for name, _, _ in schema.cols}, blocks=blocks)


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


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy array that owns its memory (index_select already copied; .cpu() copies off CUDA)."""
    return tensor.cpu().numpy()
