"""What the daemon does before its first poll: reach the broker, make sure its topics exist.

- The broker may come up after the daemon (a pod starting beside it): `wait_for_broker` retries with
  exponential backoff, logging each failed try and what to check, until it answers, the attempts run
  out, or the daemon is asked to stop.
- Topics are created when missing (partition count from `--topic-partitions`), unless creation is
  forbidden (`--no-create-topics`); then a `ConfigError` names every missing topic and its variable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from streamer.errors import BrokerError, ConfigError
from streamer.kafka.admin import TopicSpec, ensure_topics, probe_metadata
from streamer.service.settings import Settings

log = logging.getLogger(__name__)

_VARIABLES = {"readings": "RNNWATCH_READINGS_TOPIC", "alerts": "RNNWATCH_ALERTS_TOPIC",
              "dlq": "RNNWATCH_DLQ_TOPIC", "scores": "RNNWATCH_SCORES_TOPIC", "state": "RNNWATCH_STATE_TOPIC"}


class Stopped(Exception):
    """The daemon was asked to stop while it was still starting."""


def wait_for_broker(
    settings: Settings,
    stop: threading.Event,
    *,
    beat: Callable[[], None] = lambda: None,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
) -> list[str]:
    """Probe the broker until it answers; return its topic names. `settings.startup_attempts` 0: forever.

    Raises `BrokerError` when the attempts run out and `Stopped` when `stop` is set meanwhile.
    """
    servers = settings.kafka.bootstrap_servers
    attempt, delay = 0, backoff_s
    while True:
        attempt += 1
        beat()
        try:
            topics = probe_metadata(settings.kafka, timeout_s=min(5.0, max_backoff_s))
            if attempt > 1:
                log.info("broker %s reachable after %d tries", servers, attempt, extra={"attempts": attempt})
            return topics
        except BrokerError as exc:
            limit = settings.startup_attempts
            if limit and attempt >= limit:
                raise BrokerError(f"broker {servers} unreachable after {attempt} tries; check "
                                  f"KAFKA_BOOTSTRAP_SERVERS (last error: {exc})") from exc
            log.warning("broker %s unreachable (try %d%s), retrying in %.1f s; check KAFKA_BOOTSTRAP_SERVERS",
                        servers, attempt, f"/{limit}" if limit else "", delay,
                        extra={"error": str(exc), "attempt": attempt})
        if stop.wait(delay):
            raise Stopped()
        delay = min(delay * 2, max_backoff_s)


def prepare_topics(settings: Settings, existing: list[str], roles: tuple[str, ...]) -> None:
    """Create the topics of `roles` that are missing, or say which are missing when creation is off."""
    wanted = {role: settings.topics[role] for role in roles if role in settings.topics}
    missing = {role: topic for role, topic in wanted.items() if topic not in set(existing)}
    if not missing:
        return
    if not settings.create_topics:
        names = ", ".join(f"{topic} ({_VARIABLES[role]})" for role, topic in missing.items())
        raise ConfigError(f"missing topics: {names}; create them, point the variables at existing topics, "
                          "or drop --no-create-topics")
    specs = [TopicSpec(topic, settings.topic_partitions) for topic in missing.values()]
    counts = ensure_topics(settings.kafka, specs)
    log.info("created topics %s", sorted(missing.values()), extra={"partitions": counts})
