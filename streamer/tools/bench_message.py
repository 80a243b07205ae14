"""`rnnwatch bench message`: the time the worst message the limits allow costs the daemon's loop.

The worst message is one device's batch message with the most readings and channels the limits allow
(list form, the densest); its cost is its reading count in recurrent waves. The benchmark builds
`--messages` of them as one poll, decodes it with the daemon's decoder, splits it with the daemon's
`wave_chunks` and scores chunk by chunk, as `Daemon._process` does (no Kafka): the longest chunk is
the longest the heartbeat waits, the first chunk what any other device in the poll waits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson

from streamer.ingest.codec import ReadingDecoder
from streamer.ingest.dead_letter import RawRecord
from streamer.scoring.factory import build_pipeline
from streamer.service.chunks import wave_chunks
from streamer.service.settings import Settings
from streamer.tools.bench_cmd import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = Settings()
    p.add_argument("--messages", type=int, default=1, help="worst messages in the poll (1)")
    p.add_argument("--readings", type=int, default=defaults.max_readings_per_message,
                   help=f"readings per message (default: the limit, {defaults.max_readings_per_message})")
    p.add_argument("--channels", type=int, default=defaults.max_channels,
                   help=f"channels per reading (default: the limit, {defaults.max_channels})")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def worst_message(device: str, start_ts: float, readings: int, channels: int) -> bytes:
    rows = [{"ts": start_ts + i, "values": [i % 10] * channels} for i in range(readings)]
    return orjson.dumps({"device_id": device, "readings": rows})


def measure_once(args: argparse.Namespace) -> dict[str, float]:
    settings = Settings()
    limits = settings.codec_limits
    decoder, pipeline = ReadingDecoder(limits), build_pipeline(None, "cpu")
    records = [RawRecord("r", 0, k, b"big", worst_message("big", 1.7e9 + 1e6 * k, args.readings,
                                                          args.channels)) for k in range(args.messages)]
    started = time.perf_counter()
    decoded = decoder.decode(records)
    decoded_at = time.perf_counter()
    if decoded.dead_letters:
        raise SystemExit(f"the message breaks a limit: {decoded.dead_letters[0].detail}")
    chunks = wave_chunks(decoded.batch, settings.max_readings_per_message) or [np.arange(len(decoded.batch))]
    times = []
    for rows in chunks:
        t0 = time.perf_counter()
        pipeline.score(decoded.batch.take(rows))
        times.append(time.perf_counter() - t0)
    return {"decode_s": decoded_at - started, "score_s": sum(times), "chunks": len(chunks),
            "first_chunk_s": times[0], "longest_chunk_s": max(times),
            "message_bytes": len(records[0].value or b"")}


def run(args: argparse.Namespace) -> int:
    import os

    runs = [measure_once(args) for _ in range(args.runs)]
    result: dict[str, object] = {"messages": args.messages, "readings": args.readings,
                                 "channels": args.channels, "message_bytes": runs[0]["message_bytes"],
                                 "chunks": runs[0]["chunks"], "load_1m": round(os.getloadavg()[0], 2)}
    for key in ("decode_s", "score_s", "first_chunk_s", "longest_chunk_s"):
        values = [r[key] for r in runs]
        result[key] = [round(min(values), 3), round(max(values), 3)]
    return report(result, args.json)
