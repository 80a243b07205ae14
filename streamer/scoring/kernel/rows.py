"""One channel's reading, from raw value to its row of per-channel evidence, in compiled code.

The same steps and the same float32/float64 roundings as the torch path's `pipeline._step` for one
row: normalise (`model.normaliser.normalise_and_update`), the z against a held normal
(`held_normal.held_z`), the recurrent step (`cell`), the running range (`evidence.range_excess_and_update`),
repeats, the time-of-day profile, the short-term level, volatility and bias, and the residual scale
(`evidence.standardise_and_update`). Where torch computes in float32, the value is computed in float64
and rounded to float32 after each operation: for +, -, *, / and sqrt that double rounding gives
float32's own result.

Scratch `w` (NW, C) float64: per channel k, the values below at w[name, k]; `table` (C, 7) the
per-channel evidence (`signals.PER_CHANNEL` order), squared where the torch path squares.
"""

from __future__ import annotations

import math

import numpy as np

from model.normaliser import Z_CLIP
from streamer.scoring.evidence import REPEAT_GRACE, SCALE_FLOOR, SCALE_PROTECT
from streamer.scoring.kernel.cell import step_row
from streamer.scoring.kernel.half import TINY_BITS, f32_to_bits, to_float
from streamer.scoring.kernel.jit import jit
from streamer.scoring.kernel.slab import Params, Slab, Weights

f32 = np.float32
# rows of the scratch w: value, z, std (float32), normaliser mean and var before the value, count after
# it, z against the held normal, forecast error, settled (0/1), held mean, held std, value above (0/1)
X, Z, STD, PMEAN, PVAR, COUNT, ZH, RESID, SEEN, HMEAN, HSTD, ABOVE = range(12)
NW = 12
_HALF_MAX = 65504.0
_SCALE_FLOOR = f32(SCALE_FLOOR)
_REPEAT_MAX = 32767
del REPEAT_GRACE  # the device-level repeat evidence is formed in `walk`


@jit
def clip(v: float | np.floating, bound: float) -> np.float32:
    return f32(min(max(v, -bound), bound))


@jit
def row_std(mean: float, var32: np.float32, p: Params) -> float:
    """`model.normaliser.row_std` of a float32 variance: its float32 root, then the floors in float64."""
    return float(f32(math.sqrt(var32))) + p.rel_floor * abs(mean) + p.abs_floor


@jit
def normalise(r: int, x: np.float32, s: Slab, p: Params, w: np.ndarray, k: int) -> None:
    """z of x under row r's statistics, then fold x in: fills w[Z, STD, PMEAN, PVAR, COUNT, k]."""
    count, mean, var = s.norm_count[r], s.norm_mean[r], s.norm_var[r]
    std = row_std(mean, var, p)
    w[STD, k], w[PMEAN, k], w[PVAR, k] = f32(std), mean, var
    w[Z, k] = f32((float(x) - mean) / std) if count > 0 else 0.0
    alpha = max(f32(1.0 / f32(count + f32(1.0))), f32(p.norm_alpha))
    delta = float(x) - mean
    s.norm_mean[r] = mean + float(alpha) * delta
    keep = f32(f32(1.0) - alpha)
    s.norm_var[r] = f32(float(f32(var * keep)) + float(f32(keep * alpha)) * delta * delta)
    s.norm_count[r] = f32(count + f32(1.0))
    w[COUNT, k] = s.norm_count[r]


@jit
def held_z(r: int, x: np.float32, s: Slab, p: Params, w: np.ndarray, k: int) -> None:
    """z of x against row r's held normal (`held_normal.held_z`): fills w[ZH, HMEAN, HSTD, k]."""
    mean, sd = float(s.held_mean[r]), float(s.held_sd[r])
    std = math.sqrt(sd * sd) + p.rel_floor * abs(mean) + p.abs_floor
    w[HMEAN, k], w[HSTD, k] = mean, std
    w[ZH, k] = f32((float(x) - mean) / std)


@jit
def range_excess(r: int, z: np.float32, seen: bool, s: Slab, p: Params, w: np.ndarray, k: int) -> float:
    """`evidence.range_excess_and_update` for row r (after `normalise`)."""
    new_mean = s.norm_mean[r]
    new_std = row_std(new_mean, s.norm_var[r], p)
    a = f32(w[STD, k] / new_std)
    b = f32((w[PMEAN, k] - new_mean) / new_std)
    lo, hi = to_float(s.range_low[r]), to_float(s.range_high[r])
    width = max(f32(hi - lo), f32(1e-3))
    excess = f32(max(max(f32(z - hi), f32(lo - z)), f32(0.0)) / width)
    new_lo = f32(f32((min(lo, z) if seen else lo) * a) + b)
    new_hi = f32(f32((max(hi, z) if seen else hi) * a) + b)
    s.range_low[r] = f32_to_bits(min(max(new_lo, f32(-_HALF_MAX)), f32(_HALF_MAX)))
    s.range_high[r] = f32_to_bits(min(max(new_hi, f32(-_HALF_MAX)), f32(_HALF_MAX)))
    ready = w[COUNT, k] > p.settle + p.range_warmup
    return float(excess) if ready else 0.0


