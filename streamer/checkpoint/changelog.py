"""The state changelog topic: write a partition's device states and tombstones, read a partition back.

Partition p of the changelog holds the states of the devices read from partition p of the readings
topic (so the changelog has at least as many partitions), key = device id, value = `state_codec`
bytes, or None (a tombstone) for a device that was evicted. The topic is created `cleanup.policy=
compact`; nothing here relies on compaction having run (the embedded broker never runs it): a reader
keeps, per device, the record that covers the most readings (see `restore`).

Writes are acknowledged before they count: `ChangelogWriter.write` sends in chunks, waits for every
acknowledgement, and on a failure closes the producer, builds a new one from the factory and sends the
failed records again (an idempotent kafka-python producer never recovers from a broker that lost its
producer ids). If that still fails it raises `CheckpointError`; the caller keeps the devices dirty and
does not commit, so nothing is lost, only retried at the next checkpoint. A record the producer or the
broker refuses *for what it is* (too large, invalid: `REFUSED_RECORD_ERRORS`) is not retried: it is
handed to the caller's `reject` callback, so that one unwritable state cannot stop every other
device's checkpoint (`streamer.checkpoint.quarantine`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from streamer.errors import BrokerError
from streamer.kafka.admin import TopicSpec, admin_client, ensure_topics, partition_count, probe_metadata
from streamer.kafka.client_config import (
    KafkaClientSettings,
    consumer_kwargs,
    producer_kwargs,
    producer_throughput_kwargs,
)

log = logging.getLogger(__name__)

Record = tuple[int, str, bytes | None]  # (partition, device id, value or None for a tombstone)
Reject = Callable[[Record, str], None]  # a record refused for what it is, and why
COMPACT = {"cleanup.policy": "compact"}
# kafka-python errors (kafka.errors) that say "this record will never be accepted", whoever sends it
REFUSED_RECORD_ERRORS = ("MessageSizeTooLargeError", "RecordListTooLargeError", "InvalidRecordError",
                         "CorruptRecordError")


class CheckpointError(BrokerError):
    """State records were not acknowledged; offsets stay uncommitted and the states dirty."""


def ensure_state_topic(kafka: KafkaClientSettings, state_topic: str, readings_topic: str,
                       *, create: bool = True) -> int:
    """Make sure the changelog has (at least) the readings topic's partition count; return that count."""
    wanted = partition_count(kafka, readings_topic)
    if create:
        have = ensure_topics(kafka, [TopicSpec(state_topic, wanted, COMPACT)])[state_topic]
    else:
        have = partition_count(kafka, state_topic)
    if have < wanted:
        raise BrokerError(f"state topic {state_topic} has {have} partitions but {readings_topic} has "
                          f"{wanted}; add partitions to it or point RNNWATCH_STATE_TOPIC at a new topic")
    return wanted


