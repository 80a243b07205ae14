"""A seeded synthetic sensor fleet with labelled faults, and `rnnwatch simulate` that streams it to Kafka.

Each device has `n_channels` sensors that share a daily cycle (per-device phase and amplitude, a
second harmonic), a slow linear trend, and AR(1) noise correlated across the device's channels.
A `fault_fraction` of the devices gets one fault (a quarter of those a second, later one) of five
kinds, on one or more channels, after a warm-up fifth of the series that stays clean:

    spike        a few samples 6-10 noise sigmas off
    drift        a ramp growing to 5-10 sigmas, then recalibrated away
    stuck        the sensor repeats its reading
    level_shift  an offset of 4-8 sigmas for a while
    noise_burst  extra noise of 3-6 sigmas

Faults come from their own random stream, so outside the fault windows a faulty fleet equals the
fault-free fleet of the same seed, sample for sample. `history_steps` puts that many clean readings
before the faulty span (a fleet that has been running before the faults, as in production: devices
past their first day hold their normal during an episode, see `alert_policy`); the faults fall in the
last `n_steps` readings, in the same places relative to that span as without history.

>>> fleet = generate_fleet(n_devices=20, n_steps=200, seed=1)
>>> fleet.values.shape, len(fleet.faults) >= 6, fleet.faults[0].kind in FAULT_KINDS
((20, 200, 4), True, True)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FAULT_KINDS = ("spike", "drift", "stuck", "level_shift", "noise_burst")
DAY_S = 86_400.0
DEFAULT_START_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z
_DURATION = {"drift": (0.05, 0.15), "stuck": (0.03, 0.08), "level_shift": (0.05, 0.15),  # share of t
             "noise_burst": (0.02, 0.06)}  # spikes last 1-3 samples


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """Ground truth for one injected fault; `end_ts` is the timestamp of its last affected sample."""

    device_id: str
    kind: str
    channels: tuple[str, ...]
    start_ts: float
    end_ts: float


@dataclass(frozen=True, slots=True)
class Fleet:
    """A generated fleet. Shapes: d devices, t steps, c channels."""

    device_ids: tuple[str, ...]  # (d,) "dev-0000", ...
    channels: tuple[str, ...]  # (c,) "c0", "c1", ... (zero-padded beyond 10 so that names sort in order)
    ts: np.ndarray  # (t,) float64 epoch seconds, `period_s` apart
    values: np.ndarray  # (d, t, c) float32
    labels: np.ndarray  # (d, t) bool, True inside a fault window
    faults: tuple[FaultRecord, ...]  # sorted by (start_ts, device_id)

    @property
    def fault_free_devices(self) -> tuple[str, ...]:
        faulty = {f.device_id for f in self.faults}
        return tuple(device for device in self.device_ids if device not in faulty)


def generate_fleet(
    n_devices: int = 200,
    n_channels: int = 4,
    n_steps: int = 1440,
    period_s: float = 60.0,
    seed: int = 0,
    fault_fraction: float = 0.3,
    start_ts: float = DEFAULT_START_TS,
    history_steps: int = 0,
) -> Fleet:
    """A deterministic fleet for `seed`: the same arguments give the same arrays and faults."""
    if n_devices < 1 or n_channels < 1 or period_s <= 0 or not 0.0 <= fault_fraction <= 1.0:
        raise ValueError("need n_devices >= 1, n_channels >= 1, period_s > 0 and 0 <= fault_fraction <= 1")
    if history_steps < 0:
        raise ValueError(f"history_steps must be >= 0, got {history_steps}")
    if n_steps < 10:
        raise ValueError(f"n_steps must be >= 10 (warm-up plus fault windows), got {n_steps}")
    signal_seed, fault_seed = np.random.SeedSequence(seed).spawn(2)
    ts = start_ts + period_s * np.arange(history_steps + n_steps, dtype=np.float64)  # (t,)
    values, sigma = _clean_signal(np.random.default_rng(signal_seed), n_devices, n_channels, ts)
    width = max(4, len(str(n_devices - 1)))
    device_ids = tuple(f"dev-{i:0{width}d}" for i in range(n_devices))
    channels = tuple(f"c{j:0{len(str(n_channels - 1))}d}" for j in range(n_channels))
    labels = np.zeros((n_devices, ts.shape[0]), dtype=bool)
    h = history_steps
    faults = _inject_faults(np.random.default_rng(fault_seed), values[:, h:], sigma, labels[:, h:],
                            fault_fraction)  # views: the faulty span is modified in place
    records = tuple(sorted(
        (FaultRecord(device_ids[d], kind, tuple(channels[j] for j in chans), float(ts[h + a]),
                     float(ts[h + b - 1]))
         for d, kind, chans, a, b in faults),
        key=lambda f: (f.start_ts, f.device_id),
    ))
    return Fleet(device_ids, channels, ts, np.ascontiguousarray(values, dtype=np.float32), labels, records)


def _clean_signal(rng: np.random.Generator, d: int, c: int, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, t, c) float64 seasonal + trend + correlated AR(1) noise, and the (d, c) noise sigma."""
    t = ts.shape[0]
    level = rng.normal(20.0, 5.0, (d, c))
    amp = rng.uniform(1.0, 5.0, (d, c))
    phase = rng.uniform(0.0, 2 * np.pi, (d, 1)) + rng.normal(0.0, 0.3, (d, c))  # (d, c)
    trend = rng.normal(0.0, 0.2, (d, c))  # units per day
    sigma = rng.uniform(0.2, 0.6, (d, c))
    rho = rng.uniform(0.3, 0.8, (1, d, 1))  # per-device cross-channel correlation, time-major like shocks
    tod = (2 * np.pi * (ts % DAY_S) / DAY_S)[None, :, None]  # (1, t, 1)
    days = ((ts - ts[0]) / DAY_S)[None, :, None]
    ph = phase[:, None, :]
    seasonal = amp[:, None, :] * (np.sin(tod + ph) + 0.3 * np.sin(2 * (tod + ph)))  # (d, t, c)
    # Time-major (t, d, c): each AR step below touches one contiguous (d, c) slab.
    shocks = np.sqrt(rho) * rng.standard_normal((t, d, 1)) + np.sqrt(1 - rho) * rng.standard_normal((t, d, c))
    phi, gain = 0.8, np.sqrt(1 - 0.8**2)
    for k in range(1, t):  # (t, d, c) unit-variance AR(1) along t, in place
        shocks[k] = phi * shocks[k - 1] + gain * shocks[k]
    noise = shocks.transpose(1, 0, 2)  # (d, t, c)
    values = level[:, None, :] + seasonal + trend[:, None, :] * days + sigma[:, None, :] * noise
    return values, sigma