@jit
def repeat_run(r: int, x: np.float32, count: float, s: Slab) -> int:
    """Row r's run of exactly repeated values after x (`evidence.repeat_runs`)."""
    same = x == s.last_value[r] and count > 1
    s.last_value[r] = x
    run = min(int(s.repeat_run[r]) + 1, _REPEAT_MAX) if same else 0
    s.repeat_run[r] = run
    return run


@jit
def day_residual(r: int, zc: np.float32, seen: bool, rate: np.float32, day_bin: int, s: Slab) -> float:
    """`model.normaliser.day_residual_and_update` for row r: z minus its bin's profile (NaN: unknown)."""
    p = to_float(s.day_profile[r, day_bin])
    known = p != 0.0
    resid = float(f32(zc - p)) if known and seen else math.nan
    if seen:
        learned = f32_to_bits(f32(p + f32(rate * f32(zc - p)))) if known else f32_to_bits(zc)
        s.day_profile[r, day_bin] = TINY_BITS if to_float(learned) == 0.0 else learned
    return resid


@jit
def ewma(average: np.ndarray, r: int, v: np.float32, seen: bool, beta: np.float32) -> np.float32:
    """`model.normaliser.ewma_update` for row r."""
    old = average[r]
    if seen:
        average[r] = f32(old + f32(beta * f32(v - old)))
    return average[r]


@jit
def resid_scale(r: int, err: np.float32, seen: bool, count: np.float32, s: Slab, p: Params) -> np.float32:
    """`evidence.standardise_and_update` for row r: its usual error before this one (NaN: none)."""
    old = s.resid_var[r]
    known = old > _SCALE_FLOOR
    sq = f32(err * err)
    bounded = min(sq, f32(f32(SCALE_PROTECT) * old)) if known else sq
    learned = f32(f32(count - f32(p.settle)) - f32(1.0))
    rate = max(f32(1.0 / float(f32(learned + f32(1.0)))), f32(p.norm_alpha))
    if seen:
        s.resid_var[r] = f32(old + f32(rate * f32(bounded - old)))
    return f32(math.sqrt(old)) if known else f32(math.nan)


@jit
def channel(r: int, k: int, x: np.float32, first: bool, holding: bool, rate: np.float32, day_bin: int,
            s: Slab, p: Params, wt: Weights, w: np.ndarray, table: np.ndarray, h: np.ndarray,
            g: np.ndarray) -> tuple[float, int]:
    """Every per-row step of channel k (row r) of one reading: its evidence row table[k], scratch
    w[:, k]; returns its range excess and repeat run."""
    w[X, k] = x
    normalise(r, x, s, p, w, k)
    z = f32(w[Z, k])
    w[ZH, k] = z
    if holding:
        held_z(r, x, s, p, w, k)
    resid = f32(0.0) if first else f32(z - s.pred[r])
    w[RESID, k] = resid
    w[ABOVE, k] = (z if first else resid) > 0
    step_row(r, clip(z, Z_CLIP), f32(1.0) if first else f32(0.0), s.hidden, s.pred, wt, h, g)
    seen = w[COUNT, k] > p.settle
    w[SEEN, k] = seen
    excess = range_excess(r, z, seen, s, p, w, k)
    run = repeat_run(r, x, w[COUNT, k], s)
    evidence_row(r, k, z, resid, first, seen, rate, day_bin, s, p, w, table)
    return excess, run


@jit
def evidence_row(r: int, k: int, z: np.float32, resid: np.float32, first: bool, seen: bool,
                 rate: np.float32, day_bin: int, s: Slab, p: Params, w: np.ndarray, table: np.ndarray
                 ) -> None:
    """Columns 0-5 of table[k] (`pipeline._evidence`); the relation column is `covariance`'s."""
    zc = clip(z, Z_CLIP)
    beta = f32(p.level_beta)
    day = day_residual(r, zc, seen, rate, day_bin, s)
    level = ewma(s.level, r, zc, seen, beta)
    vol = ewma(s.vol, r, f32(zc * zc), seen, beta)
    resid_c = clip(resid, Z_CLIP)
    bias = ewma(s.bias, r, resid_c, seen, beta)
    std = f32(w[STD, k])
    scale = resid_scale(r, f32(resid_c * std), seen, f32(w[COUNT, k]), s, p)
    forecast = float(f32(f32(resid_c * std) / scale))
    drift = float(f32(f32(bias * std) / scale))
    dev = 0.0 if first else float(z)
    table[k, 0], table[k, 1], table[k, 2] = forecast * forecast, drift * drift, dev * dev
    table[k, 3], table[k, 4], table[k, 5] = day * day, float(level) * float(level), float(vol)
