"""Durable per-device state: checkpoints in a compacted changelog topic, restore on assignment.

    state_schema  the payload layout, derived from the store's fields and columns
    snapshot      a copy of the changed devices' states, taken between two batches
    state_codec   device states <-> compact bytes (versioned, checked; encoded in bulk)
    changelog     write a partition's states / tombstones; read a partition to its end
    checkpointer  dirty tracking per partition; flush outputs -> snapshot -> write state -> commit
    background    writes one checkpoint at a time in a worker thread while the loop scores
    restore       on assignment: read the changelog, install the newest state of every device
    eviction      RNNWATCH_MAX_DEVICES and RNNWATCH_DEVICE_TTL_S: least recently seen devices leave
    manager       the one object the daemon drives (rebalance hooks, periodic checkpoint, shutdown)

Exactly-once *state effect* under at-least-once delivery: every state record carries the last Kafka
offset applied to that device (`source_offset`); after a restore the pipeline drops replayed
readings at or below it (`DropReason.ALREADY_APPLIED`). Offsets are committed only after the states
that cover them are acknowledged, and only at checkpoints, so whatever a crash interrupts (even a
checkpoint half written) the replay from the committed offset rebuilds exactly the uninterrupted
state. Neither compaction nor transactions are relied on.
"""
