"""The changelog read through librdkafka: `ChangelogReader`'s contract, several times its rate.

Restoring a million device states spends most of its time in kafka-python's consumer (about 13 s of
21-24 s here, reading records it then does nothing with). `ConfluentChangelogReader.read` feeds the
same `on_records` callback the same records (key, value, topic, partition, offset) in offset order per
partition, from each partition's low watermark to its high watermark as of the start of the read,
with librdkafka fetching in its own threads. `changelog_reader` picks it when the daemon runs on
librdkafka (`streamer.kafka.client_choice`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from streamer.checkpoint.changelog import ChangelogReader, partitions_to_read, restore_consumer_factory
from streamer.errors import BrokerError
from streamer.kafka.client_choice import resolve_client
from streamer.kafka.client_config import KafkaClientSettings, librdkafka_config

log = logging.getLogger(__name__)
BATCH = 10_000  # messages per consume() call


class StateMessage(NamedTuple):
    """A changelog record as the restore path reads it (the attributes of a kafka-python record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class ConfluentChangelogReader:
    """Reads changelog partitions from their beginning to their end (as of the start of the read)."""

    def __init__(self, kafka: KafkaClientSettings, topic: str, reachable: Callable[[], bool] = lambda: True
                 ) -> None:
        self._kafka = kafka
        self._reachable = reachable
        self.topic = topic

    def read(self, partitions: Iterable[int], on_records: Callable[[list[Any]], None], *,
             on_progress: Callable[[int, int], None] = lambda done, total: None,
             stall_timeout_s: float = 30.0, poll_ms: int = 200) -> int:
        """As `ChangelogReader.read`: every record of `partitions` to `on_records`, in chunks; a
        `BrokerError` when nothing arrives for `stall_timeout_s` while records are still missing."""
        from confluent_kafka import Consumer, TopicPartition

        parts = partitions_to_read(partitions, self._reachable, self.topic)
        if not parts:
            return 0
        consumer = Consumer(librdkafka_config(
            self._kafka, **{"group.id": "rnnwatch-restore", "enable.auto.commit": False,
                            "enable.partition.eof": False, "fetch.max.bytes": 64 * 1024 * 1024,
                            "max.partition.fetch.bytes": 16 * 1024 * 1024, "queued.min.messages": 200_000}))
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10.0)
                    for p in parts}
            left = {p: high for p, (low, high) in ends.items() if high > low}  # listed end offsets
            total = sum(high - low for low, high in ends.values())
            consumer.assign([TopicPartition(self.topic, p, ends[p][0]) for p in left])
            return self._drain(consumer, left, on_records, on_progress, total, stall_timeout_s, poll_ms)
        finally:
            consumer.close()

    def _drain(self, consumer: Any, left: dict[int, int], on_records: Callable[[list[Any]], None],
               on_progress: Callable[[int, int], None], total: int, stall_timeout_s: float,
               poll_ms: int) -> int:
        done, last_progress = 0, time.monotonic()
        on_progress(done, total)
        while left:
            records = [StateMessage(self.topic, m.partition(), m.offset(), m.key(), m.value())
                       for m in consumer.consume(BATCH, timeout=poll_ms / 1000) if not self._failed(m)]
            if records:
                on_records(records)
                done += len(records)
                last_progress = time.monotonic()
            for p in [p for p, end in left.items() if self._caught_up(consumer, p, end)]:
                del left[p]
            on_progress(min(done, total), total)
            if left and time.monotonic() - last_progress > stall_timeout_s:
                raise BrokerError(f"state topic {self.topic}: no records for {stall_timeout_s:g} s with "
                                  f"partitions {sorted(left)} still behind; check KAFKA_BOOTSTRAP_SERVERS")
        return done

    def _failed(self, message: Any) -> bool:
        if message.error() is None:
            return False
        log.warning("state topic %s: %s", self.topic, message.error())
        return True

    def _caught_up(self, consumer: Any, partition: int, listed_end: int) -> bool:
        """Past the listed end *and* the high watermark of the latest fetch (as `changelog._caught_up`:
        the embedded broker's ListOffsets under-reports the log end; fetch responses carry the true one)."""
        from confluent_kafka import TopicPartition

        tp = TopicPartition(self.topic, partition)
        position = consumer.position([tp])[0].offset
        _, fetched_high = consumer.get_watermark_offsets(tp, cached=True)
        return position >= listed_end and fetched_high >= 0 and position >= fetched_high


def changelog_reader(kafka: KafkaClientSettings, topic: str, client: str = "auto",
                     reachable: Callable[[], bool] = lambda: True
                     ) -> ChangelogReader | ConfluentChangelogReader:
    """The reader for the daemon's Kafka client choice (`auto | kafka-python | confluent`)."""
    if resolve_client(client) == "confluent":
        return ConfluentChangelogReader(kafka, topic, reachable)
    return ChangelogReader(restore_consumer_factory(kafka), topic, reachable)
