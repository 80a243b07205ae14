"""Issue 12's poison pills on a real broker: nothing a device sends may jam the service or silence a device.

Each test sends one pill with readings of well-behaved devices around it, then checks that the daemon is
alive and ready, that checkpoints and offset commits advance, that the devices keep being scored, and
that the bad input is in the dead-letter topic with its reason. The daemon runs in a thread
(`harness.running_daemon`, with the helpers of test_daemon_e2e.py; checkpoints every second); a restart
is a second daemon in the same group.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import running_daemon, scrape, wait_for
from test_daemon_e2e import daemon_settings, pipeline_factory, produce, read_topic

from streamer.ingest.dead_letter import parse_headers
from streamer.service.daemon import Daemon
from streamer.service.settings import Settings

pytestmark = pytest.mark.kafka
__all__ = ["pipeline_factory"]  # the module-scoped fixture, shared with test_daemon_e2e.py

T0 = 1_700_000_000.0  # 2023: well in the past
Record = tuple[bytes | None, bytes]
OTHERS_SCORED_WITHIN_S = 10.0  # the bound stated in the README ("Bad input") for the largest message


def reading(device: str, ts: float | str, values: Any) -> Record:
    return device.encode(), orjson.dumps({"device_id": device, "ts": ts, "values": values})


def steady(device: str, start: int, count: int, channels: int = 2) -> list[Record]:
    """`count` ordinary readings of a device, one a minute from T0 + start minutes."""
    return [reading(device, T0 + 60 * (start + i), [float((start + i) % 7 + c) for c in range(channels)])
            for i in range(count)]


def scored_ts(settings: Settings, device: str) -> list[float]:
    """Event times of the device's readings in the scores topic, in order."""
    records = read_topic(settings.kafka.bootstrap_servers, settings.scores_topic)
    values = [orjson.loads(r.value) for r in records]
    return [v["ts"] for v in values if v["device_id"] == device]


def dead_letters(settings: Settings) -> list[tuple[str, bytes | None, dict[str, str]]]:
    """(reason, key, headers) of every record in the dead-letter topic."""
    out = []
    for record in read_topic(settings.kafka.bootstrap_servers, settings.dlq_topic):
        headers = parse_headers(record.headers)
        out.append((headers["reason"], record.key, headers))
    return out


def assert_alive_ready_and_committing(daemon: Daemon) -> dict[str, float]:
    """Ready, /healthz 200, two more checkpoints, and every partition committed to its end."""
    port = daemon.health.port
    assert probe(port, "/healthz") == 200 and probe(port, "/readyz") == 200, daemon.readiness()
    before = scrape(port)["rnnwatch_checkpoints_total"]
    wait_for(lambda: scrape(port)["rnnwatch_checkpoints_total"] >= before + 2, 20, "two more checkpoints")

    def lags() -> dict[str, float]:
        return {k: v for k, v in scrape(port).items() if k.startswith("rnnwatch_consumer_lag_messages")}

    wait_for(lambda: len(lags()) == 2 and not any(lags().values()), 20, "offsets committed to the end")
    assert daemon.readiness()[0], daemon.readiness()
    return scrape(port)


