"""`make run`: the whole system on one machine — broker, simulated fleet, daemon, alerts as they fire.

1. starts the embedded Kafka-compatible broker (tansu) on a free loopback port;
2. starts `rnnwatch serve` as a child process (the same command a Kubernetes pod runs);
3. streams a simulated fleet (200 devices x 4 channels, injected faults) into the readings topic;
4. prints each alert from the alerts topic as it fires, marked against the simulator's ground truth;
5. prints a summary (faults caught, false alerts) and stops everything.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from streamer.tools.simulate import FaultRecord, Fleet, generate_fleet

SLACK_STEPS = 10  # an alert this many sample periods after a fault's end still counts as catching it


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: rnnwatch serve exited with {proc.returncode}; see its log above")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: {url} not ready after {timeout_s:.0f} s")


def _match(fleet: Fleet, device: str, ts: float, period_s: float) -> FaultRecord | None:
    for fault in fleet.faults:
        if fault.device_id == device and fault.start_ts <= ts <= fault.end_ts + SLACK_STEPS * period_s:
            return fault
    return None


class AlertWatcher(threading.Thread):
    """Reads the alerts topic from the beginning and prints each firing alert against ground truth."""

    def __init__(self, bootstrap: str, topic: str, fleet: Fleet, period_s: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.fleet, self.period_s = bootstrap, topic, fleet, period_s
        self.firing: list[dict[str, Any]] = []
        self.caught: set[FaultRecord] = set()
        self.stop_event = threading.Event()
        self.first_alert_at: float | None = None

    def run(self) -> None:
        import orjson
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, group_id=None)
        try:
            while not self.stop_event.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        self._show(orjson.loads(record.value))
        finally:
            consumer.close()

    def _show(self, alert: dict[str, Any]) -> None:
        if alert["state"] != "firing":
            return
        self.first_alert_at = self.first_alert_at or time.monotonic()
        self.firing.append(alert)
        top = max(alert["channels"], key=lambda c: c["share"])
        fault = _match(self.fleet, alert["device_id"], alert["ts"], self.period_s)
        if fault is not None:
            self.caught.add(fault)
        verdict = f"TRUE  {fault.kind} on {','.join(fault.channels)}" if fault else "FALSE no injected fault"
        stamp = time.strftime("%H:%M", time.gmtime(alert["ts"]))
        print(f"ALERT {alert['device_id']} at {stamp} score {alert['score']:.2f} top {top['channel']} "
              f"({top['share']:.0%} {top['direction']})  -> {verdict}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--steps", type=int, default=1440, help="readings per device (default: a day at 1/min)")
    p.add_argument("--rate", type=float, default=5000, help="readings/s produced")
    p.add_argument("--metrics-port", type=int, default=9109)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("out/demo"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from kafka import KafkaProducer

    from streamer.kafka.admin import TopicSpec, ensure_topics, port_open
    from streamer.kafka.broker import EmbeddedBroker, free_port
    from streamer.kafka.client_config import KafkaClientSettings, producer_kwargs, producer_throughput_kwargs
    from streamer.tools.simulate import produce, reading_messages

    args.workdir.mkdir(parents=True, exist_ok=True)
    metrics_port = args.metrics_port if not port_open("127.0.0.1", args.metrics_port) else free_port()
    fleet = generate_fleet(n_devices=args.devices, n_channels=args.channels, n_steps=args.steps,
                           seed=args.seed)
    with EmbeddedBroker(log_path=args.workdir / "broker.log") as broker:
        bootstrap = broker.bootstrap_servers
        print(f"broker      : {bootstrap} (embedded tansu)")
        ensure_topics(bootstrap, [TopicSpec("sensor.readings", 4), TopicSpec("sensor.alerts", 1)])
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RNNWATCH_METRICS_PORT": str(metrics_port),
               "RNNWATCH_METRICS_HOST": "127.0.0.1", "RNNWATCH_LOG_LEVEL": "WARNING"}
        log = (args.workdir / "serve.log").open("wb")
        daemon = subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            print(f"daemon      : rnnwatch serve (pid {daemon.pid}), log in {args.workdir / 'serve.log'}")
            print(f"metrics     : http://127.0.0.1:{metrics_port}/metrics  (/healthz, /readyz)")
            print("              (its first start on a machine compiles the scoring kernel: about a minute)")
            _wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", daemon, timeout_s=300)
            watcher = AlertWatcher(bootstrap, "sensor.alerts", fleet, period_s=60.0)
            watcher.start()
            print(f"simulator   : {args.devices} devices x {args.channels} channels, "
                  f"{len(fleet.faults)} injected faults, {args.rate:.0f} readings/s\n", flush=True)
            started = time.monotonic()
            producer = KafkaProducer(**producer_kwargs(KafkaClientSettings(bootstrap_servers=bootstrap),
                                                       **producer_throughput_kwargs()))
            stats = produce(producer, "sensor.readings", reading_messages(fleet), rate=args.rate)
            producer.close()
            time.sleep(5)  # let the daemon drain the tail of the stream
            watcher.stop_event.set()
            watcher.join(timeout=5)
            _summary(fleet, watcher, stats.readings, started)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            log.close()
    return 0


def _summary(fleet: Fleet, watcher: AlertWatcher, readings: int, started: float) -> None:
    false_alerts = sum(1 for a in watcher.firing if _match(fleet, a["device_id"], a["ts"], 60.0) is None)
    first = f"{watcher.first_alert_at - started:.0f} s" if watcher.first_alert_at else "never"
    caught = f"{len(watcher.caught)}/{len(fleet.faults)}"
    print(f"\nsummary     : {readings} readings; {caught} injected faults caught; {len(watcher.firing)} "
          f"alert episodes, {false_alerts} without a fault; first alert after {first}")


if __name__ == "__main__":
    sys.exit(main())
