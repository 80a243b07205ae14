"""Decoding in a second process, so that it overlaps scoring: the GIL keeps a thread from doing that.

Both the decoder (`ReadingDecoder`: JSON and validation, pure Python) and the scoring pipeline hold the
GIL nearly all the time (measured: a decode thread beside scoring gained nothing). `PollDecoder` splits a
large poll into up to `parts` slices in arrival order and has a worker process decode slice k + 1
while the caller scores slice k; a small poll (under `min_parallel` records) is decoded in the caller,
where the round trip would cost more than it saves. Slices keep every device's readings in order, and
the caller scores them in order, so the result is the one a single decode would give.

What crosses the pipe is cheap to pickle: per record, topic, partition, offset, key, value and headers
as parallel lists; back comes the `Decoded` (numpy columns, device ids, dead letters whose records are
the worker's `RawRecord` copies, equal in every field the dead letter carries).

The worker is a `spawn`ed process (never `fork`: the Kafka clients run threads); it ends when its pipe
closes, so it does not outlive a daemon killed with SIGKILL, and it ignores SIGINT/SIGTERM (the daemon
stops it). Requests and answers travel on two one-way pipes, and a thread in the worker always
reads the requests: the caller sends slice k + 1 before it reads answer k, and both ends blocked
writing to each other would be a deadlock. If the worker dies, decoding falls back to the caller
with an error in the log: slower, never wrong.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from streamer.ingest.codec import CodecLimits, Decoded, ReadingDecoder
from streamer.ingest.dead_letter import KafkaRecord, RawRecord

log = logging.getLogger(__name__)

Columns = tuple[list[str], list[int], list[int], list[bytes | None], list[bytes | None], dict[int, Any]]


class PollDecoder:
    """Decodes a poll in slices, overlapping the caller's work on the previous slice when it is large."""

    def __init__(self, limits: CodecLimits, *, workers: int = 1, parts: int = 4, min_parallel: int = 4_000
                 ) -> None:
        if workers not in (0, 1):
            raise ValueError(f"workers must be 0 (decode in the loop) or 1, got {workers}")
        self.limits = limits
        self.parts = parts
        self.min_parallel = min_parallel
        self._inline = ReadingDecoder(limits)
        self._conn: Any = None  # answers come in here
        self._requests: Any = None  # slices go out here
        self._process: Any = None
        self._outstanding = 0
        if workers:
            self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        requests_in, self._requests = ctx.Pipe(duplex=False)
        self._conn, answers_out = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_serve, args=(requests_in, answers_out, self.limits),
                                    name="rnnwatch-decode", daemon=True)
        self._process.start()
        requests_in.close()
        answers_out.close()

    def slices(self, records: Sequence[KafkaRecord]) -> list[Sequence[KafkaRecord]]:
        """The poll's records in arrival order, in as many slices as will be decoded separately."""
        n = len(records)
        if self._conn is None or n < self.min_parallel:
            return [records]
        step = -(-n // self.parts)
        return [records[i:i + step] for i in range(0, n, step)]

    def decode_all(self, slices: list[Sequence[KafkaRecord]]) -> Iterator[Decoded]:
        """Each slice decoded, in order; the next one decodes in the worker while the caller has this one."""
        if self._conn is None or len(slices) == 1:
            yield from (self._inline.decode(s) for s in slices)
            return
        self._drain()
        sent = 0
        for k in range(len(slices)):
            while sent < len(slices) and sent <= k + 1:
                sent += self._send(slices[sent])
            decoded = self._receive() if self._conn is not None else None
            yield decoded if decoded is not None else self._inline.decode(slices[k])

    def _send(self, records: Sequence[KafkaRecord]) -> int:
        if self._conn is None:
            return 1
        try:
            self._requests.send(_columns(records))
            self._outstanding += 1
        except (OSError, EOFError, ValueError) as exc:
            self._lost(exc)
        return 1

    def _receive(self) -> Decoded | None:
        try:
            decoded: Decoded = self._conn.recv()
        except (OSError, EOFError) as exc:
            self._lost(exc)
            return None
        self._outstanding -= 1
        return decoded

    def _drain(self) -> None:
        """Drop answers a previous poll left unread (its caller failed half way)."""
        while self._conn is not None and self._outstanding > 0:
            self._receive()

    def _lost(self, exc: BaseException) -> None:
        log.error("the decode worker process is gone (%s: %s); decoding in the main loop from now on",
                  type(exc).__name__, exc)
        self.close()

    def close(self) -> None:
        """Stop the worker (it exits when its pipe closes)."""
        conns = (self._conn, self._requests)
        process = self._process
        self._conn = self._requests = self._process = None
        self._outstanding = 0
        for conn in conns:
            if conn is not None:
                conn.close()
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.kill()


def _columns(records: Sequence[KafkaRecord]) -> Columns:
    headers = {i: h for i, r in enumerate(records) if (h := getattr(r, "headers", None))}
    return ([r.topic for r in records], [r.partition for r in records], [r.offset for r in records],
            [r.key for r in records], [r.value for r in records], headers)


def _serve(requests: Any, answers: Any, limits: CodecLimits) -> None:
    """The worker process: decode what arrives, in order, until the requests pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    decoder = ReadingDecoder(limits)
    inbox: queue.SimpleQueue[Columns | None] = queue.SimpleQueue()
    threading.Thread(target=_read_requests, args=(requests, inbox), name="rnnwatch-decode-in",
                     daemon=True).start()
    while (columns := inbox.get()) is not None:
        topics, partitions, offsets, keys, values, headers = columns
        records = [RawRecord(t, p, o, k, v, tuple(headers.get(i, ()))) for i, (t, p, o, k, v)
                   in enumerate(zip(topics, partitions, offsets, keys, values, strict=True))]
        try:
            answers.send(decoder.decode(records))
        except (OSError, EOFError):
            return


def _read_requests(requests: Any, inbox: queue.SimpleQueue[Columns | None]) -> None:
    while True:
        try:
            inbox.put(requests.recv())
        except (EOFError, OSError):
            inbox.put(None)
            return
