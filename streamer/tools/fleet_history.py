"""A fleet's recorded readings as training series, with what was abnormal cut out.

`rnnwatch train --from-topic` reads the readings topic from its beginning to its end (every partition,
no consumer group, nothing committed) through the daemon's own decoder, keeps the readings whose event
time is in [since, until), and leaves out every reading inside an alert episode: episodes come from
the alerts topic (a `firing` event opens [started_at, ...), its `resolved` event closes it; one never
resolved runs to the end) or from a labels CSV (`device_id,start,end`, timestamps as the reading
messages take them). Each channel of each device becomes a series; an episode cuts it in two, so the
model is never asked to bridge the gap.

>>> episodes = {"d": [(10.0, 20.0)]}
>>> h = History.collect([("d", 5.0 + t, ("x",), [float(t)]) for t in range(30)], episodes)
>>> [len(s) for s in h.series], h.excluded
([5, 15], 10)
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.checkpoint.changelog import ChangelogReader, restore_consumer_factory
from streamer.errors import ConfigError
from streamer.ingest.codec import ReadingDecoder, parse_timestamp
from streamer.kafka.client_config import KafkaClientSettings

Episodes = dict[str, list[tuple[float, float]]]  # device id -> [start, end) event-time spans
Row = tuple[str, float, tuple[str, ...] | None, Sequence[float]]  # device, ts, channel names, values


@dataclass
class History:
    """Per (device, channel) series in event-time order, and what was left out."""

    series: list[np.ndarray] = field(default_factory=list)  # each (T,) float64, at least 2 readings
    readings: int = 0  # readings kept
    excluded: int = 0  # readings inside an alert episode
    out_of_window: int = 0  # readings outside [since, until)
    devices: int = 0

    @classmethod
    def collect(cls, rows: Iterable[Row], episodes: Episodes, since: float = -math.inf,
                until: float = math.inf) -> History:
        by_device: dict[str, list[Row]] = defaultdict(list)
        out = cls()
        for row in rows:
            if since <= row[1] < until:
                by_device[row[0]].append(row)
            else:
                out.out_of_window += 1
        for device, kept in by_device.items():
            kept.sort(key=lambda r: r[1])
            spans = episodes.get(device, [])
            inside = np.array([any(a <= r[1] < b for a, b in spans) for r in kept])
            out.excluded += int(inside.sum())
            out.readings += int((~inside).sum())
            out.devices += 1
            out.series += _segments(kept, inside)
        return out


def _segments(rows: list[Row], inside: np.ndarray) -> list[np.ndarray]:
    """Each channel's runs of readings outside the episodes (a run also ends where the channel set
    changes); runs of fewer than two readings teach nothing and are dropped."""
    out: list[np.ndarray] = []
    run: list[Row] = []
    for row, skip in zip([*rows, None], [*inside.tolist(), True], strict=True):
        if run and (skip or row is None or row[2] != run[0][2] or len(row[3]) != len(run[0][3])):
            if len(run) >= 2:
                values = np.array([r[3] for r in run], dtype=np.float64)  # (T, C)
                out += [values[:, c] for c in range(values.shape[1])]
            run = []
        if not skip and row is not None:
            run.append(row)
    return out


def episodes_from_alerts(values: Iterable[bytes]) -> Episodes:
    """Alert messages (JSON, as the daemon publishes them) -> each device's episodes."""
    opened: dict[str, tuple[str, float]] = {}
    spans: Episodes = defaultdict(list)
    for value in values:
        alert = orjson.loads(value)
        key = alert["alert_id"]
        if alert["state"] == "firing":
            opened[key] = (alert["device_id"], float(alert["started_at"]))
        elif alert["state"] == "resolved":
            device, start = opened.pop(key, (alert["device_id"], float(alert["started_at"])))
            spans[device].append((start, float(alert["ts"])))
    for device, start in opened.values():
        spans[device].append((start, math.inf))
    return dict(spans)


def episodes_from_labels(path: Path) -> Episodes:
    """A labels CSV with columns device_id, start, end -> episodes."""
    spans: Episodes = defaultdict(list)
    if not path.is_file():
        raise ConfigError(f"--labels {path}: no such file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"device_id", "start", "end"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"--labels {path}: missing column(s) {', '.join(sorted(missing))}; expected "
                              "device_id,start,end")
        where = f"--labels {path}"
        for line in reader:
            span = (event_time(line["start"], where), event_time(line["end"], where))
            spans[line["device_id"]].append(span)
    return dict(spans)


def event_time(text: str, where: str) -> float:
    """Epoch seconds from text giving epoch seconds or an RFC 3339 time; a `ConfigError` naming `where`
    (the flag or file it came from) otherwise."""
    try:
        ts = float(text)
    except ValueError:
        ts = parse_timestamp(text)
    if not math.isfinite(ts):
        raise ConfigError(f"{where}: {text!r} is neither epoch seconds nor an RFC 3339 time")
    return ts


def read_topic_values(kafka: KafkaClientSettings, topic: str) -> list[Any]:
    """Every record of `topic`, each partition from its beginning to its end as of the read."""
    consumer = restore_consumer_factory(kafka)()
    try:
        partitions = consumer.partitions_for_topic(topic)
    finally:
        consumer.close()
    if not partitions:
        raise ConfigError(f"topic {topic!r} does not exist on {kafka.bootstrap_servers}")
    records: list[Any] = []
    ChangelogReader(restore_consumer_factory(kafka), topic).read(partitions, records.extend)
    return records


def readings_of(records: Sequence[Any]) -> list[Row]:
    """Decode reading records as the daemon does (invalid ones are skipped); list values are named by
    position."""
    batch = ReadingDecoder().decode(records).batch
    return [(batch.device_ids[i], float(batch.ts[i]), batch.channels[i],
             batch.values[i, : int(batch.n_channels[i])].tolist()) for i in range(len(batch))]
