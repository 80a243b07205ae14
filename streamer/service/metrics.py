"""The daemon's Prometheus metrics: every family of docs/ARCHITECTURE.md's table, on one injected registry.

Production passes the registry that `health.py` serves; a test passes nothing and gets a fresh one:

>>> m = Metrics()
>>> m.readings_consumed.inc(3)
>>> m.registry.get_sample_value("rnnwatch_readings_consumed_total")
3.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from streamer.ingest.dead_letter import DeadLetterReason
from streamer.scoring.readings import DropReason, ScoredBatch

# Seconds, 1 ms .. 30 s: one batched RNN step, a checkpoint flush.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
# Readings per batch, 1 .. 100 k.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000,
)
# Recurrent waves per batch: 1 when every device has one reading in the batch.
WAVE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)
# Seconds from a reading's event time to its score, 10 ms .. 1 h.
END_TO_END_LAG_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
)
# Seconds to restore assigned partitions' device state from the changelog, 100 ms .. 30 min.
RESTORE_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

ALERT_STATES: tuple[str, ...] = ("firing", "resolved")


FEEDBACK_KINDS = ("false_positive", "true_positive", "ack", "silence", "lift")  # streamer.feedback.effects
FEEDBACK_OUTCOMES = ("applied", "unknown_alert", "unknown_device")


class Metrics:
    """Creates the metric families and offers the few updates the daemon makes more than once."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._flow()
        self._batches()
        self._state()
        self._guards()
        self._lifecycle()
        self._feedback()
        # Known label values start at 0, so rate() and absent() see them before the first event.
        for reason in DropReason:
            if reason is not DropReason.SCORED:
                self.readings_dropped.labels(reason=reason.label)
        for dead in DeadLetterReason:
            self.dead_letters.labels(reason=dead.value)
        for state in ALERT_STATES:
            self.alerts.labels(state=state)
            self.shadow_alerts.labels(state=state)
        self.shadow_agreement.set(1.0)
        self.model_swap_progress.set(1.0)
        for outcome in ("started", "completed", "refused"):
            self.model_swaps.labels(outcome=outcome)
        self._lag_labels: set[tuple[str, str]] = set()

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=self.registry)

    def _flow(self) -> None:
        """consumed → scored | dropped | dead-lettered, and the alerts raised."""
        self.readings_consumed = self._counter(
            "rnnwatch_readings_consumed_total", "Readings taken from the readings topic.")
        self.readings_scored = self._counter(
            "rnnwatch_readings_scored_total", "Readings that went through the RNN and got a score.")
        self.readings_dropped = self._counter(
            "rnnwatch_readings_dropped_total",
            "Decoded readings the pipeline refused to score, by DropReason.", "reason")
        self.dead_letters = self._counter(
            "rnnwatch_dead_letters_total",
            "Records sent to the dead-letter topic (undecodable, or refused: the device's data is wrong), by "
            "reason.", "reason")
        self.alerts = self._counter(
            "rnnwatch_alerts_total", "Alert events published, by state (firing|resolved).", "state")
        self.alerts_firing_devices = self._gauge(
            "rnnwatch_alerts_firing_devices", "Devices whose alert is firing now.")
        self.shadow_alerts = self._counter(
            "rnnwatch_shadow_alerts_total",
            "Alert events of the shadow model (RNNWATCH_SHADOW_MODEL), published to the shadow alerts topic "
            "only, by state.", "state")
        self.shadow_agreement = self._gauge(
            "rnnwatch_shadow_agreement_ratio",
            "Share of the readings both models scored on which the shadow's alert state (open or not) equals "
            "the live model's, since the process started (1 without a shadow).")

    def _batches(self) -> None:
        self.batch_size = self._histogram(
            "rnnwatch_batch_size_readings", "Readings per scored batch.", BATCH_SIZE_BUCKETS)
        self.batch_waves = self._histogram(
            "rnnwatch_batch_waves", "Batched recurrent steps a batch took (its longest per-device run).",
            WAVE_BUCKETS)
        self.scoring_latency = self._histogram(
            "rnnwatch_scoring_latency_seconds", "Wall time to score one batch.", LATENCY_BUCKETS)
        self.end_to_end_lag = self._histogram(
            "rnnwatch_end_to_end_lag_seconds", "Time from a reading's event timestamp to its score.",
            END_TO_END_LAG_BUCKETS)
        self.consumer_lag = self._gauge(
            "rnnwatch_consumer_lag_messages",
            "Messages between this consumer's position and the partition's end, per assigned partition.",
            "topic", "partition")

    def _state(self) -> None:
        self.devices_tracked = self._gauge(
            "rnnwatch_devices_tracked", "Devices with RNN state held in memory.")
        self.state_memory = self._gauge(
            "rnnwatch_state_memory_bytes", "Bytes held by the per-device state slab.")
        self.device_evictions = self._counter(
            "rnnwatch_device_evictions_total", "Devices dropped from memory (TTL or capacity).")
        self.model_info = Info("rnnwatch_model", "The loaded model: version, architecture, torch device.",
                               registry=self.registry)

    def _guards(self) -> None:
        """What hostile input made the daemon do to a device, beside dead-lettering its records."""
        self.clock_rebased = self._counter(
            "rnnwatch_device_clock_rebased_total",
            "Devices whose event-time clock was re-based after a run of readings older than it.")
        self.device_reshaped = self._counter(
            "rnnwatch_device_reshaped_total",
            "Devices re-initialised (warm-up again) after a run of readings in a new channel set.")
        self.state_quarantined = self._counter(
            "rnnwatch_state_quarantined_total",
            "Device states that could not be checkpointed (too large, unencodable, refused by the broker): "
            "kept in memory only, so that every other device's checkpoint goes on.")

    def _feedback(self) -> None:
        """The operator's loop: verdicts and silences from the feedback topic (streamer.feedback)."""
        self.feedback = self._counter(
            "rnnwatch_feedback_total",
            "Feedback messages read, by kind (false_positive|true_positive|ack|silence|lift), outcome "
            "(applied|unknown_alert|unknown_device) and the model version that scores now; malformed ones "
            "are counted in rnnwatch_dead_letters_total.", "kind", "outcome", "model_version")
        self.devices_silenced = self._gauge(
            "rnnwatch_devices_silenced", "Devices under an operator's silence now (event time).")
        self.model_swaps = self._counter(
            "rnnwatch_model_swaps_total",
            "Hot model swaps, by outcome: started, completed, refused (a broken or incompatible artifact).",
            "outcome")
        self.model_swap_progress = self._gauge(
            "rnnwatch_model_swap_progress_ratio",
            "Share of the devices held that the incoming model has taken over (1 when no swap is running).")
        self.alerts_silenced = self._counter(
            "rnnwatch_alerts_silenced_total",
            "Firing events not published because their device was silenced.")

    def _lifecycle(self) -> None:
        self.commit_failures = self._counter("rnnwatch_commit_failures_total", "Offset commits that failed.")
        self.ready = self._gauge(
            "rnnwatch_ready", "1 while the daemon is ready (partitions assigned and restored), else 0.")
        self.loop_heartbeat = self._gauge(
            "rnnwatch_loop_heartbeat_timestamp_seconds", "Unix time of the main loop's latest iteration.")
        self.restore_progress = self._gauge(
            "rnnwatch_restore_progress_ratio",
            "Share of the assigned partitions' state changelog restored, 0..1 (1 when nothing is left).")
        self.restored_devices = self._counter(
            "rnnwatch_restored_devices_total", "Device states loaded from the state changelog.")
        self.restore_duration = self._histogram(
            "rnnwatch_restore_duration_seconds", "Wall time of one restore after a partition assignment.",
            RESTORE_BUCKETS)
        self.state_version_mismatch = self._counter(
            "rnnwatch_state_version_mismatch_total",
            "Restored device states discarded because their model version differs from the loaded one.")
        self.checkpoints = self._counter(
            "rnnwatch_checkpoints_total",
            "Checkpoints completed (flush outputs, write device states, commit offsets).")
        self.checkpoint_duration = self._histogram(
            "rnnwatch_checkpoint_duration_seconds",
            "Wall time of one checkpoint, snapshot to commit (written in the background).", LATENCY_BUCKETS)
        self.checkpoint_pause = self._histogram(
            "rnnwatch_checkpoint_pause_seconds",
            "Time a checkpoint held the scoring loop (flush outputs and the snapshot copy).", LATENCY_BUCKETS)
        self.checkpoint_age = self._gauge(
            "rnnwatch_checkpoint_age_seconds",
            "Seconds since the snapshot of the last finished checkpoint: the readings a crash would "
            "replay. Over a few checkpoint intervals: the checkpoint is falling behind (RUNBOOK.md).")
        self.producer_recreated = self._counter(
            "rnnwatch_producer_recreated_total", "Kafka producers closed and built anew after a fatal error.")

    def observe_batch(self, scored: ScoredBatch, latency_s: float, lags_s: Iterable[float] = ()) -> None:
        """Account for one scored batch: counts, drops by reason, alert events, waves and timings.

        `lags_s` are the end-to-end lags of the scored readings (now − event time), one per reading.
        """
        n = len(scored.status)
        self.batch_size.observe(n)
        self.batch_waves.observe(scored.waves)
        self.scoring_latency.observe(latency_s)
        dropped = scored.dropped_counts()
        for reason, count in dropped.items():
            self.readings_dropped.labels(reason=reason.label).inc(count)
        self.readings_scored.inc(n - sum(dropped.values()))
        for event in scored.events:
            self.alerts.labels(state=event.state).inc()
        for event in scored.shadow_events:
            self.shadow_alerts.labels(state=event.state).inc()
        for lag in lags_s:
            self.end_to_end_lag.observe(lag)

    def set_consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of every assigned (topic, partition); partitions no longer assigned disappear."""
        current = {(topic, str(partition)): lag for (topic, partition), lag in lags.items()}
        for topic, partition in self._lag_labels - current.keys():
            self.consumer_lag.remove(topic, partition)
        for (topic, partition), lag in current.items():
            self.consumer_lag.labels(topic=topic, partition=partition).set(lag)
        self._lag_labels = set(current)

    def set_model(self, version: str, architecture: str, device: str) -> None:
        self.model_info.info({"version": version, "architecture": architecture, "device": device})
        for kind in FEEDBACK_KINDS:  # at 0 from the start, so a dashboard's precision has a denominator
            for outcome in FEEDBACK_OUTCOMES:
                self.feedback.labels(kind=kind, outcome=outcome, model_version=version)