def probe(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def watching(port: int, every_s: float = 0.25) -> Iterator[list[tuple[float, str, int]]]:
    """Probe /healthz and /readyz while the block runs; yields the (time, path, status) of every failure."""
    failures: list[tuple[float, str, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            for path in ("/healthz", "/readyz"):
                status = probe(port, path)
                if status != 200:
                    failures.append((time.monotonic(), path, status))

    thread = threading.Thread(target=loop, name="probe", daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        stop.set()
        thread.join(10)


@contextmanager
def running(settings: Settings, pipeline_factory: Callable[[], Any]) -> Iterator[Daemon]:
    with running_daemon(settings, pipeline_factory(), ready_within_s=30) as daemon:
        yield daemon


def settings_for(kafka_bootstrap: str, name: Callable[[str], str], **overrides: Any) -> Settings:
    return daemon_settings(kafka_bootstrap, name, checkpoint_interval_s=1.0, **overrides)


# ---- 1. a device id over 64 KiB ----------------------------------------------------------------------------
def test_a_70_kb_device_id_is_dead_lettered_and_checkpoints_go_on(kafka_bootstrap, unique_topic_name,
                                                                  pipeline_factory):
    settings = settings_for(kafka_bootstrap, unique_topic_name)
    huge = "x" * 70_000
    records = [*steady("ok", 0, 5), reading(huge, T0 + 300, [1.0, 2.0]), *steady("ok", 5, 5)]
    with running(settings, pipeline_factory) as daemon:
        produce(kafka_bootstrap, settings.readings_topic, records)
        wait_for(lambda: daemon.accounting.totals["consumed"] >= 11, 30, "every record consumed")
        metrics = assert_alive_ready_and_committing(daemon)
    assert metrics['rnnwatch_dead_letters_total{reason="device_id_too_long"}'] == 1
    (dead,) = dead_letters(settings)
    assert dead[0] == "device_id_too_long" and dead[1] == huge.encode() and "70000 bytes" in dead[2]["detail"]
    with running(settings, pipeline_factory) as daemon:  # after a restart: no replay into the same wall
        produce(kafka_bootstrap, settings.readings_topic, steady("ok", 10, 5))
        wait_for(lambda: len(scored_ts(settings, "ok")) >= 15, 30, "the device scored after the restart")
        assert_alive_ready_and_committing(daemon)
    assert scored_ts(settings, "ok") == [T0 + 60 * i for i in range(15)]


def test_a_state_too_large_to_checkpoint_is_quarantined_and_the_others_are_written(
        kafka_bootstrap, unique_topic_name, pipeline_factory):
    """Any reason a state cannot be written: here 20,000 channels make a 3.6 MB record (limit 1 MB)."""
    settings = settings_for(kafka_bootstrap, unique_topic_name, max_channels=20_000)
    wide = [reading("wide", T0 + 60 * i, [float(i % 3)] * 20_000) for i in range(3)]
    with running(settings, pipeline_factory) as daemon:
        produce(kafka_bootstrap, settings.readings_topic, [*steady("ok", 0, 5), *wide, *steady("ok", 5, 5)])
        wait_for(lambda: daemon.accounting.totals["scored"] >= 13, 30, "every reading scored")
        metrics = assert_alive_ready_and_committing(daemon)
        produce(kafka_bootstrap, settings.readings_topic, [reading("wide", T0 + 600, [1.0] * 20_000)])
        wait_for(lambda: len(scored_ts(settings, "wide")) >= 4, 30, "the quarantined device still scored")
    assert metrics["rnnwatch_state_quarantined_total"] == 1
    changelog = {r.key for r in read_topic(kafka_bootstrap, settings.state_topic) if r.value is not None}
    assert changelog == {b"ok"}


# ---- 2. event time: a far-future timestamp, a clock that went back ----------------------------------------
def test_a_far_future_timestamp_is_dead_lettered_and_never_becomes_the_clock(
        kafka_bootstrap, unique_topic_name, pipeline_factory):
    settings = settings_for(kafka_bootstrap, unique_topic_name)
    future = reading("clk", "2999-12-31T23:59:59Z", [1.0, 2.0])
    records = [*steady("clk", 0, 5), future, *steady("clk", 5, 20)]
    with running(settings, pipeline_factory) as daemon:
        produce(kafka_bootstrap, settings.readings_topic, records)
        wait_for(lambda: daemon.accounting.totals["consumed"] >= 26, 30, "every record consumed")
        metrics = assert_alive_ready_and_committing(daemon)
    assert metrics['rnnwatch_dead_letters_total{reason="future_timestamp"}'] == 1
    assert [d[0] for d in dead_letters(settings)] == ["future_timestamp"]
    with running(settings, pipeline_factory) as daemon:
        produce(kafka_bootstrap, settings.readings_topic, steady("clk", 25, 5))
        wait_for(lambda: len(scored_ts(settings, "clk")) >= 30, 30, "scored after the restart")
        assert_alive_ready_and_committing(daemon)
    assert scored_ts(settings, "clk") == [T0 + 60 * i for i in range(30)]


def test_a_clock_that_went_back_is_rebased_and_the_readings_between_dead_lettered(
        kafka_bootstrap, unique_topic_name, pipeline_factory):
    settings = settings_for(kafka_bootstrap, unique_topic_name)
    rebase_after = settings.clock_rebase_after
    back = [reading("gw", T0 - 86_400 + 60 * i, [1.0, 2.0]) for i in range(rebase_after + 5)]  # a day behind
    with running(settings, pipeline_factory) as daemon:
        produce(kafka_bootstrap, settings.readings_topic, [*steady("gw", 0, 5), *back])
        wait_for(lambda: daemon.accounting.totals["consumed"] >= 5 + len(back), 30, "every record consumed")
        metrics = assert_alive_ready_and_committing(daemon)
    assert metrics["rnnwatch_device_clock_rebased_total"] == 1
    assert metrics['rnnwatch_readings_dropped_total{reason="out_of_order"}'] == rebase_after - 1
    dead = dead_letters(settings)
    assert [(reason, key) for reason, key, _ in dead] == [("out_of_order", b"gw")] * (rebase_after - 1)
    assert "not newer than the device's last reading" in dead[0][2]["detail"]
    assert len(scored_ts(settings, "gw")) == 5 + 6  # the re-basing reading and the five after it


# ---- 3. a change of channel shape -----------------------------------------------------------------------
SHAPES: list[tuple[str, Callable[[int], Any]]] = [
    ("4 positional", lambda i: [float(i % 5), 1.0, 2.0, 3.0]),
    ("5 positional", lambda i: [float(i % 5), 1.0, 2.0, 3.0, 4.0]),
    ("4 positional again", lambda i: [float(i % 5), 1.0, 2.0, 3.0]),
    ("list -> dict", lambda i: {"a": float(i % 5), "b": 1.0, "c": 2.0, "d": 3.0}),
    ("renamed", lambda i: {"a": float(i % 5), "b": 1.0, "c": 2.0, "e": 3.0}),
    ("dict -> list", lambda i: [float(i % 5), 1.0, 2.0, 3.0]),
]


def test_a_new_channel_shape_reinitialises_the_device_after_a_run(kafka_bootstrap, unique_topic_name,
                                                                  pipeline_factory):
    settings = settings_for(kafka_bootstrap, unique_topic_name)
    k, per_shape = settings.reshape_after, settings.reshape_after + 3
    records = [reading("shape", T0 + 60 * (s * per_shape + i), values(i))
               for s, (_, values) in enumerate(SHAPES) for i in range(per_shape)]
    with running(settings, pipeline_factory) as daemon:
        produce(kafka_bootstrap, settings.readings_topic, [*records, *steady("ok", 0, 5)])
        wait_for(lambda: daemon.accounting.totals["consumed"] >= len(records) + 5, 30, "all consumed")
        metrics = assert_alive_ready_and_committing(daemon)
    changes = len(SHAPES) - 1
    assert metrics["rnnwatch_device_reshaped_total"] == changes
    dead = dead_letters(settings)
    assert Counter(reason for reason, _, _ in dead) == {"channel_mismatch": changes * (k - 1)}
    assert "the reading has 4 positional channels, not the channels" in dead[-1][2]["detail"]  # dict -> list
    scored = scored_ts(settings, "shape")
    assert len(scored) == per_shape + changes * (per_shape - k + 1)
    assert len(scored_ts(settings, "ok")) == 5


# ---- 4. the biggest batch messages the limits allow -----------------------------------------------------
def largest_message(device: str, settings: Settings, start: float) -> Record:
    """One batch message with the most readings and channels the default limits allow (list form)."""
    readings = [{"ts": start + i, "values": [i % 10] * settings.max_channels}
                for i in range(settings.max_readings_per_message)]
    value = orjson.dumps({"device_id": device, "readings": readings})
    assert len(value) <= settings.max_message_bytes
    return device.encode(), value


def test_the_largest_allowed_message_keeps_the_loop_alive_and_others_scored_in_time(
        kafka_bootstrap, unique_topic_name, pipeline_factory):
    settings = settings_for(kafka_bootstrap, unique_topic_name)
    others = [rec for d in range(20) for rec in steady(f"other-{d}", 0, 3)]
    big = [largest_message("big", settings, T0 + 10_000 * n) for n in range(4)]
    with running(settings, pipeline_factory) as daemon, watching(daemon.health.port) as failures:
        sent = time.monotonic()
        produce(kafka_bootstrap, settings.readings_topic, [big[0], *others])
        wait_for(lambda: all(len(scored_ts(settings, f"other-{d}")) == 3 for d in range(20)),
                 OTHERS_SCORED_WITHIN_S, f"the other devices scored within {OTHERS_SCORED_WITHIN_S} s")
        others_after = time.monotonic() - sent
        produce(kafka_bootstrap, settings.readings_topic, big[1:])  # three more: several chunks in one poll
        total = 4 * settings.max_readings_per_message
        wait_for(lambda: daemon.accounting.totals["scored"] >= total + len(others), 120, "all scored")
        processed_after = time.monotonic() - sent
        metrics = assert_alive_ready_and_committing(daemon)
    print(f"\nlargest allowed message ({len(big[0][1])} bytes, {settings.max_readings_per_message} "
          f"readings x {settings.max_channels} channels): other devices scored {others_after:.1f} s after "
          f"sending; four such messages processed {processed_after:.1f} s after; scoring took "
          f"{metrics['rnnwatch_scoring_latency_seconds_sum']:.1f} s in "
          f"{metrics['rnnwatch_scoring_latency_seconds_count']:.0f} calls; probe failures {failures}")
    assert not failures, failures


def test_batch_messages_over_the_reading_limit_are_dead_lettered_and_others_scored(
        kafka_bootstrap, unique_topic_name, pipeline_factory):
    settings = settings_for(kafka_bootstrap, unique_topic_name)
    stall = orjson.dumps({"device_id": "stall", "readings": [{"ts": T0 + i, "values": [1.0]}
                                                             for i in range(10_000)]})
    with running(settings, pipeline_factory) as daemon, watching(daemon.health.port) as failures:
        produce(kafka_bootstrap, settings.readings_topic, [(b"stall", stall)] * 10 + steady("ok", 0, 5))
        wait_for(lambda: len(scored_ts(settings, "ok")) == 5, OTHERS_SCORED_WITHIN_S, "the others scored")
        metrics = assert_alive_ready_and_committing(daemon)
    assert not failures, failures
    assert metrics['rnnwatch_dead_letters_total{reason="too_many_readings"}'] == 10
    assert {(reason, key) for reason, key, _ in dead_letters(settings)} == {("too_many_readings", b"stall")}


# ---- 5. a model artifact from outside -------------------------------------------------------------------
def shipped(directory: Path) -> tuple[dict[str, Any], bytes]:
    from model import artifact

    src = artifact.default_model_dir()
    return json.loads((src / artifact.CONFIG).read_text()), (src / artifact.WEIGHTS).read_bytes()


def bad_artifact(kind: str, directory: Path) -> Path:
    config, weights = shipped(directory)
    text = None
    if kind in ("hidden_size", "input_features"):
        config["architecture"][kind] = 1e9
    elif kind == "negative input_features":
        config["architecture"]["input_features"] = -5
    elif kind == "truncated weights":
        weights = weights[: len(weights) // 2]
    elif kind == "empty weights":
        weights = b""
    elif kind == "garbled weights":
        weights = struct.pack("<Q", 2**40) + weights[8:]
    elif kind == "invalid config.json":
        text = b'{"format": "rnnwatch-forecaster/1", "architecture": '
    directory.mkdir(parents=True)
    (directory / "config.json").write_bytes(text if text is not None else json.dumps(config).encode())
    (directory / "model.safetensors").write_bytes(weights)
    return directory


BAD_ARTIFACTS = ["hidden_size", "input_features", "negative input_features", "truncated weights",
                 "empty weights", "garbled weights", "invalid config.json"]


@pytest.mark.parametrize("kind", BAD_ARTIFACTS)
def test_serve_refuses_a_bad_model_artifact_with_exit_2_and_one_line(kafka_bootstrap, tmp_path, kind):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RNNWATCH_METRICS_PORT": "0",
           "RNNWATCH_DEVICE": "cpu", "RNNWATCH_MODEL": str(bad_artifact(kind, tmp_path / "model"))}
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "serve"], env=env, capture_output=True,
                          timeout=120, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("rnnwatch: error: ") and str(tmp_path / "model") in last, last
