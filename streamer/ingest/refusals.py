"""Dead letters for readings that decoded fine but that the pipeline refused to score.

The decoder dead-letters what is malformed; the pipeline then drops, per reading, what does not fit
its device (`DropReason`). The drops that mean "this device's data is wrong" go to the dead-letter
topic as well, so an operator sees which device and why, not only a counter:

    DropReason.OUT_OF_ORDER      -> out_of_order      ts not newer than the device's last reading
    DropReason.CHANNEL_MISMATCH  -> channel_mismatch  channels differ from the device's (until re-init)
    DropReason.NON_FINITE        -> non_finite        (the decoder catches these first; replay may not)

Not dead-lettered: `already_applied` (a replay the restored state already holds: expected after a
restart) and `capacity` (the service is full, the data is fine: counted and logged by the evictor).

One dead letter per (source record, reason): a batch-form message with some readings refused keeps
its original bytes once, and the detail names the readings (`readings[3, 4] of 10`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason, KafkaRecord
from streamer.scoring.event_time import iso
from streamer.scoring.readings import DropReason, ReadingBatch
from streamer.scoring.shape import describe

DEAD_LETTERED: dict[DropReason, DeadLetterReason] = {
    DropReason.OUT_OF_ORDER: DeadLetterReason.OUT_OF_ORDER,
    DropReason.CHANNEL_MISMATCH: DeadLetterReason.CHANNEL_MISMATCH,
    DropReason.NON_FINITE: DeadLetterReason.NON_FINITE,
}
_CODES = np.array([int(code) for code in DEAD_LETTERED], dtype=np.uint8)
_SHOWN = 8  # reading indices named in a detail


def refusal_dead_letters(batch: ReadingBatch, status: np.ndarray, records: Iterable[KafkaRecord]
                         ) -> list[DeadLetter]:
    """Dead letters for the refused readings of `batch` (status (n,) `DropReason` values).

    `records` are the polled records the batch was decoded from (found by partition and offset).
    """
    rows = np.flatnonzero(np.isin(status, _CODES))
    if len(rows) == 0:
        return []
    starts = np.flatnonzero(batch.message_starts())
    message = np.searchsorted(starts, rows, side="right") - 1  # (k,) message of each refused row
    sizes = np.diff(np.r_[starts, len(batch)])
    groups: dict[tuple[int, int], list[int]] = {}
    for row, m in zip(rows.tolist(), message.tolist(), strict=True):
        groups.setdefault((m, int(status[row])), []).append(row)
    by_position = {(r.partition, r.offset): r for r in records}
    out = []
    for (m, code), refused in groups.items():
        first = int(starts[m])
        record = by_position.get((int(batch.partitions[first]), int(batch.offsets[first])))
        if record is None:  # not from this poll (replay, tests): nothing to dead-letter
            continue
        where = _where([row - first for row in refused], int(sizes[m]))
        detail = where + _why(DropReason(code), batch, refused[0])
        out.append(DeadLetter(DEAD_LETTERED[DropReason(code)], detail, record))
    return out


def _where(indices: list[int], size: int) -> str:
    if size == 1:
        return ""
    shown = ", ".join(map(str, indices[:_SHOWN])) + (", ..." if len(indices) > _SHOWN else "")
    return f"readings[{shown}] ({len(indices)} of {size}): "


def _why(reason: DropReason, batch: ReadingBatch, row: int) -> str:
    device = batch.device_ids[row]
    if reason is DropReason.OUT_OF_ORDER:
        return (f"device {device[:64]!r}: ts {iso(float(batch.ts[row]))} is not newer than the device's "
                "last reading; a device whose clock went back is re-based after RNNWATCH_CLOCK_REBASE_AFTER "
                "readings in a row")
    if reason is DropReason.CHANNEL_MISMATCH:
        sent = describe((int(batch.n_channels[row]), batch.channels[row]))
        return (f"device {device[:64]!r}: the reading has {sent}, not the channels of the device's earlier "
                "readings; the device is re-initialised after RNNWATCH_RESHAPE_AFTER readings in a row in "
                "one new channel set")
    return f"device {device[:64]!r}: a value is NaN or infinite"
