"""Silences: a silenced device is scored, and learns, as any other; it announces no episode.

The alert policy runs untouched under a silence, so an episode that opens inside it still holds the
device's normal (the readings of a maintenance stretch are not learned as normal) and still closes
by its own rules. What the silence changes is what is *said*, for readings whose event time is
before the device's `silence_until`:

- its `firing` events are not published (counted in `rnnwatch_alerts_silenced_total`), and its
  readings carry `alert` false on the scores topic;
- `resolved` events are published as usual: an episode announced before the silence began must be
  closed for whoever tracks it (a resolve of an episode never announced is harmless to alert managers).

At the device's first reading at or after `silence_until` the silence ends (the column is cleared);
if an episode is open then, it is announced with a `firing` event under its own alert id: a fault
that outlasts the maintenance window is not hidden by it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from streamer.scoring.alert_policy import AlertPolicyConfig, alert_id
from streamer.scoring.readings import AlertEvent, DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.state_store import StateStore


def silenced_now(store: StateStore, now: float) -> int:
    """Devices silenced beyond `now` (epoch seconds): the `rnnwatch_devices_silenced` gauge."""
    return int(np.count_nonzero(store.live & (store.cols["silence_until"] > now)))


def apply_silences(store: StateStore, batch: ReadingBatch, scored: ScoredBatch, policy: AlertPolicyConfig,
                   model_version: str) -> ScoredBatch:
    """The batch's output as a silence shapes it (`silenced`: the `firing` events it withheld)."""
    until = store.cols["silence_until"]
    if not until.any():
        return scored
    slots = store.lookup(batch.device_ids)
    held = slots >= 0
    ends = np.where(held, until[np.maximum(slots, 0)], 0).astype(np.float64)  # (n,) 0: not silenced
    if not (ends > 0).any():
        return scored
    silenced = batch.ts < ends  # (n,)
    hidden = [e.state == "firing" and _silenced_at(store, e) for e in scored.events]
    keep = [e for e, h in zip(scored.events, hidden, strict=True) if not h]
    alerting = scored.alerting & ~silenced
    keep.extend(_announce(store, batch, slots, ends, scored, policy, model_version))
    keep.sort(key=lambda e: (e.offset, e.ts))
    return replace(scored, alerting=alerting, events=keep, silenced=scored.silenced + sum(hidden))


def _silenced_at(store: StateStore, event: AlertEvent) -> bool:
    slot = store.slot(event.device_id)
    return slot is not None and event.ts < float(store.cols["silence_until"][slot])


def _announce(store: StateStore, batch: ReadingBatch, slots: np.ndarray, ends: np.ndarray,
              scored: ScoredBatch, policy: AlertPolicyConfig, model_version: str) -> list[AlertEvent]:
    """End the silences the batch's readings reached; announce the episodes still open at that reading."""
    cols = store.cols
    reached = np.flatnonzero((ends > 0) & (batch.ts >= ends) & (scored.status == DropReason.SCORED))
    out: list[AlertEvent] = []
    done: set[int] = set()
    for i in reached.tolist():  # in batch order: each device's first reading past its silence
        slot = int(slots[i])
        if slot in done:
            continue
        done.add(slot)
        cols["silence_until"][slot] = 0
        if not scored.alerting[i]:
            continue
        device, ts = batch.device_ids[i], float(batch.ts[i])
        started, alarm = _episode_at(scored.events, device, ts, store, slot)
        if started >= ends[i]:  # opened at or after the silence's end: its own firing event is published
            continue
        out.append(AlertEvent(
            alert_id=alert_id(device, started), device_id=device, state="firing", ts=ts,
            started_at=started, score=alarm, threshold=policy.open_threshold, channels=(),
            model_version=model_version, partition=int(batch.partitions[i]), offset=int(batch.offsets[i])))
    return out


def _episode_at(events: list[AlertEvent], device: str, ts: float, store: StateStore, slot: int
                ) -> tuple[float, float]:
    """Start and largest alarm of the device's episode open at event time `ts`: the batch is scored, so the
    store holds its *latest* episode; one that closed later in the batch is named by its `resolved` event."""
    later = [e for e in events if e.device_id == device and e.ts >= ts]
    if later and later[0].state == "resolved":
        return later[0].started_at, later[0].score
    cols = store.cols
    return float(cols["alert_started_at"][slot]), float(cols["alert_peak"][slot])
