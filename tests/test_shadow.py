"""Shadow scoring: the live answers are untouched, the shadow's own episodes ride along, evictions follow."""

from __future__ import annotations

import numpy as np
import torch

from model.artifact import ModelArtifact, load
from model.forecaster import ForecasterConfig, RecurrentForecaster
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import ReadingBatch
from streamer.scoring.shadow import ShadowedPipeline


def _other_model() -> ModelArtifact:
    torch.manual_seed(3)
    model = RecurrentForecaster(ForecasterConfig(cell="gru", hidden_size=16)).eval()
    return ModelArtifact(model=model, version="other-gru-h16", normaliser=load().normaliser)


def _batches(devices: int = 6, steps: int = 300, spike_at: int | None = 250) -> list[ReadingBatch]:
    rng = np.random.default_rng(2)
    t = np.arange(steps)
    values = np.sin(2 * np.pi * t / 100)[:, None] + rng.normal(0, 0.05, (steps, devices))  # (T, D)
    if spike_at is not None:
        values[spike_at, 0] += 8.0  # one device gets a spike: an episode for whichever model sees it
    ids = [f"d{i}" for i in range(devices)]
    return [ReadingBatch.from_rows(ids * 50, np.repeat(60.0 * t[s : s + 50], devices),
                                   [[v] for v in values[s : s + 50].reshape(-1)])
            for s in range(0, steps, 50)]


def test_the_live_answers_are_those_of_the_live_pipeline_alone() -> None:
    alone = ScoringPipeline(load())
    shadowed = ShadowedPipeline(ScoringPipeline(load()), ScoringPipeline(_other_model()))
    assert shadowed.model_version == alone.model_version and shadowed.store is shadowed.live.store
    for batch in _batches():
        a, b = alone.score(batch), shadowed.score(batch)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert [e.alert_id for e in a.events] == [e.alert_id for e in b.events]
        assert all(e.model_version == "other-gru-h16" for e in b.shadow_events)
        assert a.shadow_events == []


def test_the_tally_compares_the_alert_states_of_both_models() -> None:
    same = ShadowedPipeline(ScoringPipeline(load()), ScoringPipeline(load()))
    for batch in _batches():
        out = same.score(batch)
        assert [e.alert_id for e in out.events] == [e.alert_id for e in out.shadow_events]
    assert same.tally.readings == 6 * 300 and same.tally.agreement == 1.0
    assert same.tally.live_episodes == same.tally.shadow_episodes >= 1

    other = ShadowedPipeline(ScoringPipeline(load()), ScoringPipeline(_other_model()))
    live_alerting = shadow_alerting = 0
    for batch in _batches():
        out = other.score(batch)
        live_alerting += int(out.alerting.sum())
        shadow_alerting += sum(e.state == "firing" for e in out.shadow_events)
    tally = other.tally
    assert tally.readings == 6 * 300 and tally.shadow_episodes == shadow_alerting
    assert tally.agreeing <= tally.readings and 0.0 < tally.agreement <= 1.0


def test_a_device_the_live_store_evicts_leaves_the_shadow_store_too() -> None:
    shadowed = ShadowedPipeline(ScoringPipeline(load()), ScoringPipeline(_other_model()))
    batch = _batches(devices=3, steps=50, spike_at=None)[0]
    shadowed.score(batch)
    assert len(shadowed.shadow.store) == 3
    shadowed.live.store.evict("d1")
    shadowed.score(ReadingBatch.from_rows(["d0"], np.array([1e6]), [[1.0]]))
    assert sorted(shadowed.shadow.store.device_ids()) == ["d0", "d2"]
    assert shadowed.bytes_per_device(4) == (shadowed.live.store.bytes_per_device(4)
                                            + shadowed.shadow.store.bytes_per_device(4))
