"""Cross-channel evidence: how a device's channels move together, learned from its own normal operation.

Every channel of a device can stay inside its usual range while the *relation* between channels breaks
(a controller output moves while the measurement it controls stays put; flow falls while pressure
rises). Per-channel signals cannot see that. Each device with two or more channels therefore keeps an
exponentially weighted covariance S of its clipped normalised values u (z units, so S is close to the
channels' correlation matrix), and scores every reading against it:

- the *conditional residual* of channel k: how far u_k lies from what the other channels predict,
  in units of that prediction's error. With P = (S + ridge I)^-1, the least-squares prediction of
  u_k from the others misses by (P u)_k / P_kk with variance 1 / P_kk, so
  r_k^2 = (P u)_k^2 / P_kk. The evidence is the largest r_k^2 (the channel that breaks the relation,
  also what an alert attributes); the per-channel values are returned for attribution;
- the *joint distance* D^2 = u' P u (the Mahalanobis distance, Hotelling's T^2 over all directions:
  the small-variance directions that PCA's residual Q covers weigh most).

The ridge keeps P finite for channels that never move, or move in lockstep. Learning: cumulative for
the first 1 / alpha readings (the normaliser's pace), exponentially weighted after; only readings the
caller marks as normal are learned (not while the device's alert episode is open, see `alert_policy`),
and a reading whose D^2 is beyond `PROTECT` times its expected value is learned shrunk to that bound,
so a stretch of abnormal readings that slips through cannot teach the relation. Until a device has
learned `warmup(b)` readings its relation evidence is NaN ("not available yet").

The published relation evidence is the *short-term level* of r_k^2: its exponential average over the
last ~`1 / level_beta` readings (the pace of the short-term level, volatility and bias of
`model.normaliser`), one float16 per channel (`level_and_update`). A broken relation holds for many
readings, while a single reading's r_k^2 is noisy (a chi-square of one degree of freedom): averaged, the
evidence rises steadily above its usual range and stays there while the relation is broken, instead of
dipping back under the alert's close level now and then (TEP fault 16: detection rate 0.115 -> 0.980,
mean over 18 faults 0.870 -> 0.920 at the same false-alarm rate; simulated fleet false alerts per
fault-free device-day 0.063 -> 0.048). The joint distance stays per reading.

Cost, per device and reading, with C channels: the covariance is symmetric, so only its lower triangle
is stored, C (C + 1) / 2 cells of float32 (40 B at 4 channels, 144 B at 8, 544 B at 16, 5.4 KiB at 52),
plus the 2 B per channel of the r_k^2 level, and O(C^3) arithmetic (a Cholesky factorisation and
inverse of C x C). Above `BLOCK` channels the matrix is block-diagonal: channels are split into
consecutive blocks of `BLOCK` (the last one smaller), each with its own covariance, so state grows as
C * BLOCK / 2 and time as C * BLOCK^2; relations across blocks are then not seen (order related
channels next to each other).

Shapes: m devices with the same channel count c; u (m, c); cells (m, cells(c)).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from streamer.scoring.state_store import Block

BLOCK = 64  # channels above which the covariance is block-diagonal
RIDGE = 0.05  # added to S's diagonal (z units squared): a channel never predicts another perfectly
HALF_MAX = float(torch.finfo(torch.float16).max)  # where the float16 residual level saturates
PROTECT = 4.0  # a reading is learned with D^2 at most this many times its expected value (the block size)


def block_sizes(c: int) -> list[int]:
    """Channel blocks of a device with c channels: [c] up to BLOCK, else BLOCK-sized blocks and the rest."""
    if c <= BLOCK:
        return [c]
    return [BLOCK] * (c // BLOCK) + ([c % BLOCK] if c % BLOCK else [])


def triangle(b: int) -> int:
    """Cells of one block of b channels: its covariance's lower triangle, row by row."""
    return b * (b + 1) // 2


def cells(c: int) -> int:
    """State cells of a device with c channels (0 for one channel: a lone channel has no relation)."""
    return 0 if c < 2 else sum(triangle(b) for b in block_sizes(c))


@cache  # a few block sizes, asked for on every wave
def full_index(b: int) -> np.ndarray:
    """(b * b,) int64: the packed cell of each entry (i, j) of a b x b block, row-major; cell
    i (i + 1) / 2 + j holds (i, j) and (j, i) for j <= i.

    >>> full_index(3).reshape(3, 3).tolist()
    [[0, 1, 3], [1, 2, 4], [3, 4, 5]]
    """
    i, j = np.divmod(np.arange(b * b), b)
    hi, lo = np.maximum(i, j), np.minimum(i, j)
    return hi * (hi + 1) // 2 + lo


def unpack(packed: np.ndarray, c: int) -> list[np.ndarray]:
    """A device's cells (cells(c),) -> its covariance blocks as full matrices [(b, b), ...]."""
    out, at = [], 0
    for b in block_sizes(c):
        out.append(packed[at + full_index(b)].reshape(b, b))
        at += triangle(b)
    return out


