"""The Kafka clients the daemon opens, built from `Settings` (factories, so tests can pass fakes).

`settings.kafka_client` picks the library (`streamer.kafka.client_choice`): kafka-python's
`KafkaConsumer` / `KafkaProducer`, or librdkafka's through `ConfluentGroupConsumer` /
`ConfluentProducer`. Either way the daemon gets the same contracts (`streamer.contracts`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamer.kafka.client_choice import resolve_client
from streamer.kafka.client_config import (
    consumer_kwargs,
    librdkafka_config,
    producer_kwargs,
    producer_throughput_kwargs,
)
from streamer.kafka.confluent_producer import log_client_error
from streamer.kafka.consumer import GroupConsumer, PartitionsHook
from streamer.service.settings import Settings

if TYPE_CHECKING:
    from streamer.contracts import ReadingsConsumer

FETCH_PARTITION_BYTES = 16 * 1024 * 1024  # a poll can fill a batch of small JSON readings from one partition
FETCH_BYTES = 64 * 1024 * 1024


def make_consumer(settings: Settings, **overrides: Any) -> Any:
    """The raw group-member client on the readings topic: explicit commits, big fetches, 6 s session.

    Fetch sizes are raised from the clients' 1 MiB per partition so that one poll can fill a
    `max_poll_records` batch of small JSON readings from a single partition. `overrides` (kafka-python
    kwargs or librdkafka properties, by client) win; the benchmark uses them to measure what each
    setting is worth.
    """
    session = settings.session_timeout_ms
    if resolve_client(settings.kafka_client) == "confluent":
        from confluent_kafka import Consumer

        return Consumer(librdkafka_config(
            settings.kafka, **{
                "group.id": settings.group_id, "enable.auto.commit": False,
                "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": session, "heartbeat.interval.ms": max(session // 3, 100),
                "partition.assignment.strategy": "range",
                "max.partition.fetch.bytes": FETCH_PARTITION_BYTES, "fetch.max.bytes": FETCH_BYTES,
                "fetch.wait.max.ms": settings.fetch_max_wait_ms, "logger": _librdkafka_logger(),
                "error_cb": log_client_error,
                **overrides}))
    from kafka import KafkaConsumer

    kwargs = consumer_kwargs(
        settings.kafka,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session,
        heartbeat_interval_ms=max(session // 3, 100),
        max_poll_records=settings.max_poll_records,
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        fetch_max_bytes=FETCH_BYTES,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    return KafkaConsumer(**{**kwargs, **overrides})


def open_group_consumer(settings: Settings, factory: Callable[[], Any], *,
                        on_assigned: PartitionsHook | None = None,
                        on_revoked: PartitionsHook | None = None) -> ReadingsConsumer:
    """The readings consumer around `factory()`'s client (a `make_consumer` of the same settings)."""
    if resolve_client(settings.kafka_client) == "confluent":
        from streamer.kafka.confluent_consumer import ConfluentGroupConsumer

        return ConfluentGroupConsumer(factory, settings.readings_topic, on_assigned=on_assigned,
                                      on_revoked=on_revoked)
    return GroupConsumer(factory, settings.readings_topic, on_assigned=on_assigned, on_revoked=on_revoked)


def make_producer(settings: Settings) -> Any:
    """The output producer: acks=all, idempotent, big batches (an `OutputProducer`).

    The delivery timeout stays within `publish_timeout_s`, so a record the broker never takes fails
    its future before the daemon's confirmation deadline instead of lingering. The request size
    leaves room for a dead letter of a message just over `max_message_bytes` plus its headers (a
    bigger one is truncated by the publisher).
    """
    timeout_ms = int(settings.publish_timeout_s * 1000)
    request_ms = max(timeout_ms // 3, 1000)
    max_request = max(2 * settings.max_message_bytes, 1024 * 1024)
    if resolve_client(settings.kafka_client) == "confluent":
        from streamer.kafka.confluent_producer import ConfluentProducer

        # A librdkafka producer whose broker restarted may never deliver again (tansu: its idempotent
        # state is gone), so records time out within a third of the deadline: the publisher then has
        # the time to build a new producer and send them again.
        message_ms = max(timeout_ms // 3, 2000)
        return ConfluentProducer(librdkafka_config(
            settings.kafka, **{
                "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                "request.timeout.ms": max(message_ms // 2, 1000), "message.timeout.ms": message_ms,
                "message.max.bytes": max_request, "logger": _librdkafka_logger(),
                "error_cb": log_client_error}),
            max_block_s=settings.publish_timeout_s)
    from kafka import KafkaProducer

    return KafkaProducer(**producer_kwargs(
        settings.kafka,
        **producer_throughput_kwargs(),
        acks="all",
        request_timeout_ms=request_ms,
        delivery_timeout_ms=max(timeout_ms, request_ms + 100),
        max_block_ms=timeout_ms,
        bootstrap_timeout_ms=min(timeout_ms, 10_000),  # a rebuild while the broker is away fails fast
        max_request_size=max_request,
    ))


def _librdkafka_logger() -> Any:
    """librdkafka's own log lines go to the `librdkafka` logger (JSON like every other line)."""
    import logging

    return logging.getLogger("librdkafka")
