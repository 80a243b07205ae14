"""The Kafka clients the daemon opens, built from `Settings` (factories, so tests can pass fakes)."""

from __future__ import annotations

from typing import Any

from streamer.kafka.client_config import consumer_kwargs, producer_kwargs, producer_throughput_kwargs
from streamer.service.settings import Settings


def make_consumer(settings: Settings, **overrides: Any) -> Any:
    """A group member on the readings topic: explicit commits, big polls, 6 s session by default.

    Fetch sizes are raised from kafka-python's 1 MiB per partition so that one poll can fill a
    `max_poll_records` batch of small JSON readings from a single partition. `overrides` (kafka-python
    consumer kwargs) win; the benchmark uses them to measure what each setting is worth.
    """
    from kafka import KafkaConsumer

    session = settings.session_timeout_ms
    kwargs = consumer_kwargs(
        settings.kafka,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session,
        heartbeat_interval_ms=max(session // 3, 100),
        max_poll_records=settings.max_poll_records,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    return KafkaConsumer(**{**kwargs, **overrides})


def make_producer(settings: Settings) -> Any:
    """The output producer: acks=all, idempotent (kafka-python's default), big batches.

    `delivery_timeout_ms` stays within `publish_timeout_s`, so a record the broker never takes fails
    its future before the daemon's confirmation deadline instead of lingering. `max_request_size`
    leaves room for a dead letter of a message just over `max_message_bytes` plus its headers (a
    bigger one is truncated by the publisher).
    """
    from kafka import KafkaProducer

    timeout_ms = int(settings.publish_timeout_s * 1000)
    request_ms = max(timeout_ms // 3, 1000)
    return KafkaProducer(**producer_kwargs(
        settings.kafka,
        **producer_throughput_kwargs(),
        acks="all",
        request_timeout_ms=request_ms,
        delivery_timeout_ms=max(timeout_ms, request_ms + 100),
        max_block_ms=timeout_ms,
        bootstrap_timeout_ms=min(timeout_ms, 10_000),  # a rebuild while the broker is away fails fast
        max_request_size=max(2 * settings.max_message_bytes, 1024 * 1024),
    ))
