"""The librdkafka adapters against fakes of `confluent_kafka`'s Consumer and Producer: the contracts the
daemon relies on (hooks inside poll, assignment installed before the assigned hook, exact commits,
kafka-python-shaped futures and errors). The real broker runs them in the integration suites."""

from __future__ import annotations

from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from kafka import TopicPartition  # noqa: E402
from kafka.errors import MessageSizeTooLargeError  # noqa: E402

from streamer.kafka.confluent_consumer import ConfluentGroupConsumer  # noqa: E402
from streamer.kafka.confluent_producer import ConfluentProducer, DeliveryError  # noqa: E402
from streamer.kafka.consumer import CommitError  # noqa: E402


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes, error: Any = None) -> None:
        self._p, self._o, self._v, self._e = partition, offset, value, error

    def error(self) -> Any:
        return self._e

    def topic(self) -> str:
        return "readings"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"dev"

    def value(self) -> bytes:
        return self._v

    def headers(self) -> Any:
        return [("trace", b"1")] if self._o == 0 else None


class FakeConsumer:
    """Calls the rebalance callbacks from consume(), as librdkafka does."""

    def __init__(self) -> None:
        self.assignment: list[Any] = []
        self.paused: list[Any] = []
        self.rebalance: tuple[str, list[Any]] | None = None
        self.queued: list[FakeMessage] = []
        self.commit_error: Any = None
        self.committed: list[Any] = []

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def consume(self, num: int, timeout: float) -> list[FakeMessage]:
        if self.rebalance is not None:
            what, parts = self.rebalance
            self.rebalance = None
            self.callbacks[what](self, parts)
        out, self.queued = self.queued[:num], self.queued[num:]
        return out

    def assign(self, parts: list[Any]) -> None:
        self.assignment = list(parts)

    def unassign(self) -> None:
        self.assignment = []

    def pause(self, parts: list[Any]) -> None:
        assigned = {(tp.topic, tp.partition) for tp in self.assignment}
        assert {(tp.topic, tp.partition) for tp in parts} <= assigned, "paused before being assigned"
        self.paused += parts

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        assert asynchronous is False
        if self.commit_error is not None:
            raise confluent_kafka.KafkaException(self.commit_error)
        self.committed += [(tp.partition, tp.offset) for tp in offsets]
        return offsets


def consumer_with(fake: FakeConsumer, **hooks: Any) -> ConfluentGroupConsumer:
    return ConfluentGroupConsumer(lambda: fake, "readings", **hooks)


def test_assigned_hook_runs_inside_poll_after_the_assignment_so_it_can_pause():
    fake = FakeConsumer()
    seen: list[frozenset] = []
    group: ConfluentGroupConsumer

    def on_assigned(parts: frozenset) -> None:
        seen.append(parts)
        group.pause(tp.partition for tp in parts)  # FakeConsumer.pause asserts they are assigned

    group = consumer_with(fake, on_assigned=on_assigned)
    fake.rebalance = ("assign", [confluent_kafka.TopicPartition("readings", p) for p in (0, 1)])
    group.poll(10, 100)
    expected = frozenset({TopicPartition("readings", 0), TopicPartition("readings", 1)})
    assert seen == [expected] and group.assigned == expected and len(fake.paused) == 2


def test_revoked_hook_may_be_async_and_is_awaited_before_unassign():
    fake = FakeConsumer()
    done: list[str] = []

    async def on_revoked(parts: frozenset) -> None:
        assert fake.assignment, "still assigned while the revoke checkpoint runs"
        done.append("checkpointed")

    group = consumer_with(fake, on_revoked=on_revoked)
    fake.assignment = [confluent_kafka.TopicPartition("readings", 0)]
    group.book.change(frozenset({TopicPartition("readings", 0)}))
    fake.rebalance = ("revoke", list(fake.assignment))
    group.poll(10, 100)
    assert done == ["checkpointed"] and group.assigned == frozenset() and fake.assignment == []


def test_poll_returns_records_with_headers_and_the_offsets_after_them_skipping_errors():
    fake = FakeConsumer()
    group = consumer_with(fake)
    fake.queued = [FakeMessage(0, 0, b"a"), FakeMessage(1, 7, b"b"), FakeMessage(0, 1, b"c"),
                   FakeMessage(0, 2, b"", error="broker says no")]
    polled = group.poll(10, 100)
    got = [(r.partition, r.offset, r.value) for r in polled.records]
    assert got == [(0, 0, b"a"), (1, 7, b"b"), (0, 1, b"c")]
    assert polled.records[0].headers == [("trace", b"1")] and polled.records[1].headers == ()
    assert polled.offsets == {TopicPartition("readings", 0): 2, TopicPartition("readings", 1): 8}
    fake.queued = [FakeMessage(2, i, b"x") for i in range(5)]
    assert len(group.poll(10, 3)) == 3  # never more than asked


def test_commit_commits_exactly_the_offsets_and_raises_commit_error_when_refused():
    fake = FakeConsumer()
    group = consumer_with(fake)
    group.commit({TopicPartition("readings", 3): 42})
    assert fake.committed == [(3, 42)]
    fake.commit_error = confluent_kafka.KafkaError(confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS)
    with pytest.raises(CommitError, match="offset commit of 1 partitions failed"):
        group.commit({TopicPartition("readings", 3): 50})


