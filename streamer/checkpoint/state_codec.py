"""One device's complete state <-> compact bytes: the value of a changelog record.

Layout (little-endian), format 1:

    "RWS" | format u8 | flags u8 | n_channels u16 | schema u32 | source_offset i64 | last_ts f64
    | payload_len u32 | log_id 16 bytes | device_id (u16 len + UTF-8) | model_version (u16 len + UTF-8)
    | channel names (flags bit 0: u32 block len + n_channels x (u16 len + UTF-8); else positional)
    | payload | crc32 u32

The payload is every `ROW_FIELDS` row of the device's channels, every cell block (`Block`) and every
store column, packed in the order of a `StateSchema`, which is derived from the store itself (so a
field another component adds is carried without this module knowing it). `schema` is the crc32 of
the schema's text: a record written under another schema (a field added, a dtype changed, another
state size) still yields its header (device, channels, offset, last timestamp) but not its payload
(`StateRecord.payload_known`).

`log_id` names the incarnation of the readings topic that `source_offset` counts in (its Kafka topic
id): offsets of a deleted and recreated topic, or of a broker that lost its log, mean nothing, and
restore must then not skip readings by them. All zeros: unknown (a broker without topic ids).

Not serialised: `row_start` and the blocks' `*_start` (where the slabs put the rows and cells: local
to a process) and columns named
`ckpt_*` (the checkpointer's bookkeeping). `n_channels`, `source_offset` and `last_ts` travel in the
header, because restore reads them without the payload.

    >>> import numpy as np
    >>> from streamer.scoring.state_store import StateStore
    >>> store = StateStore(state_size=2)
    >>> slots, _ = store.slots_for(["pump-1"], np.array([2]), [("rpm", "temp")])
    >>> value = encode_states(store, slots, "v1")[0]
    >>> record = decode_state(value)
    >>> record.device_id, record.channels, record.model_version, record.source_offset
    ('pump-1', ('rpm', 'temp'), 'v1', -1)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from streamer.checkpoint.snapshot import StateSnapshot, take_snapshot
from streamer.checkpoint.state_schema import (
    BOOKKEEPING_PREFIX,
    HEADER_COLUMNS,
    LOCAL_COLUMNS,
    NO_LOG_ID,
    StateSchema,
    bookkeeping,
    is_bookkeeping,
)
from streamer.errors import StateError
from streamer.scoring.state_store import StateStore

__all__ = ["BOOKKEEPING_PREFIX", "FORMAT", "HEADER_COLUMNS", "LOCAL_COLUMNS", "NO_LOG_ID", "StateRecord",
           "StateSchema", "bookkeeping", "decode_state", "encode_snapshot", "encode_states",
           "install_states", "is_bookkeeping"]

FORMAT = 1
MAGIC = b"RWS"
_POSITIONAL = 0
_NAMED = 1
_HEAD = struct.Struct("<3sBBHIqdI16s")
_HEAD_DTYPE = np.dtype([("magic", "S3"), ("format", "u1"), ("flags", "u1"), ("n_channels", "<u2"),
                        ("schema", "<u4"), ("source_offset", "<i8"), ("last_ts", "<f8"),
                        ("payload_len", "<u4"), ("log_id", "S16")])  # _HEAD as a numpy record (47 bytes)
_LEN = struct.Struct("<H")
_U32 = struct.Struct("<I")  # the crc32 trailer and the channel-names block length
assert _HEAD_DTYPE.itemsize == _HEAD.size


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A decoded changelog value. `payload` is raw bytes in the layout of schema `schema`."""

    device_id: str
    model_version: str
    channels: tuple[str, ...] | None
    n_channels: int
    source_offset: int
    last_ts: float
    schema: int
    payload: bytes = field(repr=False)
    log_id: bytes = NO_LOG_ID

    def payload_known(self, schema: StateSchema) -> bool:
        return self.schema == schema.fingerprint


# ---- encode ---------------------------------------------------------------------------------------
Refuse = Callable[[int, str], None]  # (position in the snapshot, why): a state the codec cannot encode


def encode_states(store: StateStore, slots: np.ndarray, model_version: str,
                  schema: StateSchema | None = None, log_id: bytes = NO_LOG_ID) -> list[bytes]:
    """One value per slot (same order), for devices held in `store`; `log_id`: see the module doc."""
    return encode_snapshot(take_snapshot(store, slots, schema), model_version, log_id)


