"""The readings consumer: one consumer-group member that polls batches and commits them explicitly.

Auto-commit is off: `poll` returns the records and the offsets that committing them means, and the
daemon commits them (at a state checkpoint) only after the batch's output is acknowledged. A
rebalance happens inside `poll`; the listener records the assignment and tells the optional hooks
(state restore on assignment, a state checkpoint on revoke).

kafka-python 3 runs the group coordinator on its own IO thread; a synchronous listener that called
back into the consumer there would fail ("Cannot block on net.run() from the IO thread itself"),
hence the `AsyncConsumerRebalanceListener`. A hook may return an awaitable (an `async def` hook):
the listener awaits it, so the hook can yield to the IO loop while blocking work runs elsewhere.

A broker that goes away is something `poll` lives through: kafka-python retries inside it, but a
metadata refresh or offset lookup can still raise a *retriable* error (`KafkaConnectionError`
"ECONNREFUSED" while the broker restarts). `poll` then logs it (at most every `OUTAGE_LOG_EVERY_S`)
and returns nothing, so the loop goes on turning (liveness, metrics, readiness say the broker is not
answering) and fetches again next turn. Non-retriable errors (a closed consumer, bad configuration,
authorisation) still raise.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.errors import BrokerError

log = logging.getLogger(__name__)

OUTAGE_LOG_EVERY_S = 30.0  # a broker outage is logged when it starts, then at most this often
OUTAGE_PAUSE_MS = 200  # a poll that failed waits this long (at most its timeout) before returning
PartitionsHook = Callable[[frozenset[Any]], Any]  # takes a set of TopicPartition; may return an awaitable


class CommitError(BrokerError):
    """The group refused or lost an offset commit (usually a rebalance); the records will be redelivered."""


@dataclass(frozen=True, slots=True)
class Polled:
    """One poll: records in partition order, and {TopicPartition: next offset} to commit them."""

    records: list[Any]
    offsets: dict[Any, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)


class Assignment:
    """What a group member holds: its partitions, the offsets it committed for them, how many
    rebalances it went through. Changed inside `poll` (the rebalance callbacks), read by the loop and
    the lag probe, hence the lock. Shared by both clients' consumers."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self._assigned: frozenset[Any] = frozenset()
        self._committed: dict[Any, int] = {}
        self.rebalances = 0

    @property
    def assigned(self) -> frozenset[Any]:
        with self._lock:
            return self._assigned

    def change(self, now: frozenset[Any], gone: Iterable[Any] = ()) -> None:
        """The member now holds `now`; partitions `gone` (revoked or lost) forget their commits."""
        with self._lock:
            self._assigned = now
            self.rebalances += 1
            for tp in gone:
                self._committed.pop(tp, None)

    def log_change(self, what: str, changed: frozenset[Any]) -> None:
        log.info("partitions %s: %s", what, sorted(tp.partition for tp in changed),
                 extra={"topic": self.topic, "assigned": sorted(tp.partition for tp in self.assigned)})

    def committed(self, offsets: dict[Any, int]) -> None:
        """The group took these {TopicPartition: next offset}."""
        with self._lock:
            self._committed.update(offsets)

    def positions(self) -> tuple[frozenset[Any], dict[Any, int]]:
        """(assigned, {TopicPartition: committed next offset}) as of now, consistent with each other."""
        with self._lock:
            return self._assigned, dict(self._committed)


