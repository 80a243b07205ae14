"""The health server over real loopback HTTP: /metrics, /healthz, /readyz, close()."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamer.scoring.readings import AlertEvent, DropReason, ScoredBatch
from streamer.service.health import HealthServer
from streamer.service.metrics import Metrics


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Loop:
    """Stands in for the daemon's main loop: a heartbeat and a readiness answer the test sets."""

    def __init__(self) -> None:
        self.beat: float | None = None
        self.ready: tuple[bool, str] = (False, "waiting for partition assignment")

    def heartbeat(self) -> float | None:
        return self.beat

    def readiness(self) -> tuple[bool, str]:
        return self.ready


def get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop() -> Loop:
    return Loop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def server(metrics: Metrics, loop: Loop, clock: FakeClock) -> Iterator[HealthServer]:
    with HealthServer(
        metrics.registry, loop.heartbeat, loop.readiness,
        stale_after_s=30, clock=clock, host="127.0.0.1", port=0,
    ) as srv:
        yield srv


def test_metrics_serves_the_registry(server: HealthServer, metrics: Metrics) -> None:
    metrics.readings_consumed.inc(7)
    metrics.set_model("v3", "gru", "cpu")
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {s.name: s for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples["rnnwatch_readings_consumed_total"].value == 7
    assert samples["rnnwatch_model_info"].labels == {"version": "v3", "architecture": "gru", "device": "cpu"}


def test_metrics_speaks_openmetrics_when_asked(server: HealthServer) -> None:
    status, content_type, body = get(server.port, "/metrics", accept="application/openmetrics-text")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_healthz_follows_heartbeat_age(server: HealthServer, loop: Loop, clock: FakeClock) -> None:
    # No heartbeat yet: the age counts from the server's start.
    assert get(server.port, "/healthz")[0] == 200
    clock.now += 31
    status, _, body = get(server.port, "/healthz")
    assert status == 503
    assert "31.0 s old, over the 30 s limit" in body

    loop.beat = clock.now - 5
    assert get(server.port, "/healthz")[0] == 200
    clock.now += 26  # 31 s since the last beat
    assert get(server.port, "/healthz")[0] == 503


def test_readyz_reports_the_reason(server: HealthServer, loop: Loop) -> None:
    status, _, body = get(server.port, "/readyz")
    assert (status, body) == (503, "not ok: waiting for partition assignment\n")
    loop.ready = (True, "3 partitions assigned and restored")
    assert get(server.port, "/readyz")[:3:2] == (200, "ok: 3 partitions assigned and restored\n")


def test_a_raising_check_is_unhealthy_not_fatal(metrics: Metrics, clock: FakeClock) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("consumer is closed")

    with HealthServer(metrics.registry, lambda: None, broken, clock=clock, host="127.0.0.1", port=0) as srv:
        status, _, body = get(srv.port, "/readyz")
        assert status == 503
        assert "RuntimeError: consumer is closed" in body
        assert get(srv.port, "/healthz")[0] == 200  # the server still answers


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert get(server.port, "/")[0] == 404


def test_close_releases_the_port(metrics: Metrics, loop: Loop) -> None:
    srv = HealthServer(metrics.registry, loop.heartbeat, loop.readiness, host="127.0.0.1", port=0)
    port = srv.port
    assert get(port, "/healthz")[0] == 200
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_stale_limit_must_be_positive(metrics: Metrics, loop: Loop) -> None:
    with pytest.raises(ValueError, match="stale_after_s must be > 0"):
        HealthServer(metrics.registry, loop.heartbeat, loop.readiness, stale_after_s=0, port=0)


def test_observe_batch_accounts_drops_alerts_and_lag(metrics: Metrics) -> None:
    status = np.array([0, 0, DropReason.NON_FINITE, DropReason.OUT_OF_ORDER, DropReason.NON_FINITE], np.uint8)
    event = AlertEvent("a1", "dev-1", "firing", 10.0, 10.0, 0.99, 0.9, (), "v3")
    batch = ScoredBatch(
        scores=np.zeros(5, np.float32), alerting=np.zeros(5, bool), status=status,
        top_channel=np.zeros(5, np.int16), events=[event], waves=2,
    )
    metrics.observe_batch(batch, latency_s=0.004, lags_s=[0.2, 0.3])
    value = metrics.registry.get_sample_value
    assert value("rnnwatch_readings_scored_total") == 2
    assert value("rnnwatch_readings_dropped_total", {"reason": "non_finite"}) == 2
    assert value("rnnwatch_readings_dropped_total", {"reason": "out_of_order"}) == 1
    assert value("rnnwatch_readings_dropped_total", {"reason": "capacity"}) == 0  # pre-initialised
    assert value("rnnwatch_dead_letters_total", {"reason": "not_json"}) == 0
    assert value("rnnwatch_alerts_total", {"state": "firing"}) == 1
    assert value("rnnwatch_batch_size_readings_sum") == 5
    assert value("rnnwatch_batch_waves_sum") == 2
    assert value("rnnwatch_end_to_end_lag_seconds_count") == 2
    assert value("rnnwatch_scoring_latency_seconds_bucket", {"le": "0.005"}) == 1


def test_consumer_lag_forgets_revoked_partitions(metrics: Metrics) -> None:
    metrics.set_consumer_lag({("readings", 0): 5, ("readings", 1): 7})
    metrics.set_consumer_lag({("readings", 1): 2})
    value = metrics.registry.get_sample_value
    assert value("rnnwatch_consumer_lag_messages", {"topic": "readings", "partition": "0"}) is None
    assert value("rnnwatch_consumer_lag_messages", {"topic": "readings", "partition": "1"}) == 2