def encode_snapshot(snapshot: StateSnapshot, model_version: str | Sequence[str], log_id: bytes = NO_LOG_ID,
                    refuse: Refuse | None = None) -> list[bytes]:
    """One value per device of the snapshot (same order); any thread (the snapshot is a copy).
    `model_version`: one for every device, or one per device (a hot swap in progress).

    Vectorised: per distinct channel count, one structured array holds every payload and one holds
    every header; the only per-device Python work is joining the parts and the crc32. A state the
    codec cannot encode (an id or channel name over 64 KiB) raises `StateError`, or with `refuse` is
    handed to it and gets an empty value.
    """
    if len(log_id) != 16:
        raise StateError(f"log id must be 16 bytes (a topic id), got {len(log_id)}")
    out: list[bytes] = [b""] * len(snapshot)
    if isinstance(model_version, str):
        one = _text(model_version, "model version")
        versions: Sequence[bytes] = [one] * len(snapshot)
    else:
        texts = {v: _text(v, "model version") for v in set(model_version)}
        versions = [texts[v] for v in model_version]
    for c in np.unique(snapshot.n_channels).tolist():
        where = np.flatnonzero(snapshot.n_channels == c)  # (w,)
        payloads = _bytes_of(_pack(snapshot, where, c))  # no copy: a bulk copy would hold the GIL
        heads = _bytes_of(_heads(snapshot, where, c, log_id))
        size, head = snapshot.schema.dtype(c).itemsize, _HEAD.size
        ids, names = snapshot.device_ids, snapshot.channels
        for j, i in enumerate(where.tolist()):
            try:
                parts: list[bytes | memoryview] = [heads[j * head:(j + 1) * head], _text(ids[i], "device id"),
                                                   versions[i]]
                if names[i] is not None:
                    parts.append(_names_block(names[i]))
            except StateError as exc:
                if refuse is None:
                    raise
                refuse(i, str(exc))
                continue
            parts.append(payloads[j * size:(j + 1) * size])
            body = b"".join(parts)
            out[i] = body + _U32.pack(zlib.crc32(body))
    return out


def _bytes_of(records: np.ndarray) -> memoryview:
    """The raw bytes of a contiguous structured array, without copying them."""
    return np.ascontiguousarray(records).view(np.uint8).data  # (w * itemsize,) bytes


def _pack(snapshot: StateSnapshot, where: np.ndarray, c: int) -> np.ndarray:
    """Payloads of the devices at `where` (all with c channels): (w,) records of `schema.dtype(c)`."""
    schema = snapshot.schema
    packed = np.empty(len(where), dtype=schema.dtype(c))  # (w,) one record per device
    whole = len(where) == len(snapshot)  # the usual case: one channel count, no gather
    rows = None if whole else snapshot.row_spans(where)
    for name, _, _ in schema.rows:
        values = snapshot.rows[name] if rows is None else snapshot.rows[name][rows]  # (w * c, ...)
        packed[f"r:{name}"] = values.reshape(packed[f"r:{name}"].shape)
    for name, _, _ in schema.cols:
        packed[f"c:{name}"] = snapshot.cols[name] if whole else snapshot.cols[name][where]
    for block in schema.blocks:
        cells = snapshot.blocks[block.name]
        cells = cells if whole else cells[snapshot.cell_spans(block.name, where)]
        packed[f"b:{block.name}"] = cells.reshape(len(where), -1)
    return packed


def _heads(snapshot: StateSnapshot, where: np.ndarray, c: int, log_id: bytes) -> np.ndarray:
    """The fixed headers of the devices at `where` (all with c channels): (w,) of `_HEAD_DTYPE`."""
    heads = np.empty(len(where), dtype=_HEAD_DTYPE)
    heads["magic"] = MAGIC
    heads["format"] = FORMAT
    heads["flags"] = np.fromiter((snapshot.channels[i] is not None for i in where.tolist()), dtype=bool,
                                 count=len(where)).astype(np.uint8) * _NAMED
    heads["n_channels"] = c
    heads["schema"] = snapshot.schema.fingerprint
    heads["source_offset"] = snapshot.source_offset[where]
    heads["last_ts"] = snapshot.last_ts[where]
    heads["payload_len"] = snapshot.schema.dtype(c).itemsize
    heads["log_id"] = log_id
    return heads


@lru_cache(maxsize=1024)
def _names_block(names: tuple[str, ...]) -> bytes:
    block = b"".join(_text(name, "channel name") for name in names)
    return _U32.pack(len(block)) + block


