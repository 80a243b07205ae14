"""Fine-tuning: teach a trained forecaster a fleet's own series, and measure what it bought.

Every series keeps its last `holdout` share out of training: that tail is where the starting model and
the tuned one are both measured, with the training objective (Huber loss of the one-step forecast of
the normalised value, `train._loss`), beside the previous-value forecast for scale. Training cuts the
head of every series into overlapping windows of `window` readings; each window is normalised from a
fresh normaliser exactly as `train.normalised_features` does for the shipped model, so tuning and
scoring see the same features. The tuned model is a new artifact with a new version (the version is
a hash of the weights); its `training` section names the model it started from and its data.

>>> head, tail = split_holdout([np.arange(100.0)], holdout=0.2, min_length=10)
>>> len(head[0]), len(tail[0])
(80, 20)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from model.artifact import ModelArtifact
from model.forecaster import RecurrentForecaster
from model.normaliser import NormaliserConfig
from model.train import WARMUP, _loss, normalised_features, optimiser_step

MIN_WINDOW = 4 * WARMUP  # readings: a shorter window is mostly normaliser warm-up


@dataclass(frozen=True)
class FineTuneConfig:
    steps: int = 300  # optimiser steps (batches), cycling through the windows as often as that takes
    lr: float = 1e-3  # a third of training from scratch: start from what the model knows
    window: int = 256  # readings per training window (stride: half of it)
    batch_size: int = 32
    holdout: float = 0.2  # share at the end of every series kept for validation
    seed: int = 7

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.window < MIN_WINDOW or self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need window >= {MIN_WINDOW}, steps >= 1, batch_size >= 1 and lr > 0")


@dataclass(frozen=True)
class TuneResult:
    model: RecurrentForecaster
    metrics: dict[str, float]


def split_holdout(series: list[np.ndarray], holdout: float, min_length: int = MIN_WINDOW
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each series (T,) -> its head (training) and its last `holdout` share (validation); a part shorter
    than `min_length` is left out."""
    heads, tails = [], []
    for s in series:
        cut = len(s) - round(len(s) * holdout)
        if cut >= min_length:
            heads.append(s[:cut])
        if len(s) - cut >= min_length:
            tails.append(s[cut:])
    return heads, tails


def windows(series: list[np.ndarray], length: int) -> np.ndarray:
    """Overlapping windows (stride length // 2) of every series at least `length` long: (N, length)."""
    out = [s[start : start + length] for s in series for start in range(0, len(s) - length + 1, length // 2)]
    return np.stack(out) if out else np.zeros((0, length))


def _validation_windows(tails: list[np.ndarray], window: int) -> np.ndarray:
    """The validation tails cut to one length (the shortest, at most `window`), every reading used once."""
    if not tails:
        return np.zeros((0, window))
    length = min(window, min(len(t) for t in tails))
    return np.stack([t[start : start + length] for t in tails for start in range(0, len(t) - length + 1,
                                                                                  length)])


def _evaluate(model: RecurrentForecaster, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(_loss(model, x, y))


def fine_tune(base: ModelArtifact, series: list[np.ndarray], config: FineTuneConfig | None = None,
              log: bool = True) -> TuneResult:
    """Tune a copy of `base`'s forecaster on the heads of `series` (each (T,) raw values of one channel);
    metrics compare it with `base` on the held-out tails."""
    cfg = config or FineTuneConfig()
    heads, tails = split_holdout(series, cfg.holdout)
    train_w = windows(heads, min(cfg.window, max((len(h) for h in heads), default=0)))
    val_w = _validation_windows(tails, cfg.window)
    if len(train_w) == 0 or len(val_w) == 0:
        raise ValueError(f"not enough data to fine-tune: need series of at least {MIN_WINDOW} readings in "
                         f"both the head and the held-out {cfg.holdout:.0%} tail (got {len(series)} series, "
                         f"longest {max((len(s) for s in series), default=0)})")
    norm: NormaliserConfig = base.normaliser
    x_tr, y_tr = normalised_features(train_w, norm)
    x_va, y_va = normalised_features(val_w, norm)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(base.model)
    base_val = _evaluate(base.model, x_va, y_va)
    started = time.monotonic()
    _train(model, x_tr, y_tr, cfg, log, lambda: _evaluate(model, x_va, y_va))
    with torch.no_grad():
        naive = float(nn.functional.huber_loss(x_va[:, WARMUP:, 0], y_va[:, WARMUP:], delta=1.0))
    metrics: dict[str, Any] = {
        "val_huber": round(_evaluate(model, x_va, y_va), 5), "val_huber_base": round(base_val, 5),
        "val_huber_previous_value": round(naive, 5), "train_windows": len(train_w),
        "val_windows": len(val_w), "val_readings": int(val_w.size),
        "train_seconds": round(time.monotonic() - started, 1),
    }
    return TuneResult(model.eval(), metrics)


def _train(model: RecurrentForecaster, x: torch.Tensor, y: torch.Tensor, cfg: FineTuneConfig, log: bool,
           validate: Callable[[], float]) -> None:
    """`cfg.steps` Adam steps on batches of the windows x (N, T, F), y (N, T), each pass a new order."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, report_every = 0, max(1, cfg.steps // 5)
    model.train()
    while step < cfg.steps:
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            optimiser_step(model, opt, x[idx], y[idx])
            step += 1
            if log and step % report_every == 0:
                print(f"fine-tune step {step}/{cfg.steps} val_huber={validate():.4f}")
                model.train()
            if step == cfg.steps:
                break
