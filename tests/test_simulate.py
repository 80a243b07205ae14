"""The synthetic fleet: determinism, ground truth that matches the injected faults, the message format."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer.ingest.codec import ReadingDecoder
from streamer.ingest.dead_letter import RawRecord
from streamer.tools import simulate
from streamer.tools.simulate import FAULT_KINDS, Fleet, generate_fleet, load_truth, produce, reading_messages


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return generate_fleet(seed=3)  # the default fleet: 200 devices, 4 channels, a day at 60 s


def _index(fleet: Fleet, ts: float) -> int:
    return int(np.searchsorted(fleet.ts, ts))


def test_same_seed_same_fleet_other_seed_other_fleet(fleet: Fleet) -> None:
    again = generate_fleet(seed=3)
    np.testing.assert_array_equal(again.values, fleet.values)
    assert again.faults == fleet.faults
    assert not np.array_equal(generate_fleet(seed=4).values, fleet.values)


def test_shapes_and_timestamps(fleet: Fleet) -> None:
    assert fleet.values.shape == (200, 1440, 4) and fleet.values.dtype == np.float32
    assert fleet.channels == ("c0", "c1", "c2", "c3")
    np.testing.assert_array_equal(np.diff(fleet.ts), 60.0)
    assert np.isfinite(fleet.values).all()


def test_every_fault_kind_is_present(fleet: Fleet) -> None:
    assert {f.kind for f in fleet.faults} == set(FAULT_KINDS)


def test_faults_lie_within_the_series_and_match_the_labels(fleet: Fleet) -> None:
    labelled = np.zeros_like(fleet.labels)
    for fault in fleet.faults:
        assert fleet.ts[0] < fault.start_ts <= fault.end_ts <= fleet.ts[-1]
        assert fault.kind in FAULT_KINDS and fault.channels and set(fault.channels) <= set(fleet.channels)
        d = fleet.device_ids.index(fault.device_id)
        labelled[d, _index(fleet, fault.start_ts):_index(fleet, fault.end_ts) + 1] = True
    np.testing.assert_array_equal(labelled, fleet.labels)


def test_fault_free_devices_have_no_records_and_no_labels(fleet: Fleet) -> None:
    faulty = {f.device_id for f in fleet.faults}
    assert len(faulty) == round(0.3 * 200)
    assert set(fleet.fault_free_devices) == set(fleet.device_ids) - faulty
    free_rows = [fleet.device_ids.index(d) for d in fleet.fault_free_devices]
    assert not fleet.labels[free_rows].any()
    assert generate_fleet(seed=3, fault_fraction=0.0).faults == ()


def test_faults_change_only_their_window(fleet: Fleet) -> None:
    clean = generate_fleet(seed=3, fault_fraction=0.0)
    untouched = ~fleet.labels[:, :, None]  # (d, t, 1)
    np.testing.assert_array_equal(np.where(untouched, fleet.values, 0), np.where(untouched, clean.values, 0))
    for fault in fleet.faults:
        d = fleet.device_ids.index(fault.device_id)
        a, b = _index(fleet, fault.start_ts), _index(fleet, fault.end_ts) + 1
        cols = [fleet.channels.index(c) for c in fault.channels]
        changed = fleet.values[d, a:b][:, cols] != clean.values[d, a:b][:, cols]
        if fault.kind == "stuck":
            assert (np.ptp(fleet.values[d, a:b][:, cols], axis=0) == 0).all()
            assert changed[1:].any() or b - a == 1
        else:
            assert changed.all(), fault


def test_seasonality_and_cross_channel_correlation() -> None:
    fleet = generate_fleet(n_devices=50, n_steps=3 * 1440, seed=5, fault_fraction=0.0)
    day = 1440
    x = fleet.values[:, :, 0].astype(np.float64)
    lagged = [np.corrcoef(row[:-day], row[day:])[0, 1] for row in x]
    assert np.median(lagged) > 0.8  # a daily cycle dominates the series
    # Residual noise (after removing the seasonal + trend part shared by day-lagged samples) correlates.
    diff = (fleet.values[:, day:, :] - fleet.values[:, :-day, :]).astype(np.float64)
    corr = [np.corrcoef(dev[:, 0], dev[:, 1])[0, 1] for dev in diff]
    assert np.median(corr) > 0.2


def test_messages_use_the_reading_format_and_decode() -> None:
    small = generate_fleet(n_devices=3, n_steps=20, seed=1)
    single = list(reading_messages(small))
    assert len(single) == 3 * 20 and all(n == 1 for _, _, n in single)
    key, value, _ = single[4]  # step 1 of device 1: event-time order across the fleet
    body = orjson.loads(value)
    assert key == b"dev-0001" and body["device_id"] == "dev-0001" and body["ts"] == small.ts[1]
    assert list(body["values"]) == ["c0", "c1", "c2", "c3"]
    assert body["values"]["c2"] == pytest.approx(float(small.values[1, 1, 2]), abs=1e-4)
    batched = list(reading_messages(small, batch_readings=8))
    assert [n for _, _, n in batched[:3]] == [8, 8, 8] and sum(n for _, _, n in batched) == 60
    for form in (single, batched):
        raws = [RawRecord("sensor.readings", 0, i, k, v) for i, (k, v, _) in enumerate(form)]
        decoded = ReadingDecoder().decode(raws)
        assert not decoded.dead_letters and len(decoded.batch) == 60


def test_truth_round_trips_through_json(tmp_path: Path, fleet: Fleet) -> None:
    path = tmp_path / "truth.json"
    path.write_bytes(orjson.dumps(simulate.truth_document(fleet, seed=3)))
    assert tuple(load_truth(path)) == fleet.faults


class _FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    def send(self, topic: str, key: bytes, value: bytes) -> _FakeProducer:
        self.sent.append((topic, key, value))
        return self

    def add_errback(self, callback: object) -> None:
        if self.fail:
            callback(RuntimeError("broker said no"))  # type: ignore[operator]

    def flush(self) -> None:
        pass


def test_produce_paces_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    messages = [(b"k", b"v", 10)] * 5
    stats = produce(_FakeProducer(), "t", iter(messages), rate=100.0, clock=lambda: now[0], sleep=sleep)
    assert stats.readings == 50 and stats.messages == 5
    assert slept == pytest.approx([0.1, 0.1, 0.1, 0.1])  # 10 readings per message at 100 readings/s


def test_produce_raises_when_records_fail() -> None:
    from streamer.errors import BrokerError

    with pytest.raises(BrokerError, match="3 of 3 records to t failed"):
        produce(_FakeProducer(fail=True), "t", iter([(b"k", b"v", 1)] * 3))


def test_generate_fleet_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        generate_fleet(n_steps=5)
    with pytest.raises(ValueError, match="fault_fraction"):
        generate_fleet(fault_fraction=1.5)


@pytest.mark.kafka
def test_simulate_command_streams_the_fleet(kafka_bootstrap: str, unique_topic_name, tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    from streamer.kafka.admin import partition_count

    topic, truth = unique_topic_name("readings"), tmp_path / "truth.json"
    parser = argparse.ArgumentParser()
    simulate.register(parser.add_subparsers())
    args = parser.parse_args([
        "simulate", "--bootstrap", kafka_bootstrap, "--topic", topic, "--partitions", "3", "--devices", "10",
        "--steps", "30", "--seed", "2", "--truth", str(truth), "--batch-form", "--batch-readings", "10",
    ])
    assert args.func(args) == 0
    assert partition_count(kafka_bootstrap, topic) == 3
    assert load_truth(truth) == list(generate_fleet(n_devices=10, n_steps=30, seed=2).faults)
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    bodies: list[dict] = []
    deadline = time.monotonic() + 15
    while len(bodies) < 30 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            bodies.extend(orjson.loads(record.value) for record in records)
    consumer.close()
    assert len(bodies) == 10 * 3 and sum(len(b["readings"]) for b in bodies) == 300
