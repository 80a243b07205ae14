"""Adaptive batching: the next poll's size follows the backlog the last polls showed.

A full poll (it returned as many records as asked for) means records are waiting: the size doubles,
up to `largest`, for throughput. A poll that came back less than a quarter full means the daemon is
caught up: the size halves, down to `smallest`, so each batch is scored and published soon after its
readings arrive (latency). One setting, `--max-poll-records`, is the ceiling.

    >>> sizer = BatchSizer(smallest=500, largest=4000)
    >>> [sizer.observe(n) for n in (500, 1000, 2000, 4000, 10, 10)]
    [1000, 2000, 4000, 4000, 2000, 1000]
"""

from __future__ import annotations


class BatchSizer:
    """How many records the next poll asks for."""

    def __init__(self, *, smallest: int, largest: int) -> None:
        if not 1 <= smallest <= largest:
            raise ValueError(f"need 1 <= smallest <= largest, got {smallest}, {largest}")
        self.smallest, self.largest = smallest, largest
        self.size = smallest

    def observe(self, returned: int) -> int:
        """Record how many records the last poll returned; return the next poll's size."""
        if returned >= self.size:
            self.size = min(self.size * 2, self.largest)
        elif returned * 4 < self.size:
            self.size = max(self.size // 2, self.smallest)
        return self.size
