"""Bounded time per scoring call: a poll's readings split into chunks of a bounded number of waves.

The pipeline steps a batch in waves (wave k = the k-th reading of every device in it), so its time
grows with the *longest* per-device run in the batch, not with its size: 10 k readings of 10 k devices
are one wave, 10 k readings of one device are 10 k waves (about 0.7-3 ms each on a 2-core machine).
A poll may bring many messages of one device; scored in one call, they would stop the loop's
heartbeat (`/healthz`) and hold up every other device's readings in the poll.

`wave_chunks` splits a batch so that chunk c holds, for every device, the messages that start at its
readings `[c * budget, (c + 1) * budget)` in this poll, in arrival order. So:
- a device's readings keep their order across chunks, and a batch-form message is never split;
- every device with fewer than `budget` readings in the poll is in the first chunk: a device that
  sends a lot delays the others by one chunk at most;
- a chunk takes fewer than `budget + longest message` waves, i.e. under 2 x max readings per message
  when `budget` is that limit (the daemon's choice; the README states the figure in seconds).

>>> import numpy as np
>>> from streamer.scoring.readings import ReadingBatch
>>> batch = ReadingBatch.from_rows(["big"] * 5 + ["small"], range(6), [[1.0]] * 6)
>>> [chunk.tolist() for chunk in wave_chunks(batch, 2)]
[[0, 1, 5], [2, 3], [4]]
>>> wave_chunks(batch, 5) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamer.scoring.readings import ReadingBatch


def wave_chunks(batch: ReadingBatch, budget: int) -> list[np.ndarray] | None:
    """Row indices (in arrival order) of each chunk; None when the whole batch is within `budget`."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    n = len(batch)
    if n <= budget:
        return None
    ranks = device_ranks(batch.device_ids)  # (n,)
    if int(ranks.max()) < budget:
        return None
    starts = batch.message_starts()
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # (n,) first row of each row's message
    chunk = ranks[first] // budget  # (n,)
    return [np.flatnonzero(chunk == c) for c in np.unique(chunk).tolist()]


def device_ranks(ids: Sequence[str]) -> np.ndarray:
    """How many earlier readings of the same device each reading has: (n,) ids -> (n,) int64."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(d, len(index)) for d in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    group_start = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[group_start, len(ids)])
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[order] = np.arange(len(ids)) - np.repeat(group_start, sizes)
    return ranks
