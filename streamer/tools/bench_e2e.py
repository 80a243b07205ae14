"""`rnnwatch bench e2e`: the daemon's throughput on a real broker against its two ceilings, and latency.

Phases, one JSON object (with --json), for the client library `--client` (kafka-python, confluent):

1. produce: N readings of a synthetic fleet to a fresh topic (before anything consumes it).
2. raw:     the daemon's own consumer (`make_consumer` + `open_group_consumer`) polls that topic in a
            fresh group and decodes every record (`ReadingDecoder`): the ceiling of client + decode.
   core:    the scoring core alone (`ScoringPipeline.score`, fresh states) on the same decoded
            readings, in batches of `--max-poll-records`: the ceiling of scoring.
   daemon:  the daemon (in this process, on its own thread) consumes the same topic in another fresh
            group; its rate runs from its first non-empty poll to its last offset commit, which is
            the shutdown checkpoint (device states written, then offsets committed) it is asked for
            as soon as it has processed every reading.
   Each runs `--repeat` times, alternating; ratio = median daemon / the slower of median raw and
   median core (`ratio_to_raw` beside it).
3. latency: reading→alert latency at `--latency-fraction` of the daemon's rate (`bench_latency`).

Without --bootstrap an embedded tansu broker is started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from streamer.kafka.client_choice import KAFKA_CLIENTS, resolve_client
from streamer.scoring.kernel import PATHS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: embedded broker)")
    p.add_argument("--client", default="auto", choices=KAFKA_CLIENTS,
                   help="Kafka client library of the raw and daemon phases (auto: confluent when installed)")
    p.add_argument("--readings", type=int, default=200_000, help="readings in the throughput phases")
    p.add_argument("--devices", type=int, default=1_000)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--max-poll-records", type=int, default=20_000)
    p.add_argument("--decode-workers", type=int, default=1, choices=(0, 1),
                   help="the daemon's --decode-workers (1: a process decodes beside scoring)")
    p.add_argument("--latency-fraction", type=float, default=0.5, help="share of the daemon's max rate")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=3, help="raw and daemon runs, alternating (medians)")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--client-variants", action="store_true",
                   help="kafka-python: also measure raw consume+decode with its defaults and without crc32c")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda[:N]")
    p.add_argument("--model", default=None)
    p.add_argument("--scoring-path", default=PATHS[0], choices=PATHS,
                   help="the daemon's and the core's scoring path (RNNWATCH_SCORING_PATH)")
    p.add_argument("--threads", type=int, default=1,
                   help="the daemon's and the core's scoring threads (RNNWATCH_TORCH_THREADS)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from streamer.tools.bench_cmd import on_broker, report

    return report(on_broker(args.bootstrap, lambda bootstrap: bench(args, bootstrap)), args.json)


def bench(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    from streamer.kafka.admin import TopicSpec, ensure_topics
    from streamer.service.settings import Settings

    run_id = uuid.uuid4().hex[:8]
    settings = replace(
        Settings.from_sources(None, {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}),
        readings_topic=f"bench.readings.{run_id}", alerts_topic=f"bench.alerts.{run_id}",
        dlq_topic=f"bench.dlq.{run_id}", feedback_topic=f"bench.feedback.{run_id}", metrics_port=0,
        metrics_host="127.0.0.1",
        max_poll_records=args.max_poll_records, device=args.device, model=args.model,
        topic_partitions=args.partitions, log_level="WARNING", kafka_client=resolve_client(args.client),
        decode_workers=args.decode_workers, scoring_path=args.scoring_path, torch_threads=args.threads,
        poll_timeout_ms=100,  # the daemon notices stop() within 0.1 s: its last commit is not delayed
    )
    ensure_topics(settings.kafka, [TopicSpec(settings.readings_topic, args.partitions)])
    steps = max(1, args.readings // args.devices)
    produced = _produce_fleet(settings, args.devices, steps, args.channels)
    raws, cores, daemons = [], [], []
    records: list[Any] = []
    for i in range(args.repeat):  # alternate, so load from elsewhere on the machine hits all alike
        raws.append(_raw_consume_decode(settings, produced, f"bench-raw-{run_id}-{i}", keep=records))
        cores.append(_scoring_core(settings, records))
        daemons.append(_daemon_throughput(_group(settings, f"bench-daemon-{run_id}-{i}"), produced))
    raw, core = float(np.median(raws)), float(np.median(cores))
    daemon = {"rate": float(np.median([d["rate"] for d in daemons])), "batches": daemons[0]["batches"]}
    result: dict[str, Any] = {
        "bench": "e2e",
        "client": settings.kafka_client,
        "readings": produced,
        "devices": args.devices,
        "channels": args.channels,
        "partitions": args.partitions,
        "max_poll_records": args.max_poll_records,
        "decode_workers": args.decode_workers, "threads": args.threads,
        "raw_consume_decode_readings_per_s": round(raw, 1),
        "scoring_core_readings_per_s": round(core, 1),
        "daemon_readings_per_s": round(daemon["rate"], 1),
        "ratio": round(daemon["rate"] / min(raw, core), 3),
        "ratio_to_raw": round(daemon["rate"] / raw, 3),
        "repeats": args.repeat,
        "raw_runs": [round(r, 1) for r in raws],
        "core_runs": [round(c, 1) for c in cores],
        "daemon_runs": [round(d["rate"], 1) for d in daemons],
        "daemon_batches": daemon["batches"],
        "torch_device": args.device,
        "crc32c_c_extension": _has_crc32c(),
    }
    result.update(_optional_phases(args, settings, produced, run_id, daemon["rate"]))
    return result


def _optional_phases(args: argparse.Namespace, settings: Any, produced: int, run_id: str, rate: float
                     ) -> dict[str, Any]:
    """The client-variant rates (--client-variants) and reading->alert latency (unless --skip-latency)."""
    out: dict[str, Any] = {}
    if args.client_variants and settings.kafka_client == "kafka-python":
        out["raw_client_variants_readings_per_s"] = {
            name: round(_raw_consume_decode(settings, produced, f"bench-raw-{name}-{run_id}", **variant), 1)
            for name, variant in CLIENT_VARIANTS.items()
        }
    if not args.skip_latency:
        from streamer.tools.bench_latency import alert_latency

        lat_settings = replace(_group(settings, f"bench-lat-{run_id}"), readings_topic=f"bench.lat.{run_id}",
                               alerts_topic=f"bench.lat-alerts.{run_id}",
                               feedback_topic=f"bench.lat-feedback.{run_id}")
        latency = alert_latency(lat_settings, args.latency_fraction * rate, args.latency_seconds,
                                args.devices, args.channels)
        out["latency"] = {"rate_fraction": args.latency_fraction, **latency}
    return out


# ---- phase 1: produce ------------------------------------------------------------------------------
def _produce_fleet(settings: Any, devices: int, steps: int, channels: int) -> int:
    from kafka import KafkaProducer

    from streamer.kafka.client_config import producer_kwargs, producer_throughput_kwargs
    from streamer.tools.simulate import generate_fleet, produce, reading_messages

    fleet = generate_fleet(n_devices=devices, n_channels=channels, n_steps=max(steps, 10), seed=1)
    producer = KafkaProducer(**producer_kwargs(settings.kafka, **producer_throughput_kwargs()))
    try:
        stats = produce(producer, settings.readings_topic, reading_messages(fleet))
    finally:
        producer.close()
    return stats.readings


# ---- phase 2: raw client vs daemon -------------------------------------------------------------------
# kafka-python settings whose effect the raw phase can measure (--client-variants).
CLIENT_VARIANTS: dict[str, dict[str, Any]] = {
    "daemon_settings": {},
    "default_max_poll_records_500": {"max_poll_records": 500},
    "default_fetch_sizes_1MiB_50MiB": {"max_partition_fetch_bytes": 1 << 20, "fetch_max_bytes": 50 << 20},
    "no_check_crcs": {"check_crcs": False},
    "pure_python_crc32c": {"pure_python_crc": True},
}


def _raw_consume_decode(settings: Any, expected: int, group: str, pure_python_crc: bool = False,
                        keep: list[Any] | None = None, **overrides: Any) -> float:
    """Readings/s of the daemon's consumer + decoder alone; the records go to `keep` when it is empty."""
    from streamer.ingest.codec import ReadingDecoder
    from streamer.service.clients import make_consumer, open_group_consumer

    if pure_python_crc:  # what kafka-python does without the crc32c package
        import functools

        from kafka.record import _crc32c, default_records, util

        patched = functools.partial(util.calc_crc32c, _crc32c=_crc32c.crc)
        with _swapped(default_records, "calc_crc32c", patched):
            return _raw_consume_decode(settings, expected, group, **overrides)
    max_records = overrides.get("max_poll_records", settings.max_poll_records)
    settings = replace(settings, group_id=group)
    consumer = open_group_consumer(settings, lambda: make_consumer(settings, **overrides))
    decoder = ReadingDecoder(settings.codec_limits)
    seen, first = 0, None
    kept: list[Any] | None = [] if keep is not None and not keep else None
    deadline = time.monotonic() + 300
    try:
        while seen < expected and time.monotonic() < deadline:
            records = consumer.poll(500, max_records).records
            if not records:
                continue
            if first is None:
                first = time.perf_counter()
            seen += len(decoder.decode(records).batch)
            if kept is not None:
                kept.extend(records)
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        consumer.close()
    if seen < expected:
        raise RuntimeError(f"raw consumer saw {seen} of {expected} readings within 300 s")
    if kept is not None and keep is not None:
        keep.extend(kept)
    return seen / max(elapsed, 1e-9)


