"""The cross-channel relation of one device's reading (`scoring.relation`), in compiled code.

Per block of channels: the Cholesky factor L of S + ridge I, then P u by two triangular solves and the
diagonal of P = (L L')^-1 from the columns of L^-1, in float64 (torch calls LAPACK for the same
factorisation: the two agree to float64 rounding); then the covariance learns the reading where
`learn` (cumulative, then exponentially weighted; shrunk beyond the protect bound), stored as float32,
each block as its lower triangle row by row (cell i (i + 1) / 2 + j holds (i, j), j <= i).

Scratch `lw` (B, B) and `v` (3, B) float64, B the largest block.
"""

from __future__ import annotations

import math

import numpy as np

from streamer.scoring.kernel.jit import jit
from streamer.scoring.relation import BLOCK, PROTECT, RIDGE


@jit
def factor(cells: np.ndarray, at: int, b: int, lw: np.ndarray) -> None:
    """lw[:b, :b] <- the lower Cholesky factor of S + RIDGE I, S the b x b block packed from `at`."""
    for j in range(b):
        acc = float(cells[at + j * (j + 1) // 2 + j]) + RIDGE
        for q in range(j):
            acc -= lw[j, q] * lw[j, q]
        lw[j, j] = math.sqrt(acc)
        for i in range(j + 1, b):
            acc = float(cells[at + i * (i + 1) // 2 + j])
            for q in range(j):
                acc -= lw[i, q] * lw[j, q]
            lw[i, j] = acc / lw[j, j]


@jit
def residuals(u: np.ndarray, b: int, lw: np.ndarray, v: np.ndarray, r2: np.ndarray, off: int) -> float:
    """r_k^2 of u (b,) into r2[off + k] and D^2 (returned), from the factor lw; v (3, B) scratch."""
    y, e = v[0], v[1]
    for i in range(b):  # L y = u
        acc = u[i]
        for q in range(i):
            acc -= lw[i, q] * y[q]
        y[i] = acc / lw[i, i]
    for i in range(b - 1, -1, -1):  # L' (P u) = y, in place
        acc = y[i]
        for q in range(i + 1, b):
            acc -= lw[q, i] * y[q]
        y[i] = acc / lw[i, i]
    d2 = 0.0
    for k in range(b):
        for i in range(b):  # column k of L^-1: L e = unit k
            acc = 1.0 if i == k else 0.0
            for q in range(k, i):
                acc -= lw[i, q] * e[q]
            e[i] = acc / lw[i, i] if i >= k else 0.0
        diag = 0.0
        for i in range(k, b):
            diag += e[i] * e[i]
        r2[off + k] = y[k] * y[k] / diag
        d2 += u[k] * y[k]
    return d2


@jit
def learn(cells: np.ndarray, at: int, u: np.ndarray, b: int, d2: float, ready: bool, learned: float,
          alpha: float) -> None:
    """Fold u (b,) into the b x b covariance packed from `at` (`relation._learn`, for a reading to learn)."""
    bound = PROTECT * b
    shrink = math.sqrt(bound / max(d2, 1e-12)) if ready and d2 > bound else 1.0
    rate = max(1.0 / (learned + 1.0), alpha)
    for i in range(b):
        for j in range(i + 1):
            cell = at + i * (i + 1) // 2 + j
            s = float(cells[cell])
            cells[cell] = np.float32(s + rate * ((u[i] * shrink) * (u[j] * shrink) - s))


@jit
def relation(cells: np.ndarray, start: int, u: np.ndarray, c: int, learned: float, learn_it: bool,
             alpha: float, r2: np.ndarray, lw: np.ndarray, v: np.ndarray) -> float:
    """r_k^2 (c,) into r2 (NaN until warmed up) and D^2 (returned; NaN likewise) of one device's clipped
    z u (c,) against its covariance cells from `start`; then learn u where `learn_it`."""
    d2_sum, chan, at = 0.0, 0, start
    while chan < c:
        b = min(BLOCK, c - chan)
        ub = u[chan : chan + b]
        factor(cells, at, b, lw)
        d2 = residuals(ub, b, lw, v, r2, chan)
        ready = learned >= 2 * b + 30  # relation.warmup(b)
        if not ready:
            r2[chan : chan + b] = math.nan
        d2_sum += d2 if ready else math.nan
        if learn_it:
            learn(cells, at, ub, b, d2, ready, learned, alpha)
        chan, at = chan + b, at + b * (b + 1) // 2
    return d2_sum
