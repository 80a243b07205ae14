"""Alert policy: a per-device state machine that turns scores into `firing` / `resolved` episodes.

    idle --(M of the last N scores >= open_threshold, cooldown over)--> firing
    firing --(close_after consecutive scores < close_threshold)--> idle   [cooldown starts]

Separate open and close thresholds give hysteresis (a score hovering around one line does not flap);
M-of-N confirmation trades a little latency for fewer one-reading blips; the cooldown (event time)
keeps a flapping sensor from paging every few minutes. Alert ids are a hash of (device, start time,
model version), so replaying the same stream gives the same ids.

Vectorised over the devices of one wave: slots (m,), scores (m,), ts (m,).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from streamer.errors import ConfigError
from streamer.scoring.state_store import Column, StateStore

IDLE, FIRING = 0, 1


@dataclass(frozen=True)
class AlertPolicyConfig:
    open_threshold: float = 0.5
    close_threshold: float = 0.3
    confirm_m: int = 1
    confirm_n: int = 1
    close_after: int = 3  # consecutive readings below close_threshold that resolve an episode
    cooldown_s: float = 600.0  # event-time seconds after a resolve during which no episode opens

    def __post_init__(self) -> None:
        if not 0 <= self.close_threshold <= self.open_threshold <= 1:
            raise ConfigError("alert thresholds need 0 <= close <= open <= 1 "
                              f"(got close={self.close_threshold}, open={self.open_threshold})")
        if not 1 <= self.confirm_m <= self.confirm_n <= 32:
            raise ConfigError(f"alert confirmation needs 1 <= M <= N <= 32 (got {self.confirm_m} of "
                              f"{self.confirm_n})")


COLUMNS: tuple[Column, ...] = (
    Column("alert_state", np.int8),
    Column("alert_hits", np.uint32),  # bit i set: the score i readings ago was >= open_threshold
    Column("alert_below", np.int32),  # consecutive readings below close_threshold while firing
    Column("alert_started_at", np.float64, fill=np.nan),
    Column("alert_cooldown_until", np.float64, fill=-np.inf),
)


@dataclass(frozen=True)
class Transitions:
    """Outcome of one wave: who fires after it, and who changed state (indices into the wave)."""

    firing: np.ndarray  # (m,) bool
    opened: np.ndarray  # (k,) int64
    closed: np.ndarray  # (j,) int64


def alert_id(device_id: str, started_at: float, model_version: str) -> str:
    key = f"{device_id}\x1f{started_at!r}\x1f{model_version}".encode()
    return hashlib.sha256(key).hexdigest()[:24]


class AlertPolicy:
    """Hysteresis + M-of-N + cooldown over every device's scores."""

    def __init__(self, config: AlertPolicyConfig | None = None) -> None:
        self.config = config or AlertPolicyConfig()
        self._mask = np.uint32((1 << self.config.confirm_n) - 1)

    @staticmethod
    def columns() -> tuple[Column, ...]:
        return COLUMNS

    def update(self, store: StateStore, slots: np.ndarray, scores: np.ndarray, ts: np.ndarray) -> Transitions:
        cfg = self.config
        cols = store.cols
        state = cols["alert_state"][slots]
        hit = scores >= cfg.open_threshold
        hits = ((cols["alert_hits"][slots] << np.uint32(1)) | hit.astype(np.uint32)) & self._mask
        confirmed = np.bitwise_count(hits) >= cfg.confirm_m
        below = np.where(scores < cfg.close_threshold, cols["alert_below"][slots] + 1, 0)

        opens = (state == IDLE) & confirmed & (ts >= cols["alert_cooldown_until"][slots])
        closes = (state == FIRING) & (below >= cfg.close_after)
        new_state = np.where(opens, FIRING, np.where(closes, IDLE, state)).astype(np.int8)

        cols["alert_state"][slots] = new_state
        cols["alert_hits"][slots] = np.where(opens, 0, hits)
        cols["alert_below"][slots] = np.where(new_state == FIRING, below, 0)
        cols["alert_started_at"][slots] = np.where(opens, ts, cols["alert_started_at"][slots])
        cols["alert_cooldown_until"][slots] = np.where(
            closes, ts + cfg.cooldown_s, cols["alert_cooldown_until"][slots]
        )
        return Transitions(
            firing=new_state == FIRING, opened=np.flatnonzero(opens), closed=np.flatnonzero(closes)
        )
