"""The held normal: the device's normal of before its open episode, what the episode's alarm measures.

When an episode opens, the pipeline keeps each row's normaliser mean and spread as they were just before
the opening reading (`hold_rows`; the calibration of the state signals is held by
`calibration.Calibrator.hold`). While it is held, every reading is also measured against it: its z
(`held_z`) and the per-channel evidence of the state signals (`held_evidence`). On a device that was
mature when the episode opened that is the alarm, so a fault that persists keeps alarming however much
the live normal learns it; on a younger one it only labels the close. See `alert_policy` for when a hold
ends.

Shapes: r rows of one wave; `rows_of` is the store's per-row state (`StateStore.rows`).
"""

from __future__ import annotations

import numpy as np
import torch

from model.normaliser import Z_CLIP, NormaliserConfig, row_std
from streamer.scoring.signals import COLUMN_OF, Signal

Held = tuple[torch.Tensor, torch.Tensor]  # (mean (r,), std (r,)) float64


def hold_rows(rows_of: dict[str, torch.Tensor], rows: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
              ) -> None:
    """Keep the normaliser statistics of these rows (r,) from before the opening reading (mean, var (r,)
    float64) as their held normal."""
    rows_of["held_mean"][rows] = mean.to(torch.float32)
    rows_of["held_sd"][rows] = var.clamp_min(0).sqrt().to(torch.float32)


def held_statistics(rows_of: dict[str, torch.Tensor], rows: torch.Tensor, normaliser: NormaliserConfig
                    ) -> Held:
    """The normaliser mean and scale (as `row_std` floors it) held since each row's episode opened:
    rows (r,) -> (mean (r,), std (r,)) float64 (meaningful only where the device holds)."""
    mean = rows_of["held_mean"][rows].to(torch.float64)  # (r,)
    sd = rows_of["held_sd"][rows].to(torch.float64)  # (r,)
    return mean, row_std(mean, sd * sd, normaliser)


def held_z(x: torch.Tensor, z: torch.Tensor, held: Held | None, holding: torch.Tensor) -> torch.Tensor:
    """z (r,) of raw values x (r,) against the held normal (mean, std) where `holding` (r,), the live
    z elsewhere (and everywhere when nothing is held: `held` None)."""
    if held is None:
        return z
    mean, std = held
    return torch.where(holding, ((x.to(torch.float64) - mean) / std).to(torch.float32), z)


def held_evidence(z_held: torch.Tensor, first: torch.Tensor, seen: torch.Tensor, holding: torch.Tensor,
                  table: np.ndarray, prior: Held, std: torch.Tensor, rows_of: dict[str, torch.Tensor],
                  rows: torch.Tensor, held: Held | None) -> np.ndarray:
    """The per-channel evidence against the held normal (r, len(PER_CHANNEL)): deviation of the held
    z, and the short-term level and volatility of the held z, derived from the live ones by the
    change of variables z_held = a z + b (a, b from the live statistics before this reading, `prior`
    (mean, var) and `std` (r,), and the held ones; exact while they drift slowly over the
    ~1 / level_beta readings the averages span); relation as the live `table` (it is fed the held z);
    the rest NaN, as are rows not `holding` (r,) (where none is, `held` is None and nothing is
    computed)."""
    out = np.full_like(table, np.nan)
    if held is None:
        return out
    held_mean, held_std = held  # (r,), (r,)
    a = std.to(torch.float64) / held_std
    b = (prior[0] - held_mean) / held_std
    level = rows_of["level"][rows].to(torch.float64)
    vol = rows_of["vol"][rows].to(torch.float64)
    h_level = (a * level + b).clamp(-Z_CLIP, Z_CLIP)
    h_vol = (a * a * vol + 2 * a * b * level + b * b).clamp(0, Z_CLIP * Z_CLIP)
    dev = torch.where(first, 0.0, z_held.to(torch.float64))
    cols = {Signal.DEVIATION: dev * dev, Signal.LEVEL: torch.where(seen, h_level * h_level, torch.nan),
            Signal.VOLATILITY: torch.where(seen, h_vol, torch.nan)}
    for sig, value in cols.items():
        out[:, COLUMN_OF[sig]] = value.cpu().numpy()
    out[:, COLUMN_OF[Signal.RELATION]] = table[:, COLUMN_OF[Signal.RELATION]]
    out[~holding.cpu().numpy()] = np.nan
    return out
