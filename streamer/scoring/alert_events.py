"""Alert events: what the alert policy's transitions of one wave say to the outside world.

Each opened episode gives a `firing` event, each closed one a `resolved` event with its reason and
duration; every event names the device, its episode's id (a hash of device, start and model version,
so a replay gives the same ids), the alarm, the threshold it crossed and which channels moved, with
their share of the winning evidence and their direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.scoring.alert_policy import ACCEPTED, RECOVERED, AlertPolicyConfig, Transitions, alert_id
from streamer.scoring.readings import AlertEvent, ChannelAttribution, ReadingBatch
from streamer.scoring.state_store import StateStore


@dataclass(frozen=True)
class WaveReadings:
    """Where a wave's m devices' readings came from and how their channels moved."""

    idx: np.ndarray  # (m,) positions in the batch
    slots: np.ndarray  # (m,) device slots
    ts: np.ndarray  # (m,) event time
    starts: np.ndarray  # (m,) position of each device's first row among the wave's rows
    above: np.ndarray  # (r,) bool, the value is above its forecast / its normal


def wave_events(batch: ReadingBatch, wave: WaveReadings, alarm: np.ndarray, transitions: Transitions,
                shares: np.ndarray, store: StateStore, policy: AlertPolicyConfig, model_version: str
                ) -> list[AlertEvent]:
    """The events of one wave's transitions; alarm (m,), shares (m, c_max): each channel's part in the
    winning signal."""
    started = store.cols["alert_started_at"]
    out: list[AlertEvent] = []
    for j, reason in (
        *((j, None) for j in transitions.opened),
        *((j, RECOVERED) for j in transitions.recovered),
        *((j, ACCEPTED) for j in transitions.accepted),
    ):
        i, slot, first_row = int(wave.idx[j]), int(wave.slots[j]), int(wave.starts[j])
        c = int(batch.n_channels[i])
        out.append(alert_event(batch, i, Transition(slot, float(wave.ts[j]), float(started[slot]),
                                                    float(alarm[j]), reason),
                               shares[j, :c], wave.above[first_row : first_row + c], store, policy,
                               model_version))
    return out


@dataclass(frozen=True)
class Transition:
    """One device's alert transition at one reading: an episode opened (reason None) or closed."""

    slot: int
    ts: float  # event time of the reading
    started_at: float  # event time the episode opened
    alarm: float
    reason: str | None  # None: opened; RECOVERED or ACCEPTED: closed


def alert_event(batch: ReadingBatch, i: int, t: Transition, shares: np.ndarray, above: np.ndarray,
                store: StateStore, policy: AlertPolicyConfig, model_version: str) -> AlertEvent:
    """The event of reading i's transition; shares (c,) each channel's part in the winning signal,
    above (c,) bool its direction."""
    device_id = batch.device_ids[i]
    c = int(batch.n_channels[i])
    return AlertEvent(
        alert_id=alert_id(device_id, t.started_at),
        device_id=device_id,
        state="firing" if t.reason is None else "resolved",
        ts=t.ts,
        started_at=t.started_at,
        score=t.alarm,
        threshold=policy.open_threshold if t.reason is None else policy.close_threshold,
        channels=attribution(store.channel_names(t.slot) or tuple(str(k) for k in range(c)), shares, above),
        model_version=model_version,
        partition=int(batch.partitions[i]),
        offset=int(batch.offsets[i]),
        reason=t.reason,  # type: ignore[arg-type]
        duration_s=None if t.reason is None else t.ts - t.started_at,
    )


def attribution(names: tuple[str, ...], err: np.ndarray, above: np.ndarray) -> tuple[ChannelAttribution, ...]:
    """Each channel's share of the evidence err (c,) (equal shares when there is none) and direction.

    >>> [(a.channel, a.share, a.direction) for a in attribution(("t", "p"), np.array([3.0, 1.0]),
    ...                                                          np.array([True, False]))]
    [('t', 0.75, 'above'), ('p', 0.25, 'below')]
    """
    total = float(err.sum())
    shares = err / total if total > 0 else np.full(len(err), 1.0 / len(err))
    return tuple(ChannelAttribution(name, round(float(share), 6), "above" if up else "below")
                 for name, share, up in zip(names, shares, above, strict=True))
