"""Back-pressure on the daemon's unacknowledged output: how much may be in flight before it waits.

The loop no longer waits for the broker after every batch: a batch's output is sent, the batch is
tracked, and the acknowledgement is awaited where the contract needs it, before a checkpoint commits
offsets (`streamer.checkpoint`: flush outputs → write state → commit). Between checkpoints the
output in flight grows with the rate; `OutputWindow.after_batch` keeps it bounded: it forgets what the
broker has already acknowledged (no waiting) and, when more than `max_records` records or
`max_bytes` bytes are still unacknowledged, waits for all of them (`confirm`, the daemon's retrying
flush). So a slow or absent broker stops the loop within one window instead of letting memory grow.

    >>> class FakePublisher:
    ...     pending, pending_bytes = 12, 100
    ...     def collect_acknowledged(self): self.pending -= 2; return 2
    >>> waits = []
    >>> window = OutputWindow(max_records=5, max_bytes=1 << 20, confirm=lambda: waits.append(1))
    >>> window.after_batch(FakePublisher()), waits
    (True, [1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class InFlight(Protocol):
    """What the window reads of the publisher."""

    @property
    def pending(self) -> int: ...

    @property
    def pending_bytes(self) -> int: ...

    def collect_acknowledged(self) -> int: ...


class OutputWindow:
    """Waits for the output's acknowledgement only when too much of it is in flight."""

    def __init__(self, *, max_records: int, max_bytes: int, confirm: Callable[[], None]) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError(f"max_records and max_bytes must be >= 1, got {max_records}, {max_bytes}")
        self.max_records, self.max_bytes = max_records, max_bytes
        self._confirm = confirm
        self.waits = 0  # how often the window was full (the loop waited for the broker)

    def after_batch(self, publisher: InFlight) -> bool:
        """Forget acknowledged output; wait for the rest when over a bound. True when it waited."""
        if publisher.pending == 0:
            return False
        publisher.collect_acknowledged()
        if publisher.pending <= self.max_records and publisher.pending_bytes <= self.max_bytes:
            return False
        self.waits += 1
        self._confirm()
        return True
