"""The daemon, until asked to stop: poll → restore newly assigned partitions → decode → admit and score →
publish → metrics, and every checkpoint interval: flush outputs → write state → commit offsets.

At-least-once: a batch's offsets are committed only after every record it produced (alerts, scores,
dead letters) is acknowledged by the broker, and only at a state checkpoint, after the device states
that cover them (`streamer.checkpoint`: flush outputs → write state → commit offsets). If
publishing keeps failing, the loop keeps retrying the same output (readiness goes false, logs say
why) rather than moving on; if the commit fails (a rebalance took the partitions), the records will
be delivered again to their new owner, whose restored states skip what they already hold.

Pipelined: a batch's output is sent and the loop moves on; the broker's acknowledgement is awaited
where the contract needs it, in the checkpoint's "flush outputs" step (also on revoke and at stop),
whenever more than `--max-in-flight-records` / `--max-in-flight-bytes` of output is unacknowledged
(`output_window.py`, back-pressure), and after a poll that found the loop caught up (fewer records
than asked: waiting costs no throughput then, and what the metrics count as scored is acknowledged).
Meanwhile the clients fetch the next records in their own threads, and a large poll is decoded in
slices by a worker process, slice k + 1 while the loop scores slice k (`streamer.ingest.decode_worker`,
`--decode-workers`; a thread would gain nothing, decode and scoring both hold the GIL). The poll
size follows the backlog (`batch_size.py`): small batches when caught up (latency), up to
`--max-poll-records` under backlog (throughput). The client library is kafka-python or librdkafka
(`RNNWATCH_KAFKA_CLIENT`, `clients.py`), behind the same contracts.

Bounded time per poll step: a poll's readings are scored in chunks of at most
`max_readings_per_message` waves per device (`chunks.py`), each published before the next, with a
heartbeat in between; a poll's offsets are handed to the checkpointer after its last chunk. Readings
the pipeline refuses because the device's data is wrong (out of order, channel mismatch) are
dead-lettered beside the decoder's dead letters (`streamer.ingest.refusals`).

`stop()` (the CLI calls it on SIGTERM/SIGINT) lets the batch in hand finish: its output is flushed
and confirmed, a last checkpoint writes the states and commits the offsets, then the clients close
and `run()` returns 0.

Collaborators are injected with production defaults: the pipeline, the metrics registry and the
consumer/producer factories, so tests run the real loop against fakes or a real broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streamer.backoff import Backoff, Stopped
from streamer.checkpoint.changelog import ensure_state_topic
from streamer.checkpoint.manager import StateManager
from streamer.contracts import ReadingsConsumer, Scorer
from streamer.feedback.effects import FeedbackEffects
from streamer.feedback.reader import FeedbackReader, make_feedback_consumer
from streamer.feedback.step import FeedbackStep
from streamer.ingest.codec import Decoded
from streamer.ingest.dead_letter import DeadLetter
from streamer.ingest.decode_worker import PollDecoder
from streamer.ingest.refusals import refusal_dead_letters
from streamer.kafka.admin import wait_for_broker
from streamer.kafka.consumer import CommitError, Polled
from streamer.kafka.publisher import Publisher, PublishError
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import ReadingBatch
from streamer.scoring.swap import SwappingPipeline
from streamer.service.accounting import BatchAccounting
from streamer.service.batch_size import BatchSizer
from streamer.service.chunks import wave_chunks
from streamer.service.clients import make_consumer, make_producer, open_group_consumer
from streamer.service.health import HealthServer
from streamer.service.metrics import Metrics
from streamer.service.model_watch import ModelWatcher
from streamer.service.output_window import OutputWindow
from streamer.service.settings import Settings
from streamer.service.startup import ensure_copartitioned, prepare_topics

log = logging.getLogger(__name__)

OUTPUT_ROLES = ("readings", "alerts", "dlq", "scores", "shadow_alerts")  # topics it reads or writes
MIN_POLL_RECORDS = 500  # the adaptive poll size's floor (caught up)
READY_STALE_S = 15.0  # not ready while the loop is stuck this long (liveness waits for stale_after_s)


def _effects(pipeline: ScoringPipeline, counted_as: str | None = None) -> FeedbackEffects:
    """Feedback on `pipeline`'s store; counted under `counted_as` (the version in service) or its own."""
    config = pipeline.config
    return FeedbackEffects(pipeline.store, counted_as or pipeline.model_version,
                           calibration=config.calibration, policy=config.policy)


