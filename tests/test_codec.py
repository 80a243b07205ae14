"""The reading decoder: never raises, round-trips valid messages, dead-letters each malformed class."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.ingest.codec import CodecLimits, Decoded, ReadingDecoder, encode_reading, encode_readings
from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason, RawRecord, parse_headers

R = DeadLetterReason


def decode(*values: bytes | None, keys: list[bytes | None] | None = None, **limits: int) -> Decoded:
    keys = keys if keys is not None else [b"d1"] * len(values)
    pairs = enumerate(zip(keys, values, strict=True))
    recs = [RawRecord("sensor.readings", 2, 100 + i, k, v) for i, (k, v) in pairs]
    return ReadingDecoder(CodecLimits(**limits)).decode(recs)


def reasons(out: Decoded) -> list[str]:
    return [d.reason.value for d in out.dead_letters]


# --- any bytes -------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=["Cs"]))  # orjson cannot write lone surrogates
json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from(["NaN", "Infinity", "2024-05-01T12:00:00Z", "2024-05-01"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
    max_leaves=20,
)


def _envelopes() -> st.SearchStrategy[bytes]:
    """Messages that look almost right: the real field names with arbitrary JSON in them."""
    field = st.sampled_from(["device_id", "ts", "values", "readings", "x"])
    obj = st.dictionaries(field, json_like | st.just("d1") | st.just(1.7e9), max_size=4)
    return obj.map(orjson.dumps)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.none() | st.binary(max_size=8) | st.just(b"d1"),
                          st.none() | st.binary(max_size=200) | _envelopes()), max_size=20))
def test_any_bytes_decode_or_dead_letter_and_never_raise(pairs):
    recs = [RawRecord("t", 0, i, k, v) for i, (k, v) in enumerate(pairs)]
    out = ReadingDecoder(CodecLimits(max_message_bytes=150)).decode(recs)
    assert out.messages == len(recs)
    accepted = set(out.batch.offsets.tolist())
    rejected = [d.record.offset for d in out.dead_letters]
    assert len(rejected) == len(set(rejected)), "a record dead-lettered twice"
    assert accepted.isdisjoint(rejected)
    assert accepted | set(rejected) == set(range(len(recs))), "a record neither decoded nor dead-lettered"
    assert R.DECODER_ERROR not in {d.reason for d in out.dead_letters}
    batch = out.batch
    n = len(batch)
    assert batch.ts.shape == (n,) and batch.values.shape[0] == n and len(batch.channels) == n
    for i in range(n):
        row = batch.values[i, : batch.n_channels[i]]
        assert np.isfinite(row).all() and 0 <= batch.ts[i] < 32_503_680_000


# --- valid messages round-trip -----------------------------------------------------------------------

device_ids = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
numbers = f32 | st.integers(-(2**24), 2**24)
channel_names = st.text(st.characters(blacklist_categories=["Cs"]), max_size=6)
values_strategy = (
    st.lists(numbers, min_size=1, max_size=6)
    | st.dictionaries(channel_names, numbers, min_size=1, max_size=6)
)
epoch = st.floats(0, 32_503_679_999, allow_nan=False) | st.integers(0, 32_503_679_999)
rfc3339 = st.builds(
    lambda dt, tz, sep, zulu: (dt.replace(tzinfo=tz), sep, zulu),
    st.datetimes(datetime(1970, 1, 2), datetime(2999, 12, 30)),
    st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]),
    st.sampled_from(["T", " ", "t"]),
    st.booleans(),
)


def _rfc_text(item: tuple[datetime, str, bool]) -> tuple[str, float]:
    dt, sep, zulu = item
    text = dt.isoformat(sep=sep)
    if zulu and dt.utcoffset() == timedelta(0):
        text = text[: -len("+00:00")] + "Z"
    return text, dt.timestamp()


timestamps = epoch.map(lambda t: (t, float(t))) | rfc3339.map(_rfc_text)
reading = st.tuples(timestamps, values_strategy)
message = st.tuples(device_ids, st.booleans(), st.lists(reading, min_size=1, max_size=4))


@settings(max_examples=300)
@given(st.lists(message, min_size=1, max_size=8), st.booleans())
def test_valid_messages_round_trip_exactly(messages, keyed):
    recs, expected = [], []
    for i, (device_id, batch_form, readings) in enumerate(messages):
        if batch_form:
            value = encode_readings(device_id, [(ts, v) for (ts, _), v in readings])
        else:
            readings = readings[:1]
            (ts, _), v = readings[0]
            value = encode_reading(device_id, ts, v)
        recs.append(RawRecord("t", 1, 10 + i, device_id.encode() if keyed else None, value))
        for (_, ts_seconds), v in readings:
            names = tuple(sorted(v)) if isinstance(v, dict) else None
            ordered = [v[k] for k in names] if names else list(v)
            expected.append((device_id, ts_seconds, names, ordered, 10 + i))
    out = ReadingDecoder().decode(recs)
    assert out.dead_letters == []
    b = out.batch
    assert len(b) == len(expected)
    for i, (device_id, ts, names, ordered, offset) in enumerate(expected):
        assert b.device_ids[i] == device_id
        assert b.ts[i] == pytest.approx(ts, abs=1e-6)
        assert b.channels[i] == names
        assert b.n_channels[i] == len(ordered)
        assert b.values[i, : len(ordered)].tolist() == np.asarray(ordered, dtype=np.float32).tolist()
        assert np.isnan(b.values[i, len(ordered):]).all()
        assert (b.partitions[i], b.offsets[i]) == (1, offset)


def test_dict_values_are_ordered_by_channel_name_and_lists_are_positional():
    out = decode(
        b'{"device_id":"d1","ts":1,"values":{"rpm":900,"a":1.5,"temp":20}}',
        b'{"device_id":"d1","ts":2,"values":[3,2,1]}',
    )
    assert out.batch.channels == [("a", "rpm", "temp"), None]
    assert out.batch.values.tolist() == [[1.5, 900.0, 20.0], [3.0, 2.0, 1.0]]


def test_batch_form_rows_share_the_message_offset_and_mixed_widths_are_nan_padded():
    out = decode(
        encode_readings("d1", [(1, [1.0]), (2, [1.0, 2.0, 3.0])]),
        encode_reading("d1", "2024-05-01T12:00:00.5+02:00", [7.0, 8.0]),
    )
    b = out.batch
    assert b.offsets.tolist() == [100, 100, 101] and b.partitions.tolist() == [2, 2, 2]
    assert b.n_channels.tolist() == [1, 3, 2]
    assert np.isnan(b.values[0, 1:]).all() and np.isnan(b.values[2, 2])
    assert b.ts[2] == datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC).timestamp()


def test_nine_fractional_digits_are_truncated_to_microseconds():
    out = decode(encode_reading("d1", "2024-05-01T12:00:00.123456789Z", [1]))
    assert out.batch.ts[0] == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC).timestamp()


# --- each malformed class gets its reason --------------------------------------------------------------

GOOD = {"device_id": "d1", "ts": 1.7e9, "values": [1.0, 2.0]}


def _with(**changes: object) -> bytes:
    body = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not _DROP})


_DROP = object()

MALFORMED: list[tuple[str, bytes | None, DeadLetterReason]] = [
    ("tombstone", None, R.NOT_JSON),
    ("not json", b"{device_id: d1", R.NOT_JSON),
    ("invalid utf-8", b'{"device_id":"\xff"}', R.NOT_JSON),
    ("NaN literal", b'{"device_id":"d1","ts":1,"values":[NaN]}', R.NOT_JSON),
    ("1e400", b'{"device_id":"d1","ts":1,"values":[1e400]}', R.NOT_JSON),
    ("array", b"[1,2]", R.NOT_OBJECT),
    ("string", b'"d1"', R.NOT_OBJECT),
    ("batch entry not object", _with(values=_DROP, readings=[1]), R.NOT_OBJECT),
    ("no device_id", _with(device_id=_DROP), R.MISSING_FIELD),
    ("empty device_id", _with(device_id=""), R.MISSING_FIELD),
    ("no ts", _with(ts=_DROP), R.MISSING_FIELD),
    ("no values", _with(values=_DROP), R.MISSING_FIELD),
    ("null values", _with(values=None), R.MISSING_FIELD),
    ("batch entry without ts", _with(values=_DROP, readings=[{"values": [1]}]), R.MISSING_FIELD),
    ("device_id number", _with(device_id=7), R.WRONG_TYPE),
    ("values string", _with(values="1,2"), R.WRONG_TYPE),
    ("value bool", _with(values=[1, True]), R.WRONG_TYPE),
    ("value string", _with(values={"a": "12"}), R.WRONG_TYPE),
    ("value null", _with(values=[None]), R.WRONG_TYPE),
    ("value nested", _with(values=[[1]]), R.WRONG_TYPE),
    ("readings not a list", _with(values=_DROP, readings={"ts": 1}), R.WRONG_TYPE),
    ("both forms", _with(readings=[{"ts": 1, "values": [1]}]), R.WRONG_TYPE),
    ("ts garbage", _with(ts="yesterday"), R.BAD_TIMESTAMP),
    ("ts without offset", _with(ts="2024-05-01T12:00:00"), R.BAD_TIMESTAMP),
    ("ts date only", _with(ts="2024-05-01"), R.BAD_TIMESTAMP),
    ("ts month 13", _with(ts="2024-13-01T12:00:00Z"), R.BAD_TIMESTAMP),
    ("ts leap second", _with(ts="2024-06-30T23:59:60Z"), R.BAD_TIMESTAMP),
    ("ts milliseconds", _with(ts=1_714_564_800_000), R.BAD_TIMESTAMP),
    ("ts negative", _with(ts=-1), R.BAD_TIMESTAMP),
    ("ts bool", _with(ts=True), R.BAD_TIMESTAMP),
    ("ts null", _with(ts=None), R.BAD_TIMESTAMP),
    ("value 'NaN'", _with(values=[1, "NaN"]), R.NON_FINITE),
    ("value '-Infinity'", _with(values={"a": "-Infinity"}), R.NON_FINITE),
    ("value beyond float32", _with(values=[1e39]), R.NON_FINITE),
    ("empty list", _with(values=[]), R.EMPTY_VALUES),
    ("empty dict", _with(values={}), R.EMPTY_VALUES),
    ("empty readings", _with(values=_DROP, readings=[]), R.EMPTY_VALUES),
    ("too many channels", _with(values=list(range(9))), R.TOO_MANY_CHANNELS),
    ("too many readings", _with(values=_DROP, readings=[{"ts": 1, "values": [1]}] * 6), R.TOO_MANY_READINGS),
    ("oversized", _with(values=[0.123456789] * 8, pad="x" * 400), R.OVERSIZED),
]


@pytest.mark.parametrize(("name", "value", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_malformed_class_gets_its_reason(name, value, reason):
    good = orjson.dumps(GOOD)
    out = decode(good, value, good, max_message_bytes=300, max_channels=8, max_readings_per_message=5)
    assert reasons(out) == [reason.value], out.dead_letters
    assert out.dead_letters[0].record.offset == 101
    assert out.dead_letters[0].detail
    assert out.batch.offsets.tolist() == [100, 102]


def test_key_must_match_device_id_when_present_and_keyless_records_are_accepted():
    body = orjson.dumps(GOOD)
    out = decode(body, body, body, keys=[b"d1", b"other", None])
    assert reasons(out) == ["key_mismatch"]
    assert out.batch.offsets.tolist() == [100, 102]


def test_one_bad_reading_dead_letters_the_whole_batch_message_and_names_it():
    bad_late = encode_readings("d1", [(1, [1.0]), (2, [2.0]), (3, ["NaN"])])
    bad_early = encode_readings("d1", [(1, [1.0]), ("soon", [2.0])])
    bad_shape = orjson.dumps({"device_id": "d1", "readings": [{"ts": 1, "values": [1]}, {"ts": 2}]})
    out = decode(bad_late, orjson.dumps(GOOD), bad_early, bad_shape)
    assert reasons(out) == ["non_finite", "bad_timestamp", "missing_field"]
    assert [d.detail.split(":")[0] for d in out.dead_letters[:2]] == ["readings[2]", "readings[1]"]
    assert "readings[1]" in out.dead_letters[2].detail
    assert len(out.batch) == 1 and out.batch.offsets.tolist() == [101]


def test_fixed_channel_model_rejects_other_channel_counts():
    out = decode(encode_reading("d1", 1, [1, 2, 3]), encode_reading("d1", 2, [1, 2]), expected_channels=3)
    assert reasons(out) == ["channel_count"]
    assert len(out.batch) == 1


def test_a_decoder_bug_is_dead_lettered_not_raised(monkeypatch):
    dec = ReadingDecoder()
    monkeypatch.setattr(dec, "_channels", lambda *a: 1 / 0)
    out = dec.decode([RawRecord("t", 0, 5, b"d1", orjson.dumps(GOOD))])
    assert reasons(out) == ["decoder_error"] and "ZeroDivisionError" in out.dead_letters[0].detail


def test_empty_poll_gives_an_empty_batch():
    out = ReadingDecoder().decode([])
    assert len(out.batch) == 0 and out.dead_letters == [] and out.messages == 0
    assert out.batch.values.shape == (0, 1)


def test_dead_letter_record_keeps_original_bytes_and_says_why():
    rec = RawRecord("sensor.readings", 4, 99, b"k", b"\x00junk", headers=(("trace", b"abc"),))
    key, value, headers = DeadLetter(R.NOT_JSON, "x" * 2000, rec).to_kafka()
    assert (key, value) == (b"k", b"\x00junk")
    meta = parse_headers(headers)
    assert meta == {
        "reason": "not_json",
        "detail": meta["detail"],
        "source.topic": "sensor.readings",
        "source.partition": "4",
        "source.offset": "99",
    }
    assert len(meta["detail"].encode()) <= 512 and meta["detail"].endswith("...")
    assert ("trace", b"abc") in headers


def test_reason_labels_are_a_closed_set_of_snake_case_names():
    labels = [r.label for r in DeadLetterReason]
    assert len(set(labels)) == len(labels)
    assert all(label.isidentifier() and label.islower() for label in labels)


# --- limits that protect the state: id and name lengths, timestamps from the future ------------------

def test_a_device_id_over_the_limit_is_dead_lettered_even_when_the_key_matches():
    long_id, fits = "é" * 129, "é" * 128  # 258 and 256 UTF-8 bytes
    out = decode(_with(device_id=long_id), _with(device_id=fits), keys=[long_id.encode(), fits.encode()])
    assert reasons(out) == ["device_id_too_long"] and "258 bytes > max 256" in out.dead_letters[0].detail
    assert out.batch.device_ids == [fits]
    assert reasons(decode(_with(device_id="x" * 70_000), keys=[None], max_device_id_bytes=65_535)) == [
        "device_id_too_long"]


def test_a_channel_name_over_the_limit_is_dead_lettered_and_never_cached():
    long_name = {"n" * 129: 1.0, "ok": 2.0}
    batch_form = orjson.dumps({"device_id": "d1", "readings": [{"ts": 1, "values": {"a": 1}},
                                                               {"ts": 2, "values": long_name}]})
    decoder = ReadingDecoder()
    out = decoder.decode([RawRecord("t", 0, i, b"d1", v) for i, v in enumerate(
        [_with(values=long_name), _with(values={"n" * 128: 1.0}), batch_form, _with(values=long_name)])])
    assert reasons(out) == ["channel_name_too_long", "channel_name_too_long", "channel_name_too_long"]
    assert "readings[1]." in out.dead_letters[1].detail
    assert all(len(max(keys, key=len)) <= 128 for keys in decoder._sorted)


def test_a_timestamp_too_far_ahead_of_the_clock_is_dead_lettered():
    now = 1_800_000_000.0
    decoder = ReadingDecoder(CodecLimits(max_future_s=300.0), clock=lambda: now)
    values = [_with(ts=now + 299), _with(ts=now + 301), _with(ts="2999-12-31T23:59:59Z"),
              encode_readings("d1", [(now, [1.0]), (now + 3600, [2.0])])]
    out = decoder.decode([RawRecord("t", 0, i, b"d1", v) for i, v in enumerate(values)])
    assert reasons(out) == ["future_timestamp"] * 3 and out.batch.offsets.tolist() == [0]
    assert "301 s ahead" in out.dead_letters[0].detail and "readings[1]" in out.dead_letters[2].detail
    replay = ReadingDecoder()  # no max_future_s: recorded data is replayed whatever its time
    assert len(replay.decode([RawRecord("t", 0, 0, b"d1", values[2])]).batch) == 1
