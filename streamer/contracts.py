"""What collaborators must do, said once: the scorer the daemon drives and the metrics durable state updates.

In the manner of prometheus client_python's `Collector(Protocol)`: small structural contracts, so a
class satisfies one by having the members (no base class to inherit), mypy checks every call site, and
a test passes any object that fits. The production implementations:

- `BatchScorer`, `Scorer`: `streamer.scoring.pipeline.ScoringPipeline`; its model is a
  `model.forecaster.Forecaster` (`RecurrentForecaster`).
- `ReadingsConsumer`: `streamer.kafka.consumer.GroupConsumer` (kafka-python) and
  `streamer.kafka.confluent_consumer.ConfluentGroupConsumer` (librdkafka).
- `OutputProducer`: kafka-python's `KafkaProducer` and `streamer.kafka.confluent_producer.ConfluentProducer`.
- `CheckpointMetrics`, `RestoreMetrics`, `EvictionMetrics`, `StateMetrics`:
  `streamer.service.metrics.Metrics`, whose members are prometheus_client's `Counter`, `Gauge` and
  `Histogram` (they fit `CounterLike`, `GaugeLike`, `HistogramLike`).

Members are read-only properties, so an implementation may hold a narrower type (a `Counter` where a
`CounterLike` is asked for). Nothing here is imported at run time but `typing`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from model.forecaster import Forecaster
    from streamer.kafka.consumer import Polled
    from streamer.scoring.pipeline import PipelineConfig
    from streamer.scoring.readings import ReadingBatch, ScoredBatch
    from streamer.scoring.state_store import StateStore


# ---- scoring ------------------------------------------------------------------------------------------
class BatchScorer(Protocol):
    """Scores a batch: rows of the answer align with rows of the batch; a bad reading is marked with a
    `DropReason`, never raised (see docs/ARCHITECTURE.md, Contracts). `rnnwatch replay` needs no more."""

    def score(self, batch: ReadingBatch) -> ScoredBatch: ...


class Scorer(BatchScorer, Protocol):
    """What the daemon and its `StateManager` need of a pipeline besides `score`.

    `store` holds every device's state (the state manager checkpoints, restores and evicts in it);
    `model_version` tags the states written and the alerts raised; `model` and `device` name what
    scores, for the `rnnwatch_model_info` metric.
    """

    @property
    def store(self) -> StateStore: ...

    @property
    def model(self) -> Forecaster: ...

    @property
    def model_version(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def config(self) -> PipelineConfig: ...


# ---- Kafka clients ------------------------------------------------------------------------------------
class ReadingsConsumer(Protocol):
    """One consumer-group member on the readings topic, with explicit commits.

    Partitions are kafka-python `TopicPartition`s (topic, partition). The rebalance hooks given at
    construction run inside `poll`, never concurrently with the caller's own work.
    """

    @property
    def assigned(self) -> frozenset[Any]: ...

    def poll(self, timeout_ms: int, max_records: int) -> Polled: ...

    def commit(self, offsets: dict[Any, int], timeout_ms: int = 30_000) -> None: ...

    def pause(self, partitions: Iterable[int]) -> None: ...

    def resume(self, partitions: Iterable[int]) -> None: ...

    def lag(self, timeout_ms: int = 5_000) -> dict[tuple[str, int], int]: ...

    def close(self, timeout_ms: int = 10_000) -> None: ...


class SendFuture(Protocol):
    """What `OutputProducer.send` returns: done once acknowledged or given up on (then `exception`)."""

    @property
    def is_done(self) -> bool: ...

    @property
    def exception(self) -> BaseException | None: ...


class OutputProducer(Protocol):
    """kafka-python's producer surface, as `Publisher` and `ChangelogWriter` use it."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> SendFuture: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


# ---- metrics ------------------------------------------------------------------------------------------
class CounterLike(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class GaugeLike(Protocol):
    def set(self, value: float) -> None: ...


class HistogramLike(Protocol):
    def observe(self, amount: float) -> None: ...


class CheckpointMetrics(Protocol):
    """What `streamer.checkpoint.checkpointer.Checkpointer` records per checkpoint."""

    @property
    def checkpoints(self) -> CounterLike: ...

    @property
    def checkpoint_duration(self) -> HistogramLike: ...

    @property
    def checkpoint_pause(self) -> HistogramLike: ...

    @property
    def state_quarantined(self) -> CounterLike: ...


class RestoreMetrics(Protocol):
    """What `streamer.checkpoint.restore.Restorer` records while and after it restores."""

    @property
    def restore_progress(self) -> GaugeLike: ...

    @property
    def restored_devices(self) -> CounterLike: ...

    @property
    def state_version_mismatch(self) -> CounterLike: ...

    @property
    def restore_duration(self) -> HistogramLike: ...


class EvictionMetrics(Protocol):
    """What `streamer.checkpoint.eviction.DeviceEvictor` records."""

    @property
    def device_evictions(self) -> CounterLike: ...


class StateMetrics(CheckpointMetrics, RestoreMetrics, EvictionMetrics, Protocol):
    """Everything `streamer.checkpoint.manager.StateManager` and the parts it builds record."""

    @property
    def devices_tracked(self) -> GaugeLike: ...

    @property
    def state_memory(self) -> GaugeLike: ...

    @property
    def producer_recreated(self) -> CounterLike: ...

    @property
    def checkpoint_age(self) -> GaugeLike: ...
