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

- Two outputs from two baselines. The *score* (the published ranking, loud at onsets) is the most
  surprising of the `RANKED_SIGNALS` (every signal but the one-step forecast error, too heavy-tailed
  to rank by on spiky series) against the device's *live* distributions, which learn every reading, in an
  episode or not: a regime that persists fades from the ranking, so the next onset stands out. Onset
  emphasis: each device remembers the peak of its recent live alarms, decaying by `peak_decay` per
  reading; a score that does not beat that decayed peak is damped by `damp`. The *alarm* (what the
  alert policy decides "abnormal now" on) is the same live surprise while the device has no held
  normal; while its episode is open the pipeline has it *hold* the distributions of the state
  signals (`STATE_SIGNALS`: those that measure where the device is, not how it changed) as they
  were just before the episode opened (`hold`). On a device *locked* to that held normal (it was
  mature when the episode opened) the alarm is their surprise against it, so a persistent fault keeps
  alarming however much the live distributions have learned it; on a younger one the alarm stays
  live and the held surprise is reported beside it (`Calibrated.before`), to label the close (see
  `alert_policy`). `release` ends the hold; the live distributions are not rolled back (see
  docs/ARCHITECTURE.md). Surprise is capped at `z_max` sigma for ranking (a baseline that never
  varied makes every later value "infinitely" surprising).
- Out-of-range lift (score only): a reading the pipeline finds outside its device's running range
  (`evidence.range_excess_and_update`) scores at least `range_lift` at once, whatever its calibrated
  surprise, and the peak memory learns that lifted score.
- Edge trigger (score only, last): a score at or above `FIRE_LEVEL` fires; another within `refractory`
  readings of the latest fire fires only if it beats it by `refire`, and is otherwise published just
  below the level (`REPEAT_SCORE`). Each device remembers its latest fire's score and the readings
  since (`cal_fired`, `cal_since`). The alarm is not touched.
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

from streamer.scoring.signals import SIGNALS, Signal
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
    range_lift: float = 0.5  # an out-of-range reading scores at least lift + (1 - lift) * its score
    refractory: int = 3  # readings after a fire in which a repeat fires again only if it is worse ...
    refire: float = 1.1  # ... by this factor; otherwise it is published just below FIRE_LEVEL

    def __post_init__(self) -> None:
        if not 0 <= self.refractory < SINCE_MAX or not self.refire >= 1.0:
            raise ValueError(f"calibration refractory must be in [0, {SINCE_MAX}) readings and refire >= 1 "
                             f"(got {self.refractory}, {self.refire})")


FIRE_LEVEL = 0.5  # a score at or above it fires: z_half sigma out (the alert policy's default open threshold)
REPEAT_SCORE = 0.499  # a repeat inside the refractory period is published as this (or its own, if lower)
SINCE_MAX = 255  # `cal_since` saturates here: "long ago"


# the signals that say where the device is (not how it changed): what an open episode's alarm measures
STATE_SIGNALS = (Signal.DEVIATION, Signal.LEVEL, Signal.VOLATILITY, Signal.REPEAT, Signal.RELATION,
                 Signal.JOINT)
_STATE = np.array(STATE_SIGNALS, dtype=np.int64)
# the signals the published score ranks: all but the one-step forecast error, whose heavy tail (one
# surprising step of a spiky series) ranked isolated readings above real onsets (NAB: 60.18 -> 61.16
# standard, 48.43 -> 50.49 low-FP); the alarm, and so the alert, still watches it
RANKED_SIGNALS = tuple(s for s in Signal if s is not Signal.FORECAST)
_RANKED = np.isin(np.arange(SIGNALS), np.array(RANKED_SIGNALS))  # (SIGNALS,) bool
_HALF_MAX = float(np.finfo(np.float16).max)
_F32_MAX = float(np.finfo(np.float32).max)

COLUMNS: tuple[Column, ...] = (
    Column("cal_count", np.int16, width=SIGNALS),  # readings seen per signal, saturating
    Column("cal_mean", np.float32, width=SIGNALS),
    Column("cal_var", np.float32, width=SIGNALS, fill=1.0),
    Column("cal_peak", np.float32),
    Column("cal_fired", np.float16),  # the published score of the device's latest fire
    Column("cal_since", np.uint8, fill=SINCE_MAX),  # scored readings since that fire (saturating)
    # the held normal of the state signals while an episode is open; std NaN: that signal not held
    # (not warmed up when the episode opened); all NaN: no held normal
    Column("cal_held_mean", np.float16, width=len(STATE_SIGNALS)),
    Column("cal_held_std", np.float16, width=len(STATE_SIGNALS), fill=np.nan),
)


def squash(z: np.ndarray, z_half: float) -> np.ndarray:
    """z (...) sigma -> score in [0, 1): 0 at or below the mean, 0.5 at z_half."""
    zp = np.maximum(z, 0.0)
    return zp / (zp + z_half)


