"""Daemon pieces that need no broker: accounting, startup rules, health while unreachable, JSON logs."""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram

from streamer.errors import ConfigError
from streamer.ingest.codec import ReadingDecoder
from streamer.ingest.dead_letter import RawRecord
from streamer.kafka.broker import free_port
from streamer.scoring.factory import build_pipeline
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import AlertEvent, ScoredBatch
from streamer.service.accounting import BatchAccounting, observe_many
from streamer.service.daemon import Daemon
from streamer.service.logging_json import configure_logging
from streamer.service.metrics import Metrics
from streamer.service.settings import Settings
from streamer.service.startup import prepare_topics


def test_observe_many_matches_one_observe_per_value():
    buckets = (0.1, 1.0, 10.0, 100.0)
    one, many = (Histogram(f"h{i}", "h", buckets=buckets, registry=CollectorRegistry()) for i in range(2))
    values = np.array([0.05, 0.1, 0.1000001, 1.0, 5.0, 99.0, 100.0, 1e9, np.nan, -3.0])
    for v in values[np.isfinite(values)]:
        one.observe(float(v))
    observe_many(many, values)
    samples = [[(s.name.replace("h1", "h0"), s.labels, s.value) for s in h.collect()[0].samples
                if not s.name.endswith("_created")] for h in (one, many)]
    assert samples[0] == samples[1]


def _alert(device: str, state: str) -> AlertEvent:
    return AlertEvent("id", device, state, 1.0, 1.0, 0.9, 0.8, (), "v")  # type: ignore[arg-type]


def test_accounting_keeps_consumed_equal_to_scored_plus_dropped_plus_dead_lettered():
    metrics = Metrics()
    good = orjson.dumps({"device_id": "d1", "readings": [{"ts": 1, "values": [1]}, {"ts": 2, "values": [2]}]})
    records = [RawRecord("t", 0, 0, b"d1", good), RawRecord("t", 0, 1, b"d1", b"junk"),
               RawRecord("t", 0, 2, b"d1", orjson.dumps({"device_id": "d1", "ts": 3, "values": [3]}))]
    decoded = ReadingDecoder().decode(records)
    scored = ScoredBatch(np.array([0.1, np.nan, 0.9], np.float32), np.array([False, False, True]),
                         np.array([0, 1, 0], np.uint8), np.array([0, -1, 0], np.int16),
                         events=[_alert("d1", "firing"), _alert("d2", "firing"), _alert("d2", "resolved")],
                         waves=3)
    acct = BatchAccounting(metrics)
    acct.account(decoded, scored, 0.01, now=10.0)
    value = metrics.registry.get_sample_value
    assert value("rnnwatch_readings_consumed_total") == 4
    assert value("rnnwatch_readings_scored_total") == 2
    assert value("rnnwatch_readings_dropped_total", {"reason": "out_of_order"}) == 1
    assert value("rnnwatch_dead_letters_total", {"reason": "not_json"}) == 1
    assert value("rnnwatch_alerts_total", {"state": "firing"}) == 2
    assert value("rnnwatch_alerts_firing_devices") == 1
    assert value("rnnwatch_end_to_end_lag_seconds_count") == 2
    assert value("rnnwatch_end_to_end_lag_seconds_sum") == pytest.approx((10 - 1) + (10 - 3))


def test_missing_topics_are_named_with_their_variables_when_creation_is_forbidden():
    settings = replace(Settings(), create_topics=False, scores_topic="scores")
    roles = ("readings", "alerts", "dlq", "scores")
    named = r"sensor\.alerts \(RNNWATCH_ALERTS_TOPIC\), scores \(RNNWATCH_SCORES_TOPIC\)"
    with pytest.raises(ConfigError, match=named):
        prepare_topics(settings, ["sensor.readings", "sensor.readings.dlq"], roles)
    everything = ["sensor.readings", "sensor.alerts", "sensor.readings.dlq", "scores"]
    prepare_topics(settings, everything, roles)  # nothing missing: no network, no error


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def pipeline() -> ScoringPipeline:
    return build_pipeline(None, "cpu")


def test_unreachable_broker_retries_stays_alive_not_ready_and_stops_cleanly(caplog, pipeline):
    dead = f"127.0.0.1:{free_port()}"
    settings = replace(Settings.from_sources(None, {"KAFKA_BOOTSTRAP_SERVERS": dead}), metrics_port=0,
                       metrics_host="127.0.0.1")
    daemon = Daemon(settings, pipeline)
    result: list[int] = []
    with caplog.at_level(logging.WARNING, logger="streamer.kafka.admin"):
        thread = threading.Thread(target=lambda: result.append(daemon.run()))
        thread.start()
        deadline = time.monotonic() + 10
        while (daemon.health is None or "unreachable" not in caplog.text) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = daemon.health.port
        ready = _get(port, "/readyz")
        alive = _get(port, "/healthz")
        metrics = _get(port, "/metrics")[1]
        daemon.stop()
        thread.join(10)
    assert not thread.is_alive() and result == [0]
    assert ready[0] == 503 and f"connecting to broker {dead}" in ready[1]
    assert alive[0] == 200
    assert "rnnwatch_ready 0.0" in metrics
    assert "KAFKA_BOOTSTRAP_SERVERS" in caplog.text and dead in caplog.text


def test_startup_gives_up_after_the_configured_attempts(pipeline):
    from streamer.errors import BrokerError

    dead = f"127.0.0.1:{free_port()}"
    settings = replace(Settings.from_sources(None, {"KAFKA_BOOTSTRAP_SERVERS": dead}), metrics_port=0,
                       metrics_host="127.0.0.1", startup_attempts=2)
    with pytest.raises(BrokerError, match=r"unreachable after 2 tries; check KAFKA_BOOTSTRAP_SERVERS"):
        Daemon(settings, pipeline).run()


def test_json_logs_carry_extra_fields_and_exceptions():
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("rnnwatch.test").exception("failed", extra={"partition": 3, "arr": np.int64(4)})
        logging.getLogger("rnnwatch.test").debug("hidden")
    finally:
        configure_logging("WARNING", stream=io.StringIO())
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert (line["level"], line["msg"], line["partition"], line["arr"], line["exc_type"]) == (
        "ERROR", "failed", 3, 4, "ValueError")
    assert line["ts"].endswith("Z") and "Traceback" in line["traceback"]
