"""Calibration and the alert policy of one device's reading, in compiled code.

`calibrate` is `calibration.Calibrator.score` for one device (the live surprise of every signal, the
ranked score with onset damping and the out-of-range lift, the alarm against the held normal while
one is held), `policy` is `alert_policy.AlertPolicy.update`, `hold` / `learn` / `release` are the
calibrator's; `decide` runs them in the torch path's order (`pipeline._calibrate_and_decide`).
Transition codes: 0 none, then `OPENED`, `RECOVERED`, `ACCEPTED`.
"""

from __future__ import annotations

import math

import numpy as np

from streamer.scoring.alert_policy import FIRING, IDLE
from streamer.scoring.calibration import FIRE_LEVEL, REPEAT_SCORE, SINCE_MAX, STATE_SIGNALS
from streamer.scoring.kernel.half import NAN_BITS, to_bits, to_float
from streamer.scoring.kernel.jit import jit
from streamer.scoring.kernel.slab import Params, Slab
from streamer.scoring.signals import SIGNALS, Signal

OPENED, RECOVERED, ACCEPTED = 1, 2, 3
STATE = np.array(STATE_SIGNALS, dtype=np.int64)
_N_STATE = len(STATE_SIGNALS)
_FORECAST = int(Signal.FORECAST)
_HALF_MAX = 65504.0
_F32_MAX = float(np.finfo(np.float32).max)
_BELOW_MAX = 255
_UINT32_MAX = 4294967295
_COUNT_MAX = 32767


@jit
def squash(z: float, z_half: float) -> float:
    zp = max(z, 0.0)
    return zp / (zp + z_half)


@jit
def surprise(e: float, mean: float, std: float, ready: bool, z_max: float) -> float:
    """`Calibrator._z` of one signal."""
    if ready and np.isfinite(e):
        return min((e - mean) / std, z_max)
    return 0.0


@jit
def live_surprise(slot: int, live: np.ndarray, s: Slab, p: Params) -> tuple[int, float, float, bool]:
    """The winning signal, its squashed surprise (the live alarm), the ranked surprise (every signal but
    the forecast error) and whether any signal is warmed up."""
    best, best_z, ranked_z, any_ready = 0, -math.inf, -math.inf, False
    for q in range(SIGNALS):
        ready = int(s.cal_count[slot, q]) - p.skip >= p.warmup
        any_ready = any_ready or ready
        std = max(math.sqrt(float(s.cal_var[slot, q])), p.min_std)
        z = surprise(live[q], float(s.cal_mean[slot, q]), std, ready, p.z_max)
        if z > best_z:
            best, best_z = q, z
        ranked = 0.0 if q == _FORECAST else z
        if ranked > ranked_z:
            ranked_z = ranked
    return best, squash(best_z, p.z_half), squash(ranked_z, p.z_half), any_ready


@jit
def held_surprise(slot: int, held: np.ndarray, s: Slab, p: Params) -> tuple[int, float]:
    """The winning state signal against the held normal and its squashed surprise."""
    best, best_z = 0, -math.inf
    for k in range(_N_STATE):
        h_std = float(to_float(s.cal_held_std[slot, k]))
        z = surprise(held[STATE[k]], float(to_float(s.cal_held_mean[slot, k])), max(h_std, p.min_std),
                     np.isfinite(h_std), p.z_max)
        if z > best_z:
            best, best_z = k, z
    return int(STATE[best]), squash(best_z, p.z_half)


@jit
def calibrate(slot: int, live: np.ndarray, held: np.ndarray, holding: bool, locked: bool, out_of_range: bool,
              s: Slab, p: Params) -> tuple[float, float, int, float, bool, float]:
    """(score, alarm, winning signal, what the peak memory learns, whether the score fires, the surprise
    against the held normal of a device holding it without being locked to it, else NaN) of one device's
    evidence (SIGNALS,)."""
    winner, alarm, ranked, any_ready = live_surprise(slot, live, s, p)
    peak = float(s.cal_peak[slot]) * p.peak_decay
    score = ranked if ranked > peak else ranked * (1.0 - p.damp)
    remembered = ranked
    if out_of_range and any_ready:
        score = p.range_lift + (1.0 - p.range_lift) * score
        remembered = max(ranked, score)
    fired = False
    if score >= FIRE_LEVEL:  # `Calibrator._refractory`: a repeat soon after a fire must be worse
        since = int(s.cal_since[slot]) + 1
        fired = not (since <= p.refractory and score <= float(to_float(s.cal_fired[slot])) * p.refire)
        score = score if fired else min(score, REPEAT_SCORE)
    before = math.nan
    if holding:
        held_winner, held_alarm = held_surprise(slot, held, s, p)
        if locked:
            winner, alarm = held_winner, held_alarm
        else:
            before = held_alarm
    return score, alarm, winner, remembered, fired, before


