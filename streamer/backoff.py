"""Exponential backoff: the one schedule behind every retry rnnwatch makes.

Reaching the broker at start (`streamer.kafka.admin.wait_for_broker`), confirming a batch's output
(`streamer.service.daemon`) and restoring or checkpointing device state (`streamer.checkpoint.manager`)
all wait `first_s`, then twice as long after each failure, never longer than `max_s`, and start over
after a success.

    >>> backoff = Backoff(first_s=0.5, max_s=2.0)
    >>> [backoff.next() for _ in range(4)]
    [0.5, 1.0, 2.0, 2.0]
    >>> backoff.reset()
    >>> backoff.delay_s
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Stopped(Exception):
    """A retry loop was asked to stop while it waited (e.g. the daemon got SIGTERM while starting)."""


@dataclass
class Backoff:
    """`next()` is the wait before the coming retry; each call doubles the one after, up to `max_s`."""

    first_s: float = 1.0
    max_s: float = 30.0
    delay_s: float = field(init=False)  # what `next()` returns next (for log messages before the wait)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < first_s <= max_s, got {self.first_s} and {self.max_s}")
        self.delay_s = self.first_s

    def next(self) -> float:
        delay = self.delay_s
        self.delay_s = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self.delay_s = self.first_s
