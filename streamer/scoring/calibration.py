"""Calibration: turn a device's raw evidence into an anomaly score that means the same on every device.

Evidence per reading: one value per `signals.Signal` (forecast error and bias, deviation from the
mean, from the time-of-day profile, short-term level, volatility, repeat run, cross-channel relation and
joint distance; see that module for what each means). Per-channel signals are the largest over the
device's channels, so a fault on one channel of many is not diluted by the healthy ones.

Each device keeps a count, a running mean and a running variance of each signal (cumulative while
young, then an exponentially weighted one) and measures how many of its own standard deviations the
new evidence lies above its own mean, z. Evidence may be NaN, "not available yet" (the daily profile
has not seen this hour yet): it then neither scores nor teaches. The most surprising signal wins and
is squashed into [0, 1):

    score = z+ / (z+ + z_half)        (z_half = 10: score 0.5 means "10 sigma above this device's usual")

The squash is monotone and never saturates, so scores keep their order (and a threshold sweep keeps
its resolution) far into the tail.

- Two outputs: the *alarm* (the squashed surprise, what the alert policy decides "abnormal now" on)
  and the *score* (the published ranking, loud at onsets). Onset emphasis: each device remembers the
  peak of its recent alarms, decaying by `peak_decay` per reading; a score that does not beat that
  decayed peak is damped by `damp`. While the device's episode is open the peak does not decay and a
  score counts only when its surprise exceeds `realert` times the peak's (the episode got worse);
  otherwise it is damped by `damp_episode`. Surprise is capped at `z_max` sigma for ranking (a
  baseline that never varied makes every later value "infinitely" surprising).
- Frozen normal: a device in an open episode (and past its maturity, see `pipeline`) does not fold
  its evidence into these distributions, so a persistent fault keeps scoring against the normal of
  before the episode instead of being learned as normal.
- Warm-up: a signal scores 0 until it has learned from `warmup` readings of its device, so a device's
  first `skip + warmup` readings get score 0 (no alert can fire); the very first `skip` readings,
  taken while the normaliser itself is still settling, do not teach the distribution.
- Protect gate: evidence beyond `protect_z` sigma is folded into the distribution only as `protect_z`
  sigma (winsorised), so an anomalous stretch cannot teach the calibration that it is normal; a
  genuinely new regime is still absorbed, slowly.

Vectorised over the devices of one wave: slots (m,), evidence (m, SIGNALS) -> scores (m,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.scoring.signals import SIGNALS
from streamer.scoring.state_store import Column, StateStore


@dataclass(frozen=True)
class CalibrationConfig:
    alpha: float = 1.0 / 2000  # weight of a new error once the distribution has 1/alpha errors
    warmup: int = 60  # scored readings per device before scores may be non-zero
    skip: int = 12  # first errors ignored entirely (normaliser settling)
    protect_z: float = 100.0  # winsorise evidence beyond this many sigma before learning it
    z_half: float = 10.0  # sigma that maps to score 0.5
    z_max: float = 1e4  # sigma beyond which surprise is not ranked (a baseline that never varied)
    min_std: float = 1e-3  # floor of each signal's std (normalised units squared)
    peak_decay: float = 0.999  # per-reading decay of the remembered peak score
    damp: float = 0.5  # fraction taken off a score that does not beat the decayed peak
    realert: float = 2.0  # inside an open episode a score counts only beyond this many times its peak sigma
    damp_episode: float = 0.9  # fraction taken off a score inside an open episode that is not that much worse



COLUMNS: tuple[Column, ...] = (
    Column("cal_count", np.int16, width=SIGNALS),  # readings seen per signal, saturating
    Column("cal_mean", np.float32, width=SIGNALS),
    Column("cal_var", np.float32, width=SIGNALS, fill=1.0),
    Column("cal_peak", np.float32),
)


def squash(z: np.ndarray, z_half: float) -> np.ndarray:
    """z (...) sigma -> score in [0, 1): 0 at or below the mean, 0.5 at z_half."""
    zp = np.maximum(z, 0.0)
    return zp / (zp + z_half)


def unsquash(score: np.ndarray, z_half: float) -> np.ndarray:
    """The inverse of `squash` on [0, 1): score (...) -> sigma (...)."""
    return z_half * score / np.maximum(1.0 - score, 1e-12)


class Calibrator:
    """Per-device evidence distributions with warm-up, onset emphasis and a protect gate."""

    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()

    @staticmethod
    def columns() -> tuple[Column, ...]:
        return COLUMNS

    def update(self, store: StateStore, slots: np.ndarray, error: np.ndarray, learn: np.ndarray,
               firing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score then learn: slots (m,), error (m, SIGNALS) float >= 0 or NaN, learn (m,) bool ->
        (alarm (m,), score (m,), both in [0, 1); the winning signal (m,) int). `firing` (m,) bool marks
        devices whose alert episode is open: their score re-alerts only when the alarm gets worse.

        Each signal is calibrated against its own distribution; `alarm` is the most surprising one
        (what the alert policy decides on: is the device abnormal now), `score` the same damped unless
        it beats the device's decayed recent peak (the ranking, loud at onsets). Only devices marked
        `learn` (not in an open alert episode) fold this evidence into their distributions.
        """
        cfg = self.config
        cols = store.cols
        count = cols["cal_count"][slots].astype(np.int64)  # (m, SIGNALS)
        mean = cols["cal_mean"][slots].astype(np.float64)  # (m, SIGNALS)
        var = cols["cal_var"][slots].astype(np.float64)  # (m, SIGNALS)
        evidence = error.astype(np.float64)
        known = np.isfinite(evidence)
        evidence = np.where(known, evidence, mean)
        std = np.maximum(np.sqrt(var), cfg.min_std)
        z = (evidence - mean) / std
        learned = count - cfg.skip  # errors already in the distribution
        z = np.where(known & (learned >= cfg.warmup), np.minimum(z, cfg.z_max), 0.0)
        signal = z.argmax(axis=1)  # (m,)
        alarm = squash(z[np.arange(len(z)), signal], cfg.z_half)  # (m,)

        held = cols["cal_peak"][slots].astype(np.float64)  # (m,)
        peak = np.where(firing, held, held * cfg.peak_decay)  # an open episode's peak does not fade
        worse = squash(cfg.realert * unsquash(peak, cfg.z_half), cfg.z_half)  # (m,)
        scores = np.where(firing, np.where(alarm > worse, alarm, alarm * (1.0 - cfg.damp_episode)),
                          np.where(alarm > peak, alarm, alarm * (1.0 - cfg.damp)))
        cols["cal_peak"][slots] = np.maximum(alarm, peak)

        taught = known & learn[:, None]
        fold = taught & (count >= cfg.skip)
        x = np.where(learned > cfg.warmup // 2, np.minimum(evidence, mean + cfg.protect_z * std), evidence)
        alpha = np.maximum(1.0 / (np.maximum(learned, 0) + 1.0), cfg.alpha)
        delta = x - mean
        new_mean = mean + alpha * delta
        new_var = (1 - alpha) * (var + alpha * delta * delta)
        cols["cal_mean"][slots] = np.where(fold, new_mean, mean)
        cols["cal_var"][slots] = np.where(fold, new_var, var)
        cols["cal_count"][slots] = np.minimum(count + taught, np.iinfo(np.int16).max)
        return alarm, scores, signal