class GroupConsumer:
    """Wraps a `kafka.KafkaConsumer` (from `consumer_factory`) subscribed to one topic."""

    def __init__(
        self,
        consumer_factory: Callable[[], Any],
        topic: str,
        *,
        on_assigned: PartitionsHook | None = None,
        on_revoked: PartitionsHook | None = None,
    ) -> None:
        from kafka import AsyncConsumerRebalanceListener

        self.topic = topic
        self.book = Assignment(topic)
        self.outage_polls = 0  # polls that a retriable broker error turned into empty ones
        self._outage_logged_at = -math.inf
        outer = self

        class Listener(AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
                left = outer.assigned - frozenset(revoked)
                done = outer._set_assignment(left, revoked, on_revoked, "revoked")
                if inspect.isawaitable(done):  # a hook that must finish before the partitions move on
                    await done

            async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
                done = outer._set_assignment(frozenset(assigned), assigned, on_assigned, "assigned")
                if inspect.isawaitable(done):
                    await done

        self._consumer = consumer_factory()
        self._consumer.subscribe([topic], listener=Listener())

    def _set_assignment(self, now: frozenset[Any], changed: Iterable[Any], hook: PartitionsHook | None,
                        what: str) -> Any:
        changed = frozenset(changed)
        self.book.change(now, changed if what == "revoked" else ())
        if not changed:
            return None
        self.book.log_change(what, changed)
        return hook(changed) if hook is not None else None

    @property
    def assigned(self) -> frozenset[Any]:
        return self.book.assigned

    @property
    def rebalances(self) -> int:
        return self.book.rebalances

    def pause(self, partitions: Iterable[int]) -> None:
        """Stop fetching these partitions of the topic (state restore in progress)."""
        from kafka import TopicPartition

        self._consumer.pause(*(TopicPartition(self.topic, p) for p in partitions))

    def resume(self, partitions: Iterable[int]) -> None:
        from kafka import TopicPartition

        self._consumer.resume(*(TopicPartition(self.topic, p) for p in partitions))

    def poll(self, timeout_ms: int, max_records: int) -> Polled:
        """At most `max_records` records; none (after logging why) when the broker is not reachable."""
        from kafka.errors import KafkaError

        try:
            by_partition = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            self._outage(exc)
            time.sleep(min(timeout_ms, OUTAGE_PAUSE_MS) / 1000)  # an error that comes at once must not spin
            return Polled([])
        records: list[Any] = []
        offsets: dict[Any, int] = {}
        for tp, batch in by_partition.items():
            if batch:
                records.extend(batch)
                offsets[tp] = batch[-1].offset + 1
        return Polled(records, offsets)

    def _outage(self, exc: Exception) -> None:
        self.outage_polls += 1
        now = time.monotonic()
        if now - self._outage_logged_at >= OUTAGE_LOG_EVERY_S:
            self._outage_logged_at = now
            log.warning("poll of %s: the broker is not answering (%s: %s); polling again. If this lasts, "
                        "check that KAFKA_BOOTSTRAP_SERVERS is reachable", self.topic, type(exc).__name__,
                        exc, extra={"event": "broker_unreachable", "polls": self.outage_polls})

    def commit(self, offsets: dict[Any, int], timeout_ms: int = 30_000) -> None:
        """Commit {TopicPartition: next offset}; `CommitError` when the group did not take it."""
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        request = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        try:
            self._consumer.commit(request, timeout_ms=timeout_ms)
        except Exception as exc:  # CommitFailedError, timeouts, coordinator moves: all mean "not committed"
            cause = f"{type(exc).__name__}: {exc}"
            raise CommitError(f"offset commit of {len(offsets)} partitions failed: {cause}") from exc
        self.book.committed(offsets)

    def lag(self, timeout_ms: int = 5_000) -> dict[tuple[str, int], int]:
        """{(topic, partition): end offset − committed position} for the assigned partitions.

        One ListOffsets round trip: call it every few seconds, not every batch.
        """
        assigned, committed = self.book.positions()
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(list(assigned), timeout_ms=timeout_ms)
        out = {}
        for tp in assigned:
            position = committed.get(tp)
            if position is None:
                position = self._consumer.position(tp, timeout_ms=timeout_ms) or 0
            out[(tp.topic, tp.partition)] = max(int(ends.get(tp, position)) - int(position), 0)
        return out

    def close(self, timeout_ms: int = 10_000) -> None:
        """Leave the group (no auto-commit: what was committed is what was confirmed)."""
        try:
            self._consumer.close(autocommit=False, timeout_ms=timeout_ms)
        except Exception as exc:
            log.warning("closing the consumer: %s", exc)
