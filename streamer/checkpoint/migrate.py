"""State records of an earlier release: read by field name into today's layout, so an upgrade keeps state.

A state record names its payload layout only by a fingerprint (`StateSchema.fingerprint`). A layout
this release does not know starts the device afresh (`restore.py`); the layouts of earlier releases
listed here are converted instead: every field both layouts have is copied (cast to today's type),
and a field that is new gets its value for a device that has it unset, or one derived from the old
fields where that means more (`_DERIVED`). So upgrading rnnwatch does not send every device back to
warm-up.

Known earlier layouts (every one of them before the relation's level: no `rel_level` row, each
relation block stored as its full b x b matrix, tag `cov64`, instead of its lower triangle, `tri64`;
the full matrix is packed, the level starts at 0 as for a new device):
- before the operator's loop (commit 883a5ee and earlier): `last_seen` float64 (now whole seconds,
  uint32), `alert_hits` uint32 (now uint16: M-of-N up to 16), no `silence_until` (0: none), no
  `alert_peak` (taken from the held alarm).
- before the score's refractory (commit 46e4646 and earlier, back to the operator's loop):
  `alert_cooldown_until` float64 (now whole seconds rounded up, uint32: the 4 bytes the refractory's
  `cal_fired` and `cal_since` take), no `cal_fired` / `cal_since` (no fire remembered).
- before the relation's level (commit 9810623 and earlier, back to the refractory): today's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from streamer.checkpoint.state_codec import StateRecord
from streamer.checkpoint.state_schema import StateSchema
from streamer.scoring import relation
from streamer.scoring.state_store import Block, StateStore

# (name, little-endian dtype, width) of the columns of each earlier release, in payload order; None: today's
EARLIER_COLUMNS: tuple[tuple[tuple[str, str, int], ...] | None, ...] = (
    (("last_seen", "<f8", 1), ("steps", "<u2", 1), ("cal_count", "<i2", 9), ("cal_mean", "<f4", 9),
     ("cal_var", "<f4", 9), ("cal_peak", "<f4", 1), ("cal_held_mean", "<f2", 6), ("cal_held_std", "<f2", 6),
     ("alert_state", "|i1", 1), ("alert_hits", "<u4", 1), ("alert_below", "|u1", 1), ("alert_hold", "<f2", 1),
     ("alert_started_at", "<f8", 1), ("alert_cooldown_until", "<f8", 1), ("learn_since", "<f4", 1)),
    (("last_seen", "<u4", 1), ("steps", "<u2", 1), ("silence_until", "<u4", 1), ("cal_count", "<i2", 9),
     ("cal_mean", "<f4", 9), ("cal_var", "<f4", 9), ("cal_peak", "<f4", 1), ("cal_held_mean", "<f2", 6),
     ("cal_held_std", "<f2", 6), ("alert_state", "|i1", 1), ("alert_hits", "<u2", 1),
     ("alert_below", "|u1", 1), ("alert_hold", "<f2", 1), ("alert_peak", "<f2", 1),
     ("alert_started_at", "<f8", 1), ("alert_cooldown_until", "<f8", 1), ("learn_since", "<f4", 1)),
    None,
)
NEW_ROWS = frozenset({"rel_level"})  # row fields no earlier release had


def _full_cells(c: int) -> int:
    """Relation cells of a device with c channels in every earlier release: full b x b blocks."""
    return 0 if c < 2 else sum(b * b for b in relation.block_sizes(c))


_FULL_RELATION = Block("relation", torch.float32, _full_cells, f"cov{relation.BLOCK}")
_DERIVED = {"c:alert_peak": "c:alert_hold"}  # a new field: the old field it starts from
_ROUNDED_UP = frozenset({"c:alert_cooldown_until"})  # float time to whole seconds: the end of a wait


def earlier_schemas(current: StateSchema) -> dict[int, StateSchema]:
    """{fingerprint: layout} of the earlier releases' payloads."""
    rows = tuple(row for row in current.rows if row[0] not in NEW_ROWS)
    blocks = tuple(_FULL_RELATION if b.name == "relation" else b for b in current.blocks)
    out = {}
    for columns in EARLIER_COLUMNS:
        old = StateSchema(rows, current.cols if columns is None else columns, blocks)
        if old.fingerprint != current.fingerprint:
            out[old.fingerprint] = old
    return out


class Upgrader:
    """Converts records of earlier layouts into `schema`, the layout of `store`."""

    def __init__(self, store: StateStore, schema: StateSchema) -> None:
        self.schema = schema
        self.earlier = earlier_schemas(schema)
        self._fills = {f"c:{c.name}": c.fill for c in store.columns.values()}
        self.upgraded = 0

    def upgrade(self, records: Sequence[StateRecord]) -> list[StateRecord]:
        """The records, those of an earlier layout converted (a record of an unknown one is left as it is)."""
        out = list(records)
        for i, rec in enumerate(out):
            old = self.earlier.get(rec.schema)
            if old is not None and len(rec.payload) == old.dtype(rec.n_channels).itemsize:
                out[i] = replace(rec, payload=self._convert(rec.payload, old, rec.n_channels),
                                 schema=self.schema.fingerprint)
                self.upgraded += 1
        return out

    def _convert(self, payload: bytes, old: StateSchema, n_channels: int) -> bytes:
        src = np.frombuffer(payload, old.dtype(n_channels))
        dst = np.zeros(1, self.schema.dtype(n_channels))
        names = set(src.dtype.names or ())
        for name in dst.dtype.names or ():
            origin = name if name in names else _DERIVED.get(name)
            if name == "b:relation" and origin in names:
                dst[name] = pack_full(src[origin][0], n_channels)
            elif origin in names:
                values = np.ceil(src[origin]) if name in _ROUNDED_UP else src[origin]
                dst[name] = _cast(values, dst.dtype[name])
            else:
                dst[name] = self._fills.get(name, 0)
        return dst.tobytes()


def pack_full(cells: np.ndarray, n_channels: int) -> np.ndarray:
    """A device's relation blocks stored as full b x b matrices, row-major (an earlier release) -> their
    lower triangles, row by row (today's `relation.cells` layout).

    >>> pack_full(np.arange(9.0), 3).tolist()  # the matrix [[0 1 2] [3 4 5] [6 7 8]]
    [0.0, 3.0, 4.0, 6.0, 7.0, 8.0]
    """
    out, at = [], 0
    for b in relation.block_sizes(n_channels):
        full = cells[at:at + b * b].reshape(b, b)
        out.append(full[np.tril_indices(b)])
        at += b * b
    return np.concatenate(out) if out else cells[:0]


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values into a field of `dtype`: integers clipped to its range (a float clock to whole seconds)."""
    base = dtype.base
    if np.issubdtype(base, np.integer):
        info = np.iinfo(base)
        return np.clip(np.nan_to_num(values.astype(np.float64)), info.min, info.max).astype(base)
    return values.astype(base)
