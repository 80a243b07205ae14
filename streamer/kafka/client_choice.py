"""Which Kafka client library the daemon runs on: kafka-python (always installed) or librdkafka.

`RNNWATCH_KAFKA_CLIENT` (`--kafka-client`) is `auto`, `kafka-python` or `confluent`; `auto` picks
confluent-kafka (librdkafka: several times kafka-python's consume and produce rates) when it is
importable, else kafka-python. Both paths keep the same contracts (`streamer.contracts.ReadingsConsumer`,
`OutputProducer`, and the changelog's `StateTopicReader`); topic administration stays on kafka-python.

    >>> resolve_client("kafka-python")
    'kafka-python'
    >>> resolve_client("auto") in ("kafka-python", "confluent")
    True
"""

from __future__ import annotations

import importlib.util

from streamer.errors import ConfigError

KAFKA_CLIENTS = ("auto", "kafka-python", "confluent")


def confluent_installed() -> bool:
    return importlib.util.find_spec("confluent_kafka") is not None


def resolve_client(name: str) -> str:
    """`kafka-python` or `confluent`; `ConfigError` for confluent when confluent-kafka is missing."""
    if name not in KAFKA_CLIENTS:
        raise ConfigError(f"kafka client {name!r} is not one of {', '.join(KAFKA_CLIENTS)}")
    if name == "auto":
        return "confluent" if confluent_installed() else "kafka-python"
    if name == "confluent" and not confluent_installed():
        raise ConfigError("RNNWATCH_KAFKA_CLIENT=confluent but confluent-kafka is not installed; "
                          "pip install 'rnnwatch[kafka-fast]' or set RNNWATCH_KAFKA_CLIENT=kafka-python")
    return name
