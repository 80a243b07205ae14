"""The kernel's walk: each device's readings of a batch in order, devices spread over threads.

For one reading of one device, `reading` does what one wave of the torch path does for it
(`pipeline.ScoringPipeline._step` and `_calibrate_and_decide`): admit it (gap reset, event time,
offset), step its channels (`rows.channel`), relate them (`covariance.relation`), measure the held
normal, calibrate and step the alert policy (`decide`), and write its outputs. A device's readings
are independent of every other device's, so `run` hands contiguous ranges of devices to threads
(`numba.prange`), each with its own scratch.

Shapes: n readings in the batch, C its widest reading, D devices in the walk, k admitted readings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from model.normaliser import DAY_BINS, DAY_S, Z_CLIP
from streamer.scoring.alert_policy import FIRING
from streamer.scoring.evidence import REPEAT_GRACE
from streamer.scoring.kernel import decide
from streamer.scoring.kernel.covariance import relation
from streamer.scoring.kernel.half import f32_to_bits, to_float
from streamer.scoring.kernel.jit import jit, jit_own, jit_parallel
from streamer.scoring.kernel.rows import (
    ABOVE,
    COUNT,
    HMEAN,
    HSTD,
    NW,
    PMEAN,
    PVAR,
    SEEN,
    STD,
    ZH,
    Z,
    channel,
    clip,
)
from streamer.scoring.kernel.slab import Params, Slab, Weights
from streamer.scoring.relation import BLOCK, HALF_MAX
from streamer.scoring.signals import REPEAT_RUNS, SHARE_COLUMN, SIGNALS

f32 = np.float32
_STEPS_MAX = 65535
_BIN_S = DAY_S / DAY_BINS
_COLUMN = np.array(SHARE_COLUMN, dtype=np.int64)  # Signal -> the table column that attributes it
_PER_CHANNEL = np.array([0, 1, 2, 3, 4, 5, 7], dtype=np.int64)  # signals.PER_CHANNEL


class Out(NamedTuple):
    """Per reading of the batch (n,): what the kernel decided; shares and above only at transitions."""

    score: np.ndarray  # (n,) float32
    alerting: np.ndarray  # (n,) bool
    top: np.ndarray  # (n,) int16
    alarm: np.ndarray  # (n,) float64
    transition: np.ndarray  # (n,) int8, decide.OPENED / RECOVERED / ACCEPTED, 0 none
    started: np.ndarray  # (n,) float64, the episode's start after the reading
    shares: np.ndarray  # (n, C) float64, each channel's part in the winning signal
    above: np.ndarray  # (n, C) bool, the value is above its forecast / its normal


class Scratch(NamedTuple):
    w: np.ndarray  # (NW, C) per-channel values (rows.py)
    table: np.ndarray  # (C, 7) per-channel evidence, live normal
    held: np.ndarray  # (C, 7) per-channel evidence, held normal
    r2: np.ndarray  # (C,)
    u: np.ndarray  # (C,)
    live_dev: np.ndarray  # (SIGNALS,)
    held_dev: np.ndarray  # (SIGNALS,)
    h: np.ndarray  # (S,)
    g: np.ndarray  # (2G,)
    lw: np.ndarray  # (B, B)
    v: np.ndarray  # (3, B)


@jit
def scratch(c_max: int, wt: Weights) -> Scratch:
    b = min(c_max, BLOCK)
    size = wt.w_hh.shape[1] * (2 if wt.lstm else 1)
    return Scratch(np.zeros((NW, c_max)), np.zeros((c_max, 7)), np.zeros((c_max, 7)), np.zeros(c_max),
                   np.zeros(c_max), np.zeros(SIGNALS), np.zeros(SIGNALS), np.zeros(size),
                   np.zeros(2 * wt.w_hh.shape[0]), np.zeros((b, b)), np.zeros((3, b)))


@jit
def admit(slot: int, ts: float, offset: int, s: Slab, p: Params) -> tuple[float, bool]:
    """Event time, offset and gap reset (`pipeline._admit`), and the time the device began learning
    (`pipeline._locked`): (seconds since the previous reading, first step of the recurrent state)."""
    last = s.last_ts[slot]
    s.last_ts[slot] = ts
    s.source_offset[slot] = max(s.source_offset[slot], offset)
    if np.isfinite(last) and ts - last > p.gap_reset_s:
        r0 = s.row_start[slot]
        s.hidden[r0 : r0 + s.n_channels[slot]] = 0
        s.pred[r0 : r0 + s.n_channels[slot]] = 0
        s.steps[slot] = 0
    if math.isnan(s.learn_since[slot]):
        s.learn_since[slot] = ts
    return ts - last, s.steps[slot] == 0


@jit
def day_rate(dt: float, p: Params) -> np.float32:
    """`model.normaliser.day_rates` of one reading."""
    span = _BIN_S if (math.isnan(dt) or dt == math.inf) else dt
    return f32(min(1.0, p.day_weight * (min(max(span, 0.0), _BIN_S) / _BIN_S)))


@jit
def relate(slot: int, c: int, firing: bool, locked: bool, s: Slab, p: Params, sc: Scratch) -> float:
    """The relation column of the table (NaN for one channel) and the joint distance (returned); it
    measures the held z of a device locked to its held normal, the live z otherwise."""
    if c < 2:
        sc.table[:c, 6] = math.nan
        return math.nan
    source = ZH if locked else Z
    for k in range(c):
        sc.u[k] = clip(sc.w[source, k], Z_CLIP)
    learned = max(float(f32(f32(f32(sc.w[COUNT, 0]) - f32(p.settle)) - f32(1.0))), 0.0)
    learn_it = sc.w[SEEN, 0] > 0 and not firing
    d2 = relation(s.relation, s.relation_start[slot], sc.u, c, learned, learn_it, p.norm_alpha, sc.r2,
                  sc.lw, sc.v)
    r0, beta = s.row_start[slot], f32(p.level_beta)
    for k in range(c):  # `relation.level_and_update`: the short-term level of r_k^2, float16
        v = sc.r2[k]
        if math.isnan(v):
            sc.table[k, 6] = math.nan
            continue
        old = to_float(s.rel_level[r0 + k])
        new = f32(old + f32(beta * f32(f32(v) - old)))
        bits = f32_to_bits(f32(min(float(new), HALF_MAX)))
        s.rel_level[r0 + k] = bits
        sc.table[k, 6] = float(to_float(bits))
    return d2


@jit
def held_table(r0: int, c: int, first: bool, s: Slab, sc: Scratch) -> None:
    """Per-channel evidence against the held normal (`held_normal.held_evidence`) of a holding device."""
    for k in range(c):
        a = float(f32(sc.w[STD, k])) / sc.w[HSTD, k]
        b = (sc.w[PMEAN, k] - sc.w[HMEAN, k]) / sc.w[HSTD, k]
        level, vol = float(s.level[r0 + k]), float(s.vol[r0 + k])
        h_level = min(max(a * level + b, -Z_CLIP), Z_CLIP)
        h_vol = min(max(a * a * vol + 2 * a * b * level + b * b, 0.0), Z_CLIP * Z_CLIP)
        dev = 0.0 if first else float(f32(sc.w[ZH, k]))
        seen = sc.w[SEEN, k] > 0
        sc.held[k, :] = math.nan
        sc.held[k, 2] = dev * dev
        sc.held[k, 4] = h_level * h_level if seen else math.nan
        sc.held[k, 5] = h_vol if seen else math.nan
        sc.held[k, 6] = sc.table[k, 6]


@jit
def per_device(table: np.ndarray, c: int, run: int, joint: float, out: np.ndarray) -> None:
    """Per-channel evidence (C, 7) -> (SIGNALS,): each per-channel signal's largest channel (NaN only
    where every channel's is), the repeat run beyond the grace, the joint distance."""
    for col in range(7):
        best = math.nan
        for k in range(c):
            v = table[k, col]
            if not math.isnan(v) and (math.isnan(best) or v > best):
                best = v
        out[_PER_CHANNEL[col]] = best
    out[6] = max(float(run) - REPEAT_GRACE, 0.0)
    out[8] = joint


