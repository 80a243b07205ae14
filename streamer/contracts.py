"""What collaborators must do, said once: the scorer the daemon drives and the metrics durable state updates.

In the manner of prometheus client_python's `Collector(Protocol)`: small structural contracts, so a
class satisfies one by having the members (no base class to inherit), mypy checks every call site, and
a test passes any object that fits. The production implementations:

- `BatchScorer`, `Scorer`: `streamer.scoring.pipeline.ScoringPipeline`; its model is a
  `model.forecaster.Forecaster` (`RecurrentForecaster`).
- `CheckpointMetrics`, `RestoreMetrics`, `EvictionMetrics`, `StateMetrics`:
  `streamer.service.metrics.Metrics`, whose members are prometheus_client's `Counter`, `Gauge` and
  `Histogram` (they fit `CounterLike`, `GaugeLike`, `HistogramLike`).

Members are read-only properties, so an implementation may hold a narrower type (a `Counter` where a
`CounterLike` is asked for). Nothing here is imported at run time but `typing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from model.forecaster import Forecaster
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
