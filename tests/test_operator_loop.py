"""The operator's loop on a real broker: verdicts and silences on the feedback topic reach the member that
owns the device, change what it alerts on, and survive a kill -9 and a rebalance; bad feedback is
dead-lettered. A hot model swap under a steady stream: nothing unscored, faults still alert, states end on
the new version; a broken artifact is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import numpy as np
import orjson
import pytest
from harness import scrape, wait_for
from test_daemon_e2e import daemon_settings, pipeline_factory, produce, read_topic  # noqa: F401
from test_durable_state import start_serve, topics_env
from test_pipeline import _sine_stream

from streamer.ingest.dead_letter import parse_headers

pytestmark = pytest.mark.kafka
T0 = 1.7e9


def readings(device: str, values: np.ndarray, a: int, b: int) -> list[tuple[bytes | None, bytes]]:
    return [
        (
            device.encode(),
            orjson.dumps({"device_id": device, "ts": T0 + 60 * t, "values": [float(values[t])]}),
        )
        for t in range(a, b)
    ]


def alerts(bootstrap: str, topic: str, device: str) -> list[dict[str, Any]]:
    found = [orjson.loads(r.value) for r in read_topic(bootstrap, topic)]
    return [a for a in found if a["device_id"] == device]


def firing_steps(found: list[dict[str, Any]]) -> list[int]:
    return [round((a["ts"] - T0) / 60) for a in found if a["state"] == "firing"]


def feedback(bootstrap: str, topic: str, device: str, body: dict[str, Any] | bytes) -> None:
    value = body if isinstance(body, bytes) else orjson.dumps({"device_id": device, **body})
    produce(bootstrap, topic, [(device.encode(), value)])


def test_false_positive_silence_and_bad_feedback_through_the_daemon(
    kafka_bootstrap,
    unique_topic_name,
    kafka_client,
    pipeline_factory,  # noqa: F811 (the fixture)
):
    from harness import running_daemon

    settings = daemon_settings(kafka_bootstrap, unique_topic_name, kafka_client, checkpoint_interval_s=1.0)
    assert settings.feedback_topic
    shifted = _sine_stream(3400, 11)
    for at, size in ((1600, 6), (2200, 6), (2800, 18)):
        shifted[at : at + 60] += size
    quiet = _sine_stream(3400, 12)
    quiet[1600:1660] += 6  # inside the silence
    quiet[2800:2860] += 6  # after it
    bootstrap, fb = kafka_bootstrap, settings.feedback_topic
    with running_daemon(settings, pipeline_factory(), ready_within_s=30) as daemon:
        produce(
            bootstrap,
            settings.readings_topic,
            readings("fp", shifted, 0, 1605) + readings("quiet", quiet, 0, 10),
        )
        wait_for(
            lambda: firing_steps(alerts(bootstrap, settings.alerts_topic, "fp")) == [1600], 90, "first firing"
        )
        opened = alerts(bootstrap, settings.alerts_topic, "fp")[0]
        feedback(bootstrap, fb, "fp", {"alert_id": opened["alert_id"], "verdict": "false_positive"})
        feedback(bootstrap, fb, "quiet", {"silence_until": T0 + 60 * 2000, "reason": "maintenance"})
        feedback(bootstrap, fb, "quiet", b"{not json")
        feedback(bootstrap, fb, "nobody", {"alert_id": "x", "verdict": "ack"})
        wait_for(
            lambda: any(
                a.get("reason") == "false_positive" for a in alerts(bootstrap, settings.alerts_topic, "fp")
            ),
            60,
            "false positive closes",
        )
        wait_for(
            lambda: (
                daemon.metrics.feedback.labels(
                    kind="ack", outcome="unknown_device", model_version=daemon.pipeline.model_version
                )._value.get()
                == 1
            ),
            30,
            "the last feedback applied",
        )
        produce(
            bootstrap,
            settings.readings_topic,
            readings("fp", shifted, 1605, 3400) + readings("quiet", quiet, 10, 3400),
        )
        wait_for(lambda: daemon.accounting.totals["scored"] >= 2 * 3400, 180, "every reading scored")
        time.sleep(1.0)
        fp_alerts = alerts(bootstrap, settings.alerts_topic, "fp")
        quiet_alerts = alerts(bootstrap, settings.alerts_topic, "quiet")
        dead = [(r.key, parse_headers(r.headers)) for r in read_topic(bootstrap, settings.dlq_topic)]
        metrics = daemon.metrics
    assert firing_steps(fp_alerts) == [1600, 2800], fp_alerts  # the same shift at 2200 stays quiet
    assert next(a.get("reason") for a in fp_alerts if a["state"] == "resolved") == "false_positive"
    assert firing_steps(quiet_alerts) == [2800], quiet_alerts  # 1600 was inside the silence
    assert sorted((k, h["reason"], h["source.topic"]) for k, h in dead) == [
        (b"nobody", "unknown_device", fb), (b"quiet", "not_json", fb)]
    version = daemon.pipeline.model_version
    for kind in ("false_positive", "silence"):
        assert metrics.feedback.labels(kind=kind, outcome="applied", model_version=version)._value.get() == 1
    assert metrics.alerts_silenced._value.get() == 1


def test_a_silence_and_a_false_positive_survive_kill_9(kafka_bootstrap, unique_topic_name, tmp_path):
    """A silence and a false-positive verdict are applied and checkpointed; kill -9; the restarted daemon
    still withholds the silenced device's episode and still does not fire on the judged pattern."""
    env = {**topics_env(kafka_bootstrap, unique_topic_name, partitions=2), "RNNWATCH_SCORES_TOPIC": ""}
    values = _sine_stream(2000, 13)
    values[1600:1660] += 6
    shifted = _sine_stream(2400, 11)
    shifted[1600:1660] += 6
    shifted[2200:2260] += 6
    alerts_topic, fb = env["RNNWATCH_ALERTS_TOPIC"], env["RNNWATCH_FEEDBACK_TOPIC"]
    log = (tmp_path / "serve.log").open("w")
    proc, port = start_serve(env, log)
    try:
        produce(kafka_bootstrap, env["RNNWATCH_READINGS_TOPIC"],
                readings("dev", values, 0, 1000) + readings("fp", shifted, 0, 1605))
        wait_for(lambda: firing_steps(alerts(kafka_bootstrap, alerts_topic, "fp")) == [1600], 90, "fp fires")
        opened = alerts(kafka_bootstrap, alerts_topic, "fp")[0]
        feedback(kafka_bootstrap, fb, "dev", {"silence_until": T0 + 60 * 1900, "reason": "maintenance"})
        feedback(kafka_bootstrap, fb, "fp", {"alert_id": opened["alert_id"], "verdict": "false_positive"})
        applied = 'rnnwatch_feedback_total{kind="'
        for kind in ("silence", "false_positive"):
            wait_for(lambda kind=kind: _metric(port, applied + kind, 'outcome="applied"') == 1, 60, kind)
        proc, port = _checkpoint_then_kill_9_and_restart(proc, port, env, log)
        produce(kafka_bootstrap, env["RNNWATCH_READINGS_TOPIC"],
                readings("dev", values, 1000, 2000) + readings("fp", shifted, 1605, 2400))
        rest = 1000 + 2400 - 1605
        wait_for(lambda: scrape(port).get("rnnwatch_readings_scored_total", 0) >= rest, 120,
                 "the rest scored")
        for kind in ("silence", "false_positive"):  # their offsets were committed: not read again
            assert _metric(port, applied + kind, 'outcome="applied"') == 0, kind
    finally:
        _stop(proc)
    assert firing_steps(alerts(kafka_bootstrap, alerts_topic, "dev")) == []
    assert firing_steps(alerts(kafka_bootstrap, alerts_topic, "fp")) == [1600]  # not again at 2200