@jit
def hold_rows(r0: int, c: int, s: Slab, sc: Scratch) -> None:
    """`held_normal.hold_rows`: the normaliser statistics from before the opening reading."""
    for k in range(c):
        s.held_mean[r0 + k] = sc.w[PMEAN, k]
        s.held_sd[r0 + k] = math.sqrt(max(sc.w[PVAR, k], 0.0))


@jit
def reading(slot: int, i: int, ts: float, x: np.ndarray, offset: int, s: Slab, p: Params, wt: Weights,
            sc: Scratch, out: Out) -> None:
    """Score reading i (values x (C,)) of the device in `slot` and step its state, as one wave would."""
    c, r0 = int(s.n_channels[slot]), int(s.row_start[slot])
    dt, first = admit(slot, ts, offset, s, p)
    holding = False
    for k in range(s.cal_held_std.shape[1]):
        holding = holding or np.isfinite(to_float(s.cal_held_std[slot, k]))
    locked = holding and s.alert_started_at[slot] - float(s.learn_since[slot]) >= p.mature_s
    firing = s.alert_state[slot] == FIRING
    rate = day_rate(dt, p)
    day_bin = int(np.floor(np.mod(ts, DAY_S) / _BIN_S)) % DAY_BINS
    excess, run = 0.0, 0
    for k in range(c):
        e, q = channel(r0 + k, k, x[k], first, holding, rate, day_bin, s, p, wt, sc.w, sc.table, sc.h, sc.g)
        excess, run = max(excess, e), max(run, q)
    s.steps[slot] = min(int(s.steps[slot]) + 1, _STEPS_MAX)
    joint = relate(slot, c, firing, locked, s, p, sc)
    per_device(sc.table, c, run, joint, sc.live_dev)
    if holding:
        held_table(r0, c, first, s, sc)
        per_device(sc.held, c, run, joint, sc.held_dev)
    score, alarm, winner, remembered, fired, before = decide.calibrate(
        slot, sc.live_dev, sc.held_dev, holding, locked, excess > p.range_margin, s, p)
    code = decide.policy(slot, alarm, before, ts, s, p)
    if code == decide.OPENED:
        hold_rows(r0, c, s, sc)
        decide.hold(slot, s, p)
    decide.learn(slot, sc.live_dev, remembered, score, fired, s, p)
    if code == decide.RECOVERED or code == decide.ACCEPTED:
        decide.release(slot, s)
    write(i, c, r0, score, alarm, winner, code, s.alert_state[slot] == FIRING, s.alert_started_at[slot],
          s, sc, out)


