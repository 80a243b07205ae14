"""Fleets for the kernel-versus-torch parity tests: random channel counts, gaps, faults, disorder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.artifact import ModelArtifact
from model.forecaster import ForecasterConfig, RecurrentForecaster
from model.normaliser import NormaliserConfig
from streamer.scoring.alert_policy import AlertPolicyConfig
from streamer.scoring.calibration import CalibrationConfig
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline
from streamer.scoring.readings import ReadingBatch, ScoredBatch

Row = tuple[str, float, list[float]]


def artifact(cell: str = "gru", seed: int = 0, hidden: int = 24) -> ModelArtifact:
    torch.manual_seed(seed)
    model = RecurrentForecaster(ForecasterConfig(cell=cell, hidden_size=hidden))  # type: ignore[arg-type]
    return ModelArtifact(model=model.eval(), version=f"parity-{cell}", normaliser=NormaliserConfig())


# short warm-up, maturity and episodes, so that a few hundred readings open, hold, resolve and accept
CONFIG = PipelineConfig(calibration=CalibrationConfig(warmup=20, skip=4),
                        policy=AlertPolicyConfig(resolve_after=6, max_episode_s=4 * 3600.0, cooldown_s=300.0),
                        gap_reset_s=900.0, mature_s=1800.0)


def pipelines(cell: str, config: PipelineConfig = CONFIG) -> tuple[ScoringPipeline, ScoringPipeline]:
    """(kernel, torch) pipelines over the same model and settings."""
    from dataclasses import replace

    art = artifact(cell)
    return (ScoringPipeline(art, replace(config, path="kernel")),
            ScoringPipeline(artifact(cell), replace(config, path="torch")))


@dataclass(frozen=True)
class Fleet:
    channels: tuple[int, ...]  # channel count of each device
    steps: int  # readings per device
    seed: int


def stream(fleet: Fleet) -> list[Row]:
    """Each device: a noisy daily cycle per channel, with gaps, a planted fault (shift, stuck or noise)
    that starts and ends, a late duplicate now and then, a NaN now and then; interleaved at random."""
    rng = np.random.default_rng(fleet.seed)
    per_device = [_device(f"d{d}", c, fleet.steps, rng) for d, c in enumerate(fleet.channels)]
    out: list[Row] = []
    cursors = [0] * len(per_device)
    while True:
        left = [d for d, rows in enumerate(per_device) if cursors[d] < len(rows)]
        if not left:
            return out
        d = int(rng.choice(left))
        out.append(per_device[d][cursors[d]])
        cursors[d] += 1


def _device(name: str, c: int, steps: int, rng: np.random.Generator) -> list[Row]:
    base, scale = rng.normal(0, 20, c), rng.uniform(0.1, 5, c)
    mix = rng.normal(0, 1, (c, c)) * 0.5 + np.eye(c)
    t = 1.7e9 + rng.uniform(0, 86400)
    start, length = int(rng.integers(steps // 3, steps // 2)), int(rng.integers(10, steps // 3))
    kind, chan = int(rng.integers(0, 3)), int(rng.integers(0, c))
    rows: list[Row] = []
    for k in range(steps):
        t += 60.0 * (rng.integers(12, 30) if rng.random() < 0.01 else rng.uniform(0.5, 1.5))
        v = base + scale * (np.sin(2 * math.pi * t / 86400 + np.arange(c)) + mix @ rng.normal(0, 0.2, c))
        if start <= k < start + length:
            v[chan] = {0: v[chan] + 8 * scale[chan], 1: rows[-1][2][chan] if rows else v[chan],
                       2: v[chan] + rng.normal(0, 3 * scale[chan])}[kind]
        if rng.random() < 0.004:
            v[chan] = math.nan
        rows.append((name, t, [float(x) for x in v.astype(np.float32)]))
        if rows and rng.random() < 0.01:
            rows.append((name, rows[-1][1] - 30.0, rows[-1][2]))  # late: dropped as out of order
    return rows


def batch(rows: list[Row]) -> ReadingBatch:
    return ReadingBatch.from_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def chunks(rows: list[Row], rng: np.random.Generator, largest: int) -> list[list[Row]]:
    out, at = [], 0
    while at < len(rows):
        size = int(rng.integers(1, largest + 1))
        out.append(rows[at : at + size])
        at += size
    return out


def assert_same(kernel: ScoredBatch, torch_: ScoredBatch, atol: float = 1e-5) -> None:
    """Scores within atol, everything else identical (event scores and shares within atol)."""
    np.testing.assert_array_equal(kernel.status, torch_.status)
    np.testing.assert_allclose(kernel.scores, torch_.scores, atol=atol, rtol=0)
    np.testing.assert_array_equal(kernel.alerting, torch_.alerting)
    np.testing.assert_array_equal(kernel.top_channel, torch_.top_channel)
    assert len(kernel.events) == len(torch_.events)
    for a, b in zip(kernel.events, torch_.events, strict=True):
        assert (a.alert_id, a.device_id, a.state, a.ts, a.started_at, a.reason, a.duration_s, a.offset,
                a.threshold) == (b.alert_id, b.device_id, b.state, b.ts, b.started_at, b.reason, b.duration_s,
                                 b.offset, b.threshold)
        assert abs(a.score - b.score) <= atol
        named = [[(c.channel, c.direction) for c in e.channels] for e in (a, b)]
        assert named[0] == named[1]
        np.testing.assert_allclose([c.share for c in a.channels], [c.share for c in b.channels], atol=atol)
