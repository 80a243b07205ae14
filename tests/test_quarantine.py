"""A device state that cannot be checkpointed never stops the checkpoint of every other device.

Three reasons a state cannot be written (the codec refuses it, it is too large, the broker refuses it):
each time the device is quarantined (kept in memory and scored, not written), counted, and the other
states are written and the offsets committed. Uses the in-memory changelog of test_checkpoint.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kafka.errors import MessageSizeTooLargeError
from test_checkpoint import TOPIC, FakeLog, _Future, _Producer

from streamer.checkpoint.changelog import ChangelogWriter
from streamer.checkpoint.checkpointer import Checkpointer
from streamer.checkpoint.state_codec import decode_state
from streamer.scoring.factory import build_pipeline
from streamer.scoring.readings import ReadingBatch
from streamer.service.metrics import Metrics

HUGE = "x" * 70_000  # over the 64 KiB a checkpoint can hold (the decoder's limit keeps it out of the daemon)


class RefusingProducer(_Producer):
    """Refuses every record of the devices in `refused` the way kafka-python does a too large one."""

    def __init__(self, log: FakeLog, refused: set[bytes]) -> None:
        super().__init__(log)
        self.refused = refused

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int) -> _Future:
        if key in self.refused and value is not None:
            return _Future(MessageSizeTooLargeError("The message is 3600000 bytes when serialized"))
        return super().send(topic, key, value, partition)


class Setup:
    def __init__(self, refused: set[bytes] | None = None, max_record_bytes: int = 1_000_000) -> None:
        self.log, self.committed, self.metrics = FakeLog(), {}, Metrics()
        self.pipe = build_pipeline(None, "cpu")
        factory = (lambda: RefusingProducer(self.log, refused)) if refused is not None else self.log.producer
        writer = ChangelogWriter(factory, TOPIC)
        self.checkpointer = Checkpointer(self.pipe.store, writer, self.pipe.model_version, interval_s=1e9,
                                         commit=self.committed.update, metrics=self.metrics,
                                         max_record_bytes=max_record_bytes)
        self.offset = 0

    def feed(self, devices: list[str], widths: dict[str, int] | None = None) -> np.ndarray:
        widths = widths or {}
        n = len(devices)
        values = [[1.0 + self.offset] * widths.get(d, 2) for d in devices]
        offsets = list(range(self.offset, self.offset + n))
        ts = [1e9 + 60.0 * self.offset] * n
        batch = ReadingBatch.from_rows(devices, ts, values, None, [0] * n, offsets)
        scored = self.pipe.score(batch)
        self.offset += n
        self.checkpointer.track(batch, scored, {0: self.offset})
        return scored.status

    def written(self) -> dict[str, Any]:
        """{device: latest value (None for a tombstone)} of the changelog."""
        return {rec.key.decode(): rec.value for rec in self.log.parts[0]}

    def quarantined(self) -> float:
        return self.metrics.registry.get_sample_value("rnnwatch_state_quarantined_total") or 0.0


def test_a_state_the_codec_refuses_is_quarantined_and_the_others_committed():
    s = Setup()
    s.feed(["ok-1", HUGE, "ok-2"])
    assert s.checkpointer.checkpoint([0]) == 2
    assert set(s.written()) == {"ok-1", "ok-2"} and s.committed == {0: 3} and s.quarantined() == 1
    assert (s.feed([HUGE, "ok-1"]) == 0).all()  # still scored from memory
    s.checkpointer.checkpoint([0])
    assert s.committed == {0: 5} and s.quarantined() == 1  # not tried again, not counted again
    assert decode_state(s.written()["ok-1"]).source_offset == 4


def test_a_state_too_large_for_a_record_is_quarantined():
    s = Setup(max_record_bytes=4_000)  # a 2-channel state takes ~0.8 kB, a 40-channel one ~8 kB
    s.feed(["small", "wide"], widths={"wide": 40})
    assert s.checkpointer.checkpoint([0]) == 1
    assert set(s.written()) == {"small"} and s.committed == {0: 2} and s.quarantined() == 1


def test_a_record_the_broker_refuses_is_quarantined_and_its_old_state_tombstoned():
    refused: set[bytes] = set()
    s = Setup(refused=refused)
    s.feed(["ok", "big"])
    s.checkpointer.checkpoint([0])
    assert set(s.written()) == {"ok", "big"}
    refused.add(b"big")  # from now on its record is "too large" for the broker
    s.feed(["ok", "big"])
    assert s.checkpointer.checkpoint([0]) == 1
    assert s.written() == {"ok": s.written()["ok"], "big": None}  # a restore cannot bring the old one back
    assert s.committed == {0: 4} and s.quarantined() == 1
    s.feed(["big"])
    s.checkpointer.checkpoint([0])
    assert s.committed == {0: 5} and s.quarantined() == 1