def _checkpoint_then_kill_9_and_restart(proc: subprocess.Popen, port: int, env: dict[str, str], log: Any
                                        ) -> tuple[subprocess.Popen, int]:
    """Wait for two more checkpoints (one begun after what the test did), kill -9, start anew."""
    checkpoints = scrape(port).get("rnnwatch_checkpoints_total", 0)
    wait_for(lambda: scrape(port).get("rnnwatch_checkpoints_total", 0) >= checkpoints + 2, 30,
             "a checkpoint after it")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return start_serve(env, log)


def _metric(port: int, prefix: str, contains: str) -> float:
    from harness import exposition

    for line in exposition(port).splitlines():
        if line.startswith(prefix) and contains in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_silences_move_with_their_devices_in_a_rebalance(kafka_bootstrap, unique_topic_name, kafka_client):
    """Eight devices silenced on one member; a second joins and takes half the partitions; a fault inside
    the silence fires on none of them, while an unsilenced device with the same fault does."""
    from dataclasses import replace

    from harness import running_daemon

    from streamer.service.settings import Settings

    env = topics_env(kafka_bootstrap, unique_topic_name, partitions=4, client=kafka_client)
    settings = replace(
        Settings.from_sources(None, {**env, "RNNWATCH_METRICS_PORT": "0"}),
        metrics_host="127.0.0.1",
        session_timeout_ms=2000,
        topic_partitions=4,
    )
    devices = [f"d{k}" for k in range(8)]
    streams = {d: _sine_stream(2400, 20 + k) for k, d in enumerate([*devices, "ctl"])}
    for values in streams.values():
        values[1600:1660] += 6

    def send(a: int, b: int) -> None:
        produce(
            kafka_bootstrap,
            settings.readings_topic,
            [rec for t in range(a, b) for d, v in streams.items() for rec in readings(d, v, t, t + 1)],
        )

    def silences_applied(daemon: Any) -> float:
        version = daemon.pipeline.model_version
        return daemon.metrics.feedback.labels(
            kind="silence", outcome="applied", model_version=version
        )._value.get()

    with running_daemon(settings, stop_within_s=60) as first:
        wait_for(lambda: first.readiness()[0], 60, "first member ready")
        send(0, 1000)
        wait_for(lambda: first.accounting.totals["scored"] >= 9 * 1000, 120, "the first stretch scored")
        for d in devices:
            feedback(
                kafka_bootstrap, settings.feedback_topic, d, {"silence_until": T0 + 60 * 1900, "reason": "m"}
            )
        wait_for(lambda: silences_applied(first) == len(devices), 60, "the silences applied")
        with running_daemon(settings, stop_within_s=60) as second:
            members = (first, second)
            wait_for(
                lambda: all(m.consumer and m.consumer.assigned and m.readiness()[0] for m in members),
                60,
                "two members sharing the partitions",
            )
            moved = [d for d in devices if second.pipeline.store.slot(d) is not None]
            send(1000, 2400)
            wait_for(
                lambda: sum(m.accounting.totals["scored"] for m in members) >= 9 * 2400,
                180,
                "the rest scored",
            )
            time.sleep(1.0)
    assert moved, "the second member restored some of the silenced devices"
    found = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, settings.alerts_topic)]
    firing = sorted({a["device_id"] for a in found if a["state"] == "firing"})
    assert firing == ["ctl"], firing


