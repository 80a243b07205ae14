"""The layout of a device state record's payload, derived from the store (`StateSchema.of`).

Every `ROW_FIELDS` row of a device's channels, every store column and every cell block (`Block`),
in the store's own order, so a field another component declares is carried without the codec
knowing it. Columns named `ckpt_*` are the checkpointer's bookkeeping (never serialised); the header
columns travel in the record's header and the local ones (where the slabs put a device) not at all.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch

from streamer.scoring.state_store import ROW_FIELDS, Block, StateStore

HEADER_COLUMNS = ("n_channels", "source_offset", "last_ts")
LOCAL_COLUMNS = ("row_start",)
BOOKKEEPING_PREFIX = "ckpt_"
NO_LOG_ID = bytes(16)  # the log id of a state whose readings topic had no topic id


def bookkeeping(name: str) -> str:
    """The store column `name` of the checkpointer's bookkeeping: kept in memory, never serialised."""
    return BOOKKEEPING_PREFIX + name


def is_bookkeeping(column: str) -> bool:
    return column.startswith(BOOKKEEPING_PREFIX)


@dataclass(frozen=True)
class StateSchema:
    """The payload layout: (name, little-endian dtype, width) of every row field and column, and
    (name, dtype, layout tag) of every cell block."""

    rows: tuple[tuple[str, str, int], ...]
    cols: tuple[tuple[str, str, int], ...]
    blocks: tuple[Block, ...] = ()

    @classmethod
    def of(cls, store: StateStore) -> StateSchema:
        rows = tuple((name, _le(torch.empty(0, dtype=dt).numpy().dtype), w or store.state_size)
                     for name, (dt, w) in ROW_FIELDS.items())
        skip = (*HEADER_COLUMNS, *LOCAL_COLUMNS, *(b.start_column for b in store.block_fields.values()))
        cols = tuple((c.name, _le(np.dtype(c.dtype)), c.width) for c in store.columns.values()
                     if c.name not in skip and not is_bookkeeping(c.name))
        return cls(rows, cols, tuple(store.block_fields.values()))

    @property
    def text(self) -> str:
        parts = [f"{kind}:{n}:{d}:{w}" for kind, part in (("r", self.rows), ("c", self.cols))
                 for n, d, w in part]
        parts += [f"b:{b.name}:{_le(np_dtype(b.dtype))}:{b.tag}" for b in self.blocks]
        return ";".join(parts)

    @cached_property
    def fingerprint(self) -> int:
        return zlib.crc32(self.text.encode())

    def dtype(self, n_channels: int) -> np.dtype:
        """Structured dtype of one payload: rows (n_channels, width) then columns (width,)."""
        return _payload_dtype(self, n_channels)


@lru_cache(maxsize=256)
def _payload_dtype(schema: StateSchema, n_channels: int) -> np.dtype:
    fields: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
        (f"r:{n}", d, (n_channels, w) if w > 1 else (n_channels,)) for n, d, w in schema.rows]
    fields += [(f"c:{n}", d, (w,)) if w > 1 else (f"c:{n}", d) for n, d, w in schema.cols]
    fields += [(f"b:{b.name}", _le(np_dtype(b.dtype)), (b.cells(n_channels),)) for b in schema.blocks]
    return np.dtype(fields)


def np_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _le(dtype: np.dtype) -> str:
    return dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str
