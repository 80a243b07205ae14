"""Calibration: turn a device's raw evidence into an anomaly score that means the same on every device.

Evidence per reading (SIGNALS of them): the squared one-step forecast error and the squared deviation
of the value from the normaliser's running mean (both in normalised units, averaged over channels).
Each device keeps a running mean and variance of each signal (cumulative while young, then an
exponentially weighted one) and scores a new reading by how many of its own standard deviations the
evidence lies above its own mean, z, squashed into [0, 1):

    score = z+ / (z+ + z_half)        (z_half = 10: score 0.5 means "10 sigma above this device's usual")

The squash is monotone and never saturates, so scores keep their order (and a threshold sweep keeps
its resolution) far into the tail; the reported score is the most surprising signal's.

- Warm-up: a device's first `warmup` scored readings get score 0 (no alert can fire); the very first
  `skip` readings, taken while the normaliser itself is still settling, do not teach the distribution.
- Protect gate: evidence beyond `protect_z` sigma is folded into the distribution only as `protect_z`
  sigma (winsorised), so an anomalous stretch cannot teach the calibration that it is normal; a genuinely
  new regime is still absorbed, slowly.

Vectorised over the devices of one wave: slots (m,), evidence (m, SIGNALS) -> scores (m,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.scoring.state_store import Column, StateStore


@dataclass(frozen=True)
class CalibrationConfig:
    alpha: float = 1.0 / 2000  # weight of a new error once the distribution has 1/alpha errors
    warmup: int = 60  # scored readings per device before scores may be non-zero
    skip: int = 12  # first errors ignored entirely (normaliser settling)
    protect_z: float = 100.0  # winsorise evidence beyond this many sigma before learning it
    z_half: float = 10.0  # sigma that maps to score 0.5
    min_std: float = 1e-3  # floor of each signal's std (normalised units squared)


SIGNALS = 2  # evidence per reading: [forecast error, deviation from the normaliser's mean]

COLUMNS: tuple[Column, ...] = (
    Column("cal_count", np.int64),
    Column("cal_mean", np.float64, width=SIGNALS),
    Column("cal_var", np.float64, width=SIGNALS, fill=1.0),
)


def squash(z: np.ndarray, z_half: float) -> np.ndarray:
    """z (...) sigma -> score in [0, 1): 0 at or below the mean, 0.5 at z_half."""
    zp = np.maximum(z, 0.0)
    return zp / (zp + z_half)


class Calibrator:
    """Per-device evidence distributions with warm-up and a protect gate."""

    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()

    @staticmethod
    def columns() -> tuple[Column, ...]:
        return COLUMNS

    def update(self, store: StateStore, slots: np.ndarray, error: np.ndarray) -> np.ndarray:
        """Score then learn: slots (m,), error (m, SIGNALS) float >= 0 -> scores (m,) float64 in [0, 1].

        Each signal is calibrated against its own distribution; the score is the most surprising one.
        """
        cfg = self.config
        count = store.cols["cal_count"][slots][:, None]
        mean = store.cols["cal_mean"][slots]
        var = store.cols["cal_var"][slots]
        evidence = error.astype(np.float64)
        std = np.maximum(np.sqrt(var), cfg.min_std)
        z = (evidence - mean) / std
        learned = count - cfg.skip  # errors already in the distribution
        scores = np.where(learned >= cfg.warmup, squash(z, cfg.z_half), 0.0)

        learn = count >= cfg.skip
        x = np.where(learned > cfg.warmup // 2, np.minimum(evidence, mean + cfg.protect_z * std), evidence)
        alpha = np.maximum(1.0 / (np.maximum(learned, 0) + 1.0), cfg.alpha)
        delta = x - mean
        new_mean = mean + alpha * delta
        new_var = (1 - alpha) * (var + alpha * delta * delta)
        store.cols["cal_mean"][slots] = np.where(learn, new_mean, mean)
        store.cols["cal_var"][slots] = np.where(learn, new_var, var)
        store.cols["cal_count"][slots] = count[:, 0] + 1
        return scores.max(axis=1)
