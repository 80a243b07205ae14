"""Online per-row normalisation, shared by training and scoring so the model sees the same inputs in both.

Each row (one channel of one device) keeps a count, a mean and a variance. A value is normalised with
the statistics of the values *before* it (so z is the surprise of x given the past), then folded in:
a cumulative average for the first `1 / alpha` values, an exponentially weighted one after that, so
the statistics follow slow regime changes of a long-running sensor.

Beside the running mean, each row keeps two cheaper pictures of what is normal *now*, in z units:
- a time-of-day profile: `DAY_BINS` bins of the (UTC) day, each an exponential average of the z values
  seen in that bin, where one day's visit of the bin weighs `day_weight` whatever the sampling
  interval (so the memory is a few days). A value far from its bin's profile is a broken daily
  pattern: the rise that did not come. A bin is first compared from its second value on, so on a
  device's first day it only knows the hour so far;
- a short-term level: an exponential average of z over the last ~`1 / level_beta` readings. A level
  far from 0 is a sustained shift that a one-step forecaster stops being surprised by after one step.
  The same average of the forecaster's signed error (its *bias*) shows a forecast that keeps missing
  the same way: dynamics the model expected to continue and that did not.

Shapes: R rows; every tensor below is (R,) unless noted. Mean and variance are float64 so that a
counter near 1e9 still normalises precisely; the returned z is float32. The profile is float16 (it
holds clipped z values; 3 significant digits are plenty) with 0 meaning "bin never visited".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Z_CLIP = 8.0  # model inputs are clipped to +-Z_CLIP: one wild value must not saturate the hidden state


@dataclass(frozen=True)
class NormaliserConfig:
    alpha: float = 1.0 / 2048  # EWMA weight once warmed up (half-life about 1420 readings)
    rel_floor: float = 1e-3  # std floor relative to |mean|: flat lines do not turn noise into alarms
    abs_floor: float = 1e-6  # absolute std floor
    day_weight: float = 0.5  # weight of one day's visit of a time-of-day bin in that bin's profile
    level_beta: float = 1.0 / 16  # EWMA weight of the short-term level of z and of the forecast bias
    settle: int = 32  # values a row must have seen before its z feeds the profile, level and bias


DAY_S = 86400.0
DAY_BINS = 24  # time-of-day bins per row (hours); fixes the width of the state store's profile rows
_UNSEEN = 0.0  # profile value of a bin never visited
_TINY = torch.finfo(torch.float16).tiny  # a learned profile value of exactly 0 is stored as this


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
    std = row_std(mean, var, config)
    z = torch.where(count > 0, (x64 - mean) / std, torch.zeros_like(x64))
    alpha = torch.clamp(1.0 / (count + 1.0), min=config.alpha)
    delta = x64 - mean
    mean.add_(alpha * delta)
    # West's EWMA variance update: var <- (1 - a) * (var + a * delta^2)
    var.mul_(1 - alpha).add_((1 - alpha) * alpha * delta * delta)
    count.add_(1.0)
    return z.to(torch.float32)


def row_std(mean: torch.Tensor, var: torch.Tensor, config: NormaliserConfig) -> torch.Tensor:
    """The scale a row's next value is normalised by (floored): mean (R,), var (R,) -> std (R,)."""
    return torch.sqrt(var).clamp_min(0) + config.rel_floor * mean.abs() + config.abs_floor


def model_input(z: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Features for the recurrent step: z (R,), first (R,) bool -> (R, 2) float32 [clipped z, first flag]."""
    return torch.stack([z.clamp(-Z_CLIP, Z_CLIP), first.to(torch.float32)], dim=1)


def day_bins(ts: np.ndarray) -> np.ndarray:
    """Event times (n,) epoch seconds -> time-of-day bin (n,) int64 in [0, DAY_BINS)."""
    return (np.floor(np.mod(ts, DAY_S) / (DAY_S / DAY_BINS)).astype(np.int64)) % DAY_BINS


def day_rates(dt: np.ndarray, config: NormaliserConfig) -> np.ndarray:
    """Seconds since the previous reading (n,) -> profile learning rate per reading (n,) float32.

    A bin is visited for DAY_S / DAY_BINS seconds a day; a reading covering dt of them takes that
    share of the day's weight, so the profile's memory is in days at any sampling interval.
    """
    width = DAY_S / DAY_BINS
    share = np.clip(np.nan_to_num(dt, nan=width, posinf=width), 0.0, width) / width
    return np.minimum(1.0, config.day_weight * share).astype(np.float32)


def day_residual_and_update(
    z: torch.Tensor,  # (R,) float32, clipped z
    seen: torch.Tensor,  # (R,) bool, z is meaningful (the normaliser has settled)
    profile: torch.Tensor,  # (R_all, DAY_BINS) float16, every row's profile (updated in place)
    rows: torch.Tensor,  # (R,) int64, which profile rows these are
    bins: torch.Tensor,  # (R,) int64, time-of-day bin of each value
    rate: torch.Tensor,  # (R,) float32, from `day_rates`
) -> torch.Tensor:
    """z minus its bin's profile (NaN for a bin never visited), then fold z into the bin where `seen`:
    (R,) float32."""
    flat = profile.view(-1)  # (R_all * DAY_BINS,)
    at = rows * DAY_BINS + bins  # (R,)
    p = flat[at].to(torch.float32)  # (R,)
    known = p != _UNSEEN
    resid = (z - p).masked_fill_(~(known & seen), float("nan"))
    learned = torch.where(known, p + rate * (z - p), z).to(profile.dtype)
    learned.masked_fill_(learned == _UNSEEN, _TINY)
    learned[~seen] = p[~seen].to(profile.dtype)
    flat[at] = learned
    return resid


def ewma_update(
    v: torch.Tensor,  # (R,) float32
    seen: torch.Tensor,  # (R,) bool, where v is meaningful
    average: torch.Tensor,  # (R_all,) float32, every row's average (updated in place)
    rows: torch.Tensor,  # (R,) int64
    beta: float,
) -> torch.Tensor:
    """Fold v into these rows' exponential average where `seen`; returns their new average (R,)."""
    old = average[rows]
    new = torch.where(seen, old + beta * (v - old), old)
    average[rows] = new
    return new
