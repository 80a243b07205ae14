"""Online per-row normalisation, shared by training and scoring so the model sees the same inputs in both.

Each row (one channel of one device) keeps a count, a mean and a variance. A value is normalised with
the statistics of the values *before* it (so z is the surprise of x given the past), then folded in:
a cumulative average for the first `1 / alpha` values, an exponentially weighted one after that, so
the statistics follow slow regime changes of a long-running sensor.

Shapes: R rows; every tensor below is (R,). Statistics are float64 so that a counter near 1e9 still
normalises precisely; the returned z is float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Z_CLIP = 8.0  # model inputs are clipped to +-Z_CLIP: one wild value must not saturate the hidden state


@dataclass(frozen=True)
class NormaliserConfig:
    alpha: float = 1.0 / 512  # EWMA weight once warmed up (half-life about 355 readings)
    rel_floor: float = 1e-3  # std floor relative to |mean|: flat lines do not turn noise into alarms
    abs_floor: float = 1e-6  # absolute std floor


def normalise_and_update(
    x: torch.Tensor,  # (R,) float, raw values
    count: torch.Tensor,  # (R,) float64, values seen so far (updated in place)
    mean: torch.Tensor,  # (R,) float64 (updated in place)
    var: torch.Tensor,  # (R,) float64 (updated in place)
    config: NormaliserConfig,
) -> torch.Tensor:
    """Return z (R,) float32 for x under the current statistics, then fold x into them in place.

    A row with no history gets z = 0.
    """
    x64 = x.to(torch.float64)
    std = torch.sqrt(var).clamp_min(0) + config.rel_floor * mean.abs() + config.abs_floor
    z = torch.where(count > 0, (x64 - mean) / std, torch.zeros_like(x64))
    alpha = torch.clamp(1.0 / (count + 1.0), min=config.alpha)
    delta = x64 - mean
    mean.add_(alpha * delta)
    # West's EWMA variance update: var <- (1 - a) * (var + a * delta^2)
    var.mul_(1 - alpha).add_((1 - alpha) * alpha * delta * delta)
    count.add_(1.0)
    return z.to(torch.float32)


def model_input(z: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Features for the recurrent step: z (R,), first (R,) bool -> (R, 2) float32 [clipped z, first flag]."""
    return torch.stack([z.clamp(-Z_CLIP, Z_CLIP), first.to(torch.float32)], dim=1)
