"""Publisher: nothing is confirmed until acknowledged; failures recreate the producer and resend."""

from __future__ import annotations

import orjson
import pytest
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason, RawRecord
from streamer.kafka.publisher import Publisher, PublishError
from streamer.scoring.readings import AlertEvent, ChannelAttribution, ReadingBatch, ScoredBatch


class FakeProducer:
    """Resolves futures on flush; `broken` makes every record fail (a producer in a fatal state)."""

    def __init__(self, log: list, broken: bool = False, hang: bool = False,
                 too_large_over: int | None = None):
        self.log, self.broken, self.hang, self.too_large_over = log, broken, hang, too_large_over
        self.futures: list[tuple[Future, tuple]] = []
        self.closed = False

    def send(self, topic, value=None, key=None, headers=None):
        if self.too_large_over is not None and len(value or b"") > self.too_large_over:
            raise MessageSizeTooLargeError("too large")
        future = Future()
        self.futures.append((future, (topic, key, value, tuple(headers or ()))))
        return future

    def flush(self, timeout=None):
        if self.hang:
            raise KafkaTimeoutError("flush timed out")
        for future, record in self.futures:
            if not future.is_done:
                if self.broken:
                    future.failure(KafkaError("producer is in a fatal state"))
                else:
                    self.log.append(record)
                    future.success(record)

    def close(self, timeout=None):
        self.closed = True


def make(behaviours: list[dict], **kwargs) -> tuple[Publisher, list, list[FakeProducer]]:
    delivered: list = []
    made: list[FakeProducer] = []

    def factory() -> FakeProducer:
        producer = FakeProducer(delivered, **(behaviours[len(made)] if len(made) < len(behaviours) else {}))
        made.append(producer)
        return producer

    pub = Publisher(factory, alerts_topic="alerts", dlq_topic="dlq", scores_topic="scores",
                    source_topic="readings", **kwargs)
    return pub, delivered, made


def alert(device: str = "d1", state: str = "firing") -> AlertEvent:
    return AlertEvent("a1", device, state, 10.0, 9.0, 0.99, 0.95,  # type: ignore[arg-type]
                      (ChannelAttribution("temp", 1.0, "above"),), "v1", partition=3, offset=42)


def test_alert_record_matches_the_documented_format():
    pub, delivered, _ = make([{}])
    assert pub.publish_alerts([alert()]) == 1
    assert pub.flush_and_confirm(1.0) == 1
    topic, key, value, _ = delivered[0]
    assert (topic, key) == ("alerts", b"d1")
    assert orjson.loads(value) == {
        "alert_id": "a1", "device_id": "d1", "state": "firing", "ts": 10.0, "started_at": 9.0,
        "score": 0.99, "threshold": 0.95,
        "channels": [{"channel": "temp", "share": 1.0, "direction": "above"}],
        "model_version": "v1", "source": {"topic": "readings", "partition": 3, "offset": 42},
    }


def test_scores_only_for_scored_rows_and_dead_letters_keep_original_bytes():
    import numpy as np

    pub, delivered, _ = make([{}])
    batch = ReadingBatch.from_rows(["d1", "d2"], [1.0, 2.0], [[1.0], [2.0]])
    scored = ScoredBatch(np.array([0.5, np.nan], np.float32), np.array([True, False]),
                         np.array([0, 1], np.uint8), np.array([0, -1], np.int16))
    assert pub.publish_scores(batch, scored) == 1
    rec = RawRecord("readings", 0, 7, b"k", b"\xffbad")
    pub.publish_dead_letters([DeadLetter(DeadLetterReason.NOT_JSON, "bad", rec)])
    assert pub.flush_and_confirm(1.0) == 2
    score = {"device_id": "d1", "ts": 1.0, "anomaly_score": 0.5, "alert": True}
    assert orjson.loads(delivered[0][2]) == score
    assert delivered[1][:3] == ("dlq", b"k", b"\xffbad")
    assert ("rnnwatch.reason", b"not_json") in delivered[1][3]


def test_fatal_producer_is_recreated_and_in_flight_records_are_resent():
    recreated = []
    pub, delivered, made = make([{"broken": True}, {}], on_recreate=lambda: recreated.append(1))
    pub.publish_alerts([alert("d1"), alert("d2", "resolved")])
    assert pub.flush_and_confirm(5.0) == 2
    assert [r[1] for r in delivered] == [b"d1", b"d2"]
    assert made[0].closed and len(made) == 2
    assert pub.recreated == 1 and recreated == [1]
    assert pub.pending == 0


def test_persistent_failure_raises_and_keeps_records_pending_for_the_next_call():
    pub, delivered, _ = make([{"broken": True}] * 3 + [{}], max_attempts=3)
    pub.publish_alerts([alert()])
    with pytest.raises(PublishError, match=r"1 records not acknowledged.*fatal state"):
        pub.flush_and_confirm(5.0)
    assert pub.pending == 1 and delivered == []
    assert pub.flush_and_confirm(5.0) == 1  # the next call: a 4th producer that works
    assert len(delivered) == 1 and pub.recreated == 3


def test_flush_timeout_means_not_confirmed():
    pub, _, _ = make([{"hang": True}] * 5, max_attempts=2)
    pub.publish_alerts([alert()])
    with pytest.raises(PublishError, match="no acknowledgement yet"):
        pub.flush_and_confirm(0.5)
    assert pub.pending == 1


def test_send_raising_is_a_failure_not_a_crash_and_oversized_dead_letters_are_truncated():
    pub, delivered, _ = make([{"too_large_over": 100}], truncate_dead_letters_to=50)
    rec = RawRecord("readings", 0, 7, b"k", b"x" * 500)
    pub.publish_dead_letters([DeadLetter(DeadLetterReason.OVERSIZED, "big", rec)])
    assert pub.flush_and_confirm(1.0) == 1
    _, _, value, headers = delivered[0]
    assert value == b"x" * 50 and ("rnnwatch.truncated_from", b"500") in headers


def test_a_recreation_that_cannot_reach_the_broker_is_retried_at_the_next_confirm():
    delivered: list = []
    attempts: list[int] = []

    def factory() -> FakeProducer:
        attempts.append(1)
        if len(attempts) == 1:
            return FakeProducer(delivered, broken=True)
        if len(attempts) <= 4:  # the broker is away for the next three builds
            raise KafkaError("NoBrokersAvailable")
        return FakeProducer(delivered)

    pub = Publisher(factory, alerts_topic="alerts", dlq_topic="dlq", max_attempts=2)
    pub.publish_alerts([alert()])
    with pytest.raises(PublishError, match="no producer"):
        pub.flush_and_confirm(5.0)
    with pytest.raises(PublishError):
        pub.flush_and_confirm(5.0)  # still unreachable: no crash, still pending
    assert pub.pending == 1
    assert pub.flush_and_confirm(5.0) == 1
    assert len(delivered) == 1 and pub.recreated == 1


def test_collect_acknowledged_forgets_only_what_the_broker_took_and_counts_bytes():
    pub, _, made = make([{}])
    pub.publish_alerts([alert("d1"), alert("d2")])
    sent_bytes = pub.pending_bytes
    assert pub.pending == 2 and sent_bytes > 0
    assert pub.collect_acknowledged() == 0 and pub.pending == 2  # nothing acknowledged yet: nothing forgotten
    made[0].futures[0][0].success(None)
    assert pub.collect_acknowledged() == 1
    assert pub.pending == 1 and 0 < pub.pending_bytes < sent_bytes
    assert pub.flush_and_confirm(1) == 1 and pub.pending == 0 and pub.pending_bytes == 0
