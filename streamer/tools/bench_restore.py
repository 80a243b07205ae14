"""`rnnwatch bench restore --devices N [--json]`: write N device states to a changelog, restore them.

Fills a state store with N devices (the shipped model's state layout, `--channels` each, random
values), writes them to a fresh changelog topic through the checkpoint writer (timed: a full
checkpoint), then restores every partition into an empty store through the restore path the daemon
runs on assignment (timed), and checks that every device came back bit for bit on a sample.

Reports the changelog bytes per device (key + value, as the writer sent them; the broker's own record
overhead is not included), both rates, the restore's CPU seconds and the machine's load average (a
restore is CPU-bound: on a shared machine its wall time stretches with the load). What bounds each:
the producer's CPU per state sent (`send_cpu_us_per_state`, encoding excluded) and a second read of
the whole changelog by the same consumer doing nothing with the records (`read_only_s`). Without
`--bootstrap-servers` an embedded broker is started for the run (memory storage: the changelog is
gone afterwards).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=100_000, help="device states to write and restore")
    parser.add_argument("--channels", type=int, default=4, help="channels per device (4)")
    parser.add_argument("--partitions", type=int, default=4, help="changelog partitions (4)")
    parser.add_argument("--bootstrap-servers", default=None,
                        help="an existing broker (default: start an embedded one for the run)")
    parser.add_argument("--client", default="auto", choices=("auto", "kafka-python", "confluent"),
                        help="Kafka client of the writer and the restore reader, as the daemon picks it "
                             "(RNNWATCH_KAFKA_CLIENT; auto: librdkafka when installed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from streamer.tools.bench_cmd import on_broker, report

    if args.devices < 1 or args.channels < 1 or args.partitions < 1:
        print("rnnwatch bench restore: --devices, --channels and --partitions must be >= 1", file=sys.stderr)
        return 2
    return report(on_broker(args.bootstrap_servers, lambda bootstrap: measure(args, bootstrap)), args.json)


def measure(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    """Write `args.devices` random states to a fresh changelog topic, restore them, time both."""
    import uuid

    from streamer.kafka.admin import TopicSpec, ensure_topics
    from streamer.kafka.client_choice import resolve_client
    from streamer.kafka.client_config import KafkaClientSettings

    kafka = KafkaClientSettings(bootstrap, client_id="rnnwatch-bench")
    topic = f"bench-restore-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [TopicSpec(topic, args.partitions, {"cleanup.policy": "compact"})])
    source, ids, written = _write_phase(args, kafka, topic)
    restored = _restore_phase(args, kafka, topic, source.model_version)
    _check_sample(source.store, restored.pop("store"), ids, args.seed)
    return {
        "benchmark": "restore", "client": resolve_client(args.client), "devices": args.devices,
        "channels": args.channels,
        "partitions": args.partitions, "model_version": source.model_version,
        **written, **restored, "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "broker": "given" if args.bootstrap_servers else "embedded tansu",
    }


def _write_phase(args: argparse.Namespace, kafka: Any, topic: str) -> tuple[Any, list[str], dict[str, Any]]:
    """Fill a store with random states, encode and write them: (source pipeline, ids, figures)."""
    from streamer.checkpoint.changelog import ChangelogWriter, state_producer_factory
    from streamer.checkpoint.state_codec import encode_states
    from streamer.scoring.factory import build_pipeline

    source = build_pipeline(None, "cpu")
    slots = _fill(source.store, args.devices, args.channels, args.seed)
    writer = ChangelogWriter(state_producer_factory(kafka, args.client), topic)
    partitions = np.arange(args.devices) % args.partitions
    started, cpu = time.perf_counter(), _cpu_s()
    values = encode_states(source.store, slots, source.model_version)
    encode_s, encode_cpu = time.perf_counter() - started, _cpu_s()
    ids = [source.store.device_id(s) or "" for s in slots.tolist()]
    writer.write(zip(partitions.tolist(), ids, values, strict=True), timeout_s=120.0)
    write_s = time.perf_counter() - started
    send_cpu_s = _cpu_s() - encode_cpu
    writer.close()
    return source, ids, {
        "bytes_per_device": round(writer.bytes_written / args.devices, 1),
        "changelog_mb": round(writer.bytes_written / 2**20, 1),
        "encode_s": round(encode_s, 2), "encode_cpu_s": round(encode_cpu - cpu, 2),
        "write_s": round(write_s, 2), "write_states_per_s": round(args.devices / write_s),
        "send_cpu_us_per_state": round(send_cpu_s / args.devices * 1e6, 1),  # the producer's, all threads
    }


def _restore_phase(args: argparse.Namespace, kafka: Any, topic: str, version: str) -> dict[str, Any]:
    """Restore every partition of the topic into a fresh store: figures, and the store under "store"."""
    from streamer.checkpoint.confluent_reader import changelog_reader
    from streamer.checkpoint.restore import Restorer
    from streamer.scoring.factory import build_pipeline

    target = build_pipeline(None, "cpu")
    restorer = Restorer(target.store, changelog_reader(kafka, topic, args.client), version,
                        stall_timeout_s=60.0)
    restorer.request(range(args.partitions))
    cpu, started = _cpu_s(), time.perf_counter()
    restored = restorer.restore()
    restore_s, restore_cpu_s = time.perf_counter() - started, _cpu_s() - cpu
    if restored != args.devices:
        raise AssertionError(f"restored {restored} devices, wrote {args.devices}")
    cpu, started = _cpu_s(), time.perf_counter()
    bare = changelog_reader(kafka, topic, args.client)
    read = bare.read(range(args.partitions), lambda _: None)
    read_only_s, read_only_cpu_s = time.perf_counter() - started, _cpu_s() - cpu
    return {"restore_s": round(restore_s, 2), "restore_states_per_s": round(args.devices / restore_s),
            "restore_cpu_s": round(restore_cpu_s, 2), "store": target.store,
            "read_only_s": round(read_only_s, 2),  # the consumer alone: fetch and parse, nothing decoded
            "read_only_cpu_s": round(read_only_cpu_s, 2), "read_only_records": read}


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (kafka-python's IO thread included; not the broker's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fill(store: Any, n: int, channels: int, seed: int) -> np.ndarray:
    """n devices with `channels` named channels and random state in every row field and column."""
    import torch

    from streamer.checkpoint.state_codec import is_bookkeeping

    names = tuple(f"ch{c}" for c in range(channels))
    slots = store.install_devices([f"device-{i:07d}" for i in range(n)], np.full(n, channels), [names] * n)
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(store.rows_of(slots)[0])
    for tensor in store.rows.values():
        shape = (len(rows), *tensor.shape[1:])
        tensor[rows] = torch.from_numpy(rng.standard_normal(shape)).to(tensor.dtype)
    for name, block in store.block_fields.items():
        cells = torch.from_numpy(store.cells_of(slots, name))
        store.blocks[name][cells] = torch.from_numpy(rng.standard_normal(len(cells))).to(block.dtype)
    local = {"row_start", "n_channels", *(b.start_column for b in store.block_fields.values())}
    for name, column in store.cols.items():
        if name in local or is_bookkeeping(name):
            continue
        shape = (n, *column.shape[1:])
        column[slots] = (rng.random(shape) * 100).astype(column.dtype)
    store.cols["source_offset"][slots] = np.arange(n)
    return slots


def _check_sample(source: Any, target: Any, ids: list[str], seed: int) -> None:
    import torch

    from streamer.checkpoint.state_codec import is_bookkeeping

    rng = np.random.default_rng(seed + 1)
    for device in rng.choice(ids, size=min(200, len(ids)), replace=False).tolist():
        a, b = source.slot(device), target.slot(device)
        ra = torch.from_numpy(source.rows_of(np.array([a]))[0])
        rb = torch.from_numpy(target.rows_of(np.array([b]))[0])
        for name in source.rows:
            if not torch.equal(source.rows[name][ra], target.rows[name][rb]):
                raise AssertionError(f"device {device}: row field {name} differs after restore")
        for name in source.blocks:
            ca = torch.from_numpy(source.cells_of(np.array([a]), name))
            cb = torch.from_numpy(target.cells_of(np.array([b]), name))
            if not torch.equal(source.blocks[name][ca], target.blocks[name][cb]):
                raise AssertionError(f"device {device}: cell block {name} differs after restore")
        local = {"row_start", *(blk.start_column for blk in source.block_fields.values())}
        for name in source.cols:
            if name not in local and not is_bookkeeping(name) and not np.array_equal(
                    source.cols[name][a], target.cols[name][b], equal_nan=True):
                raise AssertionError(f"device {device}: column {name} differs after restore")
