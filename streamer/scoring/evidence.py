"""Evidence helpers: put a device's channels on one footing, and notice a sensor that stopped moving.

A device's evidence is the loudest of its channels (see `pipeline`), so a fault on one channel of four
is not diluted by the three healthy ones. For the loudest to be a fair pick, channels must speak in
comparable units; and one kind of fault, a stuck sensor, is too *quiet* for any of the other signals.
Two per-row pictures serve that (rows are (device, channel) pairs, see `state_store`):

- the *residual scale*: the mean squared one-step forecast error in the sensor's own units (cumulative
  at first, then exponentially weighted at the normaliser's pace). The forecast error and bias are
  divided by its square root, so a smooth, strongly seasonal channel whose usual error is small shows a
  fault as loudly as a noisy channel. Raw units rather than z units: z shrinks while the normaliser is
  still learning a new sensor's range, which would make the first hours look noisier than the rest.
  A squared error beyond `SCALE_PROTECT` times the scale is learned as that bound, so a spike does not
  teach the scale that spikes are normal;
- the *last raw value*, to count exact repeats. A channel's *repeat run* is the number of consecutive
  readings in which it repeated its previous value exactly: a noisy sensor almost never does that
  twice in a row, a stuck one does it every time. The device's evidence is its longest channel run
  beyond `REPEAT_GRACE` readings (per channel, so a sample-and-hold analyser that repeats for a few
  readings at a time does not hide a valve stuck on another channel). The grace matters because a
  device whose runs were always shorter has a
  calibrated spread of ~0, so the first longer run scores at once; a coarsely quantised sensor that
  repeats often teaches its calibration that long runs are usual for it.

Shapes: R rows, m devices; tensors (R,) unless noted.
"""

from __future__ import annotations

import numpy as np
import torch

SCALE_PROTECT = 100.0  # a squared error is learned as at most this many times the current scale
SCALE_FLOOR = 1e-30  # a scale at or below this (a row that never erred) standardises nothing
_HALF = float(torch.finfo(torch.float16).max)
REPEAT_GRACE = 8  # readings of a repeat run that are not evidence (rounded values coincide now and then)

# Per-row state only: `last_value` and `repeat_run` (see state_store.ROW_FIELDS); no per-device columns.


def standardise_and_update(
    err: torch.Tensor,  # (R,) float32, forecast error in raw units
    seen: torch.Tensor,  # (R,) bool, the normaliser has settled: the error means something
    learned: torch.Tensor,  # (R,) float, errors the row has learned before this one
    scale: torch.Tensor,  # (R_all,) float32, every row's mean squared error (updated in place)
    rows: torch.Tensor,  # (R,) int64
    weight: float,  # EWMA weight once the row has learned 1 / weight errors
) -> torch.Tensor:
    """The row's usual error (root of its scale) before this one (R,), NaN where it has none yet; then
    fold the squared error into the scale where `seen`."""
    old = scale[rows]  # (R,)
    known = old > SCALE_FLOOR
    sq = err * err
    bounded = torch.where(known, torch.minimum(sq, SCALE_PROTECT * old), sq)
    rate = torch.clamp(1.0 / (learned + 1.0), min=weight).to(old.dtype)
    scale[rows] = torch.where(seen, old + rate * (bounded - old), old)
    return torch.where(known, old.sqrt(), torch.full_like(old, float("nan")))


def range_excess_and_update(
    z: torch.Tensor,  # (R,) float32, this reading's z under the statistics before it
    seen: torch.Tensor,  # (R,) bool, the normaliser has settled: z means something
    ready: torch.Tensor,  # (R,) bool, the extremes have learned long enough to judge
    rescale: tuple[torch.Tensor, torch.Tensor],  # (R,) each, a and b: z_after = a * z_before + b
    low: torch.Tensor,  # (R_all,) float16, every row's running minimum, in z of the current statistics
    high: torch.Tensor,  # (R_all,) float16, every row's running maximum, likewise (updated in place)
    rows: torch.Tensor,  # (R,) int64
) -> torch.Tensor:
    """How far z lies outside the row's running range [low, high], as a share of its width (R,) float32,
    0 inside it or where not `ready`; then extend the range to z where `seen` and re-express it under
    the normaliser's new statistics (the extremes stay where they were in raw units)."""
    lo = low[rows].to(torch.float32)
    hi = high[rows].to(torch.float32)
    width = (hi - lo).clamp_min(1e-3)
    excess = torch.maximum(z - hi, lo - z).clamp_min(0) / width
    a, b = rescale
    new_lo = torch.where(seen, torch.minimum(lo, z), lo) * a + b
    new_hi = torch.where(seen, torch.maximum(hi, z), hi) * a + b
    low[rows] = new_lo.clamp(-_HALF, _HALF).to(low.dtype)
    high[rows] = new_hi.clamp(-_HALF, _HALF).to(high.dtype)
    return torch.where(ready, excess, torch.zeros_like(excess))


def repeat_runs(
    x: torch.Tensor,  # (R,) float32, this reading's raw values
    last: torch.Tensor,  # (R_all,) float32, every row's previous raw value (updated in place)
    run: torch.Tensor,  # (R_all,) int16, every row's repeat run (updated in place)
    rows: torch.Tensor,  # (R,) int64
    has_last: torch.Tensor,  # (R,) bool, the row holds a previous value
    starts: np.ndarray,  # (m,) position of each device's first row among the R
) -> np.ndarray:
    """Each device's longest channel repeat run after this reading (m,) int64; keeps the values as the
    rows' last."""
    same = (x == last[rows]) & has_last  # (R,)
    last[rows] = x
    longer = (run[rows].to(torch.int32) + 1).clamp_max(torch.iinfo(torch.int16).max)
    runs = torch.where(same, longer, 0).to(torch.int16)
    run[rows] = runs
    per_row = runs.cpu().numpy().astype(np.int64)
    return np.maximum.reduceat(per_row, starts) if len(starts) else np.zeros(0, dtype=np.int64)


def repeat_evidence(run: np.ndarray) -> np.ndarray:
    """Repeat runs (m,) -> evidence (m,) float64: readings beyond the grace."""
    return np.maximum(run.astype(np.float64) - REPEAT_GRACE, 0.0)
