"""Device states that cannot be checkpointed, kept out of the way of every other device's checkpoint.

A checkpoint writes every changed state, then commits the offsets they cover; one state that can never
be written would hold back the commit of every device for good (and, after a restart, replay into
the same wall). A state can be unwritable for what it is:

- the codec refuses it (`StateError`: a device id or channel name over 64 KiB, say);
- its record is larger than `STATE_RECORD_MAX_BYTES` (under Kafka's default `message.max.bytes`);
- the producer or the broker refuses the record for what it is (`changelog.REFUSED_RECORD_ERRORS`).

Policy: such a device is **quarantined**: it stays in memory and keeps being scored, but its state is
not written again (bookkeeping column `QUARANTINED`) while this process holds it (until it is evicted
or its partition moves); if the changelog held an older state of it, a tombstone replaces that, so a
restore never brings back a state older than the committed offsets (after a restart the device starts
afresh). Logged with the device and the reason, counted in `rnnwatch_state_quarantined_total`; the
checkpoint writes every other state and commits. The decoder's limits on id and name lengths keep
this a last line of defence.
"""

from __future__ import annotations

import numpy as np

from streamer.checkpoint.state_codec import bookkeeping, encode_states
from streamer.errors import StateError
from streamer.scoring.state_store import StateStore

STATE_RECORD_MAX_BYTES = 1_000_000  # key + value of one state record; Kafka's default limit is 1,048,588
QUARANTINED = bookkeeping("quarantined")  # store column: never written again while held (not serialised)

Refused = list[tuple[int, str]]  # (slot, why)


def encode_checkpointable(store: StateStore, slots: np.ndarray, model_version: str, log_id: bytes,
                          max_bytes: int = STATE_RECORD_MAX_BYTES) -> tuple[np.ndarray, list[bytes], Refused]:
    """Encode the states of `slots`: (slots encoded, their values, [(slot, why) refused]).

    One encode call in the usual case; when the codec refuses a state, the slots are halved until
    the culprits are found (a few calls per bad state, not one per device).
    """
    kept, values, refused = _bisect(store, np.asarray(slots, dtype=np.int64), model_version, log_id)
    too_big = [j for j, (slot, value) in enumerate(zip(kept.tolist(), values, strict=True))
               if len(value) + len((store.device_id(slot) or "").encode()) > max_bytes]
    if not too_big:
        return kept, values, refused
    for j in too_big:
        refused.append((int(kept[j]), f"its record of {len(values[j])} bytes is over the {max_bytes} bytes a "
                                      "state record may take (fewer channels fit)"))
    fine = np.ones(len(kept), dtype=bool)
    fine[too_big] = False
    return kept[fine], [v for v, ok in zip(values, fine.tolist(), strict=True) if ok], refused


def _bisect(store: StateStore, slots: np.ndarray, model_version: str, log_id: bytes
            ) -> tuple[np.ndarray, list[bytes], Refused]:
    try:
        return slots, encode_states(store, slots, model_version, log_id=log_id), []
    except StateError as exc:
        if len(slots) == 1:
            return slots[:0], [], [(int(slots[0]), str(exc))]
    mid = len(slots) // 2
    a_slots, a_values, a_refused = _bisect(store, slots[:mid], model_version, log_id)
    b_slots, b_values, b_refused = _bisect(store, slots[mid:], model_version, log_id)
    return np.concatenate([a_slots, b_slots]), a_values + b_values, a_refused + b_refused
