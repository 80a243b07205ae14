"""The state store: devices keep their own state whatever the order they arrive or leave in."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.scoring.state_store import Column, StateStore

EXTRA = (Column("mark", np.float64), Column("pair", np.int32, width=2, fill=-1))


def _store(initial: int = 2) -> StateStore:
    return StateStore(state_size=3, columns=EXTRA, initial_devices=initial, clock=lambda: 123.0)


def _write(store: StateStore, dev: str, value: float) -> None:
    slot = store.slot(dev)
    assert slot is not None
    rows, _ = store.rows_of(np.array([slot]))
    store.rows["hidden"][torch.from_numpy(rows)] = value
    store.rows["norm_mean"][torch.from_numpy(rows)] = value
    store.cols["mark"][slot] = value


def _read(store: StateStore, dev: str) -> tuple[float, float, float, int]:
    slot = store.slot(dev)
    assert slot is not None
    rows, _ = store.rows_of(np.array([slot]))
    hidden = store.rows["hidden"][torch.from_numpy(rows)]
    assert bool((hidden == hidden[0, 0]).all()), "a device's rows were mixed with another's"
    mean = float(store.rows["norm_mean"][rows[0]])
    return float(hidden[0, 0]), mean, float(store.cols["mark"][slot]), len(rows)


ops = st.lists(
    st.tuples(st.sampled_from(["add", "evict"]), st.integers(0, 40), st.integers(1, 5)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_devices_keep_their_own_state_in_any_order(sequence: list[tuple[str, int, int]]) -> None:
    store = _store()
    expected: dict[str, tuple[float, int]] = {}
    for step, (op, dev_no, channels) in enumerate(sequence):
        dev = f"d{dev_no}"
        if op == "add" and dev not in expected:
            _, mismatch = store.slots_for([dev], np.array([channels], np.int16), [None])
            assert not mismatch[0]
            _write(store, dev, float(step + 1))
            expected[dev] = (float(step + 1), channels)
        elif op == "evict" and dev in expected:
            store.evict(dev)
            del expected[dev]
        for other, (value, count) in expected.items():  # nobody else's state moved
            assert _read(store, other) == (value, value, value, count)
    assert len(store) == len(expected)
    assert sorted(store.device_ids()) == sorted(expected)


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(30))))
def test_arrival_order_does_not_change_lookup(order: list[int]) -> None:
    store = _store(initial=1)
    ids = [f"dev-{i}" for i in order]
    slots, _ = store.slots_for(ids, np.array([1 + i % 3 for i in order], np.int16), [None] * len(ids))
    assert len(set(slots.tolist())) == len(ids)
    again, mismatch = store.slots_for(ids, np.array([1 + i % 3 for i in order], np.int16), [None] * len(ids))
    np.testing.assert_array_equal(slots, again)
    assert not mismatch.any()
    rows, owner = store.rows_of(slots)
    assert len(set(rows.tolist())) == len(rows)  # no two devices share a row
    np.testing.assert_array_equal(np.bincount(owner), [1 + i % 3 for i in order])


def test_new_slot_starts_from_column_defaults_after_reuse() -> None:
    store = _store()
    store.slots_for(["a"], np.array([2], np.int16), [None])
    _write(store, "a", 9.0)
    store.cols["pair"][store.slot("a")] = [4, 5]
    store.evict("a")
    store.slots_for(["b"], np.array([2], np.int16), [None])
    assert _read(store, "b") == (0.0, 0.0, 0.0, 2)
    assert store.cols["pair"][store.slot("b")].tolist() == [-1, -1]
    assert store.cols["last_ts"][store.slot("b")] == -np.inf
    assert store.cols["last_seen"][store.slot("b")] == 123.0


def test_capacity_grows_by_chunks_and_memory_is_reported() -> None:
    store = _store(initial=2)
    before = store.memory_bytes()
    ids = [f"x{i}" for i in range(50)]
    store.slots_for(ids, np.full(50, 4, np.int16), [None] * 50)
    assert store.device_capacity >= 50 and store.row_capacity >= 200
    assert store.memory_bytes() > before
    assert 0 < store.bytes_per_device(4) <= 1024