# ---- hot model swap ---------------------------------------------------------------------------------------
def _swap_messages(x: np.ndarray, a: int, b: int) -> list[tuple[bytes | None, bytes]]:
    from test_swap import DEVICES

    return [(d.encode(), orjson.dumps({"device_id": d, "ts": T0 + 60 * t, "values": x[t, k].tolist()}))
            for t in range(a, b) for k, d in enumerate(DEVICES)]


def _write_artifact(model_dir: Any, source: Any) -> None:
    """Replace the artifact's files the way a volume update does: weights first, config (the version) last."""
    import shutil

    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(source / name, model_dir / f".{name}.tmp")
        os.replace(model_dir / f".{name}.tmp", model_dir / name)


def test_hot_swap_under_a_steady_stream_and_a_broken_artifact_refused(kafka_bootstrap, unique_topic_name,
                                                                       kafka_client, tmp_path):
    import shutil

    from harness import running_daemon
    from test_swap import DEVICES, fleet, other_model

    from model.artifact import default_model_dir, save
    from streamer.checkpoint.state_codec import decode_state
    from streamer.scoring.factory import build_pipeline

    model_dir = tmp_path / "model"
    shutil.copytree(default_model_dir(), model_dir)
    nudged = other_model()
    new_version = save(nudged.model, tmp_path / "new", nudged.normaliser, {}, {})
    shutil.copytree(tmp_path / "new", tmp_path / "broken")
    weights = (tmp_path / "broken" / "model.safetensors").read_bytes()
    (tmp_path / "broken" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    config = orjson.loads((tmp_path / "broken" / "config.json").read_bytes())
    (tmp_path / "broken" / "config.json").write_bytes(orjson.dumps({**config, "version": "gru-h24-broken"}))

    settings = daemon_settings(kafka_bootstrap, unique_topic_name, kafka_client, checkpoint_interval_s=1.0,
                               model=str(model_dir), model_check_interval_s=0.5)
    faults = {"dev-0": 630, "dev-1": 760}  # while the new model warms up; after it took over
    x = fleet(960, faults)
    bootstrap = kafka_bootstrap
    with running_daemon(settings, build_pipeline(str(model_dir), "cpu"), ready_within_s=30) as daemon:
        old_version = daemon.pipeline.model_version
        swaps = daemon.metrics.model_swaps
        produce(bootstrap, settings.readings_topic, _swap_messages(x, 0, 600))
        wait_for(lambda: daemon.accounting.totals["scored"] >= 600 * len(DEVICES), 120, "the history scored")
        _write_artifact(model_dir, tmp_path / "new")
        wait_for(lambda: swaps.labels(outcome="started")._value.get() == 1, 30, "the swap started")
        for start in range(600, 900, 20):  # a steady stream through the swap
            produce(bootstrap, settings.readings_topic, _swap_messages(x, start, start + 20))
            time.sleep(0.2)
        wait_for(lambda: swaps.labels(outcome="completed")._value.get() == 1, 60, "the swap completed")
        assert daemon.pipeline.model_version == new_version != old_version
        _write_artifact(model_dir, tmp_path / "broken")
        wait_for(lambda: swaps.labels(outcome="refused")._value.get() == 1, 30, "the broken artifact refused")
        produce(bootstrap, settings.readings_topic, _swap_messages(x, 900, 960))
        wait_for(lambda: daemon.accounting.totals["scored"] >= 960 * len(DEVICES), 120,
                 "every reading scored")
        time.sleep(2.5)  # a checkpoint after the last readings
        assert daemon.pipeline.model_version == new_version  # the model in service serves on
    scored = {(orjson.loads(r.value)["device_id"], orjson.loads(r.value)["ts"])
              for r in read_topic(bootstrap, settings.scores_topic)}
    assert scored >= {(d, T0 + 60 * t) for t in range(960) for d in DEVICES}  # no reading without a score
    found = [orjson.loads(r.value) for r in read_topic(bootstrap, settings.alerts_topic)]
    firing = {a["device_id"]: round((a["ts"] - T0) / 60) for a in found if a["state"] == "firing"}
    for device, at in faults.items():
        assert at <= firing.get(device, -1) <= at + 5, (device, firing)
    latest: dict[str, str] = {}
    for record in read_topic(bootstrap, settings.state_topic):
        if record.value is not None:
            latest[record.key.decode()] = decode_state(record.value).model_version
    assert latest == dict.fromkeys(DEVICES, new_version)


def test_a_hot_swap_survives_kill_9_half_way(kafka_bootstrap, unique_topic_name, tmp_path):
    """Devices that report every minute are taken over first; kill -9 while the others still warm up. The
    restarted daemon (the directory holds the new model) restores the taken-over devices as written, under
    the new version, and adapts only the others."""
    import shutil

    from test_swap import DEVICES, fleet, other_model

    from model.artifact import default_model_dir, save

    model_dir = tmp_path / "model"
    shutil.copytree(default_model_dir(), model_dir)
    nudged = other_model()
    save(nudged.model, tmp_path / "new", nudged.normaliser, {}, {})
    env = {**topics_env(kafka_bootstrap, unique_topic_name, partitions=2), "RNNWATCH_MODEL": str(model_dir),
           "RNNWATCH_MODEL_CHECK_INTERVAL_S": "0.5"}
    fast, slow = DEVICES[:8], DEVICES[8:]  # slow ones report every 10th minute
    x = fleet(1000, {})

    def messages(a: int, b: int) -> list[tuple[bytes | None, bytes]]:
        return [(d.encode(), orjson.dumps({"device_id": d, "ts": T0 + 60 * t, "values": x[t, k].tolist()}))
                for t in range(a, b) for k, d in enumerate(DEVICES) if d in fast or t % 10 == 0]

    log = (tmp_path / "serve.log").open("w")
    proc, port = start_serve(env, log)
    try:
        produce(kafka_bootstrap, env["RNNWATCH_READINGS_TOPIC"], messages(0, 600))
        wait_for(lambda: scrape(port).get("rnnwatch_readings_scored_total", 0) >= len(messages(0, 600)), 120,
                 "the history scored")
        _write_artifact(model_dir, tmp_path / "new")
        wait_for(lambda: scrape(port).get('rnnwatch_model_swaps_total{outcome="started"}', 0) == 1, 30,
                 "the swap started")
        produce(kafka_bootstrap, env["RNNWATCH_READINGS_TOPIC"], messages(600, 700))
        wait_for(lambda: 0 < scrape(port).get("rnnwatch_model_swap_progress_ratio", 1) < 1, 60,
                 "the fast devices taken over")
        proc, port = _checkpoint_then_kill_9_and_restart(proc, port, env, log)
        produce(kafka_bootstrap, env["RNNWATCH_READINGS_TOPIC"], messages(700, 760))
        after = len(messages(700, 760))
        wait_for(lambda: scrape(port).get("rnnwatch_readings_scored_total", 0) >= after, 120,
                 "the stream after the restart scored")
        adapted = scrape(port).get("rnnwatch_state_version_mismatch_total", 0)
    finally:
        _stop(proc)
    assert adapted == len(slow), adapted  # the fast devices came back exactly as the new model left them