def _inject_faults(
    rng: np.random.Generator, values: np.ndarray, sigma: np.ndarray, labels: np.ndarray, fraction: float
) -> list[tuple[int, str, list[int], int, int]]:
    """Modify `values` (d, t, c) and `labels` (d, t) in place; return (device, kind, channels, a, b)."""
    d, t, c = values.shape
    n_faulty = round(fraction * d)
    warmup = t // 5
    offset = int(rng.integers(len(FAULT_KINDS)))
    faults = []
    for i, device in enumerate(rng.permutation(d)[:n_faulty]):
        kinds = [FAULT_KINDS[(offset + i) % len(FAULT_KINDS)]]
        if rng.random() < 0.25:
            kinds.append(FAULT_KINDS[int(rng.integers(len(FAULT_KINDS)))])
        bounds = np.linspace(warmup, t, len(kinds) + 1).astype(int)  # one segment per fault
        for kind, lo, hi in zip(kinds, bounds[:-1], bounds[1:], strict=True):
            a, b = _window(rng, kind, int(lo), int(hi), t)
            whole_sensor = kind == "stuck" and rng.random() < 0.3  # every channel freezes at once
            n_chans = c if whole_sensor else min(c, 1 + int(rng.random() < 0.3))
            chans = sorted(int(j) for j in rng.choice(c, size=(n_chans,), replace=False))
            series = values[device]  # (t, c) view
            series[a:b, chans] = _apply(rng, kind, series[a:b, chans], sigma[device, chans])
            labels[device, a:b] = True
            faults.append((int(device), kind, chans, a, b))
    return faults


def _window(rng: np.random.Generator, kind: str, lo: int, hi: int, t: int) -> tuple[int, int]:
    """[a, b) inside [lo, hi) with a length drawn for `kind`."""
    if kind == "spike":
        length = int(rng.integers(1, 4))
    else:
        low, high = _DURATION[kind]
        length = round(rng.uniform(low, high) * t)
    length = max(1, min(length, hi - lo))
    a = int(rng.integers(lo, hi - length + 1))
    return a, a + length


