"""One turn of the operator's loop in the daemon: read feedback → apply it → publish what it caused.

Runs on the main loop between polls, so feedback and readings never touch a device's state at the same
time. Malformed records go to the dead-letter topic (reasons as for readings); each message is
counted by kind, outcome and model version; a false positive's closing event is published as an
alert; changed devices are marked for the next checkpoint, which commits the feedback offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.feedback.effects import UNKNOWN_DEVICE, FeedbackEffects
from streamer.feedback.messages import decode_feedback
from streamer.feedback.reader import FeedbackReader
from streamer.feedback.silencing import silenced_now
from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason
from streamer.scoring.readings import AlertEvent
from streamer.scoring.state_store import StateStore

if TYPE_CHECKING:
    from streamer.kafka.publisher import Publisher
    from streamer.service.metrics import Metrics

log = logging.getLogger(__name__)


Owners = Callable[[str], list[FeedbackEffects]]  # a device -> the states to change, the published one first


class FeedbackStep:
    """Reads, applies and accounts for the feedback of the partitions the daemon scores.

    `owners(device)` names the state stores a message changes: the live pipeline's, and while a hot swap
    runs the incoming model's as well, the one whose state is published for that device first (its
    outcome is counted and its events published). `store` is the durable one: the devices changed are
    marked in it for the next checkpoint (`track`).
    """

    def __init__(self, reader: FeedbackReader, store: StateStore, owners: Owners, metrics: Metrics, *,
                 track: Callable[[np.ndarray, Mapping[int, int]], None],
                 on_events: Callable[[list[AlertEvent]], None] = lambda events: None,
                 poll_interval_s: float = 1.0, gauge_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reader = reader
        self.store = store
        self.owners = owners
        self.metrics = metrics
        self._track = track
        self._on_events = on_events
        self._poll_interval_s = poll_interval_s
        self._poll_at = 0.0
        self._gauge_interval_s = gauge_interval_s
        self._gauge_at = 0.0
        self._clock = clock

    def run(self, publisher: Publisher, partitions: Iterable[int], now: float) -> int:
        """Follow `partitions`, apply what their feedback brought since the last look; messages read. The
        topic is looked at every `poll_interval_s` (a few messages a minute: a look per loop turn would cost
        the readings' latency). A broker error is logged and the same records are read again at a later
        look (nothing was applied)."""
        if self._clock() >= self._gauge_at:
            self._gauge_at = self._clock() + self._gauge_interval_s
            self.metrics.devices_silenced.set(silenced_now(self.store, now))
        if self._clock() < self._poll_at:
            return 0
        self._poll_at = self._clock() + self._poll_interval_s
        try:
            self.reader.follow(partitions)
            records = self.reader.poll()
        except Exception as exc:  # kafka-python errors and timeouts: the broker is unwell, scoring goes on
            log.warning("reading the feedback topic %s failed (%s: %s); trying again at the next turn",
                        self.reader.topic, type(exc).__name__, exc)
            self.reader.reset()
            return 0
        if not records:
            return 0
        changed, offsets, dead = self._apply(publisher, records)
        publisher.publish_dead_letters(dead)
        for letter in dead:
            self.metrics.dead_letters.labels(reason=letter.reason.value).inc()
        slots = self.store.lookup(sorted(changed))
        self._track(slots[slots >= 0], offsets)
        return len(records)

    def _apply(self, publisher: Publisher, records: list[Any]
               ) -> tuple[set[str], dict[int, int], list[DeadLetter]]:
        changed: set[str] = set()
        offsets: dict[int, int] = {}
        dead: list[DeadLetter] = []
        for rec in records:
            offsets[rec.partition] = rec.offset + 1
            feedback = decode_feedback(rec)
            if isinstance(feedback, DeadLetter):
                dead.append(feedback)
                continue
            owner, *others = self.owners(feedback.device_id)
            applied = owner.apply(feedback)
            for other in others:  # the same effect on the state not published now (a swap's other model)
                other.apply(feedback)
            version = owner.model_version
            if applied.outcome == UNKNOWN_DEVICE:  # kept where an operator can fix and replay it
                dead.append(DeadLetter(DeadLetterReason.UNKNOWN_DEVICE, f"{applied.kind} for device "
                                       f"{feedback.device_id[:64]!r}, which the owner of partition "
                                       f"{rec.partition} does not hold (never seen, evicted, or the key is "
                                       "not the device id)", rec))
            self.metrics.feedback.labels(kind=applied.kind, outcome=applied.outcome,
                                         model_version=version).inc()
            log.info("feedback %s for device %r: %s", applied.kind, feedback.device_id[:64], applied.outcome,
                     extra={"event": "feedback", "kind": applied.kind, "outcome": applied.outcome})
            if applied.changed is not None:
                changed.add(feedback.device_id)
            if applied.events:
                publisher.publish_alerts(applied.events)
                self._on_events(applied.events)
        return changed, offsets, dead
