"""PollDecoder: slices decoded in a worker process give what one decode in the loop gives, in order, and
a dead worker only makes decoding slower."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from streamer.ingest.codec import CodecLimits, ReadingDecoder
from streamer.ingest.dead_letter import RawRecord
from streamer.ingest.decode_worker import PollDecoder


def poll(n: int) -> list[RawRecord]:
    records = []
    for i in range(n):
        device = f"d{i % 37}"
        value = orjson.dumps({"device_id": device, "ts": 1.7e9 + i, "values": {"a": i * 0.5, "b": -i}})
        if i % 101 == 0:
            value = b"not json"
        headers = (("trace", str(i).encode()),) if i % 7 == 0 else ()
        records.append(RawRecord("readings", i % 3, i, device.encode(), value, headers))
    return records


def joined(decoder: PollDecoder, records: list[RawRecord]) -> tuple[list, np.ndarray, np.ndarray, list]:
    slices = decoder.slices(records)
    parts = list(decoder.decode_all(slices))
    assert len(parts) == len(slices)
    ids = [d for p in parts for d in p.batch.device_ids]
    values = np.concatenate([p.batch.values for p in parts])
    offsets = np.concatenate([p.batch.offsets for p in parts])
    dead = [dead_letter(d) for p in parts for d in p.dead_letters]
    return ids, values, offsets, dead


def dead_letter(d) -> tuple:
    return d.reason, d.record.partition, d.record.offset, d.to_kafka()


@pytest.fixture
def worker_decoder():
    decoder = PollDecoder(CodecLimits(), workers=1, parts=4, min_parallel=100)
    yield decoder
    decoder.close()


def test_slices_decoded_in_the_worker_equal_one_decode_in_the_loop(worker_decoder):
    records = poll(2_000)
    assert len(worker_decoder.slices(records)) == 4
    whole = ReadingDecoder(CodecLimits()).decode(records)
    ids, values, offsets, dead = joined(worker_decoder, records)
    assert ids == list(whole.batch.device_ids)
    np.testing.assert_array_equal(values, whole.batch.values)
    np.testing.assert_array_equal(offsets, whole.batch.offsets)
    assert dead == [dead_letter(d) for d in whole.dead_letters]
    assert len(dead) == 20  # the "not json" ones, headers kept (d.to_kafka() compared above)
    assert joined(worker_decoder, records)[0] == ids  # and again: nothing left over from the first poll


def test_a_poll_larger_than_the_pipe_buffers_does_not_deadlock(worker_decoder):
    import threading

    records = poll(20_000)  # slices of ~0.5 MB each way: both ends would block writing to each other
    out: list = []
    thread = threading.Thread(target=lambda: out.append(joined(worker_decoder, records)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "decoding a large poll hung"
    assert len(out[0][0]) == 20_000 - 199  # every record but the "not json" ones


def test_small_polls_are_decoded_in_the_loop(worker_decoder):
    assert len(worker_decoder.slices(poll(99))) == 1


def test_a_dead_worker_falls_back_to_the_loop(worker_decoder, caplog):
    records = poll(1_000)
    expected = joined(worker_decoder, records)[0]
    worker_decoder._process.kill()
    worker_decoder._process.join(5)
    assert joined(worker_decoder, records)[0] == expected
    assert "decode worker process is gone" in caplog.text
    assert len(worker_decoder.slices(records)) == 1  # from now on in the loop
