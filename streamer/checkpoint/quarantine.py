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

from collections.abc import Sequence

from streamer.checkpoint.snapshot import StateSnapshot
from streamer.checkpoint.state_codec import bookkeeping, encode_snapshot

STATE_RECORD_MAX_BYTES = 1_000_000  # key + value of one state record; Kafka's default limit is 1,048,588
QUARANTINED = bookkeeping("quarantined")  # store column: never written again while held (not serialised)

Refused = list[tuple[int, str]]  # (position in the snapshot, why)


def encode_checkpointable(snapshot: StateSnapshot, model_version: str | Sequence[str], log_id: bytes,
                          max_bytes: int = STATE_RECORD_MAX_BYTES) -> tuple[list[bytes], Refused]:
    """Encode the snapshot's states: (values, [(position, why) refused]); a refused one's value is b""."""
    refused: Refused = []
    values = encode_snapshot(snapshot, model_version, log_id, refuse=lambda i, why: refused.append((i, why)))
    if max(map(len, values), default=0) + max(map(len, snapshot.device_ids), default=0) * 4 <= max_bytes:
        return values, refused  # the usual case: nothing near the limit (4: UTF-8 bytes per character)
    for i, value in enumerate(values):
        size = len(value) + len(snapshot.device_ids[i].encode())
        if value and size > max_bytes:
            refused.append((i, f"its record of {len(value)} bytes is over the {max_bytes} bytes a state "
                               "record may take (fewer channels fit)"))
            values[i] = b""
    return values, refused
