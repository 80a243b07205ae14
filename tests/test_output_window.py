"""OutputWindow and BatchSizer: the loop waits for the broker only when too much is in flight, and the
poll size follows the backlog."""

from __future__ import annotations

import pytest

from streamer.service.batch_size import BatchSizer
from streamer.service.output_window import OutputWindow


class InFlight:
    def __init__(self, pending: int, size: int = 100, acked: int = 0) -> None:
        self.pending, self.size, self.acked = pending, size, acked

    @property
    def pending_bytes(self) -> int:
        return self.pending * self.size

    def collect_acknowledged(self) -> int:
        done = min(self.acked, self.pending)
        self.pending -= done
        return done


def window(confirms: list[int], **bounds: int) -> OutputWindow:
    limits = {"max_records": 10, "max_bytes": 10_000, **bounds}
    return OutputWindow(confirm=lambda: confirms.append(1), **limits)


def test_no_wait_within_the_bounds_or_once_the_acknowledged_are_forgotten():
    confirms: list[int] = []
    w = window(confirms)
    assert not w.after_batch(InFlight(10))
    assert not w.after_batch(InFlight(15, acked=5))  # 15 sent, 5 acknowledged: 10 in flight
    assert not w.after_batch(InFlight(0))
    assert confirms == [] and w.waits == 0


def test_waits_when_records_or_bytes_exceed_the_bounds():
    confirms: list[int] = []
    w = window(confirms, max_bytes=1_000)
    assert w.after_batch(InFlight(11, size=1))  # too many records
    assert w.after_batch(InFlight(5, size=300))  # too many bytes
    assert confirms == [1, 1] and w.waits == 2


def test_bounds_must_be_positive():
    with pytest.raises(ValueError, match="max_records"):
        OutputWindow(max_records=0, max_bytes=1, confirm=lambda: None)


def test_batch_size_grows_under_backlog_and_shrinks_when_caught_up():
    sizer = BatchSizer(smallest=100, largest=1_000)
    sizes = [sizer.observe(n) for n in (100, 200, 400, 800, 1_000, 1_000)]
    assert sizes == [200, 400, 800, 1_000, 1_000, 1_000]
    assert sizer.observe(300) == 1_000  # a quarter full or more: keep the size
    sizes = [sizer.observe(0) for _ in range(6)]
    assert sizes == [500, 250, 125, 100, 100, 100]
    with pytest.raises(ValueError):
        BatchSizer(smallest=10, largest=5)