def _text(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > 0xFFFF:
        raise StateError(f"{what} of {len(raw)} bytes cannot be checkpointed (64 KiB at most)")
    return _LEN.pack(len(raw)) + raw


# ---- decode ---------------------------------------------------------------------------------------
def decode_state(value: bytes) -> StateRecord:
    """Parse and check one changelog value; `StateError` (saying what is wrong) for anything else.

    Written for speed (a restore decodes a million of these): one pass, no helper calls per field.
    """
    if type(value) is not bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise StateError(f"state record must be bytes, got {type(value).__name__}")
        value = bytes(value)
    n = len(value)
    body = n - 4
    if n < _HEAD.size + 8 or value[:3] != MAGIC:
        raise StateError("not an rnnwatch state record (bad magic or too short)")
    if zlib.crc32(memoryview(value)[:body]) != int.from_bytes(value[body:], "little"):
        raise StateError("state record checksum mismatch: the record is corrupt")
    _, fmt, flags, c, schema, offset, last_ts, size, log_id = _HEAD.unpack_from(value)
    if fmt != FORMAT:
        raise StateError(f"state record format {fmt} is not supported (this build reads {FORMAT})")
    if flags not in (_POSITIONAL, _NAMED) or c < 1:
        raise StateError(f"state record header is invalid (flags {flags}, {c} channels)")
    try:
        pos = _HEAD.size + 2
        end = pos + (value[pos - 2] | value[pos - 1] << 8)
        device_id = value[pos:end].decode()
        pos = end + 2
        end = pos + (value[pos - 2] | value[pos - 1] << 8)
        version = _version(value[pos:end])
        names: tuple[str, ...] | None = None
        if flags == _NAMED:
            pos = end + 4
            end = pos + int.from_bytes(value[pos - 4:pos], "little")
            names = _parse_names(value[pos:end], c)
    except (IndexError, UnicodeDecodeError) as exc:
        raise StateError(f"state record is truncated or holds invalid UTF-8 ({exc})") from None
    if end + size != body:
        raise StateError(f"state record of device {device_id!r} has {body - end} payload bytes, "
                         f"its header says {size}")
    return StateRecord(device_id, version, names, c, offset, last_ts, schema, value[end:body], log_id)


@lru_cache(maxsize=256)  # every record of a restore carries one of a few model versions
def _version(raw: bytes) -> str:
    return raw.decode()


def _read_raw(value: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(value):
        raise StateError("state record is truncated")
    (n,) = _LEN.unpack_from(value, pos)
    end = pos + 2 + n
    if end > len(value):
        raise StateError("state record is truncated")
    return value[pos + 2:end], end


def _read_text(value: bytes, pos: int) -> tuple[str, int]:
    raw, end = _read_raw(value, pos)
    try:
        return raw.decode(), end
    except UnicodeDecodeError as exc:
        raise StateError(f"state record holds invalid UTF-8: {exc}") from None


@lru_cache(maxsize=1024)  # a fleet has few distinct channel sets: parse each once
def _parse_names(block: bytes, c: int) -> tuple[str, ...]:
    names, pos = [], 0
    for _ in range(c):
        name, pos = _read_text(block, pos)
        names.append(name)
    if pos != len(block):
        raise StateError(f"state record's channel names take {pos} of their {len(block)} bytes")
    return tuple(names)


# ---- install --------------------------------------------------------------------------------------
def install_states(store: StateStore, records: Sequence[StateRecord],
                   schema: StateSchema | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Put these records' states into `store` (replacing what it held for those devices).

    Returns (slots (n,), known (n,) bool): where `known` is False the record's payload was written
    under another schema, so only its header was installed (the rest is a new device's state).
    Device ids must be distinct.
    """
    schema = schema or StateSchema.of(store)
    n = len(records)
    counts = np.fromiter((r.n_channels for r in records), dtype=np.int64, count=n)
    fingerprint = schema.fingerprint
    known = np.fromiter((r.schema == fingerprint for r in records), dtype=bool, count=n)
    slots = store.install_devices([r.device_id for r in records], counts, [r.channels for r in records],
                                  zero_rows=False)  # known payloads overwrite every row; the rest below
    if not known.all():
        store.zero_state(slots[~known])
    store.cols["source_offset"][slots] = np.fromiter((r.source_offset for r in records), np.int64, n)
    store.cols["last_ts"][slots] = np.fromiter((r.last_ts for r in records), np.float64, n)
    for c in np.unique(counts[known]).tolist():
        where = np.flatnonzero(known & (counts == c))
        dtype = schema.dtype(c)
        if any(len(records[i].payload) != dtype.itemsize for i in where.tolist()):
            raise StateError(f"a state record with {c} channels does not hold {dtype.itemsize} payload bytes")
        joined = bytearray(b"".join(records[i].payload for i in where.tolist()))  # writable for torch
        _unpack(store, schema, slots[where], np.frombuffer(joined, dtype))
    return slots, known


def _unpack(store: StateStore, schema: StateSchema, slots: np.ndarray, packed: np.ndarray) -> None:
    rows = store.rows_of(slots)[0]
    span = rows[0], rows[-1] + 1
    where: slice | torch.Tensor = slice(*span)  # freshly appended devices: one block, copied as such
    if span[1] - span[0] != len(rows) or not (np.diff(rows) == 1).all():
        where = torch.from_numpy(rows).to(store.device)
    for name, _, _ in schema.rows:
        target = store.rows[name]
        values = packed[f"r:{name}"].reshape((-1, *target.shape[1:]))  # (m * c, ...)
        target[where] = torch.from_numpy(np.ascontiguousarray(values)).to(target.device, target.dtype)
    for name, _, _ in schema.cols:
        store.cols[name][slots] = packed[f"c:{name}"]
    for block in schema.blocks:
        cells = torch.from_numpy(store.cells_of(slots, block.name)).to(store.device)
        values = np.ascontiguousarray(packed[f"b:{block.name}"]).reshape(-1)
        target = store.blocks[block.name]
        target[cells] = torch.from_numpy(values).to(store.device, target.dtype)
