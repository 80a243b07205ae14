"""What the daemon does before its first poll, once the broker answers: make sure its topics exist.

Reaching the broker is `streamer.kafka.admin.wait_for_broker` (retries with backoff until it answers,
the attempts run out, or the daemon is asked to stop). Topics are created when missing (partition count
from `--topic-partitions`), unless creation is forbidden (`--no-create-topics`); then a `ConfigError`
names every missing topic and its variable.
"""

from __future__ import annotations

import logging

from streamer.errors import BrokerError, ConfigError
from streamer.kafka.admin import TopicSpec, ensure_topics, partition_count
from streamer.service.settings import Settings, source_name

log = logging.getLogger(__name__)


def prepare_topics(settings: Settings, existing: list[str], roles: tuple[str, ...]) -> None:
    """Create the topics of `roles` that are missing, or say which are missing when creation is off."""
    wanted = {role: settings.topics[role] for role in roles if role in settings.topics}
    missing = {role: topic for role, topic in wanted.items() if topic not in set(existing)}
    if not missing:
        return
    if not settings.create_topics:
        names = ", ".join(f"{topic} ({source_name(f'{role}_topic')})" for role, topic in missing.items())
        raise ConfigError(f"missing topics: {names}; create them, point the variables at existing topics, "
                          "or drop --no-create-topics")
    specs = [TopicSpec(topic, settings.topic_partitions) for topic in missing.values()]
    counts = ensure_topics(settings.kafka, specs)
    log.info("created topics %s", sorted(missing.values()), extra={"partitions": counts})


def ensure_copartitioned(settings: Settings, topic: str, role: str) -> int:
    """Make sure `topic` exists with exactly the readings topic's partition count (a device's messages,
    keyed by its id, then land in the partition of the same number as its readings); return the count."""
    wanted = partition_count(settings.kafka, settings.readings_topic)
    if settings.create_topics:
        have = ensure_topics(settings.kafka, [TopicSpec(topic, wanted)])[topic]
    else:
        have = partition_count(settings.kafka, topic)
    if have != wanted:
        raise BrokerError(f"{role} topic {topic} has {have} partitions but {settings.readings_topic} has "
                          f"{wanted}: a device's {role} would not reach the member that owns it; recreate it "
                          f"with {wanted} partitions or point {source_name(f'{role}_topic')} at one that has")
    return wanted