def warmup(b: int) -> int:
    """Readings a block of b channels learns before its covariance is trusted."""
    return 2 * b + 30


BLOCKS = (Block("relation", torch.float32, cells, f"tri{BLOCK}"),)  # packed lower triangles


def score_and_learn(
    u: torch.Tensor,  # (m, c) float32, clipped z of each device's channels
    cov: torch.Tensor,  # (m, cells(c)) float32, each device's covariance cells (updated by the caller)
    learned: torch.Tensor,  # (m,) float, readings each device's relation has learned before this one
    learn: torch.Tensor,  # (m,) bool, this reading is normal: fold it in
    alpha: float,  # EWMA weight once 1 / alpha readings are learned
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel conditional residuals r^2 (m, c), joint distance D^2 (m,), new cells (m, cells(c)).

    Residuals and distance are NaN where the device has not learned `warmup` readings yet.
    """
    m, c = u.shape
    r2 = torch.full((m, c), math.nan, dtype=torch.float64, device=u.device)
    d2 = torch.zeros(m, dtype=torch.float64, device=u.device)
    new = cov.clone()
    chan, cell = 0, 0
    for b in block_sizes(c):
        ub = u[:, chan : chan + b].to(torch.float64)  # (m, b)
        tri = triangle(b)
        full = torch.from_numpy(full_index(b)).to(u.device)
        s = cov[:, cell : cell + tri][:, full].reshape(m, b, b).to(torch.float64)  # (m, b, b)
        rb, db = _residuals(ub, s)
        ready = learned >= warmup(b)  # (m,)
        r2[:, chan : chan + b] = torch.where(ready[:, None], rb, math.nan)
        d2 += torch.where(ready, db, math.nan)
        lower = torch.tril_indices(b, b, device=u.device)  # (2, tri) row by row: the packed order
        new[:, cell : cell + tri] = _learn(ub, s, db, ready, learned, learn, alpha, b)[:, lower[0], lower[1]]
        chan, cell = chan + b, cell + tri
    return r2, d2, new


def _residuals(u: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u (m, b), s (m, b, b) float64 -> r^2 (m, b), D^2 (m,)."""
    b = u.shape[1]
    a = s + RIDGE * torch.eye(b, dtype=s.dtype, device=s.device)
    chol, _ = torch.linalg.cholesky_ex(a)  # S is a covariance (PSD) plus the ridge: positive definite
    p = torch.cholesky_inverse(chol)  # (m, b, b)
    pu = (p @ u.unsqueeze(-1)).squeeze(-1)  # (m, b)
    diag = torch.diagonal(p, dim1=-2, dim2=-1)  # (m, b)
    return pu * pu / diag, (u * pu).sum(dim=1)


def _learn(u: torch.Tensor, s: torch.Tensor, d2: torch.Tensor, ready: torch.Tensor, learned: torch.Tensor,
           learn: torch.Tensor, alpha: float, b: int) -> torch.Tensor:
    """The covariance after folding u in where `learn`: (m, b, b) float32."""
    bound = PROTECT * b
    shrink = torch.where(ready & (d2 > bound), torch.sqrt(bound / d2.clamp_min(1e-12)), 1.0)  # (m,)
    v = u * shrink[:, None]
    rate = torch.clamp(1.0 / (learned.to(torch.float64) + 1.0), min=alpha)  # (m,)
    rate = torch.where(learn, rate, 0.0)[:, None, None]
    outer = v.unsqueeze(2) * v.unsqueeze(1)  # (m, b, b)
    return (s + rate * (outer - s)).to(torch.float32)


def level_and_update(
    r2: np.ndarray,  # (r,) float64, this reading's r_k^2 per row, NaN where not available
    level: torch.Tensor,  # (R_all,) float16, every row's short-term level of r_k^2 (updated in place)
    rows: torch.Tensor,  # (r,) int64
    beta: float,  # EWMA weight (the normaliser's level_beta)
) -> np.ndarray:
    """The rows' short-term level of r_k^2 after this reading (r,) float64, NaN where r2 is; folds r2 in
    (as float32, stored as float16, saturating at its largest finite value) where it is not NaN."""
    v = torch.from_numpy(r2).to(level.device, torch.float32)
    known = torch.isfinite(v)
    old = level[rows].to(torch.float32)
    new = torch.where(known, old + beta * (torch.where(known, v, old) - old), old)
    level[rows] = new.clamp(max=HALF_MAX).to(level.dtype)
    out = level[rows].to("cpu", torch.float64).numpy()
    return np.where(known.cpu().numpy(), out, np.nan)


def device_groups(n_channels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(c, positions) for each channel count c >= 2 among a wave's devices: (m,) -> groups."""
    counts = n_channels.astype(np.int64)
    return [(int(c), np.flatnonzero(counts == c)) for c in np.unique(counts) if c >= 2]