@jit
def policy(slot: int, alarm: float, before: float, ts: float, s: Slab, p: Params) -> int:
    """Step the device's alert state machine on its alarm (and the surprise against the normal of
    before of a device not locked to it, NaN otherwise); returns the transition code."""
    state = s.alert_state[slot]
    hits = ((int(s.alert_hits[slot]) << 1) | (1 if alarm >= p.open_threshold else 0)) & p.confirm_mask
    confirmed = bin_count(hits) >= p.confirm_m
    hold = float(to_float(s.alert_hold[slot]))
    hold = hold + p.hold_beta * (alarm - hold) if state == FIRING else alarm
    below = min(int(s.alert_below[slot]) + 1, _BELOW_MAX) if hold < p.close_threshold else 0
    started = s.alert_started_at[slot]
    opens = state == IDLE and confirmed and ts >= s.alert_cooldown_until[slot]
    closes = state == FIRING and below >= p.resolve_after
    recovers = closes and not before >= p.open_threshold  # NaN compares False: a recovery stays one
    accepts = state == FIRING and not recovers and (ts - started >= p.max_episode_s or closes)
    new_state = FIRING if opens else (IDLE if recovers or accepts else state)
    s.alert_state[slot] = new_state
    s.alert_hits[slot] = 0 if opens else hits
    s.alert_below[slot] = below if new_state == FIRING else 0
    s.alert_hold[slot] = to_bits(alarm if opens else hold)
    peak = float(to_float(s.alert_peak[slot]))
    s.alert_peak[slot] = to_bits(alarm if opens else (max(peak, alarm) if state == FIRING else peak))
    s.alert_started_at[slot] = ts if opens else started
    if recovers or accepts:
        s.alert_cooldown_until[slot] = min(max(math.ceil(ts + p.cooldown_s), 0), _UINT32_MAX)
    return OPENED if opens else (RECOVERED if recovers else (ACCEPTED if accepts else 0))


@jit
def bin_count(bits: int) -> int:
    count = 0
    while bits:
        bits &= bits - 1
        count += 1
    return count


@jit
def hold(slot: int, s: Slab, p: Params) -> None:
    """`Calibrator.hold`: keep the live distributions of the state signals as the held normal."""
    for k in range(_N_STATE):
        q = STATE[k]
        mean = float(s.cal_mean[slot, q])
        std = max(math.sqrt(float(s.cal_var[slot, q])), p.min_std)
        s.cal_held_mean[slot, k] = to_bits(min(max(mean, -_HALF_MAX), _HALF_MAX))
        ready = int(s.cal_count[slot, q]) - p.skip >= p.warmup
        s.cal_held_std[slot, k] = to_bits(min(std, _HALF_MAX)) if ready else NAN_BITS


@jit
def learn(slot: int, live: np.ndarray, remembered: float, score: float, fired: bool, s: Slab,
          p: Params) -> None:
    """`Calibrator.learn`: fold the live evidence (SIGNALS,) in, the score into the peak memory, a fire
    into the refractory's memory."""
    s.cal_peak[slot] = max(remembered, float(s.cal_peak[slot]) * p.peak_decay)
    s.cal_since[slot] = 0 if fired else min(int(s.cal_since[slot]) + 1, SINCE_MAX)
    if fired:
        s.cal_fired[slot] = to_bits(score)
    for q in range(SIGNALS):
        count = int(s.cal_count[slot, q])
        mean, var = float(s.cal_mean[slot, q]), float(s.cal_var[slot, q])
        known = np.isfinite(live[q])
        learned = count - p.skip
        if known and count >= p.skip:
            x = live[q]
            if learned > p.warmup // 2:
                x = min(x, mean + p.protect_z * max(math.sqrt(var), p.min_std))
            alpha = max(1.0 / (max(learned, 0) + 1.0), p.cal_alpha)
            delta = x - mean
            s.cal_mean[slot, q] = min(mean + alpha * delta, _F32_MAX)
            s.cal_var[slot, q] = min((1 - alpha) * (var + alpha * delta * delta), _F32_MAX)
        s.cal_count[slot, q] = min(count + (1 if known else 0), _COUNT_MAX)


@jit
def release(slot: int, s: Slab) -> None:
    """`Calibrator.release`: the device's alarm is the live surprise again."""
    for k in range(_N_STATE):
        s.cal_held_std[slot, k] = NAN_BITS
