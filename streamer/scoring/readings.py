"""The columnar records that flow through the scoring pipeline.

A `ReadingBatch` is what decode hands to the pipeline; a `ScoredBatch` is what the pipeline hands to
publishing. Both are columnar (numpy arrays, one entry per reading) so that a batch of 100 k readings
costs a handful of vectorised operations, not 100 k Python objects.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


class DropReason(enum.IntEnum):
    """Why the pipeline did not score a reading (0 = it did). Values are stable: they go in metrics."""

    SCORED = 0
    OUT_OF_ORDER = 1  # timestamp not newer than the device's last one
    NON_FINITE = 2  # NaN or ±Inf among the values
    CHANNEL_MISMATCH = 3  # the device's channel set differs from the one it started with
    ALREADY_APPLIED = 4  # source offset already covered by the device's restored state checkpoint
    CAPACITY = 5  # state store full and nothing evictable

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """n decoded readings, in arrival order (a device's readings keep their relative order).

    device_ids: (n,) device id strings
    ts:         (n,) float64, event time in epoch seconds
    values:     (n, c_max) float32; row i holds reading i's channels in its device's channel order,
                padded with NaN beyond `n_channels[i]`
    n_channels: (n,) int16, channel count of each reading
    channels:   (n,) channel-name tuples, or None for positional (list) values named "0", "1", ...
    partitions: (n,) int32 source partition, -1 when not from Kafka
    offsets:    (n,) int64 source offset, -1 when not from Kafka
    """

    device_ids: Sequence[str]
    ts: np.ndarray
    values: np.ndarray
    n_channels: np.ndarray
    channels: Sequence[tuple[str, ...] | None]
    partitions: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.device_ids)

    def take(self, idx: np.ndarray) -> ReadingBatch:
        """The readings at positions `idx` (n,) int, in that order."""
        rows = idx.tolist()
        ids, channels = self.device_ids, self.channels
        return ReadingBatch([ids[i] for i in rows], self.ts[idx], self.values[idx], self.n_channels[idx],
                            [channels[i] for i in rows], self.partitions[idx], self.offsets[idx])

    def message_starts(self) -> np.ndarray:
        """(n,) bool, True where a reading starts a new source message.

        A batch-form message's readings are consecutive and share their (partition, offset); a reading
        not from Kafka (offset -1) is a message of its own.
        """
        p, o = self.partitions, self.offsets
        starts = np.ones(len(self), dtype=bool)
        starts[1:] = (p[1:] != p[:-1]) | (o[1:] != o[:-1]) | (o[1:] < 0)
        return starts

    @staticmethod
    def from_rows(
        device_ids: Sequence[str],
        ts: Sequence[float],
        values: Sequence[Sequence[float]],
        channels: Sequence[tuple[str, ...] | None] | None = None,
        partitions: Sequence[int] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> ReadingBatch:
        """Build a batch from per-reading Python sequences (tests, replay, decode)."""
        n = len(device_ids)
        widths = np.fromiter((len(v) for v in values), dtype=np.int16, count=n)
        c_max = int(widths.max()) if n else 1
        packed = np.full((n, max(c_max, 1)), np.nan, dtype=np.float32)
        for i, v in enumerate(values):
            packed[i, : len(v)] = v
        return ReadingBatch(
            device_ids=list(device_ids),
            ts=np.asarray(ts, dtype=np.float64).reshape(n),
            values=packed,
            n_channels=widths,
            channels=list(channels) if channels is not None else [None] * n,
            partitions=np.asarray(partitions if partitions is not None else [-1] * n, dtype=np.int32),
            offsets=np.asarray(offsets if offsets is not None else [-1] * n, dtype=np.int64),
        )


@dataclass(frozen=True, slots=True)
class ChannelAttribution:
    """One channel's part in an alert: its share of the error (shares sum to 1) and its direction."""

    channel: str
    share: float
    direction: Literal["above", "below"]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A transition of one device's alert state machine."""

    alert_id: str  # deterministic: hash of (device_id, started_at, model_version)
    device_id: str
    state: Literal["firing", "resolved"]
    ts: float  # event time of the reading that caused the transition
    started_at: float  # event time at which the episode started firing
    score: float
    threshold: float
    channels: tuple[ChannelAttribution, ...]
    model_version: str
    partition: int = -1
    offset: int = -1
    # why a `resolved` episode ended (false_positive: an operator's verdict closed it, streamer.feedback)
    reason: Literal["recovered", "accepted_new_normal", "false_positive"] | None = None
    duration_s: float | None = None  # event-time seconds the episode was open (`resolved` only)


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """The pipeline's answer for a ReadingBatch, aligned with it row by row.

    scores:      (n,) float32 calibrated anomaly score in [0, 1]; NaN where not scored
    alerting:    (n,) bool, the device's alert policy is firing after this reading
    status:      (n,) uint8 DropReason value (0 = scored)
    top_channel: (n,) int16 index of the channel with the largest error share (-1 if not scored)
    events:      alert transitions caused by this batch, in reading order
    waves:       number of batched recurrent steps the batch took
    rebased:     devices whose event-time clock was re-based (`streamer.scoring.event_time`)
    reshaped:    devices re-initialised for a new channel set (`streamer.scoring.shape`)
    shadow_events: a shadow model's alert transitions for the same batch (`streamer.scoring.shadow`),
                 published to the shadow alerts topic only
    shadow_agreement: the shadow's running agreement with the live alert state (None: no shadow)
    silenced:    firing events withheld because their device was silenced (`streamer.feedback.silencing`)
    """

    scores: np.ndarray
    alerting: np.ndarray
    status: np.ndarray
    top_channel: np.ndarray
    events: list[AlertEvent] = field(default_factory=list)
    waves: int = 0
    rebased: int = 0
    reshaped: int = 0
    shadow_events: list[AlertEvent] = field(default_factory=list)
    shadow_agreement: float | None = None
    silenced: int = 0

    def dropped_counts(self) -> dict[DropReason, int]:
        counts = np.bincount(self.status, minlength=len(DropReason))
        return {DropReason(i): int(c) for i, c in enumerate(counts) if i != 0 and c}
