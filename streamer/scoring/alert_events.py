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
    out: list[AlertEvent] = []
    started = store.cols["alert_started_at"]
    for j, state, reason in (
        *((j, "firing", None) for j in transitions.opened),
        *((j, "resolved", RECOVERED) for j in transitions.recovered),
        *((j, "resolved", ACCEPTED) for j in transitions.accepted),
    ):
        i, slot = int(wave.idx[j]), int(wave.slots[j])
        device_id = batch.device_ids[i]
        begun = float(started[slot])
        ts = float(wave.ts[j])
        c = int(batch.n_channels[i])
        first_row = int(wave.starts[j])
        out.append(AlertEvent(
            alert_id=alert_id(device_id, begun),
            device_id=device_id,
            state=state,  # type: ignore[arg-type]
            ts=ts,
            started_at=begun,
            score=float(alarm[j]),
            threshold=policy.open_threshold if reason is None else policy.close_threshold,
            channels=attribution(store.channel_names(slot) or tuple(str(k) for k in range(c)), shares[j, :c],
                                 wave.above[first_row : first_row + c]),
            model_version=model_version,
            partition=int(batch.partitions[i]),
            offset=int(batch.offsets[i]),
            reason=reason,  # type: ignore[arg-type]
            duration_s=None if reason is None else ts - begun,
        ))
    return out


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
