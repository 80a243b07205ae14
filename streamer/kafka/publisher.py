"""Publishes a batch's output (alerts, optional scores, dead letters) and confirms the broker has it.

The daemon commits a batch's offsets only after `flush_and_confirm` returns: every record sent since
the previous confirmation has been acknowledged (acks=all). Between confirmations, `pending` and
`pending_bytes` say what is in flight and `collect_acknowledged` (no waiting) drops what the broker
has already taken, so the caller can bound it (`streamer.service.output_window`). When it raises
`PublishError`, the records that were not acknowledged stay pending and the next call sends them
again: nothing is silently dropped, and a record may be written twice (at-least-once; alert ids are
deterministic, so consumers can de-duplicate).

A failed send means kafka-python gave up on a record: its own retries ran out, or the producer fell
into a fatal state (an idempotent producer whose broker restarted and lost its producer id never
recovers). kafka-python's public API cannot tell these apart, so on any failure the producer is closed
and built anew from the injected factory (counted in `recreated`, and in the metric
`rnnwatch_producer_recreated_total`) and the failed records are sent again, up to `max_attempts`
times within the timeout. Resending can reorder the affected records; alert consumers should order
by `ts`.

Message formats (docs/ARCHITECTURE.md): alert and score values are JSON keyed by device id; `ts` and
`started_at` are epoch seconds (float) as the readings carried them. A dead letter is the original
key and value with `rnnwatch.*` headers (`streamer.ingest.dead_letter`); when even that is too large
for the producer or broker, the value is cut to `truncate_dead_letters_to` bytes and the header
`rnnwatch.truncated_from` holds the original size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streamer.errors import BrokerError
from streamer.ingest.dead_letter import DeadLetter
from streamer.scoring.readings import AlertEvent, ReadingBatch, ScoredBatch

log = logging.getLogger(__name__)

ProducerFactory = Callable[[], Any]  # () -> a kafka.KafkaProducer (or a fake with send/flush/close)


class PublishError(BrokerError):
    """Some records of the batch were not acknowledged; do not commit its offsets."""


@dataclass(slots=True)
class _Out:
    """One record to publish and the future of its latest send (None: send() itself raised)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    future: Any = None
    error: BaseException | None = None


