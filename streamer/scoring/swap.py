"""Hot model swap: a new model takes over device by device, without a restart and without a blind period.

While a swap is in progress, `SwappingPipeline` is the daemon's `Scorer`. The *incoming* pipeline (the
new artifact) has its own store, and every device it has not seen yet starts there as a copy of the
device's live state with only the old model's part forgotten (`model_change`): its normaliser,
calibration history, alert state, held normal and silence are carried over from the first reading.
Both pipelines step every batch; the incoming model's recurrent state and the calibration of the
signals measured on its forecasts warm up. A device whose incoming forecast signals have learned
`warmup` readings is *taken over*: its sensor part is copied once more from the live state (what was
published up to now), and from the next batch on its scores, alert state and events are the incoming
pipeline's. After every batch, the taken-over devices' incoming state is copied into the live store,
so what is checkpointed is what was published, and each state is written under the version of the
model that owns it (`versions`): a crash half way restarts on whichever model the directory holds,
the devices written under it exactly as they were, the others adapted (`model_change`). A device is
never without a score: until it is taken over, the live model scores it.

The swap completes (`done`) when every device held is taken over, or after `deadline_s` of wall time
(devices that sent too little meanwhile, idle ones): `promote` then forgets the old model's part of the
devices not taken over (as a restart on the new model would), and the live pipeline, its store and
everything that refers to it, carries on with the new model and version. The cost while swapping: two
pipelines step every batch (about half the throughput, as with a shadow model) and the incoming store
holds a second copy of the devices' state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from streamer.scoring.model_change import copy_state, forget_the_model
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import ReadingBatch, ScoredBatch
from streamer.scoring.signals import Signal
from streamer.scoring.wrapped import WrapsLive


class SwappingPipeline(WrapsLive):
    """The live pipeline while `incoming` warms up and takes over its devices one by one."""

    def __init__(self, live: ScoringPipeline, incoming: ScoringPipeline, *, deadline_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.incoming = incoming
        self.taken_over: set[str] = set()
        self._deadline = clock() + deadline_s
        self._clock = clock
        cal = incoming.config.calibration
        self._warm_count = cal.skip + cal.warmup  # forecast errors the incoming calibration needs

    @property
    def progress(self) -> float:
        """Share of the devices held that the incoming model has taken over."""
        held = len(self.live.store)
        return len(self.taken_over) / held if held else 1.0

    @property
    def done(self) -> bool:
        return len(self.taken_over) >= len(self.live.store) or self._clock() >= self._deadline

    def score(self, batch: ReadingBatch) -> ScoredBatch:
        self._forget_evicted()
        self._carry_new_devices(batch)
        self._carry_silences(batch)
        live = self.live.score(batch)
        incoming = self.incoming.score(batch)
        out = self._compose(batch, live, incoming)
        self._take_over_warm(batch)
        self._publish_state(batch)
        return out

    def versions(self, device_ids: Sequence[str]) -> list[str]:
        """The model version each device's state is written under: the new one once it is taken over."""
        old, new = self.live.model_version, self.incoming.model_version
        return [new if d in self.taken_over else old for d in device_ids]

    def promote(self) -> ScoringPipeline:
        """End the swap: the live pipeline scores with the incoming model from now on (see the module doc)."""
        store = self.live.store
        left = np.array([s for s in np.flatnonzero(store.live).tolist()
                         if store.device_id(s) not in self.taken_over], dtype=np.int64)
        forget_the_model(store, left)
        self.live.adopt(self.incoming.artifact)
        return self.live

    # ---- steps of score() ----------------------------------------------------------------------------
    def _carry_new_devices(self, batch: ReadingBatch) -> None:
        """Devices the live store holds and the incoming one does not: copy their state, forget the model."""
        live, incoming = self.live.store, self.incoming.store
        ids = list(dict.fromkeys(d for d in batch.device_ids if d in live and d not in incoming))
        if not ids:
            return
        src = live.lookup(ids)
        counts = live.cols["n_channels"][src].astype(np.int64)
        dst, _ = incoming.slots_for(ids, counts, [live.channel_names(int(s)) for s in src.tolist()])
        copy_state(live, src, incoming, dst)
        forget_the_model(incoming, dst)

    def _carry_silences(self, batch: ReadingBatch) -> None:
        """A silence that ended after the last batch was cleared in the live store (`feedback.silencing`,
        after scoring): the incoming state of a taken-over device must not bring it back."""
        ids = [d for d in dict.fromkeys(batch.device_ids) if d in self.taken_over and d in self.live.store]
        if ids:
            self.incoming.store.cols["silence_until"][self.incoming.store.lookup(ids)] = \
                self.live.store.cols["silence_until"][self.live.store.lookup(ids)]

    def _compose(self, batch: ReadingBatch, live: ScoredBatch, incoming: ScoredBatch) -> ScoredBatch:
        """Each reading's answer from the model that owns its device now (taken over before this batch)."""
        if not self.taken_over:
            return live
        mine = np.fromiter((d in self.taken_over for d in batch.device_ids), dtype=bool, count=len(batch))
        events = [e for e in live.events if e.device_id not in self.taken_over] + \
                 [e for e in incoming.events if e.device_id in self.taken_over]
        events.sort(key=lambda e: (e.offset, e.ts))
        return replace(live, scores=np.where(mine, incoming.scores, live.scores),
                       alerting=np.where(mine, incoming.alerting, live.alerting),
                       top_channel=np.where(mine, incoming.top_channel, live.top_channel),
                       status=np.where(mine, incoming.status, live.status), events=events)

    def _take_over_warm(self, batch: ReadingBatch) -> None:
        """The batch's devices whose incoming forecast calibration is warm: the incoming model owns them now,
        carrying on from the live state published so far."""
        incoming = self.incoming.store
        ids = [d for d in dict.fromkeys(batch.device_ids) if d not in self.taken_over and d in incoming]
        if not ids:
            return
        slots = incoming.lookup(ids)
        warm = incoming.cols["cal_count"][slots, Signal.FORECAST].astype(np.int64) >= self._warm_count
        ready = [d for d, ok in zip(ids, warm.tolist(), strict=True) if ok and d in self.live.store]
        if ready:
            copy_state(self.live.store, self.live.store.lookup(ready), incoming, incoming.lookup(ready),
                       part="sensor")
            self.taken_over.update(ready)

    def _publish_state(self, batch: ReadingBatch) -> None:
        """Taken-over devices of the batch: their incoming state is what the live store checkpoints."""
        ids = [d for d in dict.fromkeys(batch.device_ids) if d in self.taken_over and d in self.live.store]
        if ids:
            copy_state(self.incoming.store, self.incoming.store.lookup(ids), self.live.store,
                       self.live.store.lookup(ids))

    def _forget_evicted(self) -> None:
        """Devices the live store no longer holds leave the incoming store and the taken-over set."""
        if len(self.incoming.store) <= len(self.live.store) and len(self.taken_over) <= len(self.live.store):
            return
        for device_id in [d for d in self.incoming.store.device_ids() if d not in self.live.store]:
            self.incoming.store.evict(device_id)
        self.taken_over &= set(self.incoming.store.device_ids())
