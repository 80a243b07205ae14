"""`KernelScorer`: one compiled pass over a batch, for a `ScoringPipeline` on the CPU.

The pipeline validates the batch (slots, drops decidable up front, channel-set changes) and hands it
here; `score` decides event-time admission (`admission`), runs the kernel over every device's admitted
readings (`walk.run`) on the store's own state (`slab`), and builds the alert events from the
kernel's per-reading transitions in the order the torch path emits them. It answers None, having
changed nothing, for a batch in which some device's clock re-bases: the pipeline then scores that
batch wave by wave.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from streamer.scoring.alert_events import Transition, alert_event
from streamer.scoring.alert_policy import ACCEPTED, RECOVERED, AlertPolicyConfig
from streamer.scoring.kernel.admission import admit, groups
from streamer.scoring.kernel.decide import OPENED
from streamer.scoring.kernel.jit import max_threads, use_threads
from streamer.scoring.kernel.slab import Params, Weights, params_of, slab_of, weights_of
from streamer.scoring.kernel.walk import Out, run
from streamer.scoring.readings import AlertEvent, DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.state_store import StateStore

if TYPE_CHECKING:
    from streamer.scoring.event_time import EventClock
    from streamer.scoring.pipeline import ScoringPipeline

log = logging.getLogger(__name__)
_REASONS = (None, None, RECOVERED, ACCEPTED)  # by transition code; OPENED has none


class KernelScorer:
    """Scores whole batches in one compiled pass over a pipeline's store, clock and settings."""

    def __init__(self, store: StateStore, clock: EventClock, params: Params, weights: Weights,
                 policy: AlertPolicyConfig, model_version: str, threads: int | None = None) -> None:
        self.store, self.clock, self.params, self.weights = store, clock, params, weights
        self.policy, self.model_version = policy, model_version
        self.threads = threads or max_threads()

    def score(self, batch: ReadingBatch, slots: np.ndarray, status: np.ndarray, n_waves: int,
              ranks: np.ndarray) -> ScoredBatch | None:
        """Score the batch (slots (n,) and status (n,) from validation; ranks (v,): each SCORED reading's
        wave), or None where a device's clock would re-base."""
        valid = np.flatnonzero(status == DropReason.SCORED)
        order, start, group_slot = groups(slots[valid])
        behind = self.clock.runs(group_slot)
        fresh = np.zeros(len(valid), dtype=bool)
        ts = np.ascontiguousarray(batch.ts, dtype=np.float64)
        if not admit(order, start, ts[valid], self.store.cols["last_ts"][group_slot], behind,
                     self.clock.rebase_after, fresh):
            return None
        self.clock.set_runs(group_slot, behind)
        status[valid[~fresh]] = DropReason.OUT_OF_ORDER
        out = self._run(batch, ts, valid[order][fresh[order]], np.r_[0, np.cumsum(
            np.add.reduceat(fresh[order], start[:-1]) if len(order) else [])].astype(np.int64), group_slot)
        rank_of = np.zeros(len(batch), dtype=np.int64)
        rank_of[valid] = ranks
        events = self._events(batch, slots, out, rank_of)
        return ScoredBatch(out.score, out.alerting, status, out.top, events, n_waves, 0, 0)

    def _run(self, batch: ReadingBatch, ts: np.ndarray, order: np.ndarray, dev_start: np.ndarray,
             dev_slot: np.ndarray) -> Out:
        n, c_max = batch.values.shape
        out = Out(np.full(n, np.nan, dtype=np.float32), np.zeros(n, dtype=bool),
                  np.full(n, -1, dtype=np.int16), np.zeros(n), np.zeros(n, dtype=np.int8), np.zeros(n),
                  np.zeros((n, c_max)), np.zeros((n, c_max), dtype=bool))
        if len(order):
            use_threads(self.threads)
            run(order, dev_start, dev_slot.astype(np.int64), ts,
                np.ascontiguousarray(batch.values, dtype=np.float32),
                np.ascontiguousarray(batch.offsets, dtype=np.int64), slab_of(self.store), self.params,
                self.weights, out, max(1, min(len(dev_slot), 4 * self.threads)))
        return out

    def _events(self, batch: ReadingBatch, slots: np.ndarray, out: Out, rank_of: np.ndarray
                ) -> list[AlertEvent]:
        """The transitions' events in the torch path's order: by wave, then opened / recovered /
        accepted, then batch position; finally by (offset, ts)."""
        at = np.flatnonzero(out.transition)
        if len(at) == 0:
            return []
        at = at[np.lexsort((at, out.transition[at], rank_of[at]))]
        events = []
        for i in at.tolist():
            c = int(batch.n_channels[i])
            code = int(out.transition[i])
            t = Transition(int(slots[i]), float(batch.ts[i]), float(out.started[i]), float(out.alarm[i]),
                           None if code == OPENED else _REASONS[code])
            events.append(alert_event(batch, i, t, out.shares[i, :c], out.above[i, :c], self.store,
                                      self.policy, self.model_version))
        events.sort(key=lambda e: (e.offset, e.ts))
        return events

    def warm_up(self) -> float:
        """Compile the kernel (or load it from numba's cache) on a throwaway store of one device; returns
        the seconds it took. Call at start, not on the first batch."""
        _announce_compilation()
        started = time.perf_counter()
        store = StateStore(self.store.state_size, columns=tuple(self.store.columns.values()),
                           blocks=tuple(self.store.block_fields.values()), initial_devices=1)
        slots, _ = store.slots_for(["warm-up"], np.array([2]), [None])
        ts = np.array([1.0, 2.0])
        values = np.ones((2, 2), dtype=np.float32)
        out = Out(np.zeros(2, np.float32), np.zeros(2, bool), np.zeros(2, np.int16), np.zeros(2),
                  np.zeros(2, np.int8), np.zeros(2), np.zeros((2, 2)), np.zeros((2, 2), bool))
        run(np.arange(2), np.array([0, 2]), slots.astype(np.int64), ts, values, np.zeros(2, np.int64),
            slab_of(store), self.params, self.weights, out, 1)
        elapsed = time.perf_counter() - started
        log.info("scoring kernel ready in %.1f s (compiled, or loaded from numba's cache)", elapsed,
                 extra={"event": "kernel_ready"})
        return elapsed


@functools.cache
def _announce_compilation() -> None:
    """Once per process, before the first warm-up: what the operator may be waiting for."""
    log.info("scoring kernel: loading it from numba's cache, or compiling it (about a minute on 2 cores, "
             "once per machine and source version)", extra={"event": "kernel_compiling"})


def kernel_for(pipeline: ScoringPipeline) -> KernelScorer:
    """The kernel over this (CPU) pipeline's store, clock, settings and model, compiled and ready."""
    kernel = KernelScorer(pipeline.store, pipeline.clock, params_of(pipeline.config, pipeline.normaliser),
                          weights_of(pipeline.model), pipeline.config.policy, pipeline.model_version,
                          pipeline.config.kernel_threads)
    kernel.warm_up()
    return kernel
