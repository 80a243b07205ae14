"""Shadow scoring: a second model scores every reading beside the live one, and nobody is paged by it.

`ShadowedPipeline` is a `Scorer` whose answers are the live pipeline's; the shadow pipeline (another
model artifact) steps the same batches with its own state store (hidden states, normalisation,
calibration, alert episodes), and its alert events ride along in `ScoredBatch.shadow_events` for the
daemon to publish to the shadow alerts topic only. `ShadowTally` counts, per reading both scored,
whether the two alert states agree, and the episodes each model opened: what an operator compares
before switching models.

The shadow's state is not checkpointed: after a restart or a rebalance it warms up again (the live
state is what durability protects). It holds the devices the live store holds: a device the live
store evicted is evicted from the shadow's too, at the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.wrapped import WrapsLive


@dataclass
class ShadowTally:
    """Running comparison of the live and the shadow model since the process started."""

    readings: int = 0  # readings both models scored
    agreeing: int = 0  # of those, readings whose alert state (open or not) was the same for both
    live_episodes: int = 0  # episodes opened by the live model
    shadow_episodes: int = 0  # episodes opened by the shadow model

    @property
    def agreement(self) -> float:
        """Share of readings on which both alert states agree (1.0 before any)."""
        return self.agreeing / self.readings if self.readings else 1.0

    def add(self, live: ScoredBatch, shadow: ScoredBatch) -> None:
        both = (live.status == DropReason.SCORED) & (shadow.status == DropReason.SCORED)
        self.readings += int(both.sum())
        self.agreeing += int((live.alerting[both] == shadow.alerting[both]).sum())
        self.live_episodes += sum(e.state == "firing" for e in live.events)
        self.shadow_episodes += sum(e.state == "firing" for e in shadow.events)


class ShadowedPipeline(WrapsLive):
    """The live pipeline, with a shadow pipeline scoring the same batches beside it."""

    def __init__(self, live: ScoringPipeline, shadow: ScoringPipeline) -> None:
        self.live = live
        self.shadow = shadow
        self.tally = ShadowTally()

    def score(self, batch: ReadingBatch) -> ScoredBatch:
        """The live answer for `batch`, with the shadow's alert events in `shadow_events`."""
        live = self.live.score(batch)
        self._forget_evicted()
        shadow = self.shadow.score(batch)
        self.tally.add(live, shadow)
        return replace(live, shadow_events=shadow.events, shadow_agreement=self.tally.agreement)

    def _forget_evicted(self) -> None:
        """Evict from the shadow store the devices the live store no longer holds."""
        if len(self.shadow.store) <= len(self.live.store):
            return
        gone = [d for d in self.shadow.store.device_ids() if d not in self.live.store]
        for device_id in gone:
            self.shadow.store.evict(device_id)


    def bytes_per_device(self, channels: int) -> int:
        """State bytes a device of `channels` channels costs with its shadow: both stores."""
        return self.live.store.bytes_per_device(channels) + self.shadow.store.bytes_per_device(channels)