class ChangelogWriter:
    """Sends state records through one producer (from `producer_factory`) and confirms them."""

    def __init__(self, producer_factory: Callable[[], Any], topic: str, *, chunk: int = 20_000,
                 max_attempts: int = 3, on_recreate: Callable[[], None] = lambda: None,
                 reachable: Callable[[], bool] = lambda: True,
                 on_chunk: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = producer_factory
        self._on_chunk = on_chunk  # called after each acknowledged chunk (the daemon's heartbeat)
        self._reachable = reachable
        self._producer: Any = None
        self.topic = topic
        self.chunk = chunk
        self.max_attempts = max_attempts
        self._on_recreate = on_recreate
        self._clock = clock
        self.recreated = 0
        self.bytes_written = 0
        self.records_written = 0

    def write(self, records: Iterable[Record], timeout_s: float = 20.0, reject: Reject | None = None,
              *, beat: bool = True) -> int:
        """Send every record and wait until all are acknowledged; `CheckpointError` otherwise.

        `timeout_s` bounds each chunk of `chunk` records (so a big checkpoint gets more time). With
        `reject`, records refused for what they are go to it instead of failing the write.
        `beat=False`: no heartbeat per chunk (a background write: the loop beats on its own, and the
        heartbeat is not for other threads to call).
        """
        total = 0
        for chunk in _chunks(records, self.chunk):
            self._write_chunk(chunk, self._clock() + timeout_s, reject)
            total += len(chunk)
            if beat:
                self._on_chunk()
        return total

    def _write_chunk(self, chunk: list[Record], deadline: float, reject: Reject | None = None) -> None:
        pending = chunk
        for attempt in range(1, self.max_attempts + 1):
            self._ensure_producer()
            futures = [self._send(record) for record in pending]
            self._flush(deadline)
            failed = [(record, f) for record, f in zip(pending, futures, strict=True) if not _acked(f)]
            if reject is not None and failed:
                failed = _hand_over_refused(failed, reject)
            if not failed:
                self.records_written += len(pending)  # refused ones included: they are done with
                self.bytes_written += sum(len(r[1]) + len(r[2] or b"") for r in pending)
                return
            cause = _cause(failed[0][1])
            if attempt == self.max_attempts or self._clock() >= deadline:
                raise CheckpointError(f"{len(failed)} state records to {self.topic} not acknowledged "
                                      f"({cause}); the devices stay dirty and will be written again")
            log.warning("%d state records not acknowledged (%s); recreating the producer (attempt %d/%d)",
                        len(failed), cause, attempt + 1, self.max_attempts)
            self._recreate()
            pending = [record for record, _ in failed]

    def _ensure_producer(self) -> None:
        """A producer, built only when the broker answers (building one blocks while it does not)."""
        if self._producer is not None:
            return
        if not self._reachable():
            raise CheckpointError(f"broker unreachable: state records to {self.topic} not written; the "
                                  "devices stay dirty and will be written again")
        try:
            self._producer = self._factory()
        except Exception as exc:  # kafka-python raises its own timeouts and connection errors
            raise CheckpointError(f"cannot create the state producer: {type(exc).__name__}: {exc}") from exc

    def _send(self, record: Record) -> Any:
        partition, key, value = record
        try:
            return self._producer.send(self.topic, key=key.encode(), value=value, partition=partition)
        except Exception as exc:  # send() raises for a closed or broken producer: resend it later
            return _Failed(exc)

    def _flush(self, deadline: float) -> None:
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=max(deadline - self._clock(), 0.001))
        except Exception as exc:  # a timeout: the futures say which records are missing
            log.debug("state producer flush: %s", exc)

    def _recreate(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            try:
                old.close(timeout=0)
            except Exception as exc:  # a broken producer may fail to close; the new one is what matters
                log.debug("closing the old state producer: %s", exc)
        self.recreated += 1
        self._on_recreate()

    def close(self, timeout_s: float = 5.0) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout_s)
            except Exception as exc:
                log.warning("closing the state producer: %s", exc)
            self._producer = None


class _Failed:
    """Stands in for the future of a send() that raised."""

    is_done = True

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc


def _hand_over_refused(failed: list[tuple[Record, Any]], reject: Reject) -> list[tuple[Record, Any]]:
    """Give the records refused for what they are to `reject`; return the others (worth a retry)."""
    from kafka import errors

    refused = tuple(getattr(errors, name) for name in REFUSED_RECORD_ERRORS)
    retry = []
    for record, future in failed:
        exc = future.exception if future.is_done else None
        if isinstance(exc, refused):
            reject(record, f"{type(exc).__name__}: {exc}")
        else:
            retry.append((record, future))
    return retry


def _acked(future: Any) -> bool:
    return bool(future.is_done) and future.exception is None


def _cause(future: Any) -> str:
    if not future.is_done:
        return "no acknowledgement before the deadline"
    return f"{type(future.exception).__name__}: {future.exception}"


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def topic_log_id(kafka: KafkaClientSettings, topic: str) -> Callable[[], bytes]:
    """The topic's Kafka topic id (16 bytes; zeros when the broker has none): changes when it is recreated."""

    def identify() -> bytes:
        import uuid

        with admin_client(kafka, timeout_s=5.0) as admin:
            try:
                described = admin.describe_topics([topic])
            except Exception as exc:  # kafka-python errors: the broker is not answering well
                raise BrokerError(f"cannot describe topic {topic}: {exc}") from exc
        raw = described[0].get("topic_id") if described else None
        try:
            return uuid.UUID(str(raw)).bytes if raw else bytes(16)
        except ValueError:
            return bytes(16)

    return identify


def broker_reachable(kafka: KafkaClientSettings, timeout_s: float = 2.0) -> Callable[[], bool]:
    """A quick check to run before building a client: kafka-python blocks up to 30 s bootstrapping one."""

    def check() -> bool:
        try:
            probe_metadata(kafka, timeout_s=timeout_s)
            return True
        except BrokerError:
            return False

    return check


def _caught_up(consumer: Any, tp: Any, listed_end: int) -> bool:
    """Read to the end: past the listed end offset *and* the high watermark of the latest fetch.

    Both, because the embedded broker's ListOffsets answers the last batch's base offset + 1 rather
    than the log end when the last batch holds several records; fetch responses carry the true one.
    """
    position = consumer.position(tp)
    highwater = consumer.highwater(tp)
    return position >= listed_end and highwater is not None and position >= highwater


