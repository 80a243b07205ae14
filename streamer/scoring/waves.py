"""Waves: wave k of a batch holds the k-th reading of every device in it (see `pipeline`).

>>> wave_ranks(np.array([7, 3, 7, 7, 3, 9])).tolist()
[0, 0, 1, 2, 1, 0]
"""

from __future__ import annotations

import numpy as np


def wave_ranks(slots: np.ndarray) -> np.ndarray:
    """For readings in arrival order, how many earlier readings of the same device: (n,) -> (n,)."""
    if len(slots) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(slots)]))
    ranks = np.empty(len(slots), dtype=np.int64)
    ranks[order] = np.arange(len(slots)) - group_start
    return ranks