class Daemon:
    """One `rnnwatch serve` process: a consumer-group member scoring the readings topic."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Scorer,
        *,
        metrics: Metrics | None = None,
        consumer_factory: Callable[[], Any] | None = None,
        producer_factory: Callable[[], Any] | None = None,
        state_ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics or Metrics()
        self._consumer_factory = consumer_factory or (lambda: make_consumer(settings))
        self._producer_factory = producer_factory or (lambda: make_producer(settings))
        self._state_ready = state_ready
        self._clock = clock
        self.decoder: PollDecoder | None = None  # started with the clients (a worker process)
        self.accounting = BatchAccounting(self.metrics)
        self._stop = threading.Event()
        self._beat_at: float | None = None
        self._problem: str | None = "starting"
        self._next_lag_at = 0.0
        self.consumer: ReadingsConsumer | None = None
        self.publisher: Publisher | None = None
        self.state: StateManager | None = None
        self._broker_problem: str | None = None
        self.health: HealthServer | None = None
        self.started = threading.Event()  # set once the first poll is about to happen (tests wait on it)
        self.batch_sizer = BatchSizer(smallest=min(MIN_POLL_RECORDS, settings.max_poll_records),
                                      largest=settings.max_poll_records)
        self.window: OutputWindow | None = None
        self.feedback: FeedbackStep | None = None  # with RNNWATCH_FEEDBACK_TOPIC
        self.swap: SwappingPipeline | None = None  # a hot model swap in progress
        refused = self.metrics.model_swaps.labels(outcome="refused")
        self.models = ModelWatcher(settings.model, settings.model_check_interval_s, on_refused=refused.inc)

    def stop(self) -> None:
        self._stop.set()

    def check_model(self) -> None:
        """Look for a new model artifact at the next turn of the loop (SIGHUP)."""
        self.models.request()

    def run(self) -> int:
        """Serve until `stop()`; 0 on a clean stop. Startup errors raise (`BrokerError`, `ConfigError`)."""
        try:
            self._start()
        except Stopped:
            self._close()
            return 0
        consumer, publisher, state = self.consumer, self.publisher, self.state
        assert consumer is not None and publisher is not None and state is not None, "_start opens all three"
        try:
            while not self._stop.is_set():
                self._beat()
                asked = self.batch_sizer.size
                polled = consumer.poll(self.settings.poll_timeout_ms, asked)
                self.batch_sizer.observe(len(polled))
                state.restore_pending()  # newly assigned partitions: restored before they are scored
                if polled:
                    self._process(publisher, state, polled, caught_up=len(polled) < asked)
                if self.feedback is not None:  # verdicts and silences of the partitions scored now
                    self.feedback.run(publisher, state.restored, self._clock())
                self._swap_turn(state)
                state.maybe_checkpoint()
            state.shutdown()
        except BaseException:
            state.abandon()  # a batch may be half done: its state must never be checkpointed
            raise
        finally:
            self._close()
        return 0

    def _process(self, publisher: Publisher, state: StateManager, polled: Polled, *, caught_up: bool) -> None:
        """Decode, score and publish a poll, slice by slice (the next slice decodes in the worker meanwhile);
        `caught_up` (it brought fewer records than asked): its output is confirmed before it is counted,
        since waiting costs nothing then. The offsets go with the last slice."""
        assert self.decoder is not None, "_start builds it"
        offsets = {tp.partition: offset for tp, offset in polled.offsets.items()}
        slices = self.decoder.slices(polled.records)
        for k, decoded in enumerate(self.decoder.decode_all(slices)):
            last = k == len(slices) - 1
            self._process_decoded(publisher, state, slices[k], decoded, offsets if last else {},
                                  confirm=caught_up and last)

    def _process_decoded(self, publisher: Publisher, state: StateManager, records: Sequence[Any],
                         decoded: Decoded, offsets: Mapping[int, int], *, confirm: bool) -> None:
        """Score and publish decoded records in chunks of bounded waves (`chunks.py`), a heartbeat between."""
        chunks = wave_chunks(decoded.batch, self.settings.max_readings_per_message)
        if chunks is None:
            self._process_chunk(publisher, state, records, decoded.batch, decoded.dead_letters, offsets,
                                confirm=confirm)
            return
        for k, rows in enumerate(chunks):  # decoder dead letters go with the first, the offsets with the last
            last = k == len(chunks) - 1
            self._process_chunk(publisher, state, records, decoded.batch.take(rows),
                                decoded.dead_letters if k == 0 else [], offsets if last else {},
                                confirm=confirm and last)
            if not last:
                self._beat()

    def _process_chunk(self, publisher: Publisher, state: StateManager, records: Sequence[Any],
                       batch: ReadingBatch,
                       dead_letters: Sequence[DeadLetter], offsets: Mapping[int, int], *,
                       confirm: bool) -> None:
        """Score, publish and track one chunk of a poll; wait for the broker when `confirm` or the window is
        full."""
        t0 = time.perf_counter()
        scored = state.admit_and_score(batch)
        latency = time.perf_counter() - t0  # rnnwatch_scoring_latency_seconds: the pipeline alone
        refused = refusal_dead_letters(batch, scored.status, records)
        publisher.publish_dead_letters([*dead_letters, *refused])
        publisher.publish_alerts(scored.events)
        publisher.publish_alerts(scored.shadow_events, shadow=True)
        publisher.publish_scores(batch, scored)
        if confirm:
            self._confirm(publisher)
        else:
            assert self.window is not None, "_start builds it with the publisher"
            self.window.after_batch(publisher)
        state.applied(batch, scored, offsets)  # committed only after a checkpoint's flush confirmed it
        decoded = Decoded(batch=batch, dead_letters=list(dead_letters), messages=0)
        self.accounting.account(decoded, scored, latency, self._clock(), refused)

    # ---- steps ---------------------------------------------------------------------------------------
    def _start(self) -> None:
        """Serve health, reach the broker, prepare the topics, then open the clients and keep them on self
        (each as soon as it exists, so that `_close` closes whatever was opened when a later step fails)."""
        s = self.settings
        self.health = HealthServer(self.metrics.registry, lambda: self._beat_at, self.readiness,
                                   stale_after_s=s.stale_after_s, host=s.metrics_host, port=s.metrics_port)
        log.info("serving /metrics, /healthz, /readyz on %s:%d", s.metrics_host, self.health.port,
                 extra={"port": self.health.port})
        self._model_info()
        self._problem = f"connecting to broker {s.kafka.bootstrap_servers}"
        existing = wait_for_broker(s.kafka, s.startup_attempts, timeout_s=5.0, wait=self._stop.wait,
                                   beat=self._beat)
        prepare_topics(s, existing, OUTPUT_ROLES)
        ensure_state_topic(s.kafka, s.state_topic, s.readings_topic, create=s.create_topics)
        publisher = self.publisher = Publisher(
            self._producer_factory, alerts_topic=s.alerts_topic, dlq_topic=s.dlq_topic,
            scores_topic=s.scores_topic, source_topic=s.readings_topic,
            shadow_alerts_topic=s.shadow_alerts_topic if s.shadow_model else None,
            on_recreate=self.metrics.producer_recreated.inc,
        )
        self.decoder = PollDecoder(s.codec_limits, workers=s.decode_workers)
        self.window = OutputWindow(max_records=s.max_in_flight_records, max_bytes=s.max_in_flight_bytes,
                                   confirm=lambda: self._confirm(publisher))
        self.state = StateManager.from_settings(
            s, self.pipeline, self._producer_factory, metrics=self.metrics, commit=self._commit,
            commit_feedback=self._commit_feedback, flush_outputs=lambda: self._confirm(publisher),
            beat=self._beat)
        self.consumer = open_group_consumer(s, self._consumer_factory, on_assigned=self.state.on_assigned,
                                            on_revoked=self.state.on_revoked)
        self.state.attach(self.consumer.pause, self.consumer.resume)
        self.feedback = self._open_feedback()
        self._problem = None
        log.info("consuming %s as group %s", s.readings_topic, s.group_id, extra={
            "alerts_topic": s.alerts_topic, "dlq_topic": s.dlq_topic, "scores_topic": s.scores_topic})
        self.started.set()

    def _swap_turn(self, state: StateManager) -> None:
        """Start a hot swap when the model directory holds a new artifact; finish the one in progress."""
        if self.swap is not None:
            self.metrics.model_swap_progress.set(self.swap.progress)
            if self.swap.done:
                self._promote(state, self.swap)
            return
        live = self.pipeline
        if not self.models.due() or not isinstance(live, ScoringPipeline):  # a shadowed pipeline: no swap
            return
        artifact = self.models.check(live)
        if artifact is None:
            return
        incoming = ScoringPipeline(artifact, live.config, live.device)
        self.swap = SwappingPipeline(live, incoming, deadline_s=self.settings.swap_deadline_s)
        self.pipeline = state.pipeline = self.swap
        state.checkpointer.versions = self.swap.versions  # each state under the model that owns it
        self.metrics.model_swaps.labels(outcome="started").inc()
        self.metrics.model_swap_progress.set(0.0)
        log.info("hot swap from model %s to %s started: the new model warms up on each device, then takes "
                 "it over", live.model_version, artifact.version,
                 extra={"event": "model_swap_started", "version": artifact.version})

    def _promote(self, state: StateManager, swap: SwappingPipeline) -> None:
        taken, held = len(swap.taken_over), len(swap.live.store)
        old = swap.live.model_version
        live = swap.promote()
        self.pipeline = state.pipeline = live
        self.swap = None
        state.checkpointer.versions = None
        state.adopt_model(live.model_version)
        self._model_info()
        self.metrics.model_swaps.labels(outcome="completed").inc()
        self.metrics.model_swap_progress.set(1.0)
        log.info("hot swap from model %s to %s completed: %d of %d devices taken over warm, the rest carried "
                 "over with the forecast signals warming up", old, live.model_version, taken, held,
                 extra={"event": "model_swap_completed", "version": live.model_version})

    def _open_feedback(self) -> FeedbackStep | None:
        """The operator's loop on RNNWATCH_FEEDBACK_TOPIC (co-partitioned with the readings), or None."""
        s, pipeline, state = self.settings, self.pipeline, self.state
        if not s.feedback_topic or state is None:
            return None
        ensure_copartitioned(s, s.feedback_topic, "feedback")
        reader = FeedbackReader(lambda: make_feedback_consumer(s), s.feedback_topic)
        return FeedbackStep(reader, pipeline.store, self._feedback_owners, self.metrics,
                            track=state.checkpointer.track_feedback, on_events=self.accounting.alert_events)

    def _feedback_owners(self, device_id: str) -> list[FeedbackEffects]:
        """The states a feedback message changes, the published one first (see `FeedbackStep`)."""
        swap = self.swap
        live = swap.live if swap is not None else self.pipeline
        if not isinstance(live, ScoringPipeline):  # a shadowed pipeline: the live model's state
            live = self.pipeline.live  # type: ignore[attr-defined]
        mine = [_effects(live)]
        if swap is not None:
            theirs = _effects(swap.incoming, live.model_version)
            mine = [theirs, *mine] if device_id in swap.taken_over else [*mine, theirs]
        return mine

    def _commit_feedback(self, offsets: Mapping[int, int]) -> None:
        """Commit {partition: next offset} of the feedback topic, in the readings group (a checkpoint's)."""
        assert self.settings.feedback_topic
        self._commit_to(self.settings.feedback_topic, offsets,
                        "that feedback will be read again (its effects are idempotent)")

    def _confirm(self, publisher: Publisher) -> None:
        """Block until the output sent so far is acknowledged, retrying with backoff; never skip it."""
        backoff = Backoff()
        while True:
            try:
                publisher.flush_and_confirm(self.settings.publish_timeout_s)
                self._problem = None
                return
            except PublishError as exc:
                self._problem = f"publishing failed: {exc}"
                log.error("batch output not acknowledged; retrying in %.0f s: %s", backoff.delay_s, exc)
                if self._stop.is_set():
                    raise
                self._beat()
                self._stop.wait(backoff.next())

    def _commit(self, offsets: Mapping[int, int]) -> None:
        """Commit {partition: next offset} of the readings topic (the checkpointer calls this)."""
        self._commit_to(self.settings.readings_topic, offsets,
                        "those records will be processed again by the partitions' next owner")

    def _commit_to(self, topic: str, offsets: Mapping[int, int], consequence: str) -> None:
        """Commit {partition: next offset} of `topic` through the group member; a refusal is counted and
        logged with what it means (`consequence`), never raised."""
        from kafka import TopicPartition

        assert self.consumer is not None
        try:
            self.consumer.commit({TopicPartition(topic, p): offset for p, offset in offsets.items()})
        except CommitError as exc:
            self.metrics.commit_failures.inc()
            log.warning("%s; %s", exc, consequence)

    # ---- health and periodic metrics -----------------------------------------------------------------
    def _beat(self) -> None:
        now = time.monotonic()
        self._beat_at = now
        self.metrics.loop_heartbeat.set(self._clock())
        ready, _ = self.readiness()
        self.metrics.ready.set(1 if ready else 0)
        self.metrics.devices_tracked.set(len(self.pipeline.store))
        if self.consumer is not None and now >= self._next_lag_at:
            self._next_lag_at = now + self.settings.consumer_lag_interval_s
            try:
                self.metrics.set_consumer_lag(self.consumer.lag())
                self._broker_problem = None
            except Exception as exc:  # must not stop scoring, but says that the broker is gone
                log.debug("consumer lag unavailable: %s", exc)
                self._broker_problem = f"broker {self.settings.kafka.bootstrap_servers} not answering: {exc}"

    def readiness(self) -> tuple[bool, str]:
        if self._problem is not None:
            return False, self._problem
        stuck = time.monotonic() - self._beat_at if self._beat_at is not None else 0.0
        if stuck > max(READY_STALE_S, 3 * self.settings.poll_timeout_ms / 1000):
            return False, f"main loop has not turned for {stuck:.0f} s (a batch, checkpoint or broker call)"
        if self._broker_problem is not None:
            return False, self._broker_problem
        if self.consumer is None or not self.consumer.assigned:
            return False, "waiting for a partition assignment"
        state = self.state.readiness() if self.state is not None else (True, "")
        if not state[0]:
            return state
        if not self._state_ready():
            return False, "restoring device state"
        return True, f"{len(self.consumer.assigned)} partitions assigned"

    def _model_info(self) -> None:
        config = self.pipeline.model.config
        self.metrics.set_model(self.pipeline.model_version, f"{config.cell}-h{config.hidden_size}",
                               str(self.pipeline.device))

    def _close(self) -> None:
        totals = dict(self.accounting.totals)
        if self.consumer is not None:
            self.consumer.close()  # revokes: the state manager checkpoints (or, abandoned, only drops)
        if self.state is not None:
            self.state.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.decoder is not None:
            self.decoder.close()
        if self.feedback is not None:
            self.feedback.reader.close()
        if self.health is not None:
            self.health.close()
        log.info("stopped", extra={"totals": totals})