def state_producer_factory(kafka: KafkaClientSettings, client: str = "auto") -> Callable[[], Any]:
    """Producers for a bulk state write outside the daemon (benchmarks, tools): acks=all, big batches,
    librdkafka when `client` resolves to it (`streamer.kafka.client_choice`). The daemon's own state
    writer shares its output producer's settings (`streamer.service.clients.make_producer`)."""
    from streamer.kafka.client_choice import resolve_client

    if resolve_client(client) == "confluent":
        from streamer.kafka.client_config import librdkafka_config
        from streamer.kafka.confluent_producer import ConfluentProducer

        config = librdkafka_config(kafka, **{"acks": "all", "linger.ms": 20, "batch.size": 4 * 1024 * 1024,
                                             "queue.buffering.max.messages": 500_000})
        return lambda: ConfluentProducer(config, max_block_s=60.0)

    def make() -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(**producer_kwargs(kafka, **producer_throughput_kwargs(), acks="all"))

    return make


def restore_consumer_factory(kafka: KafkaClientSettings) -> Callable[[], Any]:
    """A group-less consumer for `ChangelogReader`: manual assignment, big fetches, no commits."""

    def make() -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(**consumer_kwargs(
            kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=50_000, max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        ))

    return make


def partitions_to_read(partitions: Iterable[int], reachable: Callable[[], bool], topic: str) -> list[int]:
    """The distinct partitions in order; a `BrokerError` when there are some and the broker is unreachable
    (the caller retries later)."""
    parts = sorted(set(partitions))
    if parts and not reachable():
        raise BrokerError(f"broker unreachable: cannot read the state topic {topic}")
    return parts


class StateTopicReader(Protocol):
    """Reads changelog partitions from their beginning to their end: `ChangelogReader` (kafka-python)
    and `confluent_reader.ConfluentChangelogReader` (librdkafka)."""

    @property
    def topic(self) -> str: ...

    def read(self, partitions: Iterable[int], on_records: Callable[[list[Any]], None], *,
             on_progress: Callable[[int, int], None] = ..., stall_timeout_s: float = ...,
             poll_ms: int = ...) -> int: ...


class ChangelogReader:
    """Reads changelog partitions from their beginning to their end (as of the start of the read)."""

    def __init__(self, consumer_factory: Callable[[], Any], topic: str,
                 reachable: Callable[[], bool] = lambda: True) -> None:
        self._factory = consumer_factory
        self._reachable = reachable
        self.topic = topic

    def read(self, partitions: Iterable[int], on_records: Callable[[list[Any]], None], *,
             on_progress: Callable[[int, int], None] = lambda done, total: None,
             stall_timeout_s: float = 30.0, poll_ms: int = 200) -> int:
        """Feed every record of `partitions` (each partition in offset order) to `on_records` in chunks.

        Reads to the end as of the read; records written meanwhile may be included. `on_progress(done,
        total)` counts records (total from the listed end offsets, so an estimate). Raises `BrokerError`
        when no record arrives for `stall_timeout_s` while some are still missing (broker gone); the
        caller retries later.
        """
        from kafka import TopicPartition

        parts = partitions_to_read(partitions, self._reachable, self.topic)
        tps = [TopicPartition(self.topic, p) for p in parts]
        if not tps:
            return 0
        consumer = self._factory()
        try:
            consumer.assign(tps)
            start = consumer.beginning_offsets(tps)
            end = consumer.end_offsets(tps)
            left = {tp for tp in tps if end[tp] > start[tp]}
            total = sum(end[tp] - start[tp] for tp in left)
            done = 0
            on_progress(done, total)
            if left:
                consumer.seek_to_beginning(*left)
            last_progress = time.monotonic()
            while left:
                polled = consumer.poll(timeout_ms=poll_ms)
                for batch in polled.values():
                    if batch:
                        on_records(batch)
                        done += len(batch)
                        last_progress = time.monotonic()
                left = {tp for tp in left if not _caught_up(consumer, tp, end[tp])}
                on_progress(min(done, total), total)
                if left and time.monotonic() - last_progress > stall_timeout_s:
                    raise BrokerError(f"state topic {self.topic}: no records for {stall_timeout_s:g} s with "
                                      f"partitions {sorted(tp.partition for tp in left)} still behind; "
                                      "check KAFKA_BOOTSTRAP_SERVERS")
            return done
        finally:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.debug("closing the restore consumer: %s", exc)
