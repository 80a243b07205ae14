"""Which readings of a batch the kernel applies: event-time admission decided before anything moves.

A reading is applied when its timestamp is newer than its device's clock (`last_ts`, advanced by
every reading applied before it); the others are `OUT_OF_ORDER`. The runs of readings behind the
clock (`event_time.EventClock`) are followed here too, so a batch in which some device's run would
complete (its clock re-bases) is known before the kernel touches the state: such a batch goes the
torch path's way (`scorer`).

Shapes: v readings to decide (those `_validate` left SCORED), g device groups.
"""

from __future__ import annotations

import numpy as np

from streamer.scoring.kernel.jit import jit


@jit
def admit(order: np.ndarray, group_start: np.ndarray, ts: np.ndarray, clock: np.ndarray, behind: np.ndarray,
          rebase_after: int, fresh: np.ndarray) -> bool:
    """fresh[order[j]] for readings order (v,) grouped by device (group_start (g + 1,)), ts (v,) their
    times, clock (g,) and behind (g,) each device's last_ts and current run behind it (behind updated
    to the run after the batch). Returns False (and stops) when some device's clock would re-base."""
    for d in range(len(clock)):
        last, run = clock[d], behind[d]
        for j in range(group_start[d], group_start[d + 1]):
            i = order[j]
            if ts[i] > last:
                fresh[i], last, run = True, ts[i], 0
            else:
                run += 1
                if run >= rebase_after:
                    return False
        behind[d] = run
    return True


def groups(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings slots (v,) -> their positions grouped by device in arrival order (v,), group starts
    (g + 1,) and the group's slot (g,)."""
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(slots) else np.zeros(0, np.int64)
    return order, np.r_[first, len(slots)].astype(np.int64), ordered[first]
