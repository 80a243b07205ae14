"""What a feedback message does to the state of the device it names.

- `false_positive` for the device's latest episode (its alert id is recomputed from the device's
  state: device and start): the device learns that what fired is normal for it. Its
  calibration is widened so that the episode's level of surprise would have stayed below the alert
  threshold with a margin: every signal's spread is multiplied by
  `margin * z(episode) / z(open threshold)`, where z(episode) is the surprise of the episode's largest
  alarm (`alert_peak`, kept until the device's next episode, so a verdict may come hours later). A
  fault of the same size does not fire again; one `margin` times more surprising,
  or a new kind that grows past it (a flat line whose run keeps growing), still fires. The effect is
  part of the calibration (checkpointed, restored, evicted with the device) and fades as the
  calibration relearns the device's normal: its excess spread decays by (1 - alpha) per reading, so
  after 1/alpha readings (2,000 by default; 33 h at one reading a minute) a third of it is left. An
  episode still open is closed at once with a `resolved` event, reason `false_positive`; the verdict
  is then spent (the episode's start is forgotten), so a redelivered verdict changes nothing.
- `true_positive`, `ack`: counted (per model version: the precision operators report), no change.
- a silence sets the device's `silence_until` (whole seconds, rounded up); null lifts it.

A verdict whose alert id is not the device's latest episode (an older episode, already spent) is
`unknown_alert`; a device this member does not hold (unknown, evicted, or
owned by another member) is `unknown_device` (the daemon dead-letters that message). Neither changes
anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from streamer.feedback.messages import Feedback, Silence, Verdict
from streamer.scoring.alert_policy import FIRING, IDLE, AlertPolicyConfig, alert_id, cooldown_end
from streamer.scoring.calibration import CalibrationConfig
from streamer.scoring.readings import AlertEvent
from streamer.scoring.state_store import StateStore

FALSE_POSITIVE = "false_positive"
APPLIED, UNKNOWN_ALERT, UNKNOWN_DEVICE = "applied", "unknown_alert", "unknown_device"
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Applied:
    """The outcome of one feedback message: its kind and outcome (metric labels), the device's slot
    when its state changed, and the alert events it caused."""

    kind: str  # false_positive | true_positive | ack | silence | lift
    outcome: str  # applied | unknown_alert | unknown_device
    changed: int | None = None
    events: list[AlertEvent] = field(default_factory=list)


class FeedbackEffects:
    """Applies feedback to a `StateStore` holding calibration and alert-policy columns."""

    def __init__(self, store: StateStore, model_version: str, *, calibration: CalibrationConfig,
                 policy: AlertPolicyConfig, margin: float = 1.5) -> None:
        self.store = store
        self.model_version = model_version
        self.calibration = calibration
        self.policy = policy
        self.margin = margin

    def apply(self, feedback: Feedback) -> Applied:
        slot = self.store.slot(feedback.device_id)
        if isinstance(feedback, Silence):
            kind = "lift" if feedback.lifts else "silence"
            if slot is None:
                return Applied(kind, UNKNOWN_DEVICE)
            self.store.cols["silence_until"][slot] = 0 if feedback.lifts else math.ceil(feedback.until)
            return Applied(kind, APPLIED, slot)
        return self._verdict(feedback, slot)

    def _verdict(self, verdict: Verdict, slot: int | None) -> Applied:
        if slot is None:
            return Applied(verdict.verdict, UNKNOWN_DEVICE)
        started = float(self.store.cols["alert_started_at"][slot])
        latest = None if math.isnan(started) else alert_id(verdict.device_id, started)
        if latest != verdict.alert_id:
            return Applied(verdict.verdict, UNKNOWN_ALERT)
        if verdict.verdict != FALSE_POSITIVE:
            return Applied(verdict.verdict, APPLIED)
        events = self._close(verdict.device_id, slot, started)
        self._widen(slot)
        self.store.cols["alert_started_at"][slot] = np.nan  # spent: a redelivered verdict is unknown_alert
        return Applied(verdict.verdict, APPLIED, slot, events)

    def widening(self, slot: int) -> float:
        """The factor the device's spreads are multiplied by for a false positive now (>= 1)."""
        cols, cfg = self.store.cols, self.calibration
        level = max(float(cols["alert_peak"][slot]), self.policy.open_threshold)
        level = min(level, 1.0 - 1e-6)
        z_episode = cfg.z_half * level / (1.0 - level)
        z_open = cfg.z_half * self.policy.open_threshold / (1.0 - self.policy.open_threshold)
        return max(1.0, self.margin * z_episode / z_open)

    def _widen(self, slot: int) -> None:
        cols = self.store.cols
        factor = self.widening(slot)
        var = cols["cal_var"][slot].astype(np.float64)
        cols["cal_var"][slot] = np.minimum(var * factor * factor, _F32_MAX)

    def _close(self, device_id: str, slot: int, started: float) -> list[AlertEvent]:
        """Close the device's open episode now (no reading caused it: event time is its last reading's)."""
        cols = self.store.cols
        if cols["alert_state"][slot] != FIRING:
            return []
        ts = float(cols["last_ts"][slot])
        cols["alert_state"][slot] = IDLE
        cols["alert_below"][slot] = 0
        cols["alert_cooldown_until"][slot] = cooldown_end(ts, self.policy.cooldown_s)
        cols["cal_held_std"][slot] = np.nan  # the held normal ends with the episode
        return [AlertEvent(
            alert_id=alert_id(device_id, started), device_id=device_id, state="resolved",
            ts=ts, started_at=started, score=float(cols["alert_hold"][slot]),
            threshold=self.policy.close_threshold, channels=(), model_version=self.model_version,
            reason="false_positive", duration_s=ts - started)]
