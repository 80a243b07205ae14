"""Metric names: the rules and the dashboard use only what the code exports, docs/ARCHITECTURE.md lists
exactly that, and a real Prometheus scrapes the metrics endpoint and a running `rnnwatch serve`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import ALERTS, ROOT, RULES, Doc, alert_rules, dashboard_exprs, require_tool
from harness import OPENMETRICS, exposition, ready, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from streamer.kafka.broker import free_port
from streamer.service.health import HealthServer
from streamer.service.metrics import Metrics


def used_metric_names() -> set[str]:
    """Every metric selected in the rules and the dashboard (all of them carry a {job=...} matcher)."""
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    names = {name for expr in exprs for name in re.findall(r"([a-zA-Z_:][\w:]*)\{", expr)}
    bare = {name for expr in exprs for name in re.findall(r"\b(rnnwatch_\w+)\b(?!\{)", expr)}
    assert not bare, f"select these with a job matcher: {sorted(bare)}"
    return names


def exported_series(text: str) -> set[str]:
    """Sample names each family exports, whether or not a labelled family has children yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "info": ("_info",)}
    return {f.name + suffix for f in text_string_to_metric_families(text) for suffix in suffixes[f.type]}


def openmetrics(port: int) -> str:
    """The exposition in OpenMetrics, which keeps the info type and the counters' base names."""
    return exposition(port, OPENMETRICS)


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    metrics.ready.set(1)
    ready = (True, "test")
    with HealthServer(metrics.registry, lambda: None, lambda: ready, host="127.0.0.1", port=0) as srv:
        yield metrics, srv.port


def test_rules_and_dashboard_use_only_exported_metrics(metrics_endpoint: tuple[Metrics, int]) -> None:
    _, port = metrics_endpoint
    missing = used_metric_names() - exported_series(openmetrics(port)) - {"up"}
    assert not missing, f"not exported by streamer.service.metrics.Metrics: {sorted(missing)}"


def test_metrics_match_the_architecture_table(metrics_endpoint: tuple[Metrics, int]) -> None:
    metrics, port = metrics_endpoint
    metrics.set_consumer_lag({("sensor.readings", 0): 3})
    metrics.set_model("v1", "gru", "cpu")
    table = re.findall(r"^\| `(rnnwatch_\w+)` \| (\w+) \| (.*?) ?\|$",
                       (ROOT / "docs" / "ARCHITECTURE.md").read_text(), re.M)
    assert len(table) == 37
    families = {f.name: f for f in text_string_to_metric_families(openmetrics(port))}
    for name, kind, labels in table:
        family = families[name.removesuffix("_total").removesuffix("_info")]
        assert family.type == kind, name
        want = set(re.findall(r"`(\w+)`", labels))
        got = {k for s in family.samples for k in s.labels if k != "le"}
        assert got == want, f"{name}: labels {got}, table says {want}"
    assert set(families) == {n.removesuffix("_total").removesuffix("_info") for n, _, _ in table}


@pytest.mark.kafka
@pytest.mark.slow
def test_rules_and_dashboard_use_only_metrics_the_daemon_exports(serve: ServeProcess) -> None:
    missing = used_metric_names() - exported_series(openmetrics(serve.metrics_port)) - {"up"}
    assert not missing, f"not exported by `rnnwatch serve`: {sorted(missing)}"


