"""A librdkafka producer (`confluent_kafka.Producer`) behind kafka-python's `send` / `flush` / `close`.

`Publisher` and `ChangelogWriter` were written against kafka-python's producer: `send()` returns a future
whose `is_done` and `exception` say whether the broker acknowledged the record, `flush(timeout)` waits
for every send, `close(timeout)` ends it. `ConfluentProducer` keeps that surface
(`streamer.contracts.OutputProducer`), so both run unchanged on either client:

- `send` calls `produce` with a delivery callback that completes a `DeliveryFuture`; when librdkafka's
  local queue is full it serves delivery reports for up to 100 ms at a time until there is room
  (back-pressure instead of `BufferError`), within `max_block_s`;
- delivery callbacks run inside `poll`/`flush` on the calling thread: `send` serves them without
  waiting every `SERVE_EVERY` sends, `flush` serves all of them;
- a record refused for what it is carries the kafka-python error class callers test for
  (`MessageSizeTooLargeError`, `InvalidRecordError`, `CorruptRecordError`); any other failure is a
  `DeliveryError` naming librdkafka's error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from streamer.errors import BrokerError

log = logging.getLogger(__name__)

SERVE_EVERY = 1_000  # sends between non-blocking polls for delivery reports
_FULL_WAIT_S = 0.1


class DeliveryError(BrokerError):
    """librdkafka gave up on a record (its retries ran out, a fatal producer error, a timeout)."""


class DeliveryFuture:
    """What `send` returns: done once the broker acknowledged the record or librdkafka gave up on it."""

    __slots__ = ("exception", "is_done")

    def __init__(self, exception: BaseException | None = None) -> None:
        self.is_done = exception is not None
        self.exception = exception

    def complete(self, err: Any, _msg: Any) -> None:  # librdkafka's delivery callback (err, msg)
        self.exception = None if err is None else as_kafka_python_error(err)
        self.is_done = True


class ConfluentProducer:
    """`confluent_kafka.Producer(config)` with kafka-python's producer surface."""

    def __init__(self, config: dict[str, Any], *, max_block_s: float = 30.0,
                 factory: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self._producer = (factory or _librdkafka_producer)(config)
        self._max_block_s = max_block_s
        self._unserved = 0

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> DeliveryFuture:
        future = DeliveryFuture()
        kwargs: dict[str, Any] = {"value": value, "key": key, "on_delivery": future.complete}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        deadline = time.monotonic() + self._max_block_s
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError as exc:  # local queue full: serve delivery reports until there is room
                if time.monotonic() >= deadline:
                    raise DeliveryError(f"producer queue full for {self._max_block_s:g} s: {exc}") from exc
                self._serve(_FULL_WAIT_S)
            except Exception as exc:  # KafkaException from produce: too large, unknown topic, fatal
                raise _from_exception(exc) from exc
        self._unserved += 1
        if self._unserved >= SERVE_EVERY:
            self._serve(0)
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every delivery report (up to `timeout` s); the futures say which were acknowledged."""
        self._serve(-1 if timeout is None else timeout, flush=True)

    def _serve(self, timeout: float, *, flush: bool = False) -> None:
        """Serve delivery reports. A producer in a fatal state (an idempotent one whose broker lost its
        state) raises a bare `KafkaError` out of librdkafka, which only a bare `except` catches: logged,
        and the records it did not report stay unacknowledged, so the publisher rebuilds the producer."""
        self._unserved = 0
        try:
            if flush:
                self._producer.flush(timeout)
            else:
                self._producer.poll(timeout)
        except:  # noqa: E722 - see above; a BaseException (KeyboardInterrupt) is raised again
            error = sys.exc_info()[1]
            if isinstance(error, BaseException) and not isinstance(error, Exception):
                raise
            log.error("the librdkafka producer failed: %s; its unacknowledged records will be sent again "
                      "by a new producer", error)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout` s, None: until done; 0: drop what is queued) and let librdkafka go."""
        if timeout is None or timeout > 0:
            self.flush(timeout)
        else:
            self._producer.purge()
            self._producer.poll(0)  # the purged records' futures fail now, not never


def log_client_error(err: Any) -> None:
    """librdkafka's `error_cb`: client-level errors (broker down, a fatal producer state), logged.

    Without it confluent-kafka raises a fatal error out of `flush`/`poll` as a bare `KafkaError`, which
    no `except` clause catches; with it, the records fail through their delivery reports and the
    publisher rebuilds the producer.
    """
    fatal = bool(getattr(err, "fatal", lambda: False)())
    if fatal:  # the others (broker down, ...) are in librdkafka's own log lines already
        log.error("Kafka client error (fatal: the producer will be rebuilt): %s", err)
    else:
        log.debug("Kafka client error: %s", err)


def _librdkafka_producer(config: dict[str, Any]) -> Any:
    from confluent_kafka import Producer

    return Producer(config)


# librdkafka error names -> the kafka-python error class callers test for (a record refused for what it is)
_REFUSED = {"MSG_SIZE_TOO_LARGE": "MessageSizeTooLargeError", "INVALID_RECORD": "InvalidRecordError",
            "CORRUPT_MESSAGE": "CorruptRecordError", "RECORD_LIST_TOO_LARGE": "RecordListTooLargeError"}


def as_kafka_python_error(err: Any) -> BaseException:
    """A librdkafka `KafkaError` as the exception kafka-python would have given for it."""
    from kafka import errors

    name = str(err.name()).lstrip("_")
    refused = _REFUSED.get(name)
    if refused is not None:
        return getattr(errors, refused)(str(err))
    return DeliveryError(f"{err.name()}: {err.str()}")


def _from_exception(exc: Exception) -> BaseException:
    err = exc.args[0] if exc.args and hasattr(exc.args[0], "name") else None
    return as_kafka_python_error(err) if err is not None else DeliveryError(f"{type(exc).__name__}: {exc}")