@dataclass(frozen=True)
class Calibrated:
    """What `Calibrator.score` makes of one wave's evidence (m devices)."""

    alarm: np.ndarray  # (m,) in [0, 1): the held normal's surprise where one is held, else the live one
    score: np.ndarray  # (m,) in [0, 1): the live surprise with onset emphasis (the published ranking)
    signal: np.ndarray  # (m,) int, the signal that gave the alarm its value
    remembered: np.ndarray  # (m,) what the peak memory learns: the ranked surprise, or the lifted score
    fired: np.ndarray  # (m,) bool: the score fires (>= FIRE_LEVEL, not a repeat inside the refractory)
    before: np.ndarray  # (m,) the surprise against the held normal of a device that holds one without being
    # locked to it (its episode opened before maturity), NaN elsewhere: what labels its episode's close


class Calibrator:
    """Per-device evidence distributions (live, and held while an episode is open) with warm-up, onset
    emphasis and a protect gate."""

    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()

    @staticmethod
    def columns() -> tuple[Column, ...]:
        return COLUMNS

    @staticmethod
    def holding(store: StateStore, slots: np.ndarray) -> np.ndarray:
        """Whether each device holds a normal (its episode is open; its alarm measures against it only if
        it was mature when the episode opened, see `pipeline`): (m,) -> (m,) bool."""
        return np.isfinite(store.cols["cal_held_std"][slots]).any(axis=1)

    def score(self, store: StateStore, slots: np.ndarray, live: np.ndarray, held: np.ndarray,
              out_of_range: np.ndarray | None = None, locked: np.ndarray | None = None) -> Calibrated:
        """Score, learning nothing: slots (m,), evidence against the live normal `live` (m, SIGNALS) and
        against the held one `held` (m, SIGNALS; only its STATE_SIGNALS columns are read, and only for
        devices holding a normal), each float >= 0 or NaN; `out_of_range` (m,) bool: the reading lies
        outside its device's running range (see `evidence.range_excess_and_update`); `locked` (m,) bool:
        the device's episode is locked to its held normal (it opened past maturity; None: every holding
        device is).

        Each signal is calibrated against its own distribution; the live alarm is the most surprising
        one, the score the same damped unless it beats the device's decayed recent peak, then lifted
        to at least `range_lift` where out of range (the peak remembers the lifted score, so the
        readings after it are damped as after any onset). The alarm is not lifted. A locked device's
        alarm is its surprise against the held normal; a device that holds without being locked keeps
        the live alarm and reports the held surprise beside it (`Calibrated.before`).
        """
        cfg = self.config
        cols = store.cols
        count = cols["cal_count"][slots].astype(np.int64)  # (m, SIGNALS)
        mean = cols["cal_mean"][slots].astype(np.float64)  # (m, SIGNALS)
        std = np.maximum(np.sqrt(cols["cal_var"][slots].astype(np.float64)), cfg.min_std)  # (m, SIGNALS)
        ready = count - cfg.skip >= cfg.warmup
        z = self._z(live, mean, std, ready)  # (m, SIGNALS)
        signal, live_alarm = self._most_surprising(z)
        _, ranked = self._most_surprising(np.where(_RANKED, z, 0.0))  # (m,) the surprise the score ranks
        peak = cols["cal_peak"][slots].astype(np.float64) * cfg.peak_decay  # (m,)
        scores = np.where(ranked > peak, ranked, ranked * (1.0 - cfg.damp))
        remembered = ranked
        if out_of_range is not None and out_of_range.any():
            out_of_range = out_of_range & ready.any(axis=1)  # warm-up holds for the lift too: a device
            # whose calibration restarted (a model change) scores 0 until it has learned again
            scores = np.where(out_of_range, cfg.range_lift + (1.0 - cfg.range_lift) * scores, scores)
            remembered = np.where(out_of_range, np.maximum(ranked, scores), ranked)
        scores, fired = self._refractory(store, slots, scores)

        holding = self.holding(store, slots)
        locked = holding if locked is None else locked & holding
        alarm, winner = live_alarm.copy(), signal.copy()
        before = np.full(len(slots), np.nan)
        if holding.any():
            h_std = cols["cal_held_std"][slots[holding]].astype(np.float64)  # (h, K)
            h_mean = cols["cal_held_mean"][slots[holding]].astype(np.float64)  # (h, K)
            k, held_alarm = self._most_surprising(self._z(held[holding][:, _STATE], h_mean,
                                                          np.maximum(h_std, cfg.min_std), np.isfinite(h_std)))
            before[holding] = held_alarm
            lock = locked[holding]
            alarm[holding] = np.where(lock, held_alarm, alarm[holding])
            winner[holding] = np.where(lock, _STATE[k], winner[holding])
            before[locked] = np.nan
        return Calibrated(alarm, scores, winner, remembered, fired, before)

    def _refractory(self, store: StateStore, slots: np.ndarray, scores: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Edge trigger: a score at or above FIRE_LEVEL within `refractory` readings of the device's
        latest fire is a repeat unless it beats that fire by `refire`; a repeat is published just below
        the level. (m,) -> the published scores (m,) and whether each fires (m,) bool."""
        cfg = self.config
        cols = store.cols
        since = cols["cal_since"][slots].astype(np.int64) + 1  # (m,) counting this reading
        latest = cols["cal_fired"][slots].astype(np.float64)  # (m,)
        high = scores >= FIRE_LEVEL
        repeat = high & (since <= cfg.refractory) & (scores <= latest * cfg.refire)
        return np.where(repeat, np.minimum(scores, REPEAT_SCORE), scores), high & ~repeat

    def _z(self, evidence: np.ndarray, mean: np.ndarray, std: np.ndarray, ready: np.ndarray) -> np.ndarray:
        """Surprise in sigma (m, k) of evidence (m, k) against distributions mean, std (m, k), capped at
        z_max; a signal not `ready` (m, k) or NaN scores 0."""
        known = np.isfinite(evidence) & ready
        return np.where(known, np.minimum((np.where(known, evidence, 0.0) - mean) / std, self.config.z_max),
                        0.0)

    def _most_surprising(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most surprising signal (m,) of z (m, k) and its squashed surprise (m,)."""
        best = z.argmax(axis=1)  # (m,)
        return best, squash(z[np.arange(len(z)), best], self.config.z_half)

    def learn(self, store: StateStore, slots: np.ndarray, live: np.ndarray, calibrated: Calibrated) -> None:
        """Fold the live evidence (m, SIGNALS) into the live distributions (every device, every reading)
        and the live alarm (or lifted score) into the peak memory."""
        cfg = self.config
        cols = store.cols
        count = cols["cal_count"][slots].astype(np.int64)  # (m, SIGNALS)
        mean = cols["cal_mean"][slots].astype(np.float64)  # (m, SIGNALS)
        var = cols["cal_var"][slots].astype(np.float64)  # (m, SIGNALS)
        std = np.maximum(np.sqrt(var), cfg.min_std)
        peak = cols["cal_peak"][slots].astype(np.float64) * cfg.peak_decay
        cols["cal_peak"][slots] = np.maximum(calibrated.remembered, peak)
        since = np.minimum(cols["cal_since"][slots].astype(np.int64) + 1, SINCE_MAX)
        cols["cal_since"][slots] = np.where(calibrated.fired, 0, since)
        cols["cal_fired"][slots] = np.where(calibrated.fired, calibrated.score, cols["cal_fired"][slots])

        known = np.isfinite(live)
        evidence = np.where(known, live, mean)
        learned = count - cfg.skip  # errors already in the distribution
        fold = known & (count >= cfg.skip)
        x = np.where(learned > cfg.warmup // 2, np.minimum(evidence, mean + cfg.protect_z * std), evidence)
        alpha = np.maximum(1.0 / (np.maximum(learned, 0) + 1.0), cfg.alpha)
        delta = x - mean
        # float32 columns: a distribution that would overflow them saturates instead of becoming inf
        cols["cal_mean"][slots] = np.where(fold, np.minimum(mean + alpha * delta, _F32_MAX), mean)
        new_var = np.minimum((1 - alpha) * (var + alpha * delta * delta), _F32_MAX)
        cols["cal_var"][slots] = np.where(fold, new_var, var)
        cols["cal_count"][slots] = np.minimum(count + known, np.iinfo(np.int16).max)

    def hold(self, store: StateStore, slots: np.ndarray) -> None:
        """Keep the live distributions of the state signals of these devices (m,) as their held normal
        (call before `learn` folds in the reading that opened their episode). A signal not yet warmed
        up is not held."""
        cfg = self.config
        cols = store.cols
        mean = cols["cal_mean"][slots][:, _STATE].astype(np.float64)  # (m, K)
        std = np.maximum(np.sqrt(cols["cal_var"][slots][:, _STATE].astype(np.float64)), cfg.min_std)
        ready = cols["cal_count"][slots][:, _STATE].astype(np.int64) - cfg.skip >= cfg.warmup
        cols["cal_held_mean"][slots] = np.clip(mean, -_HALF_MAX, _HALF_MAX)
        cols["cal_held_std"][slots] = np.where(ready, np.minimum(std, _HALF_MAX), np.nan)

    @staticmethod
    def release(store: StateStore, slots: np.ndarray) -> None:
        """End these devices' (m,) held normal: their alarm is the live surprise again."""
        store.cols["cal_held_std"][slots] = np.nan
