"""Feedback messages: what operators send on the feedback topic, decoded and validated.

One topic carries both kinds, keyed by device id (so a device's feedback lands in the partition of
the same number as its readings, and the member that owns the device reads it):

    {"alert_id": "...", "device_id": "pump-7", "verdict": "false_positive" | "true_positive" | "ack"}
    {"device_id": "pump-7", "silence_until": <epoch seconds | RFC 3339>, "reason": "maintenance"}
    {"device_id": "pump-7", "silence_until": null}                      (lifts the device's silence)

A record that is none of these (not JSON, a missing or mistyped field, an unknown verdict, a key that
is not the device id) becomes a dead letter with the decoder's reasons, exactly as a bad reading does.

>>> from streamer.ingest.dead_letter import RawRecord
>>> decode_feedback(RawRecord("fb", 0, 1, b"d", b'{"alert_id": "a1", "device_id": "d", "verdict": "ack"}'))
Verdict(device_id='d', alert_id='a1', verdict='ack')
>>> decode_feedback(RawRecord("fb", 0, 2, b"d", b'{"device_id": "d", "silence_until": 60, "reason": "x"}'))
Silence(device_id='d', until=60.0, reason='x')
>>> decode_feedback(RawRecord("fb", 0, 3, b"d", b'{"device_id": "d", "verdict": "maybe"}')).reason.value
'missing_field'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from streamer.ingest.codec import Reject, json_object, parse_timestamp
from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason, KafkaRecord

R = DeadLetterReason
VerdictKind = Literal["false_positive", "true_positive", "ack"]
VERDICTS: tuple[str, ...] = get_args(VerdictKind)
MAX_FEEDBACK_BYTES = 4096  # a feedback message is a few fields; anything larger is not one
MAX_ID_BYTES = 256  # device and alert ids (the readings' own device-id limit is applied by the owner)
MAX_REASON_CHARS = 256


@dataclass(frozen=True, slots=True)
class Verdict:
    """An operator's judgement of one alert episode."""

    device_id: str
    alert_id: str
    verdict: VerdictKind


@dataclass(frozen=True, slots=True)
class Silence:
    """Silence a device until `until` (event-time epoch seconds); `until` NaN lifts its silence."""

    device_id: str
    until: float
    reason: str

    @property
    def lifts(self) -> bool:
        return math.isnan(self.until)


Feedback = Verdict | Silence


def decode_feedback(record: KafkaRecord) -> Feedback | DeadLetter:
    """One feedback record -> a `Verdict`, a `Silence`, or the `DeadLetter` that says what is wrong."""
    try:
        return _decode(record)
    except Reject as bad:
        return DeadLetter(bad.reason, bad.detail, record)


def _decode(record: KafkaRecord) -> Feedback:
    obj = json_object(record.value, MAX_FEEDBACK_BYTES)
    device_id = _text(obj, "device_id")
    if record.key is not None and record.key != device_id.encode():
        raise Reject(R.KEY_MISMATCH, f"key {record.key[:64]!r} != device_id {device_id[:64]!r}")
    if "silence_until" in obj:
        return _silence(obj, device_id)
    if "verdict" not in obj or "alert_id" not in obj:
        raise Reject(R.MISSING_FIELD, "feedback needs alert_id and verdict, or silence_until")
    verdict = _text(obj, "verdict")
    if verdict not in VERDICTS:
        raise Reject(R.WRONG_TYPE, f"verdict {verdict[:64]!r} is not one of {', '.join(VERDICTS)}")
    return Verdict(device_id, _text(obj, "alert_id"), verdict)  # type: ignore[arg-type]


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None or value == "":
        raise Reject(R.MISSING_FIELD, f"{name} is missing, null or empty")
    if type(value) is not str:
        raise Reject(R.WRONG_TYPE, f"{name} must be a string")
    if len(value.encode()) > MAX_ID_BYTES:
        raise Reject(R.DEVICE_ID_TOO_LONG if name == "device_id" else R.WRONG_TYPE,
                   f"{name} is longer than {MAX_ID_BYTES} bytes")
    return value


def _silence(obj: dict[str, Any], device_id: str) -> Silence:
    raw, reason = obj["silence_until"], obj.get("reason", "")
    if type(reason) is not str:
        raise Reject(R.WRONG_TYPE, "reason must be a string")
    if raw is None:
        return Silence(device_id, math.nan, reason[:MAX_REASON_CHARS])
    until = parse_timestamp(raw) if type(raw) is not bool else math.nan
    if not math.isfinite(until) or not 0 < until < 2**32:
        raise Reject(R.BAD_TIMESTAMP, f"silence_until {str(raw)[:64]!r} is neither epoch seconds nor RFC "
                                      "3339 within 1970-2106 (null lifts the silence)")
    return Silence(device_id, until, reason[:MAX_REASON_CHARS])
