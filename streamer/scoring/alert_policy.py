"""Alert policy: a per-device state machine whose state means "this device is abnormal now".

    idle --(M of the last N alarms >= open_threshold, cooldown over)--> firing        [event: firing]
    firing --(held alarm < close_threshold for resolve_after readings)--> idle       [resolved: recovered]
    firing --(open for max_episode_s of event time)--> idle                          [resolved:
                                                                                      accepted_new_normal]
    firing --(young device: held alarm low for resolve_after readings, but the
              reading still >= open_threshold against the normal of before)--> idle  [resolved:
                                                                                      accepted_new_normal]

The *alarm* is the calibrated surprise of a reading against the device's normal (see `calibration`),
and while an episode is open that normal is the one the device had *before* the episode: the pipeline
holds the normaliser statistics and the calibration of the state signals from just before the opening
reading and measures the alarm against them, while the live normal (what the published score ranks
against) learns on. So a fault that persists keeps its alarm high and the episode open for as long as
it lasts. The *held alarm* is an exponential average of the alarm
(weight `hold_beta`), so a fault that only makes a channel noisier (alarms that come and go) holds the
episode open too; it resolves only once the held alarm has stayed below `close_threshold` for
`resolve_after` consecutive readings: the device is back to its old normal.

A device younger than `PipelineConfig.mature_s` (a day of event time) when its episode opens has not
seen a whole daily cycle: a normal held from it would keep the alarm high long after the fault ends.
Its episode is not *locked* to the held normal: its alarm stays the live one, which learns the fault,
so a long fault on a young device closes early. The normal of before is still held beside it, and it
labels that close: if the closing reading would still open an episode against it (`Calibrated.before`
>= `open_threshold`), the device is not back, and the reason is `accepted_new_normal` (the live normal
has taken the regime in), never `recovered`.

A fault that never ends must not pin the old normal forever: after `max_episode_s` of event time the
episode resolves with reason `accepted_new_normal`. Either way a close ends the hold, and the live
normal, which has been learning the regime all along, is what the device's alarm measures against
again (nothing re-warms). Separate open and close levels give hysteresis; M-of-N confirmation trades a
little latency for fewer one-reading blips; the cooldown (event time) keeps a flapping sensor from
paging every few minutes. Alert ids are a hash of (device, start time), so replaying the same stream
gives the same ids, and an episode that a new model carries on (`model_change`) keeps its id.

Vectorised over the devices of one wave: slots (m,), alarms (m,), ts (m,).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from streamer.errors import ConfigError
from streamer.scoring.state_store import Column, StateStore

IDLE, FIRING = 0, 1
RECOVERED, ACCEPTED = "recovered", "accepted_new_normal"


_BELOW_MAX = int(np.iinfo(np.uint8).max)  # the run back to normal saturates here (one byte per device)


@dataclass(frozen=True)
class AlertPolicyConfig:
    open_threshold: float = 0.5
    close_threshold: float = 0.15
    confirm_m: int = 1
    confirm_n: int = 1
    resolve_after: int = 12  # consecutive readings back to normal (held alarm < close) that resolve
    hold_beta: float = 0.05  # weight of a new alarm in the held alarm (1: no averaging)
    max_episode_s: float = 3 * 86400.0  # event-time seconds after which an open episode's regime is accepted
    cooldown_s: float = 600.0  # event-time seconds after a resolve during which no episode opens

    def __post_init__(self) -> None:
        if not 0 <= self.close_threshold <= self.open_threshold <= 1:
            raise ConfigError("alert thresholds need 0 <= close <= open <= 1 "
                              f"(got close={self.close_threshold}, open={self.open_threshold})")
        if not 1 <= self.confirm_m <= self.confirm_n <= 16:
            raise ConfigError(f"alert confirmation needs 1 <= M <= N <= 16 (got {self.confirm_m} of "
                              f"{self.confirm_n})")
        if not 1 <= self.resolve_after <= _BELOW_MAX or not 0 < self.hold_beta <= 1:
            raise ConfigError(f"alert resolve_after must be in [1, {_BELOW_MAX}] and hold_beta in (0, 1] "
                              "(got "
                              f"{self.resolve_after}, {self.hold_beta})")
        if not self.max_episode_s > 0 or math.isnan(self.max_episode_s):
            raise ConfigError(f"alert max_episode_s must be > 0 seconds (got {self.max_episode_s})")


COLUMNS: tuple[Column, ...] = (
    Column("alert_state", np.int8),
    Column("alert_hits", np.uint16),  # bit i set: the alarm i readings ago was >= open_threshold
    Column("alert_below", np.uint8),  # consecutive readings back to normal while firing (saturating)
    Column("alert_hold", np.float16),  # held alarm: exponential average of the alarm
    Column("alert_peak", np.float16),  # the largest alarm of the latest episode (a false positive undoes it)
    Column("alert_started_at", np.float64, fill=np.nan),
    Column("alert_cooldown_until", np.uint32),  # event time, whole seconds rounded up (0: none)
)
_UINT32_MAX = float(np.iinfo(np.uint32).max)


def cooldown_end(ts: np.ndarray | float, cooldown_s: float) -> np.ndarray:
    """`alert_cooldown_until` of an episode closed at event time `ts`: whole seconds, rounded up (m,).

    >>> cooldown_end(np.array([1000.25, 1000.0]), 600.0).tolist()
    [1601, 1600]
    """
    return np.clip(np.ceil(np.asarray(ts, dtype=np.float64) + cooldown_s), 0.0, _UINT32_MAX).astype(np.uint32)


@dataclass(frozen=True)
class Transitions:
    """Outcome of one wave: who fires after it, and who changed state (indices into the wave)."""

    firing: np.ndarray  # (m,) bool
    opened: np.ndarray  # (k,) int64
    recovered: np.ndarray  # (j,) int64, resolved: back to the normal of before the episode
    accepted: np.ndarray  # (a,) int64, resolved: open for max_episode_s, the new regime is the new normal


def alert_id(device_id: str, started_at: float) -> str:
    """The episode's id: the same for every model that carries the episode on (a restart or a swap onto
    another model version keeps the device's alert state) and for every replay of the stream."""
    key = f"{device_id}\x1f{started_at!r}".encode()
    return hashlib.sha256(key).hexdigest()[:24]