@jit
def write(i: int, c: int, r0: int, score: float, alarm: float, winner: int, code: int, alerting: bool,
          started: float, s: Slab, sc: Scratch, out: Out) -> None:
    """Reading i's outputs; the channel with the largest share of the winning signal is its top one (the
    repeat run: the channel's own run beyond the grace)."""
    column = _COLUMN[winner]
    top, best = 0, 0.0
    for k in range(c):
        share = sc.table[k, column] if column != REPEAT_RUNS else \
            max(float(s.repeat_run[r0 + k]) - REPEAT_GRACE, 0.0)
        share = 0.0 if math.isnan(share) else min(max(share, -1.7976931348623157e308), 1.7976931348623157e308)
        sc.r2[k] = share
        if share > best:
            top, best = k, share
    out.score[i], out.alerting[i], out.top[i] = score, alerting, top
    out.alarm[i], out.transition[i], out.started[i] = alarm, code, started
    if code:
        for k in range(c):
            out.shares[i, k] = sc.r2[k]
            out.above[i, k] = sc.w[ABOVE, k] > 0


@jit_own
def walk(lo: int, hi: int, order: np.ndarray, dev_start: np.ndarray, dev_slot: np.ndarray, ts: np.ndarray,
         values: np.ndarray, offsets: np.ndarray, s: Slab, p: Params, wt: Weights, out: Out) -> None:
    """Devices lo..hi-1 of the walk, each reading of each in order."""
    sc = scratch(values.shape[1], wt)
    for d in range(lo, hi):
        slot = dev_slot[d]
        for j in range(dev_start[d], dev_start[d + 1]):
            i = order[j]
            reading(slot, i, ts[i], values[i], offsets[i], s, p, wt, sc, out)


@jit_parallel
def run(order: np.ndarray, dev_start: np.ndarray, dev_slot: np.ndarray, ts: np.ndarray, values: np.ndarray,
        offsets: np.ndarray, s: Slab, p: Params, wt: Weights, out: Out, chunks: int) -> None:
    """Every device of the walk: admitted readings order (k,) grouped by device (dev_start (D + 1,)
    offsets into it, dev_slot (D,) their slots), batch columns ts (n,), values (n, C), offsets (n,)."""
    n_dev = len(dev_slot)
    for chunk in prange(chunks):
        walk(chunk * n_dev // chunks, (chunk + 1) * n_dev // chunks, order, dev_start, dev_slot, ts, values,
             offsets, s, p, wt, out)