def _apply(rng: np.random.Generator, kind: str, window: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The faulty version of `window` (n, k): n samples of k channels whose noise sigmas are (k,)."""
    n, k = window.shape
    sign = rng.choice([-1.0, 1.0], size=k)
    if kind == "spike":
        return window + sign * rng.uniform(6, 10, k) * sigma
    if kind == "drift":
        return window + np.linspace(1.0 / n, 1.0, n)[:, None] * sign * rng.uniform(5, 10, k) * sigma
    if kind == "stuck":
        return np.repeat(window[:1], n, axis=0)
    if kind == "level_shift":
        return window + sign * rng.uniform(4, 8, k) * sigma
    return window + rng.normal(0.0, 1.0, (n, k)) * rng.uniform(3, 6, k) * sigma  # noise_burst


def truth_document(fleet: Fleet, **params: Any) -> dict[str, Any]:
    """The ground truth as a JSON-able dict: generator parameters plus one record per fault."""
    return {
        **params,
        "n_devices": len(fleet.device_ids),
        "channels": list(fleet.channels),
        "faulty_devices": len({f.device_id for f in fleet.faults}),
        "faults": [{**asdict(f), "channels": list(f.channels)} for f in fleet.faults],
    }


def load_truth(path: Path) -> list[FaultRecord]:
    """Read the fault records back from a file `rnnwatch simulate --truth` wrote."""
    document = json.loads(Path(path).read_text())
    return [FaultRecord(**{**f, "channels": tuple(f["channels"])}) for f in document["faults"]]


def reading_messages(
    fleet: Fleet, batch_readings: int = 0, decimals: int = 4
) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, readings in it) per message, in event-time order across the fleet.

    batch_readings 0: one single-form message per reading; k > 0: batch-form messages of k readings.
    """
    import orjson

    keys = [device.encode() for device in fleet.device_ids]
    step = max(1, batch_readings)
    for t0 in range(0, fleet.ts.shape[0], step):
        block = np.round(fleet.values[:, t0:t0 + step, :].astype(np.float64), decimals).tolist()  # (d, k, c)
        stamps = fleet.ts[t0:t0 + step].tolist()
        for device, key, rows in zip(fleet.device_ids, keys, block, strict=True):
            readings = [{"ts": ts, "values": dict(zip(fleet.channels, row, strict=True))}
                        for ts, row in zip(stamps, rows, strict=True)]
            if batch_readings:
                yield key, orjson.dumps({"device_id": device, "readings": readings}), len(readings)
            else:
                yield key, orjson.dumps({"device_id": device, **readings[0]}), 1


@dataclass(frozen=True, slots=True)
class ProduceStats:
    messages: int
    readings: int
    elapsed_s: float  # wall time from the first send to the end of flush


def produce(
    producer: Any,
    topic: str,
    messages: Iterator[tuple[bytes, bytes, int]],
    rate: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ProduceStats:
    """Send all, at most `rate` readings/s (0: no limit), flush; `BrokerError` if any record failed."""
    from streamer.errors import BrokerError

    errors: list[BaseException] = []
    start = clock()
    n_messages = n_readings = 0
    for key, value, n in messages:
        if rate > 0:
            ahead = start + n_readings / rate - clock()
            if ahead > 0.001:
                sleep(ahead)
        producer.send(topic, key=key, value=value).add_errback(errors.append)
        n_messages += 1
        n_readings += n
    producer.flush()
    if errors:
        raise BrokerError(f"{len(errors)} of {n_messages} records to {topic} failed; first: {errors[0]!r}")
    return ProduceStats(n_messages, n_readings, clock() - start)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate", help="stream a synthetic sensor fleet with labelled faults to Kafka",
        description=__doc__.split("\n\n")[0],
    )
    add = parser.add_argument
    add("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    add("--topic", default="sensor.readings", help="readings topic, created if missing")
    add("--partitions", type=int, default=8, help="partitions when the topic is created (default 8)")
    add("--devices", type=int, default=200)
    add("--channels", type=int, default=4)
    add("--steps", type=int, default=1440, help="readings per device (default 1440: a day at 60 s)")
    add("--period-s", type=float, default=60.0, help="event-time spacing of a device's readings")
    add("--start-ts", type=float, default=DEFAULT_START_TS, help="event time of step 0, epoch seconds")
    add("--rate", type=float, default=0.0, help="readings per second of wall time; 0: as fast as possible")
    add("--seed", type=int, default=0)
    add("--fault-fraction", type=float, default=0.3, help="share of devices with injected faults")
    add("--history-steps", type=int, default=0,
        help="clean readings per device before the --steps with faults (1440: a day at 60 s)")
    add("--truth", type=Path, default=None, help="write the ground truth (JSON) to this file")
    add("--batch-form", action="store_true", help="send batch-form messages ({device_id, readings: [...]})")
    add("--batch-readings", type=int, default=10, help="readings per batch-form message (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer

    from streamer.kafka.admin import TopicSpec, ensure_topics, wait_for_broker
    from streamer.kafka.client_config import KafkaClientSettings, producer_kwargs, producer_throughput_kwargs

    params = {"seed": args.seed, "n_channels": args.channels, "n_steps": args.steps,
              "period_s": args.period_s, "start_ts": args.start_ts, "fault_fraction": args.fault_fraction,
              "history_steps": args.history_steps}
    fleet = generate_fleet(n_devices=args.devices, **params)
    if args.truth is not None:
        args.truth.parent.mkdir(parents=True, exist_ok=True)
        args.truth.write_text(json.dumps(truth_document(fleet, topic=args.topic, **params), indent=1))
    settings = KafkaClientSettings(bootstrap_servers=args.bootstrap, client_id="rnnwatch-simulate")
    wait_for_broker(settings, hint="check --bootstrap")
    ensure_topics(settings, [TopicSpec(args.topic, args.partitions)])
    producer = KafkaProducer(**producer_kwargs(settings, **producer_throughput_kwargs()))
    try:
        batch = args.batch_readings if args.batch_form else 0
        stats = produce(producer, args.topic, reading_messages(fleet, batch), args.rate)
    finally:
        producer.close()
    faulty = len(fleet.device_ids) - len(fleet.fault_free_devices)
    truth = f", truth in {args.truth}" if args.truth else ""
    print(f"produced {stats.readings} readings in {stats.messages} messages to {args.topic} in "
          f"{stats.elapsed_s:.1f} s ({stats.readings / max(stats.elapsed_s, 1e-9):.0f} readings/s); "
          f"{len(fleet.faults)} faults on {faulty} devices{truth}")
    return 0