# --------------------------------------------------------------------------- real Prometheus
class Prometheus:
    """A prometheus server on a free loopback port scraping `target` every second as job rnnwatch."""

    def __init__(self, tmp: Path, target: str) -> None:
        binary = require_tool("prometheus")
        self.port = free_port()
        config_file = tmp / "prometheus.yml"
        config_file.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "rnnwatch", "static_configs": [{"targets": [target]}]}],
        }))
        self._log = (tmp / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._log_path = tmp / "prometheus.log"
        self.wait(lambda: self._get("/-/ready") is not None, "ready")

    def _get(self, path: str) -> Doc | None:
        assert self._process.poll() is None, f"prometheus exited: {self._log_path.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as err:  # a bad query: the body says why
            body = err.read().decode()
        except OSError:
            return None
        return json.loads(body) if body.startswith("{") else {"status": "success"}

    def wait(self, ok: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        wait_for(ok, timeout_s, f"prometheus: {what}", interval_s=0.25)

    def query(self, promql: str) -> Doc:
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer is not None, promql
        return answer

    def value(self, promql: str) -> float | None:
        result = self.query(promql)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, promql: str, expected: float, timeout_s: float = 30.0) -> None:
        self.wait(lambda: self.value(promql) == expected, f"{promql} == {expected}", timeout_s)

    def rules(self) -> list[Doc]:
        answer = self._get("/api/v1/rules")
        assert answer is not None
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


@pytest.mark.slow  # a real Prometheus server and daemon: integration, not a unit test
def test_prometheus_scrapes_the_metrics_endpoint(
    tmp_path: Path, metrics_endpoint: tuple[Metrics, int]
) -> None:
    metrics, port = metrics_endpoint
    metrics.readings_consumed.inc(42)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        prometheus.wait_value('up{job="rnnwatch"}', 1)
        prometheus.wait_value('rnnwatch_readings_consumed_total{job="rnnwatch"}', 42)
        metrics.readings_consumed.inc(8)
        prometheus.wait_value('rnnwatch_readings_consumed_total{job="rnnwatch"}', 50)
        # Every dashboard expression parses and runs ($__rate_interval is Grafana's; give it a value).
        for expr in dashboard_exprs():
            answer = prometheus.query(expr.replace("$__rate_interval", "1m"))
            assert answer["status"] == "success", (expr, answer)
        # The server loaded every rule and evaluates them without error.
        prometheus.wait(
            lambda: all(not r["lastEvaluation"].startswith("0001") for r in prometheus.rules()),
            "every rule evaluated once",
        )
        rules = prometheus.rules()
        assert sorted(r["name"] for r in rules) == sorted(ALERTS)
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    finally:
        prometheus.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_prometheus_scrapes_the_daemon_and_counts_its_readings(tmp_path: Path, serve: ServeProcess) -> None:
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{serve.metrics_port}")
    try:
        prometheus.wait_value('up{job="rnnwatch"}', 1)
        produced = serve.produce_readings(120)
        prometheus.wait_value('rnnwatch_readings_consumed_total{job="rnnwatch"}', produced, timeout_s=90)
        assert prometheus.value('rnnwatch_ready{job="rnnwatch"}') == 1
    finally:
        prometheus.close()


# ---------------------------------------------------------------- the daemon as the pod runs it
class ServeProcess:
    """`rnnwatch serve` as a subprocess against an embedded broker, configured like the ConfigMap."""

    def __init__(self, tmp: Path, bootstrap: str, client: str = "auto") -> None:
        self.bootstrap = bootstrap
        self.metrics_port = free_port()
        self.topic = "sensor.readings"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "RNNWATCH_KAFKA_CLIENT": client,
            "RNNWATCH_GROUP_ID": "rnnwatch-deploy-test", "RNNWATCH_READINGS_TOPIC": self.topic,
            "RNNWATCH_FEEDBACK_TOPIC": f"{self.topic}.feedback",
            "RNNWATCH_METRICS_PORT": str(self.metrics_port), "RNNWATCH_DEVICE": "cpu",
            "RNNWATCH_CHECKPOINT_INTERVAL_S": "2", "RNNWATCH_LOG_LEVEL": "INFO",
        }
        self._log_path = tmp / "daemon.log"
        self._log = self._log_path.open("wb")
        self._process = subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve"], env=env,
                                         stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 180, "rnnwatch serve ready", interval_s=0.5)

    def _ready(self) -> bool:
        assert self._process.poll() is None, f"rnnwatch serve exited: {self.log_tail()}"
        return ready(self.metrics_port)

    def log_tail(self) -> str:
        return self._log_path.read_text(errors="replace")[-3000:]

    def produce_readings(self, count: int) -> int:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap)
        t0 = time.time() - count
        for i in range(count):
            device = f"dev-{i % 4}"
            values = {"temp": 20.0 + (i % 7), "vib": 0.1 * (i % 3)}
            value = {"device_id": device, "ts": t0 + i, "values": values}
            producer.send(self.topic, key=device.encode(), value=json.dumps(value).encode())
        producer.flush(timeout=30)
        producer.close()
        return count

    def close(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path, kafka_client: str) -> Iterator[ServeProcess]:
    from streamer.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        running = ServeProcess(tmp_path, broker.bootstrap_servers, kafka_client)
        try:
            yield running
        finally:
            running.close()
