"""The feedback topic's reader: the partitions whose readings this member owns, nothing else.

The feedback topic has as many partitions as the readings topic and is keyed by device id, so a
device's feedback is in the partition of the same number as its readings. This reader is not a group
member: it is *assigned* (Kafka manual assignment) the feedback partitions of the readings
partitions the daemon has restored, follows every rebalance through that, and starts each at the
group's committed offset of that feedback partition (the earliest offset the first time: silences
still in force are re-applied, old verdicts find no episode). The daemon commits feedback offsets
with the readings offsets, at a state checkpoint, after the states they changed are written: a crash
re-reads at most what the last checkpoint did not cover, and every effect is idempotent (a silence
sets a time, a false positive is spent once applied).

Feedback is a few messages a minute: it is read with kafka-python whichever client reads the readings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamer.service.settings import Settings

log = logging.getLogger(__name__)


def make_feedback_consumer(settings: Settings) -> Any:
    """A kafka-python consumer for manual assignment, in the daemon's group (for committed offsets only)."""
    from kafka import KafkaConsumer

    from streamer.kafka.client_config import consumer_kwargs

    return KafkaConsumer(**consumer_kwargs(settings.kafka, group_id=settings.group_id,
                                           enable_auto_commit=False, auto_offset_reset="earliest",
                                           max_poll_records=500))


class FeedbackReader:
    """Polls the feedback partitions that follow the daemon's restored readings partitions."""

    def __init__(self, consumer_factory: Callable[[], Any], topic: str) -> None:
        self.topic = topic
        self._factory = consumer_factory
        self._consumer: Any = None
        self._parts: frozenset[int] = frozenset()

    @property
    def partitions(self) -> frozenset[int]:
        return self._parts

    def follow(self, partitions: Iterable[int]) -> None:
        """Read exactly these partitions from now on; new ones from their committed offsets."""
        from kafka import TopicPartition

        wanted = frozenset(partitions)
        if wanted == self._parts:
            return
        if self._consumer is None:
            self._consumer = self._factory()
        tps = [TopicPartition(self.topic, p) for p in sorted(wanted)]
        self._consumer.assign(tps)
        for tp in tps:
            if tp.partition in self._parts:
                continue  # kept: reading on from where it is
            committed = self._consumer.committed(tp)
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        log.info("feedback partitions %s followed", sorted(wanted), extra={"topic": self.topic})
        self._parts = wanted

    def reset(self) -> None:
        """Forget the assignment (after a broker error): the next `follow` assigns and seeks again."""
        self._parts = frozenset()

    def poll(self, max_records: int = 500) -> list[Any]:
        """The records fetched so far (does not wait), in partition then offset order."""
        if self._consumer is None or not self._parts:
            return []
        polled = self._consumer.poll(timeout_ms=0, max_records=max_records)
        return [rec for tp in sorted(polled, key=lambda tp: tp.partition) for rec in polled[tp]]

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
