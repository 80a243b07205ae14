"""Phase 3 of `rnnwatch bench e2e`: reading→alert latency at a fraction of the daemon's max rate.

A producer process sends readings stamped with their send time at the given rate (librdkafka's
producer when confluent-kafka is installed: kafka-python's tops out near 15-45 k sends/s here), with
a spike on every device after its calibration warm-up; the daemon runs on a thread of this process;
latency is each firing alert record's producer timestamp minus its reading's `ts` (p50/p99).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import numpy as np

from streamer.tools.bench_e2e import RunningDaemon, read_all, wait_until


def alert_latency(settings: Any, rate: float, seconds: float, devices: int, channels: int) -> dict[str, Any]:
    from streamer.kafka.admin import TopicSpec, ensure_topics
    from streamer.tools.serve_cmd import live_pipeline

    ensure_topics(settings.kafka, [TopicSpec(settings.readings_topic, settings.topic_partitions)])
    pipeline = live_pipeline(settings)
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    with RunningDaemon(settings, pipeline) as daemon:
        paced = (settings.kafka, settings.readings_topic, rate, seconds, devices, channels, done)
        proc = ctx.Process(target=_paced_producer, args=paced)
        proc.start()
        sent = done.get(timeout=seconds + 120)
        proc.join(30)
        wait_until(lambda: daemon.accounting.totals["consumed"] >= sent["readings"], 300, "paced readings")
    alerts = read_all(settings, settings.alerts_topic)
    lat = np.array([rec.timestamp / 1000.0 - a["ts"] for rec, a in alerts if a["state"] == "firing"])
    return {
        "target_readings_per_s": round(rate, 1),
        "achieved_readings_per_s": round(sent["readings"] / sent["seconds"], 1),
        "firing_alerts": int(lat.size),
        "p50_s": round(float(np.percentile(lat, 50)), 4) if lat.size else None,
        "p99_s": round(float(np.percentile(lat, 99)), 4) if lat.size else None,
    }


def _paced_producer(kafka: Any, topic: str, rate: float, seconds: float, devices: int, channels: int,
                    done: Any) -> None:
    """Runs in its own process: readings at `rate`/s for `seconds`, ts = send time, one spike per device."""
    import orjson

    rng = np.random.default_rng(7)
    spike_at = rng.integers(90, 140, devices)  # after the calibration warm-up (60 scored readings)
    producer = _fast_producer(kafka)
    keys = [f"lat-{d:05d}".encode() for d in range(devices)]
    names = [f"c{c}" for c in range(channels)]
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        ahead = start + n / rate - now
        if ahead > 0.0005:
            time.sleep(ahead)
        d, step = n % devices, n // devices
        base = np.sin(step / 20.0 + d) + rng.normal(0, 0.05, channels)
        if spike_at[d] <= step < spike_at[d] + 4:
            base = base + 1_000.0
        values = dict(zip(names, base.tolist(), strict=True))
        value = orjson.dumps({"device_id": keys[d].decode(), "ts": time.time(), "values": values})
        producer.send(topic, key=keys[d], value=value)
        n += 1
    producer.flush()
    producer.close()
    done.put({"readings": n, "seconds": time.monotonic() - start})




def _fast_producer(kafka: Any) -> Any:
    """A producer with kafka-python's surface, on librdkafka when it is installed; 2 ms linger."""
    from streamer.kafka.client_choice import confluent_installed
    from streamer.kafka.client_config import librdkafka_config, producer_kwargs

    if confluent_installed():
        from streamer.kafka.confluent_producer import ConfluentProducer

        return ConfluentProducer(librdkafka_config(kafka, **{"linger.ms": 2}))
    from kafka import KafkaProducer

    return KafkaProducer(**producer_kwargs(kafka, linger_ms=2))
