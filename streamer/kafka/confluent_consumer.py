"""The readings consumer on librdkafka (`confluent_kafka.Consumer`): `GroupConsumer`'s contract, faster.

The same surface as `streamer.kafka.consumer.GroupConsumer` (`streamer.contracts.ReadingsConsumer`), so
the daemon and its state manager do not know which client they drive:

- records come back as `RawRecord`s (topic, partition, offset, key, value, headers), which is all the
  decoder and the dead letters read; partitions are named by kafka-python `TopicPartition`s
  everywhere (hooks, `Polled.offsets`, `commit`), converted at this edge;
- auto-commit and offset storing are off: `commit` commits exactly the offsets it is given,
  synchronously, and raises `CommitError` when the group did not take them;
- rebalances use an eager assignor (range): librdkafka calls `on_assign` / `on_revoke` / `on_lost`
  from inside `poll`, on the polling thread, so, as with kafka-python, the hooks never race the main
  loop. The assignment is installed *before* the assigned hook runs, so the hook can pause the
  partitions (state restore) before anything of them is fetched. A hook that returns an awaitable
  (the state manager's `async` revoke) is driven here, sleeping 10 ms whenever it yields: librdkafka
  keeps heartbeating on its own threads meanwhile. That hook checkpoints on a worker thread, and its
  offset commit must not run there: librdkafka holds a synchronous commit back until the rebalance
  callback returns, which waits for the worker (a deadlock). So while a callback runs, `commit` from
  another thread is handed to the polling thread, which performs it between the hook's steps.

Lost partitions (the session timed out, e.g. while the broker was away) are not revoked at once:
while the group does not answer nothing can be written or committed, and dropping their device
states then would lose them. No offset of theirs is committed any more (librdkafka would send it
outside any generation, and a broker that lost its log would take it). The next assignment settles
them, as kafka-python does when it rejoins: the revoke hook runs for them first (a checkpoint of
their states, now that the broker answers, then the handover), then the assigned hook (restore).

`poll(timeout_ms, max_records)` returns what librdkafka has already fetched, at once, and only waits
(up to `timeout_ms`) when that is nothing: a caught-up daemon gets small batches quickly, a lagging
one full batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.ingest.dead_letter import RawRecord
from streamer.kafka.consumer import Assignment, CommitError, PartitionsHook, Polled

log = logging.getLogger(__name__)

AWAIT_STEP_S = 0.01  # how often a hook's awaitable is stepped while it waits on a worker thread


@dataclass(slots=True)
class _Handoff:
    """A commit asked for on another thread while a rebalance callback runs on the polling thread."""

    offsets: dict[Any, int]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class ConfluentGroupConsumer:
    """Wraps a `confluent_kafka.Consumer` (from `consumer_factory`) subscribed to one topic."""

    def __init__(
        self,
        consumer_factory: Callable[[], Any],
        topic: str,
        *,
        on_assigned: PartitionsHook | None = None,
        on_revoked: PartitionsHook | None = None,
    ) -> None:
        self.topic = topic
        self.book = Assignment(topic)
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._callback_thread: int | None = None  # the polling thread, while a rebalance callback runs
        self._handoffs: queue.SimpleQueue[_Handoff] = queue.SimpleQueue()
        self._consumer = consumer_factory()
        self._lost: frozenset[Any] = frozenset()  # lost and not yet settled by an assignment
        self._consumer.subscribe([topic], on_assign=self._assign, on_revoke=self._revoke,
                                 on_lost=self._lose)

    # ---- rebalance callbacks (inside poll, on the polling thread) -------------------------------------
    def _assign(self, consumer: Any, partitions: list[Any]) -> None:
        consumer.assign(partitions)  # installed first, so that the hook can pause them
        changed = frozenset(_kafka_tp(tp) for tp in partitions)
        if self._lost:  # lost earlier: checkpoint and hand them over now that the group answers
            self._set_assignment(self.assigned, self._lost, self._on_revoked, "revoked")
            self._lost = frozenset()
        self._set_assignment(self.assigned | changed, changed, self._on_assigned, "assigned")

    def _lose(self, consumer: Any, partitions: list[Any]) -> None:
        changed = frozenset(_kafka_tp(tp) for tp in partitions)
        self.book.change(self.assigned - changed, changed)
        self._lost |= changed
        log.warning("partitions lost (the group session expired): %s; their device states stay in memory "
                    "until the next assignment checkpoints them", sorted(tp.partition for tp in changed),
                    extra={"topic": self.topic})
        consumer.unassign()

    def _revoke(self, consumer: Any, partitions: list[Any]) -> None:
        changed = frozenset(_kafka_tp(tp) for tp in partitions)
        self._set_assignment(self.assigned - changed, changed, self._on_revoked, "revoked")
        consumer.unassign()

    def _set_assignment(self, now: frozenset[Any], changed: frozenset[Any], hook: PartitionsHook | None,
                        what: str) -> None:
        self.book.change(now, changed if what == "revoked" else ())
        if not changed:
            return
        self.book.log_change(what, changed)
        if hook is None:
            return
        self._callback_thread = threading.get_ident()
        try:
            run_to_completion(hook(changed), between=self._serve_handoffs)
        finally:
            self._callback_thread = None
            self._serve_handoffs()

    def _serve_handoffs(self) -> None:
        while True:
            try:
                handoff = self._handoffs.get_nowait()
            except queue.Empty:
                return
            try:
                self._commit(handoff.offsets)
            except BaseException as exc:  # handed back to the thread that asked
                handoff.error = exc
            finally:
                handoff.done.set()

    @property
    def assigned(self) -> frozenset[Any]:
        return self.book.assigned

    @property
    def rebalances(self) -> int:
        return self.book.rebalances

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop fetching these partitions of the topic (state restore in progress)."""
        self._consumer.pause(self._confluent_tps(partitions))

    def resume(self, partitions: Iterable[int]) -> None:
        self._consumer.resume(self._confluent_tps(partitions))

    def poll(self, timeout_ms: int, max_records: int) -> Polled:
        """What is fetched already (at most `max_records`); waits up to `timeout_ms` only for the first."""
        messages = self._consumer.consume(max_records, 0)
        if not messages:
            messages = self._consumer.consume(1, timeout_ms / 1000)
            if messages and max_records > 1:
                messages += self._consumer.consume(max_records - 1, 0)
        records: list[Any] = []
        offsets: dict[Any, int] = {}
        for m in messages:
            if m.error() is not None:
                log.warning("consumer error from %s: %s", self.topic, m.error(), extra={"topic": self.topic})
                continue
            rec = RawRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers() or ())
            records.append(rec)
            offsets[rec.partition] = rec.offset + 1
        return Polled(records, {_kafka_tp_of(self.topic, p): o for p, o in offsets.items()})

    def commit(self, offsets: dict[Any, int], timeout_ms: int = 30_000) -> None:
        """Commit {TopicPartition: next offset}; `CommitError` when the group did not take it."""
        if not offsets:
            return
        callback = self._callback_thread
        if callback is None or callback == threading.get_ident():
            self._commit(offsets)
            return
        handoff = _Handoff(dict(offsets))
        self._handoffs.put(handoff)
        if not handoff.done.wait(timeout_ms / 1000):
            raise CommitError(f"offset commit of {len(offsets)} partitions not done within {timeout_ms} ms "
                              "(handed to the polling thread during a rebalance)")
        if handoff.error is not None:
            raise handoff.error

    def _commit(self, offsets: dict[Any, int]) -> None:
        from confluent_kafka import TopicPartition

        lost = sorted(tp.partition for tp in offsets if tp in self._lost)
        if lost:  # librdkafka would send it with no generation, and a broker may take it: stale offsets
            raise CommitError(f"offset commit refused: partitions {lost} were lost with the group session")
        request = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        try:
            answer = self._consumer.commit(offsets=request, asynchronous=False)
        except Exception as exc:  # KafkaException: rebalance in progress, unknown member, coordinator moved
            raise CommitError(f"offset commit of {len(offsets)} partitions failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        failed = [tp for tp in answer or () if tp.error is not None]
        if failed:
            raise CommitError(f"offset commit of {len(failed)} of {len(offsets)} partitions failed: "
                              f"{failed[0].error}")
        self.book.committed(offsets)

    def lag(self, timeout_ms: int = 5_000) -> dict[tuple[str, int], int]:
        """{(topic, partition): end offset − committed position} for the assigned partitions.

        End offsets come from the last fetch responses (librdkafka caches them: no round trip on the
        loop); a partition not fetched yet asks the broker.
        """
        from confluent_kafka import TopicPartition

        assigned, committed = self.book.positions()
        out = {}
        for tp in assigned:
            ctp = TopicPartition(tp.topic, tp.partition)
            _, end = self._consumer.get_watermark_offsets(ctp, cached=True)
            if end < 0:
                _, end = self._consumer.get_watermark_offsets(ctp, timeout=timeout_ms / 1000)
            position = committed.get(tp)
            if position is None:
                position = max(self._consumer.position([TopicPartition(tp.topic, tp.partition)])[0].offset, 0)
            out[(tp.topic, tp.partition)] = max(int(end) - int(position), 0)
        return out

    def close(self, timeout_ms: int = 10_000) -> None:
        """Leave the group (revokes through `on_revoke`; no auto-commit)."""
        try:
            self._consumer.close()
        except Exception as exc:
            log.warning("closing the consumer: %s", exc)

    def _confluent_tps(self, partitions: Iterable[int]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(self.topic, p) for p in partitions]


def run_to_completion(result: Any, between: Callable[[], None] = lambda: None) -> Any:
    """`result` itself, or, when it is an awaitable, its value: stepped here, sleeping (and calling
    `between`) between steps.

    For hooks written for kafka-python's IO loop, whose awaits only yield while work runs elsewhere.

    >>> async def hook():
    ...     return 7
    >>> run_to_completion(hook()), run_to_completion(3)
    (7, 3)
    """
    if not hasattr(result, "__await__"):
        return result
    steps = result.__await__()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        time.sleep(AWAIT_STEP_S)
        between()


def _kafka_tp(tp: Any) -> Any:
    return _kafka_tp_of(tp.topic, tp.partition)


def _kafka_tp_of(topic: str, partition: int) -> Any:
    from kafka import TopicPartition

    return TopicPartition(topic, partition)
