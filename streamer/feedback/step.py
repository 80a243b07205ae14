"""One turn of the operator's loop in the daemon: read feedback → apply it → publish what it caused.

Runs on the main loop between polls, so feedback and readings never touch a device's state at the same
time. Malformed records go to the dead-letter topic (reasons as for readings); each message is
counted by kind, outcome and model version; a false positive's closing event is published as an
alert; changed devices are marked for the next checkpoint, which commits the feedback offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.feedback.effects import UNKNOWN_DEVICE, FeedbackEffects
from streamer.feedback.messages import decode_feedback
from streamer.feedback.reader import FeedbackReader
from streamer.feedback.silencing import silenced_now
from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason
from streamer.scoring.readings import AlertEvent

if TYPE_CHECKING:
    from streamer.kafka.publisher import Publisher
    from streamer.service.metrics import Metrics

log = logging.getLogger(__name__)


class FeedbackStep:
    """Reads, applies and accounts for the feedback of the partitions the daemon scores."""

    def __init__(self, reader: FeedbackReader, effects: FeedbackEffects, metrics: Metrics, *,
                 track: Callable[[np.ndarray, Mapping[int, int]], None],
                 on_events: Callable[[list[AlertEvent]], None] = lambda events: None) -> None:
        self.reader = reader
        self.effects = effects
        self.metrics = metrics
        self._track = track
        self._on_events = on_events

    def run(self, publisher: Publisher, partitions: Iterable[int], now: float) -> int:
        """Follow `partitions`, apply what their feedback brought since the last turn; messages read."""
        self.reader.follow(partitions)
        records = self.reader.poll()
        self.metrics.devices_silenced.set(silenced_now(self.effects.store, now))
        if not records:
            return 0
        changed, offsets, dead = self._apply(publisher, records)
        publisher.publish_dead_letters(dead)
        for letter in dead:
            self.metrics.dead_letters.labels(reason=letter.reason.value).inc()
        self._track(np.array(sorted(changed), dtype=np.int64), offsets)
        return len(records)

    def _apply(self, publisher: Publisher, records: list[Any]
               ) -> tuple[set[int], dict[int, int], list[DeadLetter]]:
        changed: set[int] = set()
        offsets: dict[int, int] = {}
        dead: list[DeadLetter] = []
        version = self.effects.model_version
        for rec in records:
            offsets[rec.partition] = rec.offset + 1
            feedback = decode_feedback(rec)
            if isinstance(feedback, DeadLetter):
                dead.append(feedback)
                continue
            applied = self.effects.apply(feedback)
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
                changed.add(applied.changed)
            if applied.events:
                publisher.publish_alerts(applied.events)
                self._on_events(applied.events)
        return changed, offsets, dead
