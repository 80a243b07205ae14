"""Decode raw Kafka reading records into a columnar `ReadingBatch`, dead-lettering what is invalid.

Accepted message forms (key = device id, UTF-8; value = JSON):

    single: {"device_id": "d1", "ts": <ts>, "values": {"temp": 21.5, "rpm": 900} | [21.5, 900]}
    batch:  {"device_id": "d1", "readings": [{"ts": <ts>, "values": ...}, ...]}

Rules (each rejection is one `DeadLetterReason`):
- `ts` is an RFC 3339 date-time with a UTC offset (`2024-05-01T12:00:00.25Z`, `...+02:00`, `T` or a
  space as separator; leap seconds are rejected), or epoch seconds as a JSON number. Either must fall
  in [1970, 3000): epoch *milliseconds* sent by mistake are rejected, not read as the year 55000.
- Dict values are ordered by channel name (sorted, so `{"b": 1, "a": 2}` is channels `("a", "b")`
  with values `[2, 1]`): the order of keys inside JSON carries no meaning. List values are positional
  and their channels are `None` (the pipeline names them "0", "1", ...).
- Values are JSON numbers (not booleans, not strings) that fit float32; `"NaN"`/`"Infinity"` strings
  and numbers beyond float32 range are `non_finite`, other strings `wrong_type`.
- Key vs body: when the record has a key it must equal the body's `device_id` (UTF-8), else the
  record is dead-lettered (`key_mismatch`). The key decides the partition, so a mismatch means the
  device's readings may be split across partitions and consumers, breaking per-device order and
  state; we refuse to guess which of the two is right. A record without a key is accepted (the body
  decides); per-device order then depends on the producer sending it to one partition.
- A batch-form message expands into one row per reading. All its rows carry the message's partition
  and offset, so anything keyed by offset (the restored-state "already applied" check, the commit
  position) treats the whole message as one unit: it is applied or skipped entirely. For the same
  reason a message is atomic here: one invalid reading dead-letters the whole message (the detail
  names the reading's index), because its original bytes are what the dead-letter topic keeps.
- Limits (`CodecLimits`): a device id or a channel name longer (in UTF-8 bytes) than its maximum is
  `device_id_too_long` / `channel_name_too_long`: ids and names are kept in memory, written into
  every checkpoint and every alert, so their size is bounded far below what a checkpoint can hold.
  With `max_future_s` set (the daemon sets it), a ts further ahead of the decoder's clock is
  `future_timestamp`: one reading from the year 2999 would otherwise become its device's clock and
  make every later reading "out of order".
- Unknown fields are ignored.

The decoder never raises on input: every record ends up as rows of the batch or as one `DeadLetter`.
It is built for throughput: one `orjson.loads` and a few dict look-ups per message in Python, then
number and timestamp validation vectorised over the whole poll.

>>> from streamer.ingest.dead_letter import RawRecord
>>> recs = [RawRecord("t", 0, 7, b"d1", b'{"device_id":"d1","ts":10,"values":{"b":1,"a":2}}'),
...         RawRecord("t", 0, 8, b"d1", b'{"device_id":"d1","ts":"x","values":[1]}')]
>>> out = ReadingDecoder().decode(recs)
>>> out.batch.channels[0], out.batch.values[0].tolist(), out.dead_letters[0].reason.value
(('a', 'b'), [2.0, 1.0], 'bad_timestamp')
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason, KafkaRecord
from streamer.scoring.readings import ReadingBatch

log = logging.getLogger(__name__)

R = DeadLetterReason
TS_MIN = 0.0  # 1970-01-01
TS_MAX = 32_503_680_000.0  # 3000-01-01: beyond it the ts is almost surely milliseconds
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = frozenset((int, float))
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)
_NON_FINITE_WORDS = frozenset(("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
                               "-infinity"))
_SORT_CACHE_MAX = 4096  # channel sets remembered (sorted order, longest name) ...
_SORT_CACHE_MAX_BYTES = 8 * 1024 * 1024  # ... and the bytes of their names at most


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """Bounds on one message; anything beyond them is dead-lettered, never truncated."""

    max_message_bytes: int = 1_048_576
    max_readings_per_message: int = 1_000  # the worst allowed message is one device x 1000 waves (README)
    max_channels: int = 256
    expected_channels: int | None = None  # a fixed-channel model's channel count; None = any
    max_device_id_bytes: int = 256
    max_channel_name_bytes: int = 128
    max_future_s: float | None = None  # ts at most this far ahead of the clock; None = no check (replay)


@dataclass(frozen=True, slots=True)
class Decoded:
    """The result of decoding one poll: rows to score, and the records rejected."""

    batch: ReadingBatch
    dead_letters: list[DeadLetter]
    messages: int  # records looked at (= accepted messages + len(dead_letters))


class Reject(Exception):
    """Control flow inside a decoder: the current message is dead-lettered (reason, detail). Never escapes
    the decoder that raises it."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class ReadingDecoder:
    """Turns a poll's records into a `Decoded`. Stateless apart from a cache of channel orders.

    `clock` (epoch seconds) is what `limits.max_future_s` counts from.
    """

    def __init__(self, limits: CodecLimits | None = None, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits or CodecLimits()
        self._clock = clock
        self._sorted: dict[tuple[str, ...], tuple[tuple[str, ...], bool, int]] = {}
        self._sorted_bytes = 0

    def decode(self, records: Iterable[KafkaRecord]) -> Decoded:
        rows = _Rows()
        meta_append, flat_extend, record_append = rows.meta.append, rows.flat.extend, rows.records.append
        envelope, channels = self._envelope, self._channels
        dead: list[DeadLetter] = []
        messages = 0
        for rec in records:
            messages += 1
            try:
                obj, device_id = envelope(rec)
                if "readings" in obj:
                    self._parse_batch(rec, obj, device_id, rows)
                    continue
                values = obj.get("values")
                if values is None or "ts" not in obj:
                    raise Reject(R.MISSING_FIELD, "message needs ts and values (or readings)")
                names, ordered = channels(values, "")
            except Reject as rej:
                dead.append(DeadLetter(rej.reason, rej.detail, rec))
                continue
            except Exception as exc:  # a decoder bug must not stop the stream: keep the record
                log.exception("decoder failed on %s[%s]@%s", rec.topic, rec.partition, rec.offset)
                dead.append(DeadLetter(R.DECODER_ERROR, f"{type(exc).__name__}: {exc}", rec))
                continue
            # the single form, inline: it is the hot path
            meta_append((device_id, obj["ts"], names, len(ordered), len(rows.records), -1))
            flat_extend(ordered)
            record_append(rec)
        batch, late = rows.finish(self.limits, self._clock())
        if late:
            dead.extend(late)
            dead.sort(key=lambda d: (d.record.partition, d.record.offset))
        return Decoded(batch=batch, dead_letters=dead, messages=messages)

    def _envelope(self, rec: KafkaRecord) -> tuple[dict[str, Any], str]:
        """The message's JSON object and its device id, checked against the record key."""
        obj = json_object(rec.value, self.limits.max_message_bytes)
        device_id = obj.get("device_id")
        if type(device_id) is not str or not device_id:
            raise _missing_or_wrong("device_id", device_id, "a non-empty string")
        raw_id = device_id.encode()
        if len(raw_id) > self.limits.max_device_id_bytes:
            raise Reject(R.DEVICE_ID_TOO_LONG, f"device_id {device_id[:64]!r}... of {len(raw_id)} bytes > "
                          f"max {self.limits.max_device_id_bytes} (--max-device-id-bytes)")
        key = rec.key
        if key is not None and key != raw_id:
            raise Reject(R.KEY_MISMATCH, f"key {key[:64]!r} != device_id {device_id[:64]!r}")
        return obj, device_id

    def _parse_batch(self, rec: KafkaRecord, obj: dict[str, Any], device_id: str, rows: _Rows) -> None:
        if "values" in obj:
            raise Reject(R.WRONG_TYPE, "message has both values and readings")
        readings = obj["readings"]
        if type(readings) is not list:
            raise _missing_or_wrong("readings", readings, "a list")
        if not readings:
            raise Reject(R.EMPTY_VALUES, "readings is empty")
        limit = self.limits.max_readings_per_message
        if len(readings) > limit:
            raise Reject(R.TOO_MANY_READINGS, f"{len(readings)} readings > max {limit}")
        parsed = []
        for i, reading in enumerate(readings):
            if type(reading) is not dict:
                raise Reject(R.NOT_OBJECT, f"readings[{i}] is a JSON {_json_type(reading)}, not an object")
            values = reading.get("values")
            if "ts" not in reading or values is None:
                raise Reject(R.MISSING_FIELD, f"readings[{i}] needs ts and values")
            parsed.append((reading["ts"], *self._channels(values, f"readings[{i}].")))
        m = len(rows.records)
        for i, (ts, names, ordered) in enumerate(parsed):  # all valid so far: add them all at once
            rows.meta.append((device_id, ts, names, len(ordered), m, i))
            rows.flat.extend(ordered)
        rows.records.append(rec)

    def _channels(self, values: Any, where: str) -> tuple[tuple[str, ...] | None, list[Any]]:
        """(channel names or None, values in channel order); types are checked later, vectorised."""
        kind = type(values)
        if kind is list:
            names = None
            ordered = values
        elif kind is dict:
            keys = tuple(values)
            cached = self._sorted.get(keys)
            if cached is None:
                cached = self._remember(keys)
            names, in_order, longest = cached
            if longest > self.limits.max_channel_name_bytes:
                limit = self.limits.max_channel_name_bytes
                raise Reject(R.CHANNEL_NAME_TOO_LONG, f"{where}values has a channel name of {longest} "
                              f"bytes > max {limit} (--max-channel-name-bytes)")
            ordered = list(values.values()) if in_order else [values[k] for k in names]
        else:
            raise Reject(R.WRONG_TYPE, f"{where}values is a JSON {_json_type(values)}, not object/list")
        n = len(ordered)
        if n == 0:
            raise Reject(R.EMPTY_VALUES, f"{where}values is empty")
        if n > self.limits.max_channels:
            limit = self.limits.max_channels
            raise Reject(R.TOO_MANY_CHANNELS, f"{where}values has {n} channels > max {limit}")
        return names, ordered

    def _remember(self, keys: tuple[str, ...]) -> tuple[tuple[str, ...], bool, int]:
        sizes = [len(k.encode()) for k in keys]
        names = tuple(sorted(keys))
        entry = (names, names == keys, max(sizes, default=0))
        if entry[2] > self.limits.max_channel_name_bytes:
            return entry  # rejected: never cached, so hostile names cannot fill memory
        if len(self._sorted) >= _SORT_CACHE_MAX or self._sorted_bytes > _SORT_CACHE_MAX_BYTES:
            self._sorted.clear()
            self._sorted_bytes = 0
        self._sorted[keys] = entry
        self._sorted_bytes += 2 * sum(sizes)
        return entry


class _Rows:
    """Rows accumulated over one poll; `finish` validates numbers and timestamps in bulk."""

    def __init__(self) -> None:
        # one tuple per row: (device_id, raw ts, channel names, width, message index, index in readings)
        self.meta: list[tuple[str, Any, tuple[str, ...] | None, int, int, int]] = []
        self.flat: list[Any] = []  # every value of every row, row after row
        self.records: list[KafkaRecord] = []  # accepted so far; message index -> record

    def finish(self, limits: CodecLimits, now: float) -> tuple[ReadingBatch, list[DeadLetter]]:
        """The batch of rows whose numbers and timestamps are valid, and dead letters for the rest.

        `now` (epoch seconds) is the clock `limits.max_future_s` counts from.
        """
        n = len(self.meta)
        device_ids, raw_ts, channels, widths_, msg_, sub = (
            tuple(zip(*self.meta, strict=True)) if n else ((),) * 6
        )
        msg = np.asarray(msg_, dtype=np.int64)  # (n,) row -> message index
        widths = np.asarray(widths_, dtype=np.int16)  # (n,) channels per row
        bad: _Bad = {}

        def flag(row: int, reason: DeadLetterReason, detail: str) -> None:
            where = f"readings[{sub[row]}]: " if sub[row] >= 0 else ""
            bad.setdefault(int(msg[row]), (reason, where + detail))

        ts = _timestamps(raw_ts, flag)  # (n,) float64 epoch seconds
        if limits.max_future_s is not None:
            _future(ts, raw_ts, now, limits.max_future_s, flag)
        flat = _numbers(self.flat, widths, flag)  # (sum(widths),) float64
        if n:
            starts = np.zeros(n, dtype=np.int64)
            np.cumsum(widths[:-1], out=starts[1:])
            out_of_range = np.add.reduceat(~(np.abs(flat) <= FLOAT32_MAX), starts) > 0  # NaN too
            for row in np.flatnonzero(out_of_range).tolist():
                flag(row, R.NON_FINITE, "a value is NaN/Inf or beyond float32")
            expected = limits.expected_channels
            for row in np.flatnonzero(widths != expected).tolist() if expected is not None else ():
                flag(row, R.CHANNEL_COUNT, f"{widths[row]} channels, the model expects {expected}")
        values = _pack(flat, widths)  # (n, c_max) float32, NaN-padded
        partitions = np.fromiter((r.partition for r in self.records), np.int32, len(self.records))[msg]
        offsets = np.fromiter((r.offset for r in self.records), np.int64, len(self.records))[msg]
        if bad:
            keep = ~np.isin(msg, np.fromiter(bad, dtype=np.int64, count=len(bad)))
            device_ids = tuple(d for d, k in zip(device_ids, keep, strict=True) if k)
            channels = tuple(c for c, k in zip(channels, keep, strict=True) if k)
            ts, values, widths = ts[keep], values[keep], widths[keep]
            partitions, offsets = partitions[keep], offsets[keep]
            values = values[:, : max(int(widths.max()), 1) if len(widths) else 1]
        batch = ReadingBatch(
            device_ids=list(device_ids),
            ts=ts,
            values=np.ascontiguousarray(values),
            n_channels=widths,
            channels=list(channels),
            partitions=partitions,
            offsets=offsets,
        )
        return batch, [DeadLetter(reason, detail, self.records[m]) for m, (reason, detail) in bad.items()]


_Bad = dict[int, tuple[DeadLetterReason, str]]  # message index -> first reason found
_Flag = Callable[[int, DeadLetterReason, str], None]


def _timestamps(raw: Sequence[Any], flag: _Flag) -> np.ndarray:
    """(n,) float64 epoch seconds; a ts that is not a number or RFC 3339, or out of range, is flagged."""
    if set(map(type, raw)) <= _NUMBER_TYPES:
        ts = np.asarray(raw, dtype=np.float64)
    else:
        ts = np.fromiter(map(_parse_ts, raw), dtype=np.float64, count=len(raw))
    for row in np.flatnonzero(~((ts >= TS_MIN) & (ts < TS_MAX))).tolist():  # also catches NaN
        flag(row, R.BAD_TIMESTAMP,
             f"ts {str(raw[row])[:64]!r} is not RFC 3339 with offset or epoch seconds in [1970, 3000)")
    return ts


def _future(ts: np.ndarray, raw: Sequence[Any], now: float, max_future_s: float, flag: _Flag) -> None:
    """Flag every ts more than `max_future_s` ahead of `now`: it would become its device's clock."""
    for row in np.flatnonzero(ts > now + max_future_s).tolist():
        flag(row, R.FUTURE_TIMESTAMP, f"ts {str(raw[row])[:64]!r} is {ts[row] - now:.0f} s ahead of this "
             f"service's clock (max {max_future_s:g} s, RNNWATCH_MAX_FUTURE_S); check the device's clock")


def _numbers(flat: list[Any], widths: np.ndarray, flag: _Flag) -> np.ndarray:
    """The values as float64, in one go when all are JSON numbers; non-numbers flagged (and zeroed)."""
    if set(map(type, flat)) <= _NUMBER_TYPES:
        return np.asarray(flat, dtype=np.float64)
    row_of = np.repeat(np.arange(len(widths)), widths)
    cleaned = np.zeros(len(flat), dtype=np.float64)
    for i, v in enumerate(flat):
        kind = type(v)
        if kind is float or kind is int:
            cleaned[i] = v
        elif kind is str and v.strip().lower() in _NON_FINITE_WORDS:
            flag(int(row_of[i]), R.NON_FINITE, f"value {v[:16]!r} is not finite")
        else:
            flag(int(row_of[i]), R.WRONG_TYPE, f"a value is a JSON {_json_type(v)}, not a number")
    return cleaned


def _pack(flat: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(n, c_max) float32 from the row-after-row values, NaN beyond each row's width."""
    n = len(widths)
    c_max = int(widths.max()) if n else 1
    with np.errstate(over="ignore"):  # rows beyond float32 range are flagged and dropped by the caller
        if n and int(widths.min()) == c_max:
            return flat.reshape(n, c_max).astype(np.float32)
        values = np.full((n, c_max), np.nan, dtype=np.float32)
        values[np.arange(c_max) < widths[:, None]] = flat
        return values




def json_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The JSON object a record's value holds; `Reject` when it holds none (a tombstone, too many bytes,
    not JSON, another JSON type)."""
    if value is None:
        raise Reject(R.NOT_JSON, "record has no value (tombstone)")
    if len(value) > max_bytes:
        raise Reject(R.OVERSIZED, f"{len(value)} bytes > max {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Reject(R.NOT_JSON, str(exc)) from None
    if type(obj) is not dict:
        raise Reject(R.NOT_OBJECT, f"message is a JSON {_json_type(obj)}, not an object")
    return obj


def parse_timestamp(t: Any) -> float:
    """Epoch seconds from a number or an RFC 3339 string, as reading messages carry them; NaN when it is
    neither.

    >>> parse_timestamp("1970-01-01T00:01:00Z"), parse_timestamp(60), parse_timestamp("noon")
    (60.0, 60.0, nan)
    """
    return _parse_ts(t)


def _parse_ts(t: Any) -> float:
    """Epoch seconds from a JSON number or an RFC 3339 string; NaN when it is neither."""
    kind = type(t)
    if kind is float or kind is int:
        return float(t)
    if kind is not str or not _RFC3339.match(t):
        return math.nan
    text = t.replace("z", "Z").replace("t", "T")
    if len(text) > 25 and text[19] == ".":  # datetime takes at most 6 fractional digits
        frac_end = 20 + len(text[20:]) - len(text[20:].lstrip("0123456789"))
        text = text[:26] + text[frac_end:] if frac_end > 26 else text
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:  # e.g. month 13, hour 24, second 60
        return math.nan


def _missing_or_wrong(name: str, value: Any, expected: str) -> Reject:
    if value is None:
        return Reject(R.MISSING_FIELD, f"{name} is missing or null")
    if value == "":
        return Reject(R.MISSING_FIELD, f"{name} is empty")
    return Reject(R.WRONG_TYPE, f"{name} is a JSON {_json_type(value)}, expected {expected}")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def encode_reading(device_id: str, ts: float | str, values: Sequence[float] | dict[str, float]) -> bytes:
    """The JSON value of a single-form reading message (its key is `device_id.encode()`)."""
    return orjson.dumps({"device_id": device_id, "ts": ts, "values": values})


def encode_readings(device_id: str, readings: Sequence[tuple[float | str, Sequence[float] | dict[str, float]]]
                    ) -> bytes:
    """The JSON value of a batch-form message carrying several readings of one device."""
    return orjson.dumps({"device_id": device_id, "readings": [{"ts": t, "values": v} for t, v in readings]})
