"""Training: teach the forecaster to predict each row's next normalised value.

Inputs are produced by the very normaliser the pipeline uses (`model.normaliser`), one step at a time,
so training and scoring see identical features. Data comes from CSV files (every numeric column a
series) or from the seeded synthetic generator; the shipped model uses the generator only.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import artifact
from model.forecaster import CellType, ForecasterConfig, RecurrentForecaster
from model.normaliser import Z_CLIP, NormaliserConfig, model_input, normalise_and_update
from model.synthetic import make_corpus

WARMUP = 16  # steps whose loss is ignored while the normaliser settles


@dataclass(frozen=True)
class TrainConfig:
    cell: CellType = "gru"
    hidden_size: int = 24
    series: int = 2048
    length: int = 768
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 7


def normalised_features(series: np.ndarray, config: NormaliserConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) raw series -> inputs (N, T-1, F) and targets (N, T-1): z_{t+1} predicted from steps <= t."""
    n, length = series.shape
    count = torch.zeros(n, dtype=torch.float64)
    mean = torch.zeros(n, dtype=torch.float64)
    var = torch.zeros(n, dtype=torch.float64)
    raw = torch.from_numpy(series)
    zs = torch.stack([normalise_and_update(raw[:, t], count, mean, var, config) for t in range(length)], 1)
    first = torch.zeros(n, length, dtype=torch.bool)
    first[:, 0] = True
    x = torch.stack([model_input(zs[:, t], first[:, t]) for t in range(length - 1)], dim=1)  # (N, T-1, F)
    return x, zs[:, 1:].clamp(-Z_CLIP, Z_CLIP)  # (N, T-1)


def read_csv_series(paths: list[Path]) -> list[np.ndarray]:
    """Every numeric column of every CSV as one series (a 'timestamp' column is skipped)."""
    out: list[np.ndarray] = []
    for path in paths:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        for col in rows[0]:
            if col == "timestamp":
                continue
            try:
                out.append(np.array([float(r[col]) for r in rows]))
            except ValueError:
                continue  # a non-numeric column is not a series; nothing to train on there
    return out


def _loss(model: RecurrentForecaster, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pred, _ = model(x)  # (B, T)
    return nn.functional.huber_loss(pred[:, WARMUP:], y[:, WARMUP:], delta=1.0)


def optimiser_step(model: RecurrentForecaster, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
                   ) -> None:
    """One clipped gradient step on the batch x (B, T, F), y (B, T) (training and fine-tuning alike)."""
    opt.zero_grad()
    _loss(model, x, y).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def train(
    config: TrainConfig, series: np.ndarray | None = None, log: bool = True
) -> tuple[RecurrentForecaster, dict[str, float], dict[str, object]]:
    """Train a model; returns it with its validation metrics and a description of the data."""
    torch.manual_seed(config.seed)
    norm = NormaliserConfig()
    if series is None:
        series = make_corpus(config.series, config.length, seed=config.seed)
        data_desc: dict[str, object] = {"source": "synthetic (model.synthetic)", "series": config.series,
                                        "length": config.length, "seed": config.seed}
    else:
        data_desc = {"source": "csv", "series": int(series.shape[0]), "length": int(series.shape[1])}
    x, y = normalised_features(series, norm)
    n_val = max(1, len(x) // 10)
    x_tr, y_tr, x_va, y_va = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    arch = ForecasterConfig(cell=config.cell, hidden_size=config.hidden_size)
    model = RecurrentForecaster(arch)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    gen = torch.Generator().manual_seed(config.seed)
    started = time.monotonic()
    for epoch in range(config.epochs):
        model.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(config.batch_size):
            optimiser_step(model, opt, x_tr[idx], y_tr[idx])
        sched.step()
        model.eval()
        with torch.no_grad():
            val = float(_loss(model, x_va, y_va))
        if log:
            elapsed = time.monotonic() - started
            print(f"epoch {epoch + 1}/{config.epochs} val_huber={val:.4f} ({elapsed:.0f}s)")
    with torch.no_grad():
        naive = float(nn.functional.huber_loss(x_va[:, WARMUP:, 0], y_va[:, WARMUP:], delta=1.0))
        final = float(_loss(model, x_va, y_va))
    metrics = {"val_huber": round(final, 5), "val_huber_previous_value": round(naive, 5),
               "train_seconds": round(time.monotonic() - started, 1)}
    return model, metrics, data_desc


def train_to_artifact(config: TrainConfig, output: Path, csv_paths: list[Path] | None = None) -> str:
    series = None
    if csv_paths:
        parts = read_csv_series(csv_paths)
        length = min(len(s) for s in parts)
        series = np.stack([s[:length] for s in parts])
    model, metrics, data_desc = train(config, series)
    return artifact.save(model, output, NormaliserConfig(),
                         training={**data_desc, **config.__dict__}, metrics=metrics)