class AlertPolicy:
    """Hysteresis + M-of-N + held alarm + maximum episode + cooldown over every device's alarms."""

    def __init__(self, config: AlertPolicyConfig | None = None) -> None:
        self.config = config or AlertPolicyConfig()
        self._mask = np.uint16((1 << self.config.confirm_n) - 1)

    @staticmethod
    def columns() -> tuple[Column, ...]:
        return COLUMNS

    @staticmethod
    def firing(store: StateStore, slots: np.ndarray) -> np.ndarray:
        """Whether each device's episode is open before its next reading: (m,) -> (m,) bool."""
        return store.cols["alert_state"][slots] == FIRING

    def update(self, store: StateStore, slots: np.ndarray, alarms: np.ndarray, ts: np.ndarray,
               before: np.ndarray | None = None) -> Transitions:
        """Step every device's state machine on its alarm (m,) at event time ts (m,). `before` (m,): the
        surprise against the normal of before the episode of a device whose alarm is the live one (NaN:
        none, see `Calibrated.before`); a close while it would still open an episode is labelled
        `accepted_new_normal`: the live normal has taken the regime in, the device is not back."""
        cfg = self.config
        cols = store.cols
        state = cols["alert_state"][slots]
        hit = alarms >= cfg.open_threshold
        hits = ((cols["alert_hits"][slots] << np.uint16(1)) | hit.astype(np.uint16)) & self._mask
        confirmed = np.bitwise_count(hits) >= cfg.confirm_m
        hold = cols["alert_hold"][slots].astype(np.float64)
        hold = np.where(state == FIRING, hold + cfg.hold_beta * (alarms - hold), alarms)
        normal = hold < cfg.close_threshold
        below = np.where(normal, np.minimum(cols["alert_below"][slots].astype(np.int32) + 1, _BELOW_MAX), 0)
        started = cols["alert_started_at"][slots]

        opens = (state == IDLE) & confirmed & (ts >= cols["alert_cooldown_until"][slots])
        firing = state == FIRING
        recovers = firing & (below >= cfg.resolve_after)
        if before is not None:
            recovers &= ~(before >= cfg.open_threshold)  # NaN compares False: a recovery stays one
        accepts = firing & ~recovers & ((ts - started >= cfg.max_episode_s) | (below >= cfg.resolve_after))
        closes = recovers | accepts
        new_state = np.where(opens, FIRING, np.where(closes, IDLE, state)).astype(np.int8)

        cols["alert_state"][slots] = new_state
        cols["alert_hits"][slots] = np.where(opens, 0, hits)
        cols["alert_below"][slots] = np.where(new_state == FIRING, below, 0)
        cols["alert_hold"][slots] = np.where(opens, alarms, hold)
        peak = cols["alert_peak"][slots]
        cols["alert_peak"][slots] = np.where(opens, alarms, np.where(firing, np.maximum(peak, alarms), peak))
        cols["alert_started_at"][slots] = np.where(opens, ts, started)
        cols["alert_cooldown_until"][slots] = np.where(
            closes, cooldown_end(ts, cfg.cooldown_s), cols["alert_cooldown_until"][slots]
        )
        return Transitions(firing=new_state == FIRING, opened=np.flatnonzero(opens),
                           recovered=np.flatnonzero(recovers), accepted=np.flatnonzero(accepts))