class Publisher:
    """Sends output records through one producer, recreating it when it breaks.

    alerts_topic / dlq_topic: where alert events and dead letters go.
    scores_topic: None turns per-reading scores off.
    shadow_alerts_topic: where a shadow model's alert events go (None: nowhere).
    source_topic: the readings topic, named in each alert's `source`.
    on_recreate: called once per producer recreation (the daemon passes the metric's `inc`).
    """

    def __init__(
        self,
        producer_factory: ProducerFactory,
        *,
        alerts_topic: str,
        dlq_topic: str,
        scores_topic: str | None = None,
        source_topic: str = "",
        shadow_alerts_topic: str | None = None,
        max_attempts: int = 3,
        truncate_dead_letters_to: int = 64 * 1024,
        on_recreate: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = producer_factory
        self._producer: Any = producer_factory()  # None while a recreation could not reach the broker
        self.alerts_topic, self.dlq_topic, self.scores_topic = alerts_topic, dlq_topic, scores_topic
        self.source_topic = source_topic
        self.shadow_alerts_topic = shadow_alerts_topic
        self.max_attempts = max_attempts
        self.truncate_dead_letters_to = truncate_dead_letters_to
        self._on_recreate = on_recreate
        self._clock = clock
        self._pending: list[_Out] = []
        self._pending_bytes = 0
        self.recreated = 0

    # ---- sending --------------------------------------------------------------------------------------
    def publish_alerts(self, events: Iterable[AlertEvent], *, shadow: bool = False) -> int:
        """Alert events to the alerts topic, or a shadow model's to the shadow alerts topic (`shadow`;
        nothing when it is unset)."""
        topic = self.shadow_alerts_topic if shadow else self.alerts_topic
        if topic is None:
            return 0
        n = 0
        for event in events:
            value = encode_alert(event, self.source_topic)
            self._send(_Out(topic, event.device_id.encode(), value, []))
            n += 1
        return n

    def publish_scores(self, batch: ReadingBatch, scored: ScoredBatch) -> int:
        """One score record per scored reading (status 0); nothing when the scores topic is off."""
        if self.scores_topic is None:
            return 0
        rows = np.flatnonzero(scored.status == 0)
        topic, ids = self.scores_topic, batch.device_ids
        ts, scores, alerting = batch.ts[rows], scored.scores[rows], scored.alerting[rows]
        for i, t, s, a in zip(rows.tolist(), ts.tolist(), scores.tolist(), alerting.tolist(), strict=True):
            device_id = ids[i]
            value = orjson.dumps({"device_id": device_id, "ts": t, "anomaly_score": s, "alert": a})
            self._send(_Out(topic, device_id.encode(), value, []))
        return len(rows)

    def publish_dead_letters(self, dead_letters: Sequence[DeadLetter]) -> int:
        for dead in dead_letters:
            key, value, headers = dead.to_kafka()
            self._send(_Out(self.dlq_topic, key, value, headers))
        return len(dead_letters)

    def _send(self, out: _Out) -> None:
        self._pending.append(out)
        self._pending_bytes += _size(out)
        self._try_send(out)

    def _try_send(self, out: _Out) -> None:
        if self._producer is None:
            out.future, out.error = None, BrokerError("no producer: broker unreachable at its rebuild")
            return
        try:
            out.future = self._producer.send(out.topic, value=out.value, key=out.key, headers=out.headers)
            out.error = None
        except Exception as exc:  # kafka-python raises timeouts, size and state errors from send()
            out.future, out.error = None, exc
            if _too_large(exc) and out.topic == self.dlq_topic:
                self._truncate(out)

    # ---- confirming -----------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records sent (or to be re-sent) and not yet confirmed."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Key and value bytes of the `pending` records."""
        return self._pending_bytes

    def collect_acknowledged(self) -> int:
        """Forget the records the broker has acknowledged already (no waiting); return how many."""
        left = [out for out in self._pending if not _acknowledged(out)]
        done = len(self._pending) - len(left)
        if done:
            self._pending = left
            self._pending_bytes = sum(_size(out) for out in left)
        return done

    def flush_and_confirm(self, timeout_s: float) -> int:
        """Wait until every pending record is acknowledged; return how many were confirmed.

        Raises `PublishError` (with the first failure's cause) when some are still not acknowledged
        after `max_attempts` sends or `timeout_s`; they stay pending for the next call.
        """
        deadline = self._clock() + timeout_s
        confirmed = 0
        if self._producer is None:  # the last recreation failed: try again before flushing anything
            self._recreate()
            for out in self._pending:
                self._try_send(out)
        for attempt in range(1, self.max_attempts + 1):
            self._flush(deadline)
            failed = [out for out in self._pending if not _acknowledged(out)]
            confirmed += len(self._pending) - len(failed)
            self._pending = failed
            self._pending_bytes = sum(_size(out) for out in failed)
            if not failed:
                return confirmed
            if attempt == self.max_attempts or self._clock() >= deadline:
                break
            log.warning("%d records not acknowledged (%s); recreating the producer and sending them again "
                        "(attempt %d/%d)", len(failed), _cause(failed[0]), attempt + 1, self.max_attempts)
            self._recreate()
            for out in failed:
                if out.topic == self.dlq_topic and _too_large(_error_of(out)):
                    self._truncate(out)
                self._try_send(out)
        raise PublishError(
            f"{len(self._pending)} records not acknowledged by the broker within {timeout_s:g} s "
            f"({_cause(self._pending[0])}); offsets stay uncommitted and the records will be sent again"
        )

    def _flush(self, deadline: float) -> None:
        remaining = max(deadline - self._clock(), 0.001)
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=remaining)
        except Exception as exc:  # a KafkaTimeoutError here: the undone futures say which records
            log.debug("producer flush: %s", exc)

    def _recreate(self) -> None:
        """Close the producer and build a new one; None (and a warning) when the broker is unreachable."""
        old, self._producer = self._producer, None
        try:
            if old is not None:
                old.close(timeout=0)
        except Exception as exc:  # closing a broken producer may raise; the new one is what matters
            log.debug("closing the old producer: %s", exc)
        try:
            self._producer = self._factory()
        except Exception as exc:  # NoBrokersAvailable, KafkaTimeoutError: retried at the next confirm
            log.warning("cannot build a new producer: %s: %s", type(exc).__name__, exc)
            return
        self.recreated += 1
        self._on_recreate()

    def _truncate(self, out: _Out) -> None:
        size = len(out.value or b"")
        if size > self.truncate_dead_letters_to:
            out.value = (out.value or b"")[: self.truncate_dead_letters_to]
            out.headers = [*out.headers, ("rnnwatch.truncated_from", str(size).encode())]
            log.warning("dead letter of %d bytes is too large to publish; truncated to %d",
                        size, self.truncate_dead_letters_to)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is pending (best effort) and close the producer."""
        if self._producer is None:
            return
        try:
            self._producer.close(timeout=timeout_s)
        except Exception as exc:
            log.warning("closing the producer: %s", exc)


def _size(out: _Out) -> int:
    return len(out.key or b"") + len(out.value or b"")


def _acknowledged(out: _Out) -> bool:
    future = out.future
    return future is not None and future.is_done and future.exception is None


def _error_of(out: _Out) -> BaseException | None:
    if out.error is not None:
        return out.error
    future = out.future
    return future.exception if future is not None and future.is_done else None


def _cause(out: _Out) -> str:
    error = _error_of(out)
    if error is None:
        return f"no acknowledgement yet for {out.topic}"
    return f"{out.topic}: {type(error).__name__}: {error}"


def _too_large(exc: BaseException | None) -> bool:
    return exc is not None and type(exc).__name__ in ("MessageSizeTooLargeError", "RecordTooLargeError")


def encode_alert(event: AlertEvent, source_topic: str) -> bytes:
    """The JSON value of an alert record."""
    return orjson.dumps({
        "alert_id": event.alert_id,
        "device_id": event.device_id,
        "state": event.state,
        "ts": event.ts,
        "started_at": event.started_at,
        "score": event.score,
        "threshold": event.threshold,
        "channels": [
            {"channel": c.channel, "share": c.share, "direction": c.direction} for c in event.channels
        ],
        "model_version": event.model_version,
        "source": {"topic": source_topic, "partition": event.partition, "offset": event.offset},
        **({"reason": event.reason, "duration_s": event.duration_s} if event.state == "resolved" else {}),
    }, option=orjson.OPT_SERIALIZE_NUMPY)
