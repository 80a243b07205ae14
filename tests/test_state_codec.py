"""The state codec: any device state survives bytes exactly; anything that is not a record is refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.checkpoint.state_codec import (
    StateSchema,
    bookkeeping,
    decode_state,
    encode_states,
    install_states,
)
from streamer.errors import StateError
from streamer.scoring.state_store import ROW_FIELDS, Column, StateStore

EXTRA = (  # one of each kind of column a component may declare
    Column("flag", np.bool_),
    Column("level", np.int8, fill=-1),
    Column("bits", np.uint32),
    Column("pair", np.float64, width=2, fill=np.nan),
    Column(bookkeeping("dirty"), np.bool_),  # bookkeeping: never serialised
)

device_spec = st.tuples(
    st.text(min_size=1, max_size=12),  # device id, any Unicode
    st.integers(1, 5),  # channels
    st.one_of(st.none(), st.lists(st.text(max_size=6), min_size=5, max_size=5)),  # names or positional
)


def _store(columns: tuple[Column, ...] = EXTRA, state_size: int = 3) -> StateStore:
    return StateStore(state_size, columns=columns, initial_devices=2)


def _fill_randomly(store: StateStore, seed: int) -> None:
    """Every byte of every row field and serialised column random (NaNs and infinities included)."""
    rng = np.random.default_rng(seed)
    for tensor in store.rows.values():
        raw = rng.integers(0, 256, tensor.numel() * tensor.element_size(), dtype=np.uint8)
        tensor.view(-1).view(torch.uint8).copy_(torch.from_numpy(raw))
    for name, array in store.cols.items():
        if name in ("row_start", "n_channels"):
            continue
        if array.dtype == np.bool_:
            array[...] = rng.integers(0, 2, array.shape).astype(bool)
        else:
            array.view(np.uint8)[...] = rng.integers(0, 256, array.nbytes, dtype=np.uint8).reshape(
                array.view(np.uint8).shape)


def _bits(store: StateStore, slot: int) -> dict[str, bytes]:
    """A device's state as raw bytes per field (so NaN payloads compare exactly)."""
    rows = torch.from_numpy(store.rows_of(np.array([slot]))[0])
    out = {f"r:{name}": store.rows[name][rows].contiguous().numpy().tobytes() for name in ROW_FIELDS}
    schema = StateSchema.of(store)
    for name, _, _ in schema.cols:
        out[f"c:{name}"] = np.ascontiguousarray(store.cols[name][slot]).tobytes()
    for name in ("n_channels", "source_offset", "last_ts"):
        out[f"h:{name}"] = store.cols[name][slot].tobytes()
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(device_spec, min_size=1, max_size=8, unique_by=lambda d: d[0]), st.integers(0, 2**32 - 1),
       st.text(max_size=20))
def test_any_state_round_trips_exactly(devices: list, seed: int, version: str) -> None:
    source = _store()
    ids = [d[0] for d in devices]
    counts = np.array([d[1] for d in devices], dtype=np.int16)
    names = [tuple(d[2][: d[1]]) if d[2] is not None else None for d in devices]
    slots, _ = source.slots_for(ids, counts, names)
    _fill_randomly(source, seed)

    values = encode_states(source, slots, version)
    records = [decode_state(v) for v in values]
    assert [(r.device_id, r.channels, r.model_version) for r in records] == [
        (i, n, version) for i, n in zip(ids, names, strict=True)]
    target = _store()
    target.slots_for(["someone-else"], np.array([2], np.int16), [None])  # restored devices share the store
    restored, known = install_states(target, records)
    assert known.all()
    for slot, again in zip(slots.tolist(), restored.tolist(), strict=True):
        assert _bits(target, again) == _bits(source, slot)
        assert target.device_id(again) == source.device_id(slot)
        assert target.channel_names(again) == source.channel_names(slot)
    assert "someone-else" in target


def test_bookkeeping_and_slot_local_columns_are_not_serialised() -> None:
    schema = StateSchema.of(_store())
    names = [name for name, _, _ in schema.cols]
    assert bookkeeping("dirty") not in names and "row_start" not in names
    assert {"flag", "level", "bits", "pair", "steps", "last_seen"} <= set(names)
    assert [name for name, _, _ in schema.rows] == list(ROW_FIELDS)  # whatever fields the store has


def test_a_record_from_another_schema_keeps_its_header_only() -> None:
    source = _store(EXTRA[:2])
    slots, _ = source.slots_for(["pump"], np.array([2], np.int16), [("a", "b")])
    source.cols["source_offset"][slots] = 41
    source.cols["last_ts"][slots] = 7.5
    source.cols["level"][slots] = 3
    record = decode_state(encode_states(source, slots, "v1")[0])
    target = _store(EXTRA)  # more columns: another payload layout
    restored, known = install_states(target, [record])
    assert not known[0]
    slot = int(restored[0])
    assert (target.cols["source_offset"][slot], target.cols["last_ts"][slot]) == (41, 7.5)
    assert target.channel_names(slot) == ("a", "b") and target.cols["level"][slot] == -1  # fill, not 3


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_is_refused_with_state_error(value: bytes) -> None:
    with pytest.raises(StateError):
        decode_state(value)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_corruption_or_truncation_is_refused(data: st.DataObject) -> None:
    store = _store()
    slots, _ = store.slots_for(["dev-1"], np.array([3], np.int16), [("x", "y", "z")])
    value = bytearray(encode_states(store, slots, "model-v1")[0])
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] ^= data.draw(st.integers(1, 255))
    else:
        value = value[: data.draw(st.integers(0, len(value) - 1))]
    with pytest.raises(StateError):
        decode_state(bytes(value))


def test_a_newer_format_is_refused_with_a_clear_message() -> None:
    store = _store()
    slots, _ = store.slots_for(["d"], np.array([1], np.int16), [None])
    value = bytearray(encode_states(store, slots, "v")[0])
    value[3] = 9  # format byte
    import zlib

    value[-4:] = struct.pack("<I", zlib.crc32(bytes(value[:-4])))
    with pytest.raises(StateError, match="format 9 is not supported"):
        decode_state(bytes(value))


def test_bytes_per_device_of_the_shipped_model() -> None:
    """What one 4-channel device costs in the changelog with the shipped model (the bench reports it)."""
    from streamer.scoring.factory import build_pipeline

    store = build_pipeline(None, "cpu").store
    slots, _ = store.slots_for(["device-000001"], np.array([4], np.int16), [("a", "b", "c", "d")])
    value = encode_states(store, slots, "gru-h32-a8bb0a22301e")[0]
    assert 300 < len(value) < 2_000
