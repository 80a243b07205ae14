"""`rnnwatch bench checkpoint --devices N [--json]`: scoring with background checkpoints vs without.

The daemon's scoring loop without the consumer: synthetic batches of one reading per device (a slice
of the fleet per batch, round robin over every device, `--channels` each, over `--partitions`
partitions with increasing offsets) go through the `StateManager` the daemon drives
(`admit_and_score` → `applied` → `maybe_checkpoint`), with its changelog on a real broker. First a
sweep over every device (not timed: it allocates them), then two timed phases of `--seconds` each:
checkpoints off, then on every `--interval-s`. With the interval at least as long as one sweep,
every device is dirty at every checkpoint (the figure `dirty_per_checkpoint` says how many were).

Reports readings/s of both phases and their ratio, the longest pause a checkpoint caused on the loop
(`begin`: flush outputs + the snapshot copy; also the longest loop turn of each phase), the background
write rate and the oldest checkpoint age seen (the readings a crash would replay). With
`--reading-interval-s R` the stream is paced to one reading per device every R seconds (a fleet's
real rate, for the capacity statement) instead of as fast as scoring goes. Without
`--bootstrap-servers` an embedded broker is started for the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=100_000, help="active devices (100000)")
    parser.add_argument("--channels", type=int, default=4, help="channels per device (4)")
    parser.add_argument("--partitions", type=int, default=4, help="readings / changelog partitions (4)")
    parser.add_argument("--batch", type=int, default=10_000, help="readings per scored batch (10000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each timed phase (60)")
    parser.add_argument("--interval-s", type=float, default=30.0, help="checkpoint interval when on (30)")
    parser.add_argument("--reading-interval-s", type=float, default=0.0,
                        help="one reading per device this often, paced (0: as fast as scoring goes)")
    parser.add_argument("--bootstrap-servers", default=None,
                        help="an existing broker (default: start an embedded one for the run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from streamer.tools.bench_cmd import on_broker, report

    if min(args.devices, args.channels, args.partitions, args.batch) < 1 or args.seconds <= 0:
        print("rnnwatch bench checkpoint: --devices, --channels, --partitions, --batch and --seconds must "
              "be positive", file=sys.stderr)
        return 2
    return report(on_broker(args.bootstrap_servers, lambda bootstrap: measure(args, bootstrap)), args.json)


class _Stream:
    """Batches of one reading per device for a slice of the fleet, round robin, offsets per partition."""

    def __init__(self, devices: int, channels: int, partitions: int, batch: int) -> None:
        self.ids = [f"dev-{i:07d}" for i in range(devices)]
        self.names = tuple(f"c{k}" for k in range(channels))
        self.parts = (np.arange(devices) % partitions).astype(np.int32)
        self.offsets = np.zeros(partitions, dtype=np.int64)
        self.channels, self.batch, self.cursor, self.step = channels, min(batch, devices), 0, 0
        self.rng = np.random.default_rng(0)

    def next(self) -> tuple[Any, dict[int, int]]:
        from streamer.scoring.readings import ReadingBatch

        n, total = self.batch, len(self.ids)
        idx = (self.cursor + np.arange(n)) % total  # (n,)
        self.cursor = (self.cursor + n) % total
        self.step += 1
        parts = self.parts[idx]
        offsets = np.empty(n, dtype=np.int64)
        for p in np.unique(parts).tolist():
            mine = parts == p
            offsets[mine] = self.offsets[p] + np.arange(int(mine.sum()))
            self.offsets[p] += int(mine.sum())
        values = np.sin(self.step / 50 + idx[:, None] + np.arange(self.channels)) \
            + self.rng.normal(0, 0.1, (n, self.channels))  # (n, channels)
        batch = ReadingBatch(device_ids=[self.ids[i] for i in idx.tolist()],
                             ts=1.7e9 + 60.0 * (self.step * n + np.arange(n)) / total,
                             values=values.astype(np.float32),
                             n_channels=np.full(n, self.channels, dtype=np.int16),
                             channels=[self.names] * n, partitions=parts, offsets=offsets)
        return batch, {int(p): int(self.offsets[p]) for p in np.unique(parts).tolist()}


def measure(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    """Sweep once over every device, then time scoring with checkpoints off and on."""
    manager, writer, metrics = _manager(args, bootstrap)
    stream = _Stream(args.devices, args.channels, args.partitions, args.batch)
    started = time.perf_counter()
    for _ in range(-(-args.devices // stream.batch)):
        _turn(manager, stream)
    sweep_s = time.perf_counter() - started
    manager.checkpointer.warm_buffers()  # as the daemon does after a restore (its worker: after each write)
    manager.checkpointer.interval_s = 1e12
    manager.checkpointer.schedule()
    rate = args.devices / args.reading_interval_s if args.reading_interval_s > 0 else 0.0
    off = _phase(manager, stream, args.seconds, rate=rate)
    manager.checkpointer.interval_s = args.interval_s
    manager.checkpointer.schedule()
    written_before = writer.records_written
    on = _phase(manager, stream, args.seconds, checkpoints=True, rate=rate)
    manager.shutdown()  # the last background checkpoint, finished
    count = metrics.registry.get_sample_value("rnnwatch_checkpoints_total") or 0.0
    write_s = metrics.registry.get_sample_value("rnnwatch_checkpoint_duration_seconds_sum") or 0.0
    writer.close()
    return {
        "benchmark": "checkpoint", "devices": args.devices, "channels": args.channels,
        "partitions": args.partitions, "batch": stream.batch, "interval_s": args.interval_s,
        "sweep_s": round(sweep_s, 1),
        "readings_per_s_off": round(off["readings"] / off["seconds"]),
        "readings_per_s_on": round(on["readings"] / on["seconds"]),
        "ratio_on_off": round(on["readings"] / on["seconds"] / (off["readings"] / off["seconds"]), 3),
        "longest_turn_off_s": round(off["longest_turn_s"], 3),
        "longest_turn_on_s": round(on["longest_turn_s"], 3),
        "longest_checkpoint_pause_s": round(on["longest_pause_s"], 3),
        "reading_interval_s": args.reading_interval_s or None,
        "checkpoints": int(count), "dirty_per_checkpoint": on["dirty"],
        "checkpoint_age_max_s": round(on["age_max_s"], 1),
        "states_written": writer.records_written - written_before,
        "background_states_per_s": round(count and (writer.records_written - written_before) / write_s),
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "broker": "given" if args.bootstrap_servers else "embedded tansu",
    }


def _manager(args: argparse.Namespace, bootstrap: str) -> tuple[Any, Any, Any]:
    """A StateManager over a fresh changelog topic, owning every partition, committing nowhere."""
    import uuid

    from kafka import KafkaProducer

    from streamer.checkpoint.changelog import ChangelogReader, ChangelogWriter, restore_consumer_factory
    from streamer.checkpoint.manager import StateManager
    from streamer.kafka.admin import TopicSpec, ensure_topics
    from streamer.kafka.client_config import (
        KafkaClientSettings,
        producer_kwargs,
        producer_throughput_kwargs,
    )
    from streamer.scoring.factory import build_pipeline
    from streamer.service.metrics import Metrics

    kafka = KafkaClientSettings(bootstrap, client_id="rnnwatch-bench")
    topic = f"bench-checkpoint-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [TopicSpec(topic, args.partitions, {"cleanup.policy": "compact"})])
    writer = ChangelogWriter(lambda: KafkaProducer(**producer_kwargs(
        kafka, **producer_throughput_kwargs(), acks="all")),
                             topic)
    metrics = Metrics()
    pipeline = build_pipeline(None, "cpu")
    manager = StateManager(pipeline, writer, ChangelogReader(restore_consumer_factory(kafka), topic),
                           interval_s=1e12, max_devices=args.devices + 1, ttl_s=1e12,
                           commit=lambda offsets: None, metrics=metrics)
    manager.owned = set(range(args.partitions))
    return manager, writer, metrics


def _turn(manager: Any, stream: _Stream) -> int:
    batch, offsets = stream.next()
    scored = manager.admit_and_score(batch)
    manager.applied(batch, scored, offsets)
    return len(batch)


def _phase(manager: Any, stream: _Stream, seconds: float, checkpoints: bool = False,
           rate: float = 0.0) -> dict[str, Any]:
    """Score for `seconds` (at most `rate` readings/s when > 0): readings, longest loop turn, longest
    checkpoint step, states per checkpoint, oldest checkpoint age seen."""
    readings, longest_turn, longest_pause, dirty, age = 0, 0.0, 0.0, [], 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if rate > 0:
            time.sleep(max(0.0, readings / rate - (time.perf_counter() - started)))
        turn = time.perf_counter()
        readings += _turn(manager, stream)
        if checkpoints:
            before = manager.background.job
            step = time.perf_counter()
            manager.maybe_checkpoint()
            longest_pause = max(longest_pause, time.perf_counter() - step)
            job = manager.background.job
            if job is not None and job is not before:
                dirty.append(len(job.snapshot))
            age = max(age, min(manager.checkpoint_age(), time.perf_counter() - started))  # phase start counts
        longest_turn = max(longest_turn, time.perf_counter() - turn)
    return {"readings": readings, "seconds": time.perf_counter() - started, "longest_turn_s": longest_turn,
            "longest_pause_s": longest_pause, "dirty": dirty, "age_max_s": age}
