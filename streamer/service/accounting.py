"""Turns one processed batch into metric updates, once its output is acknowledged (its offsets are
committed later, at the next checkpoint).

Counting rules, so that `consumed = scored + dropped + dead-lettered` always holds:
- readings consumed: decoded readings (a batch-form message counts each of its readings) plus one per
  dead-lettered record (its reading count is unknown: it could not be decoded);
- scored / dropped by reason: from the pipeline's per-row status;
- dead letters by reason: one per record sent to the dead-letter topic. A record the decoder rejected
  counts as one consumed reading; one the pipeline refused (`streamer.ingest.refusals`: out of order,
  channel mismatch) already counts among the dropped readings, so for it only the dead letter is
  counted: `consumed = scored + dropped + dead letters of the decoder's reasons`;
- devices re-based (clock went back) and re-initialised (new channel set): from the pipeline's answer;
- alerts by state: one per published alert event; `alerts_firing_devices` follows them.

Per-reading histograms (end-to-end lag) take a whole batch at once: `observe_many` adds bucket counts
computed with numpy instead of one `observe()` call per reading, which at 100 k readings/s would cost
a tenth of a core.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import Histogram

from streamer.ingest.codec import Decoded
from streamer.ingest.dead_letter import DeadLetter
from streamer.scoring.readings import AlertEvent, ScoredBatch
from streamer.service.metrics import Metrics


class BatchAccounting:
    """Updates `metrics` for each batch; keeps the set of devices whose alert is firing."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.firing: set[str] = set()
        self.totals: Counter[str] = Counter()  # for logs and tests: consumed, scored, dead_letters, alerts

    def account(self, decoded: Decoded, scored: ScoredBatch, latency_s: float, now: float,
                refused: Sequence[DeadLetter] = ()) -> None:
        """`refused`: the dead letters of readings the pipeline dropped (already in `scored.status`)."""
        m = self.metrics
        batch = decoded.batch
        n_dead = len(decoded.dead_letters)
        m.readings_consumed.inc(len(batch) + n_dead)
        for dead in (*decoded.dead_letters, *refused):
            m.dead_letters.labels(reason=dead.reason.value).inc()
        if scored.rebased:
            m.clock_rebased.inc(scored.rebased)
        if scored.reshaped:
            m.device_reshaped.inc(scored.reshaped)
        if scored.silenced:
            m.alerts_silenced.inc(scored.silenced)
        if len(batch):
            m.observe_batch(scored, latency_s)  # scored, dropped by reason, alerts by state, size, waves
            scored_rows = scored.status == 0
            observe_many(m.end_to_end_lag, now - batch.ts[scored_rows])
        self.alert_events(scored.events, counted=True)
        if scored.shadow_agreement is not None:
            m.shadow_agreement.set(scored.shadow_agreement)
        n_scored = int(np.count_nonzero(scored.status == 0))
        self.totals.update(consumed=len(batch) + n_dead, scored=n_scored, dead_letters=n_dead + len(refused),
                           alerts=len(scored.events), batches=1)

    def alert_events(self, events: Sequence[AlertEvent], *, counted: bool = False) -> None:
        """Published alert events: the devices firing now; by state unless `counted` (a scored batch's
        events are counted with the batch)."""
        for event in events:
            if event.state == "firing":
                self.firing.add(event.device_id)
            else:
                self.firing.discard(event.device_id)
            if not counted:
                self.metrics.alerts.labels(state=event.state).inc()
        self.metrics.alerts_firing_devices.set(len(self.firing))


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """`histogram.observe(v)` for every v, in a handful of numpy operations.

    Uses the histogram's bucket and sum children (prometheus_client internals, stable since 0.4);
    falls back to one `observe` per value when they are not there.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    buckets: Any = getattr(histogram, "_buckets", None)
    bounds: Any = getattr(histogram, "_upper_bounds", None)
    total: Any = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None or len(buckets) != len(bounds):
        for v in values.tolist():
            histogram.observe(v)
        return
    # bucket i counts values <= bounds[i] (non-cumulative storage: the first bound that fits)
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    for i in np.flatnonzero(counts):
        buckets[i].inc(float(counts[i]))
    total.inc(float(values.sum()))