def _scoring_core(settings: Any, records: list[Any]) -> float:
    """Readings/s of `ScoringPipeline.score` alone on the decoded records, in the daemon's batch size."""
    from streamer.ingest.codec import ReadingDecoder
    from streamer.tools.serve_cmd import live_pipeline

    decoder = ReadingDecoder(settings.codec_limits)
    step = settings.max_poll_records
    batches = [decoder.decode(records[i:i + step]).batch for i in range(0, len(records), step)]
    pipeline = live_pipeline(settings)
    started = time.perf_counter()
    for batch in batches:
        pipeline.score(batch)
    return sum(len(b) for b in batches) / max(time.perf_counter() - started, 1e-9)


class _TimedConsumer:
    """Wraps the daemon's client (either library) to time its first non-empty poll and its last commit."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.first_poll: float | None = None
        self.last_commit: float | None = None

    def poll(self, *a: Any, **kw: Any) -> Any:
        return self._seen(self._inner.poll(*a, **kw))

    def consume(self, *a: Any, **kw: Any) -> Any:  # librdkafka's batch poll
        return self._seen(self._inner.consume(*a, **kw))

    def _seen(self, out: Any) -> Any:
        if out and self.first_poll is None:
            self.first_poll = time.perf_counter()
        return out

    def commit(self, *a: Any, **kw: Any) -> Any:
        out = self._inner.commit(*a, **kw)
        self.last_commit = time.perf_counter()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _daemon_throughput(settings: Any, expected: int) -> dict[str, Any]:
    from streamer.service.clients import make_consumer
    from streamer.tools.serve_cmd import live_pipeline

    timed: list[_TimedConsumer] = []

    def factory() -> _TimedConsumer:
        timed.append(_TimedConsumer(make_consumer(settings)))
        return timed[-1]

    pipeline = live_pipeline(settings)
    with RunningDaemon(settings, pipeline, factory) as daemon:
        wait_until(lambda: daemon.accounting.totals["consumed"] >= expected, 600, "the daemon to read it")
        batches = daemon.accounting.totals["batches"]
    t = timed[0]
    elapsed = (t.last_commit or 0.0) - (t.first_poll or 0.0)
    return {"rate": expected / max(elapsed, 1e-9), "batches": batches}


# ---- helpers -----------------------------------------------------------------------------------------
class RunningDaemon:
    """The daemon on a thread for the length of a `with` block; its errors re-raised on exit."""

    def __init__(self, settings: Any, pipeline: Any, consumer_factory: Any = None) -> None:
        import threading

        from streamer.service.daemon import Daemon

        self.daemon = Daemon(settings, pipeline, consumer_factory=consumer_factory)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, name="bench-daemon", daemon=True)

    def _main(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Any:
        self.thread.start()
        wait_until(lambda: self.daemon.readiness()[0] or bool(self.errors), 60, "the daemon to be ready")
        if self.errors:
            raise self.errors[0]
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(60)
        if self.errors:
            raise self.errors[0]


def _group(settings: Any, group_id: str) -> Any:
    """Settings of a fresh consumer group with its own state changelog (nothing restored from others)."""
    return replace(settings, group_id=group_id, state_topic=f"{group_id}.state")


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def read_all(settings: Any, topic: str) -> list[tuple[Any, dict[str, Any]]]:
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    from streamer.kafka.client_config import consumer_kwargs

    consumer = KafkaConsumer(**consumer_kwargs(settings.kafka, enable_auto_commit=False,
                                               auto_offset_reset="earliest"))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        out: list[tuple[Any, Any]] = []
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend((rec, orjson.loads(rec.value)) for rec in batch)
        return out
    finally:
        consumer.close()


@contextlib.contextmanager
def _swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace `owner.name` with `value`."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _has_crc32c() -> bool:
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None
