"""Chunks of bounded waves: order kept, messages whole, small devices first, a beat between."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.ingest.dead_letter import RawRecord
from streamer.ingest.decode_worker import PollDecoder
from streamer.kafka.consumer import Polled
from streamer.scoring.readings import ReadingBatch, ScoredBatch
from streamer.service.chunks import device_ranks, wave_chunks
from streamer.service.daemon import Daemon
from streamer.service.output_window import OutputWindow
from streamer.service.settings import Settings

# a poll: messages of (device, readings in it)
messages = st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 6)), min_size=1, max_size=40)


def as_batch(poll: list[tuple[str, int]]) -> ReadingBatch:
    ids, offsets = [], []
    for offset, (device, count) in enumerate(poll):
        ids += [device] * count
        offsets += [offset] * count
    n = len(ids)
    return ReadingBatch.from_rows(ids, np.arange(n, dtype=float), [[1.0]] * n, None, [0] * n, offsets)


@given(messages, st.integers(1, 8))
def test_chunks_keep_order_and_messages_whole_and_bound_the_waves(poll, budget):
    batch = as_batch(poll)
    longest = max(count for _, count in poll)
    chunks = wave_chunks(batch, budget)
    if chunks is None:
        assert int(device_ranks(batch.device_ids).max()) < budget
        return
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(batch)))
    chunk_of = np.empty(len(batch), dtype=int)
    for c, rows in enumerate(chunks):
        chunk_of[rows] = c
        assert list(rows) == sorted(rows)  # arrival order within a chunk
        part = batch.take(rows)
        assert int(device_ranks(part.device_ids).max()) + 1 < budget + longest  # its waves
    for device in {d for d, _ in poll}:
        mine = chunk_of[[i for i, d in enumerate(batch.device_ids) if d == device]]
        assert (np.diff(mine) >= 0).all()  # a device's readings never go back a chunk
        if len(mine) < budget:
            assert (mine == 0).all()  # a device with little to say waits for nobody
    for offset in set(batch.offsets.tolist()):
        assert len(set(chunk_of[batch.offsets == offset].tolist())) == 1  # a message is never split


TP = namedtuple("TP", "topic partition")


class FakeState:
    """The StateManager surface the daemon's loop uses: admit_and_score, then applied."""

    def __init__(self) -> None:
        self.scored: list[int] = []
        self.offsets: list[dict[int, int]] = []

    def admit_and_score(self, batch: ReadingBatch) -> ScoredBatch:
        self.scored.append(len(batch))
        n = len(batch)
        return ScoredBatch(np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, np.uint8),
                           np.zeros(n, np.int16))

    def applied(self, batch: ReadingBatch, scored: ScoredBatch, offsets: dict[int, int]) -> None:
        self.offsets.append(dict(offsets))


class FakePublisher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def publish_dead_letters(self, dead: list[Any]) -> None:
        self.calls.append(("dead", len(dead)))

    pending = pending_bytes = 0  # what the output window reads: nothing left unacknowledged

    def publish_alerts(self, events: list[Any], *, shadow: bool = False) -> None:
        pass

    def collect_acknowledged(self) -> int:
        return 0

    def publish_scores(self, batch: ReadingBatch, scored: ScoredBatch) -> None:
        self.calls.append(("scores", len(batch)))

    def flush_and_confirm(self, timeout_s: float) -> int:
        self.calls.append(("confirm", 0))
        return 0


def test_the_daemon_scores_a_big_poll_in_chunks_with_a_heartbeat_between_them():
    settings = replace(Settings(), max_readings_per_message=100)
    daemon = Daemon(settings, pipeline=object())
    beats: list[int] = []
    state, publisher = FakeState(), FakePublisher()
    daemon._beat = lambda: beats.append(len(state.scored))  # type: ignore[method-assign]
    daemon.decoder = PollDecoder(settings.codec_limits, workers=0)
    daemon.window = OutputWindow(max_records=10, max_bytes=1 << 20, confirm=lambda: None)
    readings = [{"ts": 1e9 + i, "values": [1.0]} for i in range(100)]
    big = orjson.dumps({"device_id": "big", "readings": readings})
    small = orjson.dumps({"device_id": "small", "ts": 1e9, "values": [1.0]})
    records = [*(RawRecord("r", 0, i, b"big", big) for i in range(3)), RawRecord("r", 0, 3, b"small", small),
               RawRecord("r", 0, 4, b"x", b"junk")]
    daemon._process(publisher, state, Polled(records, {TP("r", 0): 5}),  # type: ignore[arg-type]
                    caught_up=True)
    assert state.scored == [101, 100, 100]  # the small device rides in the first chunk
    assert beats == [1, 2]  # a heartbeat after each chunk but the last
    assert state.offsets == [{}, {}, {0: 5}]  # a poll's offsets go to the checkpointer after its last chunk
    # caught up: the last chunk's output is confirmed before it is counted; the others ride the window
    assert publisher.calls[0] == ("dead", 1) and publisher.calls.count(("confirm", 0)) == 1
    assert daemon.accounting.totals["consumed"] == 302


@pytest.mark.slow  # the benchmark at its full size
def test_bench_message_reports_the_chunks_of_the_worst_message(capsys):
    from streamer.cli import main

    assert main(["bench", "message", "--messages", "4", "--readings", "400", "--channels", "4", "--runs", "1",
                 "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["chunks"] == 2 and result["message_bytes"] > 400 * 4  # starts at 0, 400, 800 | 1200
    assert result["longest_chunk_s"][0] > 0 and result["score_s"][1] >= result["first_chunk_s"][1]
