"""Topic administration and broker reachability, on top of kafka-python 3's `KafkaAdminClient`.

Topics are always created explicitly: a topic a producer creates implicitly gets the broker's default
partition count (4 on tansu), which is never what the caller wanted.

Every function takes either a `KafkaClientSettings` or a plain "host:port" bootstrap string.

The broker may come up after its clients (a pod starting beside it, a test harness): `wait_for_broker`
retries with exponential backoff (`streamer.backoff`), logging each failed try and what to check, until
it answers, the attempts run out, or the caller asks it to stop.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from streamer.backoff import Backoff, Stopped
from streamer.errors import BrokerError
from streamer.kafka.client_config import KafkaClientSettings, admin_kwargs

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_ERROR_HINT = "check KAFKA_BOOTSTRAP_SERVERS"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partition count, topic configs (e.g. {"cleanup.policy": "compact"})."""

    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be >= 1, got {self.partitions}")


TopicLike = TopicSpec | tuple[str, int] | tuple[str, int, Mapping[str, str]]


def as_settings(client: KafkaClientSettings | str) -> KafkaClientSettings:
    """Accept a settings object or a bare bootstrap string."""
    if isinstance(client, KafkaClientSettings):
        return client
    return KafkaClientSettings(bootstrap_servers=client)


@contextmanager
def admin_client(client: KafkaClientSettings | str, timeout_s: float = 10.0) -> Iterator[Any]:
    """A connected `KafkaAdminClient`, closed on exit; connection failures raise `BrokerError`."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    settings = as_settings(client)
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            **admin_kwargs(settings, bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach broker {settings.bootstrap_servers}: {exc}; {_ERROR_HINT}") from exc
    try:
        yield admin
    finally:
        admin.close()


def probe_metadata(client: KafkaClientSettings | str, timeout_s: float = 2.0) -> list[str]:
    """One metadata round trip; returns the topic names. Raises `BrokerError` when nobody answers.

    A TCP probe comes first: kafka-python leaves an IO thread behind for every admin client whose
    bootstrap fails, so an unreachable address must not get that far.
    """
    settings = as_settings(client)
    servers = settings.bootstrap_servers.split(",")
    if not any(port_open(*_split_host_port(server), timeout_s) for server in servers):
        raise BrokerError(f"no TCP listener at {settings.bootstrap_servers}")
    with admin_client(settings, timeout_s) as admin:
        try:
            return list(admin.list_topics())
        except Exception as exc:  # any kafka-python failure is "the broker did not answer"
            raise BrokerError(f"broker {settings.bootstrap_servers} gave no metadata: {exc}") from exc


def wait_for_broker(
    client: KafkaClientSettings | str,
    attempts: int = 5,
    backoff_s: float = 0.5,
    *,
    max_backoff_s: float = 10.0,
    timeout_s: float = 2.0,
    hint: str = _ERROR_HINT,
    wait: Callable[[float], bool | None] = time.sleep,
    beat: Callable[[], None] = lambda: None,
) -> list[str]:
    """Probe the broker until it answers and return its topic names; `attempts` 0 tries until stopped.

    Between tries `wait(delay)` runs, the delay doubling from `backoff_s` up to `max_backoff_s`; a
    `wait` that returns True (`threading.Event.wait` of a stop event that got set) raises `Stopped`.
    `beat()` runs before every try (the daemon's liveness). When the attempts run out, `BrokerError`
    ends with `hint`: name the flag or variable the caller's address came from.
    """
    settings = as_settings(client)
    servers = settings.bootstrap_servers
    backoff = Backoff(backoff_s, max_backoff_s)
    attempt = 0
    while True:
        attempt += 1
        beat()
        try:
            topics = probe_metadata(settings, timeout_s)
        except BrokerError as exc:
            if attempts and attempt >= attempts:
                raise BrokerError(f"broker {servers} unreachable after {attempt} tries; {hint} "
                                  f"(last error: {exc})") from exc
            log.warning("broker %s unreachable (try %d%s), retrying in %.1f s; %s", servers, attempt,
                        f"/{attempts}" if attempts else "", backoff.delay_s, hint,
                        extra={"error": str(exc), "attempt": attempt})
        else:
            if attempt > 1:
                log.info("broker %s reachable after %d tries", servers, attempt, extra={"attempts": attempt})
            return topics
        if wait(backoff.next()):
            raise Stopped()


def ensure_topics(
    client: KafkaClientSettings | str, specs: Iterable[TopicLike], timeout_s: float = 10.0
) -> dict[str, int]:
    """Create the topics that do not exist yet; return {name: partition count} for all of them.

    An existing topic is left as it is, even when its partition count or config differs from the spec
    (a warning is logged); compare the returned counts if that matters to you.
    """
    wanted = [_as_spec(spec) for spec in specs]
    if not wanted:
        return {}
    request = {
        spec.name: {
            "num_partitions": spec.partitions,
            "replication_factor": spec.replication_factor,
            "configs": {key: str(value) for key, value in spec.config.items()},
        }
        for spec in wanted
    }
    with admin_client(client, timeout_s) as admin:
        try:
            response = admin.create_topics(request, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        except Exception as exc:
            raise BrokerError(f"create_topics {sorted(request)} failed: {exc}") from exc
        for topic in response["topics"]:
            code = topic["error_code"]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise BrokerError(
                    f"broker refused to create topic {topic['name']!r}: error {code} "
                    f"{topic.get('error_message') or ''}".rstrip()
                )
        admin.wait_for_topics(list(request), timeout_ms=int(timeout_s * 1000))
        counts = _partition_counts(admin, list(request))
    for spec in wanted:
        if counts[spec.name] != spec.partitions:
            log.warning(
                "topic %s exists with %d partitions, not the %d asked for; left as it is",
                spec.name, counts[spec.name], spec.partitions,
            )
    return counts


def partition_count(client: KafkaClientSettings | str, topic: str, timeout_s: float = 10.0) -> int:
    """How many partitions `topic` has; `BrokerError` when it does not exist."""
    with admin_client(client, timeout_s) as admin:
        return _partition_counts(admin, [topic])[topic]


def _partition_counts(admin: Any, topics: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in admin.describe_topics(topics):
        if info["error_code"] != 0 or not info["partitions"]:
            raise BrokerError(
                f"topic {info['name']!r} does not exist (error {info['error_code']}); "
                "create it with ensure_topics"
            )
        counts[info["name"]] = len(info["partitions"])
    return counts


def _as_spec(spec: TopicLike) -> TopicSpec:
    if isinstance(spec, TopicSpec):
        return spec
    if len(spec) == 2:
        return TopicSpec(spec[0], spec[1])
    return TopicSpec(spec[0], spec[1], dict(spec[2]))


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _split_host_port(server: str) -> tuple[str, int]:
    """ "host:port", "[::1]:port", "PLAINTEXT://host:port" or "host" (port 9092) -> (host, port)."""
    server = server.strip().split("://")[-1]
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.lstrip(":")
    elif server.count(":") == 1:
        host, port = server.split(":")
    else:
        host, port = server, ""
    try:
        return host or "localhost", int(port or 9092)
    except ValueError as exc:
        raise BrokerError(f"bootstrap server {server!r} has no valid port; write it as host:port") from exc
