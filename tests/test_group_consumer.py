"""GroupConsumer.poll lives through a broker outage: retriable kafka-python errors become empty polls."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import IllegalStateError, KafkaConnectionError, NodeNotReadyError

from streamer.kafka import consumer as consumer_module
from streamer.kafka.consumer import GroupConsumer


class ScriptedConsumer:
    """Stands in for kafka.KafkaConsumer: each poll takes the next step, an exception or a result."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps: Iterator[Any] = iter(steps)

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.topics = topics

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        step = next(self.steps)
        if isinstance(step, BaseException):
            raise step
        return step


def _record(offset: int) -> ConsumerRecord:
    return ConsumerRecord("readings", 0, 0, offset, 0, 0, None, b"{}", [], None, 0, 2, 0)


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "OUTAGE_PAUSE_MS", 0)


def test_retriable_errors_become_empty_polls_and_fetching_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    tp = TopicPartition("readings", 0)
    fake = ScriptedConsumer([KafkaConnectionError("111 ECONNREFUSED"), NodeNotReadyError("node 111"),
                             {tp: [_record(7), _record(8)]}])
    group = GroupConsumer(lambda: fake, "readings")
    with caplog.at_level(logging.WARNING, logger="streamer.kafka.consumer"):
        first, second, third = (group.poll(100, 10) for _ in range(3))
    assert len(first) == len(second) == 0 and first.offsets == {}
    assert [r.offset for r in third.records] == [7, 8] and third.offsets == {tp: 9}
    assert group.outage_polls == 2
    outage = [r for r in caplog.records if "broker is not answering" in r.getMessage()]
    # logged once, not once per poll, with what to check
    assert len(outage) == 1 and "KAFKA_BOOTSTRAP_SERVERS" in outage[0].getMessage()


def test_errors_that_retrying_cannot_fix_still_raise() -> None:
    closed = ScriptedConsumer([IllegalStateError("KafkaConsumer is closed")])
    group = GroupConsumer(lambda: closed, "readings")
    with pytest.raises(IllegalStateError):
        group.poll(100, 10)
    assert group.outage_polls == 0
