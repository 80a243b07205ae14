"""Dead letters: records that cannot be decoded or validated, and the Kafka record that carries them.

A dead letter keeps the original key and the original value bytes untouched, so the record can be
fixed and replayed; why it was rejected travels in headers:

    rnnwatch.reason            one `DeadLetterReason` value (also the metric label)
    rnnwatch.detail            a short human-readable explanation (UTF-8, at most 512 bytes)
    rnnwatch.source.topic      the topic it was read from
    rnnwatch.source.partition  decimal partition number
    rnnwatch.source.offset     decimal offset

The original record's own headers are kept after ours.

>>> rec = RawRecord("sensor.readings", 3, 42, b"dev-1", b"not json")
>>> key, value, headers = DeadLetter(DeadLetterReason.NOT_JSON, "unexpected character", rec).to_kafka()
>>> key, value, headers[0], headers[4]
(b'dev-1', b'not json', ('rnnwatch.reason', b'not_json'), ('rnnwatch.source.offset', b'42'))
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Protocol

MAX_DETAIL_BYTES = 512
HEADER_PREFIX = "rnnwatch."


class DeadLetterReason(enum.StrEnum):
    """Why a record went to the dead-letter topic. A closed set: each value is a metric label."""

    NOT_JSON = "not_json"  # no value (tombstone), invalid UTF-8 or invalid JSON (incl. NaN literals)
    NOT_OBJECT = "not_object"  # valid JSON but not an object (or a batch entry that is not an object)
    MISSING_FIELD = "missing_field"  # device_id, ts, values (or readings) absent
    WRONG_TYPE = "wrong_type"  # a field of the wrong JSON type, a non-number value, both forms at once
    KEY_MISMATCH = "key_mismatch"  # record key is not the UTF-8 of the body's device_id
    BAD_TIMESTAMP = "bad_timestamp"  # ts neither RFC 3339 with offset nor epoch seconds in range
    NON_FINITE = "non_finite"  # NaN/±Inf, as a string ("NaN") or out of float32 range
    EMPTY_VALUES = "empty_values"  # values is [] / {}, or readings is []
    OVERSIZED = "oversized"  # value larger than the configured max message bytes
    TOO_MANY_READINGS = "too_many_readings"  # batch form with more readings than allowed
    TOO_MANY_CHANNELS = "too_many_channels"  # more channels than allowed
    CHANNEL_COUNT = "channel_count"  # channel count differs from the fixed-channel model's
    DEVICE_ID_TOO_LONG = "device_id_too_long"  # device id (UTF-8) longer than the configured maximum
    CHANNEL_NAME_TOO_LONG = "channel_name_too_long"  # a channel name (UTF-8) longer than the maximum
    FUTURE_TIMESTAMP = "future_timestamp"  # ts further ahead of this service's clock than allowed
    # decoded, but the pipeline refused to score it (streamer.ingest.refusals): the device's data is wrong
    OUT_OF_ORDER = "out_of_order"  # ts not newer than the device's last reading
    CHANNEL_MISMATCH = "channel_mismatch"  # channels differ from the device's (until it is re-initialised)
    DECODER_ERROR = "decoder_error"  # the decoder itself failed: a bug, logged; the record is kept
    # feedback (streamer.feedback): a verdict or silence for a device the partition's owner does not hold
    UNKNOWN_DEVICE = "unknown_device"

    @property
    def label(self) -> str:
        return self.value


class KafkaRecord(Protocol):
    """What the decoder reads from a record: kafka-python's ConsumerRecord satisfies it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class RawRecord(NamedTuple):
    """A minimal KafkaRecord for tests, replay and benchmarks."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected record, the reason and a detail saying what was wrong."""

    reason: DeadLetterReason
    detail: str
    record: KafkaRecord

    def to_kafka(self) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """(key, value, headers) of the dead-letter record: original key and bytes, reason in headers."""
        rec = self.record
        headers = [
            (HEADER_PREFIX + "reason", self.reason.value.encode()),
            (HEADER_PREFIX + "detail", _truncate(self.detail)),
            (HEADER_PREFIX + "source.topic", str(rec.topic).encode()),
            (HEADER_PREFIX + "source.partition", str(rec.partition).encode()),
            (HEADER_PREFIX + "source.offset", str(rec.offset).encode()),
        ]
        for name, value in getattr(rec, "headers", None) or ():
            if not name.startswith(HEADER_PREFIX):
                headers.append((name, value))
        return rec.key, rec.value, headers


def _truncate(detail: str) -> bytes:
    raw = detail.encode("utf-8", "replace")
    if len(raw) <= MAX_DETAIL_BYTES:
        return raw
    return raw[: MAX_DETAIL_BYTES - 3].decode("utf-8", "ignore").encode() + b"..."


def parse_headers(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """The rnnwatch.* headers of a dead-letter record as {name without prefix: text} (for tools, tests)."""
    return {
        name[len(HEADER_PREFIX) :]: value.decode("utf-8", "replace")
        for name, value in headers
        if name.startswith(HEADER_PREFIX)
    }
