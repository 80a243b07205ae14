"""Hot model swap without a broker: the incoming model takes over device by device, nobody goes quiet."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.artifact import ModelArtifact, load
from streamer.scoring.model_change import MODEL_ROWS, MODEL_SIGNALS, copy_state
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import DropReason, ReadingBatch
from streamer.scoring.swap import SwappingPipeline

DEVICES = [f"dev-{k}" for k in range(12)]


def other_model(seed: int = 3) -> ModelArtifact:
    """The shipped model with its weights nudged: another version that forecasts a little differently."""
    base = load()
    model = copy.deepcopy(base.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return ModelArtifact(model=model, version=base.version + "-nudged", normaliser=base.normaliser)


def fleet(n_steps: int, faults: dict[str, int], seed: int = 0) -> np.ndarray:
    """(n_steps, devices, 2) two-channel sines; a +8 shift of 40 readings on channel 0 at faults[device]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)[:, None]
    phase = rng.uniform(0, 6, len(DEVICES))[None, :]
    x = np.stack([10 + 3 * np.sin(2 * np.pi * t / 96 + phase), 5 + np.cos(2 * np.pi * t / 96 + phase)], -1)
    x = x + rng.normal(0, 0.3, x.shape)
    for d, at in faults.items():
        x[at:at + 40, DEVICES.index(d), 0] += 8
    return x


def batches(x: np.ndarray, a: int, b: int, per_batch: int = 10):
    for start in range(a, b, per_batch):
        part = x[start:min(b, start + per_batch)]  # (t, devices, 2)
        ts = np.repeat(60.0 * np.arange(start, start + len(part)), len(DEVICES))
        yield ReadingBatch.from_rows(DEVICES * len(part), ts, part.reshape(-1, 2).tolist())


def test_the_incoming_model_takes_over_device_by_device_without_a_quiet_reading() -> None:
    faults = {"dev-0": 630, "dev-1": 760}  # one while the incoming model warms up, one after it took over
    x = fleet(900, faults)
    live = ScoringPipeline(load())
    for batch in batches(x, 0, 600):
        live.score(batch)
    incoming = ScoringPipeline(other_model())
    swap = SwappingPipeline(live, incoming, deadline_s=1e9)
    events, taken = [], []
    for batch in batches(x, 600, 900):
        out = swap.score(batch)
        assert (out.status == DropReason.SCORED).all() and np.isfinite(out.scores).all(), "a reading unscored"
        events += out.events
        taken.append(len(swap.taken_over))
    assert taken[0] == 0 and taken[-1] == len(DEVICES), taken  # none at first, every device in the end
    assert 60 <= (np.argmax(np.array(taken) == len(DEVICES)) + 1) * 10 <= 120  # after the warm-up
    firing = {e.device_id: round(e.ts / 60) for e in events if e.state == "firing"}
    for device, at in faults.items():
        assert at <= firing.get(device, -1) <= at + 5, (device, firing)
    assert swap.done
    old_version = live.model_version
    promoted = swap.promote()
    assert promoted is live and live.model_version == incoming.model_version != old_version
    assert live.model is incoming.model


@pytest.mark.slow  # two pipelines over 12 devices x 1,000 readings
def test_an_episode_open_at_take_over_carries_on_under_its_id() -> None:
    x = fleet(1000, {"dev-2": 640})
    x[680:760, 2, 0] += 8  # the shift of dev-2 lasts past the take-over (about 72 readings after 600)
    live = ScoringPipeline(load())
    for batch in batches(x, 0, 600):
        live.score(batch)
    swap = SwappingPipeline(live, ScoringPipeline(other_model()), deadline_s=1e9)
    events, taken_at = [], None
    for batch in batches(x, 600, 1000):
        events += [e for e in swap.score(batch).events if e.device_id == "dev-2"]
        if taken_at is None and "dev-2" in swap.taken_over:
            taken_at = batch.ts[-1] / 60
    assert [e.state for e in events] == ["firing", "resolved"], [(e.state, e.ts / 60) for e in events]
    assert events[0].alert_id == events[1].alert_id  # opened under the old model, closed under the new
    assert taken_at is not None and events[0].ts / 60 < taken_at < events[1].ts / 60, taken_at


