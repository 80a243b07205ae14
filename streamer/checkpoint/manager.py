"""The one object the daemon drives for durable state: its lifecycle follows partition assign/revoke.

    assigned (consumer IO thread)   pause the partitions, queue them for restore
    restore_pending (main loop)     read their changelog, install the states, resume them
    admit_and_score (main loop)     admit new devices within the budget (evicting others), score
    applied (main loop)             track what the acknowledged batch changed and where it ends
    maybe_checkpoint (main loop)    every interval: TTL eviction, flush outputs, snapshot the changed
                                    states; a worker thread writes them (`background.py`) while the
                                    loop scores on; the loop commits once they are acknowledged
    revoked (consumer IO thread)    finish the background checkpoint, checkpoint those partitions,
                                    then drop their devices
    shutdown (main loop)            finish the background checkpoint, then a last one of everything owned

Back-pressure: a checkpoint due while the previous one is still being written waits for it (scoring
does not); it then holds every device changed since, so a checkpoint falls behind by at most one write
time, and `rnnwatch_checkpoint_age_seconds` shows by how much (a crash replays that many seconds).

kafka-python 3 runs rebalance listeners on the consumer's IO thread while the main thread waits in
`poll`, so the hooks never race the main loop. A revoke checkpoint may take seconds; it runs in a
worker thread while the listener yields to the IO loop (`_off_loop`), so heartbeats continue and the
offset commit the checkpoint ends with can use the consumer's normal (blocking) API.

Broker faults: a restore or checkpoint that fails leaves the daemon running and not ready (the reason
is in `/readyz`); restores are retried with backoff, checkpoints at the next interval, and nothing is
committed until the states that cover it are acknowledged. A partition whose offsets go *back*
without a rebalance (a broker that lost its log, a recreated topic) would have every new reading
skipped as already applied; the rewind is detected, logged, and those devices forget their offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.backoff import Backoff
from streamer.checkpoint.background import BackgroundWriter
from streamer.checkpoint.changelog import (
    ChangelogWriter,
    StateTopicReader,
    broker_reachable,
    topic_log_id,
)
from streamer.checkpoint.checkpointer import DIRTY, PARTITION, Checkpointer, CheckpointJob
from streamer.checkpoint.confluent_reader import changelog_reader
from streamer.checkpoint.eviction import DeviceEvictor
from streamer.checkpoint.restore import Restorer
from streamer.checkpoint.state_codec import NO_LOG_ID
from streamer.errors import BrokerError, StateError
from streamer.feedback.silencing import apply_silences
from streamer.scoring.readings import DropReason, ReadingBatch, ScoredBatch

if TYPE_CHECKING:
    from streamer.contracts import Scorer, StateMetrics
    from streamer.service.settings import Settings

log = logging.getLogger(__name__)


class StateManager:
    """Durable state of one daemon: the devices of `pipeline.store`, checkpointed through `writer`."""

    def __init__(self, pipeline: Scorer, writer: ChangelogWriter, reader: StateTopicReader, *,
                 interval_s: float, max_devices: int, ttl_s: float,
                 commit: Callable[[Mapping[int, int]], None],
                 flush_outputs: Callable[[], None] = lambda: None, metrics: StateMetrics | None = None,
                 commit_feedback: Callable[[Mapping[int, int]], None] = lambda offsets: None,
                 identify_log: Callable[[], bytes] = lambda: NO_LOG_ID,
                 beat: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._identify_log = identify_log
        self.pipeline = pipeline
        self.store = pipeline.store
        self.writer = writer
        self._metrics = metrics
        self.checkpointer = Checkpointer(self.store, writer, pipeline.model_version, interval_s=interval_s,
                                         commit=commit, flush_outputs=flush_outputs, metrics=metrics,
                                         commit_feedback=commit_feedback)
        self.restorer = Restorer(self.store, reader, pipeline.model_version, metrics=metrics,
                                 on_installed=self.checkpointer.adopt, beat=beat)
        self.evictor = DeviceEvictor(self.store, max_devices=max_devices, ttl_s=ttl_s,
                                     forget=self.checkpointer.forget, metrics=metrics, clock=clock)
        self.owned: set[int] = set()
        self._next_offset: dict[int, int] = {}  # partition -> offset after the last reading seen
        self._pause: Callable[[set[int]], None] = lambda parts: None
        self._resume: Callable[[set[int]], None] = lambda parts: None
        self._problem: str | None = None
        self._abandoned = False
        self._retry_at = 0.0
        self._backoff = Backoff()
        self.background: BackgroundWriter[CheckpointJob] = BackgroundWriter(self.checkpointer.write)
        self._finished_at = time.perf_counter()  # snapshot time of the last finished checkpoint
        self._behind_since: float | None = None  # a checkpoint is due while the previous is written

    @classmethod
    def from_settings(cls, settings: Settings, pipeline: Scorer, producer_factory: Callable[[], Any], *,
                      commit: Callable[[Mapping[int, int]], None], flush_outputs: Callable[[], None],
                      commit_feedback: Callable[[Mapping[int, int]], None] = lambda offsets: None,
                      metrics: StateMetrics | None = None,
                      beat: Callable[[], None] = lambda: None) -> StateManager:
        """The daemon's manager: `settings` is its `Settings` (state topic, interval, budget, TTL).

        `beat` is called while a long restore or checkpoint runs, so the loop still counts as alive.
        """
        on_recreate = metrics.producer_recreated.inc if metrics is not None else (lambda: None)
        reachable = broker_reachable(settings.kafka)
        writer = ChangelogWriter(producer_factory, settings.state_topic, on_recreate=on_recreate,
                                 reachable=reachable, on_chunk=beat)
        reader = changelog_reader(settings.kafka, settings.state_topic, settings.kafka_client, reachable)
        return cls(pipeline, writer, reader, interval_s=settings.checkpoint_interval_s,
                   max_devices=settings.max_devices, ttl_s=settings.device_ttl_s, commit=commit,
                   flush_outputs=flush_outputs, metrics=metrics, commit_feedback=commit_feedback,
                   identify_log=topic_log_id(settings.kafka, settings.readings_topic), beat=beat)

    def adopt_model(self, version: str) -> None:
        """The pipeline scores with another model now (a hot swap completed): states are written under
        its version from the next checkpoint on, every held device's included."""
        self.checkpointer.model_version = self.restorer.model_version = version
        self.checkpointer.mark_dirty(self.owned)

    @property
    def restored(self) -> set[int]:
        """The partitions owned and restored: those scored now (and whose feedback is read)."""
        return self.owned - self.restorer.pending

    def attach(self, pause: Callable[[set[int]], None], resume: Callable[[set[int]], None]) -> None:
        """How to stop and restart fetching partitions (the daemon's consumer)."""
        self._pause, self._resume = pause, resume

    # ---- rebalance hooks (consumer IO thread) ---------------------------------------------------------
    def on_assigned(self, partitions: Iterable[Any]) -> None:
        parts = {tp.partition for tp in partitions}
        self.owned |= parts
        for p in parts:
            self._next_offset.pop(p, None)
        self._pause(parts)
        self.restorer.request(parts)

    async def on_revoked(self, partitions: Iterable[Any]) -> None:
        await _off_loop(self.release, {tp.partition for tp in partitions})

    def release(self, parts: set[int]) -> None:
        """Checkpoint the partitions (unless abandoned or not yet restored), then drop their devices."""
        self._drain()  # the background checkpoint first: its commit covers these partitions too
        restored = parts - self.restorer.pending
        self.restorer.cancel(parts)
        self.owned -= parts
        if restored and not self._abandoned:
            self._rewrite_if_relogged(restored)
            try:
                self.checkpointer.checkpoint(restored)
            except (BrokerError, StateError) as exc:
                log.warning("checkpoint of revoked partitions %s failed (%s); their next owner replays from "
                            "the last committed offsets", sorted(restored), exc)
        dropped = self.checkpointer.release(parts)
        for p in parts:
            self._next_offset.pop(p, None)
        log.info("released partitions %s: %d devices handed over", sorted(parts), dropped)
        self._gauges()

    def _rewrite_if_relogged(self, parts: set[int]) -> None:
        """Before the hand-over checkpoint: if the readings topic is not the one the states were written
        under (a broker that lost its log and the changelog with it, a recreated topic), the changelog
        may no longer hold the states not changed since: write every device of `parts`, not only the
        changed ones, so that the next owner restores them all."""
        before = self.checkpointer.log_id
        if before == NO_LOG_ID:
            return  # a broker without topic ids: nothing to compare
        try:
            now = self._identify_log()
        except Exception as exc:  # the broker is unwell: the checkpoint that follows will say so
            log.debug("readings topic id unavailable before the hand-over checkpoint: %s", exc)
            return
        if now != before:
            marked = self.checkpointer.mark_dirty(parts)
            log.warning("the readings topic is not the incarnation the device states were written under (a "
                        "broker that lost its log, or a recreated topic): all %d devices of partitions %s "
                        "are written again before they are handed over", marked, sorted(parts))

    # ---- main loop ------------------------------------------------------------------------------------
    def restore_pending(self) -> None:
        """Restore the partitions assigned since the last call, then let them be fetched."""
        pending = set(self.restorer.pending)
        if not pending or time.monotonic() < self._retry_at:
            return
        try:
            log_id = self._identify_log()  # offsets in states count in this incarnation of the topic
            self.restorer.log_id = self.checkpointer.log_id = log_id
            self.restorer.restore()
        except (BrokerError, StateError) as exc:
            self._fail(f"restoring device state of partitions {sorted(pending)} failed: {exc}")
            return
        except Exception as exc:  # kafka-python timeouts and connection errors: the broker is unwell
            self._fail(f"restoring device state of partitions {sorted(pending)} failed: "
                       f"{type(exc).__name__}: {exc}")
            return
        self._ok()
        self.evictor.enforce()
        self.checkpointer.warm_buffers()  # the first checkpoint's copy must not page-fault on the loop
        self._resume(pending & self.owned)
        self._gauges()

    def admit_and_score(self, batch: ReadingBatch) -> ScoredBatch:
        """Admit the batch's new devices within the budget (evicting others), then score it; in parts
        when it brings more new devices than fit (see `DeviceEvictor.admit`)."""
        self._check_rewind(batch)
        end, admitted = self.evictor.admit(batch)
        if end == len(batch) and admitted is None:
            return self._silence(batch, self.pipeline.score(batch))  # the usual case: one call, no copies
        parts, start = [], 0
        while True:
            idx = np.arange(start, end)
            if admitted is not None:
                idx = idx[admitted]
            parts.append((idx, self.pipeline.score(batch.take(idx))))
            if end == len(batch):
                return self._silence(batch, _merge(parts, len(batch)))
            start = end
            end, admitted = self.evictor.admit(batch, start)

    def _silence(self, batch: ReadingBatch, scored: ScoredBatch) -> ScoredBatch:
        """What operators' silences withhold of the batch's alerts (`streamer.feedback.silencing`)."""
        config = self.pipeline.config
        return apply_silences(self.store, batch, scored, config.policy, self.pipeline.model_version)

    def applied(self, batch: ReadingBatch, scored: ScoredBatch, offsets: Mapping[int, int]) -> None:
        """The batch's output is sent (acknowledged by the next checkpoint's flush at the latest, which
        precedes its commit): remember what it changed and where it ends."""
        self.checkpointer.track(batch, scored, offsets)
        self._next_offset.update(offsets)
        self._gauges()

    def maybe_checkpoint(self) -> None:
        """Commit a background checkpoint once written; every interval, snapshot the next one."""
        self._collect(self.background.collect())
        if self._metrics is not None:
            self._metrics.checkpoint_age.set(self.checkpoint_age())
        if not self.checkpointer.due() or self._abandoned:
            return
        if self.background.busy:
            self._behind()
            return
        try:
            self.evictor.expire()
            job = self.checkpointer.begin(self.owned - self.restorer.pending)
        except (BrokerError, StateError) as exc:
            self._fail(f"checkpoint failed: {exc}")
        else:
            self.background.submit(job)
            log.log(logging.INFO if len(job.snapshot) else logging.DEBUG,
                    "checkpoint of partitions %s: %d states snapshotted in %.3f s (scoring paused that "
                    "long); writing them in the background", job.partitions, len(job.snapshot), job.paused_s,
                    extra={"event": "checkpoint_started", "states": len(job.snapshot)})
        finally:
            self.checkpointer.schedule()

    def checkpoint_age(self) -> float:
        """Seconds since the snapshot of the last finished checkpoint (or the start): what a crash replays."""
        return time.perf_counter() - self._finished_at

    def _collect(self, job: CheckpointJob | None) -> None:
        """Finish a written background checkpoint: commit its offsets, or roll it back if it failed."""
        if job is None or self._abandoned:
            return
        if self._behind_since is not None:
            log.info("the late checkpoint is written after %.1f s; the next one starts now",
                     time.perf_counter() - job.started, extra={"seconds": time.perf_counter() - job.started})
            self._behind_since = None
        try:
            self.checkpointer.finish(job)
        except (BrokerError, StateError) as exc:
            self._fail(f"checkpoint failed: {exc}")
            return
        self._finished_at = job.started
        self._ok()

    def _behind(self) -> None:
        if self._behind_since is None:
            self._behind_since = time.perf_counter()
            log.warning("a checkpoint is due but the previous one is still being written; the next one "
                        "starts when it is acknowledged (scoring goes on; a crash now replays %.0f s of "
                        "readings). If this repeats, see RUNBOOK.md RnnwatchCheckpointBehind",
                        self.checkpoint_age(), extra={"event": "checkpoint_behind"})

    def _drain(self) -> None:
        """Wait for the background checkpoint in hand (revoke, shutdown) and finish it."""
        self._collect(self.background.wait())

    def shutdown(self) -> None:
        """Finish the background checkpoint, then a last one of every restored partition (a clean stop)."""
        if self._abandoned:
            return
        self._drain()
        try:
            self.checkpointer.checkpoint(self.owned - self.restorer.pending)
        except (BrokerError, StateError) as exc:
            log.error("final checkpoint failed (%s); the next owner replays from the last committed offsets",
                      exc)

    def abandon(self) -> None:
        """The main loop failed mid-batch: never write state again (its output may be unacknowledged)."""
        self._abandoned = True

    def readiness(self) -> tuple[bool, str]:
        if self._problem is not None:
            return False, self._problem
        if self.restorer.pending:
            return False, f"restoring device state of partitions {sorted(self.restorer.pending)}"
        return True, "device state restored"

    def close(self) -> None:
        self.writer.close()

    # ---- helpers ----------------------------------------------------------------------------------------
    def _check_rewind(self, batch: ReadingBatch) -> None:
        if not self._next_offset or len(batch) == 0:
            return
        for p in np.unique(batch.partitions).tolist():
            expected = self._next_offset.get(p)
            first = int(batch.offsets[batch.partitions == p].min())
            if expected is None or first >= expected:
                continue
            mine = self.store.live & (self.store.cols[PARTITION] == p)
            self.store.cols["source_offset"][mine] = -1
            self.store.cols[DIRTY][mine] = True
            self._next_offset.pop(p)
            log.warning("partition %d went back from offset %d to %d without a rebalance: the broker lost "
                        "its log or the topic was recreated; its %d devices keep their state but forget "
                        "their offsets", p, expected, first, int(mine.sum()))

    def _fail(self, problem: str) -> None:
        if self._problem != problem:
            log.error("%s; retrying in %.0f s", problem, self._backoff.delay_s)
        self._problem = problem
        self._retry_at = time.monotonic() + self._backoff.next()

    def _ok(self) -> None:
        if self._problem is not None:
            log.info("device state is healthy again (was: %s)", self._problem)
        self._problem = None
        self._backoff.reset()
        self._retry_at = 0.0

    def _gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.devices_tracked.set(len(self.store))
            self._metrics.state_memory.set(self.store.memory_bytes())