class FakeProducer:
    def __init__(self, full_times: int = 0, refuse: Any = None) -> None:
        self.full_times, self.refuse = full_times, refuse
        self.reports: list[Any] = []
        self.polls = 0

    def produce(self, topic: str, value: Any = None, key: Any = None, on_delivery: Any = None,
                **kw: Any) -> None:
        if self.refuse is not None:
            raise confluent_kafka.KafkaException(self.refuse)
        if self.full_times:
            self.full_times -= 1
            raise BufferError("Local: Queue full")
        self.reports.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float) -> int:
        for report in self.reports:
            report(None, None)
        self.reports = []
        return 0


def test_send_returns_a_future_that_flush_completes_and_waits_out_a_full_queue():
    fake = FakeProducer(full_times=2)
    producer = ConfluentProducer({}, factory=lambda config: fake)
    future = producer.send("alerts", value=b"v", key=b"k")
    assert fake.polls == 2 and not future.is_done  # served delivery reports until there was room
    producer.flush(1)
    assert future.is_done and future.exception is None


def test_delivery_errors_carry_kafka_python_error_classes():
    too_large = confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE)
    producer = ConfluentProducer({}, factory=lambda config: FakeProducer(refuse=too_large))
    with pytest.raises(MessageSizeTooLargeError):
        producer.send("dlq", value=b"x" * 10)
    fake = FakeProducer()
    producer = ConfluentProducer({}, factory=lambda config: fake)
    future = producer.send("alerts", value=b"v")
    fake.reports[0](confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT), None)
    assert future.is_done and isinstance(future.exception, DeliveryError)
    assert "MSG_TIMED_OUT" in str(future.exception)


def test_a_commit_from_the_revoke_checkpoints_worker_runs_on_the_polling_thread():
    import threading

    from streamer.checkpoint.manager import _off_loop

    fake = FakeConsumer()
    committing_threads: list[int] = []
    real_commit = fake.commit

    def commit(offsets: list[Any], asynchronous: bool) -> list[Any]:
        committing_threads.append(threading.get_ident())
        return real_commit(offsets, asynchronous)

    fake.commit = commit  # type: ignore[method-assign]
    group: ConfluentGroupConsumer

    async def on_revoked(parts: frozenset) -> None:  # as StateManager.on_revoked: the work on a worker
        await _off_loop(lambda: group.commit({TopicPartition("readings", 0): 9}))

    group = consumer_with(fake, on_revoked=on_revoked)
    fake.assignment = [confluent_kafka.TopicPartition("readings", 0)]
    group.book.change(frozenset({TopicPartition("readings", 0)}))
    fake.rebalance = ("revoke", list(fake.assignment))
    group.poll(10, 100)
    assert fake.committed == [(0, 9)] and committing_threads == [threading.get_ident()]


def test_lost_partitions_are_revoked_at_the_next_assignment_not_while_the_group_is_away():
    fake = FakeConsumer()
    calls: list[tuple[str, list[int]]] = []

    def hook(what: str) -> Any:
        return lambda parts: calls.append((what, sorted(p.partition for p in parts)))

    group = consumer_with(fake, on_assigned=hook("assigned"), on_revoked=hook("revoked"))
    tps = [confluent_kafka.TopicPartition("readings", p) for p in (0, 1, 2)]
    fake.rebalance = ("assign", tps)
    group.poll(10, 100)
    fake.rebalance = ("lost", tps)
    group.poll(10, 100)
    assert group.assigned == frozenset() and calls == [("assigned", [0, 1, 2])]  # no revoke: states kept
    with pytest.raises(CommitError, match="lost"):
        group.commit({TopicPartition("readings", 1): 5})
    fake.rebalance = ("assign", tps[:2])  # the group answers again: 0 and 1 come back, 2 went elsewhere
    group.poll(10, 100)
    assert calls[1:] == [("revoked", [0, 1, 2]), ("assigned", [0, 1])]  # checkpoint now, then restore
    assert group.assigned == frozenset({TopicPartition("readings", 0), TopicPartition("readings", 1)})


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_the_readings_consumer_waits_at_most_fetch_max_wait_ms_at_the_broker(monkeypatch, client):
    """A broker that holds a fetch until its wait runs out (the embedded one does, with data arriving)
    delays every reading by up to that wait: both clients get the setting, not their own 500 ms."""
    import confluent_kafka
    import kafka

    from streamer.service.clients import make_consumer
    from streamer.service.settings import Settings

    made: list[Any] = []
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda config: made.append(config))
    monkeypatch.setattr(kafka, "KafkaConsumer", lambda **kwargs: made.append(kwargs))
    make_consumer(Settings(kafka_client=client, fetch_max_wait_ms=37))
    key = "fetch.wait.max.ms" if client == "confluent" else "fetch_max_wait_ms"
    assert made[0][key] == 37
    assert Settings().fetch_max_wait_ms == 100
