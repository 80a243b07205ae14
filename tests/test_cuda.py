"""The pipeline on CUDA: the same results as on the CPU. Skipped where no GPU is visible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.artifact import load
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import ReadingBatch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]


def _batches(n_devices: int, steps: int, seed: int = 0) -> list[ReadingBatch]:
    rng = np.random.default_rng(seed)
    ids = [f"d{i}" for i in range(n_devices)]
    out = []
    for t in range(steps):
        phase = np.arange(n_devices)[:, None] + np.arange(3)
        values = np.sin(t / 9 + phase) + rng.normal(0, .1, (n_devices, 3))
        out.append(ReadingBatch.from_rows(ids, [60.0 * t] * n_devices, values.tolist()))
    return out


def test_cuda_pipeline_matches_cpu() -> None:
    cpu, gpu = ScoringPipeline(load(), device="cpu"), ScoringPipeline(load(), device="cuda")
    assert gpu.store.rows["hidden"].is_cuda
    for batch in _batches(64, 150):
        a, b = cpu.score(batch), gpu.score(batch)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(a.alerting, b.alerting)


def test_cuda_batched_equals_sequential() -> None:
    batches = _batches(16, 120, seed=1)
    batched = ScoringPipeline(load(), device="cuda")
    alone = {f"d{i}": ScoringPipeline(load(), device="cuda") for i in range(16)}
    for batch in batches:
        together = batched.score(batch).scores
        for i, dev in enumerate(batch.device_ids):
            single = ReadingBatch.from_rows([dev], [batch.ts[i]], [batch.values[i].tolist()])
            np.testing.assert_allclose(alone[dev].score(single).scores[0], together[i], atol=1e-5, rtol=0)