@pytest.mark.slow  # two pipelines over 12 devices x 1,000 readings
def test_the_deadline_promotes_devices_that_did_not_warm_up_with_the_model_forgotten() -> None:
    x = fleet(700, {})
    live = ScoringPipeline(load())
    for batch in batches(x, 0, 600):
        live.score(batch)
    now = [0.0]
    swap = SwappingPipeline(live, ScoringPipeline(other_model()), deadline_s=100.0, clock=lambda: now[0])
    for batch in batches(x, 600, 620):
        swap.score(batch)
    assert not swap.done and not swap.taken_over
    now[0] = 101.0
    assert swap.done
    store = swap.promote().store
    slot = store.slot("dev-5")
    assert store.cols["steps"][slot] == 0 and (store.cols["cal_count"][slot][list(MODEL_SIGNALS)] == 0).all()
    assert store.cols["cal_count"][slot].max() > 500  # the sensor's calibration stays


def test_copy_state_parts_are_disjoint_and_together_whole() -> None:
    a, b = ScoringPipeline(load()), ScoringPipeline(load())
    x = fleet(200, {}, seed=1)
    for batch in batches(x, 0, 200):
        a.score(batch)
    for batch in batches(x[::-1].copy(), 0, 100):
        b.score(batch)
    sa, sb = a.store.lookup(DEVICES), b.store.lookup(DEVICES)
    copy_state(a.store, sa, b.store, sb, part="model")
    rows_a = torch.from_numpy(a.store.rows_of(sa)[0])
    rows_b = torch.from_numpy(b.store.rows_of(sb)[0])
    assert all(torch.equal(a.store.rows[n][rows_a], b.store.rows[n][rows_b]) for n in MODEL_ROWS)
    assert not torch.equal(a.store.rows["norm_mean"][rows_a], b.store.rows["norm_mean"][rows_b])
    copy_state(a.store, sa, b.store, sb, part="sensor")
    for name, tensor in a.store.rows.items():
        assert torch.equal(tensor[rows_a], b.store.rows[name][rows_b]), name
    for name in ("cal_mean", "cal_var", "alert_state", "steps", "last_ts"):
        assert (a.store.cols[name][sa] == b.store.cols[name][sb]).all(), name


def test_feedback_during_a_swap_reaches_the_model_that_owns_the_device() -> None:
    """A silence set on a device the incoming model took over holds (the copy back to the live store does
    not undo it), and is announced once when it ends."""
    from dataclasses import replace as with_

    from streamer.feedback.messages import Silence
    from streamer.feedback.silencing import apply_silences
    from streamer.service.daemon import Daemon
    from streamer.service.settings import Settings

    x = fleet(900, {"dev-3": 720})
    x[720:800, DEVICES.index("dev-3"), 0] += 8  # outlasts the silence (ends at 760)
    live = ScoringPipeline(load())
    for batch in batches(x, 0, 600):
        live.score(batch)
    swap = SwappingPipeline(live, ScoringPipeline(other_model()), deadline_s=1e9)
    for batch in batches(x, 600, 700):
        swap.score(batch)
    assert "dev-3" in swap.taken_over
    daemon = Daemon(with_(Settings(), feedback_topic=None), pipeline=swap)
    daemon.swap = swap
    owners = daemon._feedback_owners("dev-3")
    assert [o.store for o in owners] == [swap.incoming.store, live.store]  # the published state first
    for owner in owners:
        owner.apply(Silence("dev-3", 60.0 * 760, "maintenance"))
    firing = []
    for batch in batches(x, 700, 900):
        out = apply_silences(live.store, batch, swap.score(batch), live.config.policy, live.model_version)
        firing += [round(e.ts / 60) for e in out.events if e.state == "firing" and e.device_id == "dev-3"]
    assert firing == [760], firing  # withheld at 720, announced once when the silence ended


@pytest.mark.slow  # compiles the kernel
def test_a_swap_on_the_kernel_path_scores_with_the_new_weights_after_it() -> None:
    """The compiled pass holds the weights and version it was built with: promotion rebuilds it, so the
    promoted pipeline's kernel steps with the new model's weights."""
    from streamer.scoring.pipeline import PipelineConfig

    kernel = PipelineConfig(path="kernel")
    x = fleet(760, {})
    live = ScoringPipeline(load(), kernel)
    for batch in batches(x, 0, 600):
        live.score(batch)
    swap = SwappingPipeline(live, ScoringPipeline(other_model(), kernel), deadline_s=1e9)
    for batch in batches(x, 600, 700):
        swap.score(batch)
    assert swap.done
    promoted = swap.promote()
    assert promoted.kernel is not None and promoted.kernel.model_version == promoted.model_version
    np.testing.assert_array_equal(promoted.kernel.weights.w_hh,
                                  other_model().model.rnn.all_weights[0][1].detach().numpy())
