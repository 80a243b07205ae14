"""`rnnwatch replay FILE... --output-dir DIR`: stream CSV files through the daemon's scoring pipeline.

Each input file is one device: a timestamp column and one or more numeric channel columns. All files
are streamed together, each in its own timestamp order, in batches that interleave the files (as a
Kafka partition interleaves devices), through the same `ScoringPipeline` the daemon uses. For every
input, `DIR/<input path relative to the working directory>` gets one row per input row:
`timestamp,anomaly_score,alert,top_channel,status` (leading `../` parts of a path outside the working
directory are dropped so the output stays under DIR).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamer.errors import ConfigError
from streamer.scoring.readings import DropReason, ReadingBatch

if TYPE_CHECKING:
    from streamer.contracts import BatchScorer


@dataclass
class Series:
    """One input file as a device: raw timestamps (as written), epoch seconds, values (T, C)."""

    name: str
    device_id: str
    raw_ts: list[str]
    ts: np.ndarray
    values: np.ndarray
    channels: tuple[str, ...]


@dataclass
class SeriesResult:
    scores: np.ndarray  # (T,) float32, NaN where not scored
    alert: np.ndarray  # (T,) bool
    top_channel: np.ndarray  # (T,) int16
    status: np.ndarray  # (T,) uint8 DropReason


def parse_ts(text: str) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 / RFC 3339 string (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def read_series(path: Path, name: str, ts_column: str = "timestamp",
                columns: Sequence[str] | None = None) -> Series:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if ts_column not in header:
            raise ConfigError(f"{path}: no {ts_column!r} column (columns: {header}); use --timestamp-column")
        chans = tuple(columns) if columns else tuple(c for c in header if c != ts_column)
        missing = [c for c in chans if c not in header]
        if missing or not chans:
            raise ConfigError(f"{path}: channel columns {missing or '(none)'} not found; use --columns")
        rows = list(reader)
    raw_ts = [r[ts_column] for r in rows]
    values = np.array([[_number(r[c]) for c in chans] for r in rows], dtype=np.float32)
    values = values.reshape(len(rows), len(chans))
    return Series(name, name, raw_ts, np.array([parse_ts(t) for t in raw_ts]), values, chans)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # rejected by the pipeline as NON_FINITE, reported in the status column


def replay(series: Sequence[Series], pipeline: BatchScorer, rows_per_device: int = 32,
           progress: bool = True) -> list[SeriesResult]:
    """Stream every series through `pipeline.score`, interleaved, `rows_per_device` rows each per batch."""
    results = [SeriesResult(np.full(len(s.ts), np.nan, np.float32), np.zeros(len(s.ts), bool),
                            np.full(len(s.ts), -1, np.int16), np.zeros(len(s.ts), np.uint8)) for s in series]
    total = sum(len(s.ts) for s in series)
    done, started, last_print = 0, time.monotonic(), 0.0
    longest = max((len(s.ts) for s in series), default=0)
    for start in range(0, longest, rows_per_device):
        parts = [(k, s, slice(start, min(start + rows_per_device, len(s.ts))))
                 for k, s in enumerate(series) if start < len(s.ts)]
        batch = ReadingBatch.from_rows(
            device_ids=[s.device_id for _, s, sl in parts for _ in range(sl.start, sl.stop)],
            ts=np.concatenate([s.ts[sl] for _, s, sl in parts]).tolist(),
            values=[v for _, s, sl in parts for v in s.values[sl]],
            channels=[s.channels for _, s, sl in parts for _ in range(sl.start, sl.stop)],
        )
        out = pipeline.score(batch)
        pos = 0
        for k, _, sl in parts:
            width = sl.stop - sl.start
            res = results[k]
            res.scores[sl] = out.scores[pos : pos + width]
            res.alert[sl] = out.alerting[pos : pos + width]
            res.top_channel[sl] = out.top_channel[pos : pos + width]
            res.status[sl] = out.status[pos : pos + width]
            pos += width
        done += len(batch)
        if progress and time.monotonic() - last_print > 2.0:
            last_print = time.monotonic()
            rate = done / max(last_print - started, 1e-9)
            print(f"replay: {done}/{total} readings ({100 * done / max(total, 1):.0f}%), {rate:,.0f}/s",
                  file=sys.stderr)
    return results


def write_result(path: Path, s: Series, res: SeriesResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "anomaly_score", "alert", "top_channel", "status"])
        for i, raw in enumerate(s.raw_ts):
            scored = res.status[i] == DropReason.SCORED
            w.writerow([raw, f"{float(res.scores[i]):.9g}" if scored else "",
                        int(res.alert[i]), s.channels[res.top_channel[i]] if scored else "",
                        DropReason(int(res.status[i])).label])


def output_name(path: Path) -> Path:
    """The input's path relative to the working directory, without leading '..' parts."""
    rel = Path(os.path.relpath(path.resolve(), Path.cwd().resolve()))
    return Path(*(p for p in rel.parts if p != ".."))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="score CSV files (one device each) through the daemon's pipeline")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--timestamp-column", default="timestamp")
    p.add_argument("--columns", default=None, help="comma-separated channel columns (default: all others)")
    p.add_argument("--model", default=None, help="model artifact directory (default: the shipped model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--rows-per-batch", type=int, default=32, help="rows of each file per batch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamer.scoring.factory import build_pipeline

    columns = args.columns.split(",") if args.columns else None
    series = [read_series(f, str(output_name(f)), args.timestamp_column, columns) for f in args.files]
    pipeline = build_pipeline(args.model, args.device)
    results = replay(series, pipeline, args.rows_per_batch)
    for s, res in zip(series, results, strict=True):
        write_result(args.output_dir / s.name, s, res)
    alerts = sum(int(np.sum(np.diff(r.alert.astype(np.int8)) == 1) + r.alert[:1].sum()) for r in results)
    print(f"replay: {sum(len(s.ts) for s in series)} readings from {len(series)} files, {alerts} alert "
          f"episodes -> {args.output_dir}", file=sys.stderr)
    return 0