def _merge(parts: list[tuple[np.ndarray, ScoredBatch]], n: int) -> ScoredBatch:
    """Answers for parts of an n-reading batch placed back at their rows; rows in none: CAPACITY."""
    scores = np.full(n, np.nan, dtype=np.float32)
    alerting = np.zeros(n, dtype=bool)
    status = np.full(n, DropReason.CAPACITY, dtype=np.uint8)
    top = np.full(n, -1, dtype=np.int16)
    events, waves, rebased, reshaped = [], 0, 0, 0
    for idx, scored in parts:
        scores[idx], alerting[idx], status[idx], top[idx] = (scored.scores, scored.alerting, scored.status,
                                                              scored.top_channel)
        events.extend(scored.events)
        waves += scored.waves
        rebased += scored.rebased
        reshaped += scored.reshaped
    return ScoredBatch(scores, alerting, status, top, events, waves, rebased, reshaped)


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking `fn` in a worker thread while kafka-python's IO loop keeps turning.

    The IO loop is kafka-python's own scheduler, not asyncio; its tasks sleep by awaiting a
    `KernelEvent("_sleep", s)`. Without that class (another kafka-python layout) `fn` runs inline.
    """
    try:
        from kafka.net.selector import KernelEvent
    except ImportError:
        return fn(*args)
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the listener below, which kafka-python logs
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="rnnwatch-rebalance", daemon=True).start()
    while not done.is_set():
        await KernelEvent("_sleep", 0.01)
    if "error" in box:
        raise box["error"]
    return box.get("value")
