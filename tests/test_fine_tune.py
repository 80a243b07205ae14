"""Fine-tuning on a fleet's own series: held-out validation, what the artifact records, episodes left out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from model import artifact
from model.fine_tune import MIN_WINDOW, FineTuneConfig, fine_tune, split_holdout, windows
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.tools.fleet_history import History, episodes_from_alerts, episodes_from_labels


def _alternating(n_series: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """A shape the shipped model never saw and the previous value forecasts worst: +2, -2, +2, ..."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [2.0 * (-1.0) ** (t + rng.integers(2)) + rng.normal(0, 0.05, length) for _ in range(n_series)]


def test_the_holdout_is_each_series_tail_and_short_parts_are_left_out() -> None:
    heads, tails = split_holdout([np.arange(500.0), np.arange(70.0)], holdout=0.2)
    assert [len(h) for h in heads] == [400] and [len(t) for t in tails] == [100]
    assert heads[0][-1] + 1 == tails[0][0]  # the tail follows the head: nothing of it is trained on
    assert windows([np.arange(512.0)], 256).shape == (3, 256)  # stride of half a window


@pytest.mark.slow  # 60 optimiser steps: 5-15 s on the 2-core machine
def test_fine_tuning_learns_a_new_shape_and_says_so_on_held_out_data() -> None:
    base = artifact.load()
    config = FineTuneConfig(steps=60, window=MIN_WINDOW, batch_size=16)
    result = fine_tune(base, _alternating(8, 320), config, log=False)
    m = result.metrics
    assert m["val_huber"] < 0.75 * m["val_huber_base"], m  # held-out tails: it learns the pattern
    assert m["val_huber_base"] < m["val_huber_previous_value"]
    assert m["val_windows"] == 8 and m["train_windows"] > 8
    assert any(not np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(result.model.parameters(), base.model.parameters(), strict=True))
    assert all(p.requires_grad for p in base.model.parameters())  # the base itself was not touched
    again = fine_tune(base, _alternating(8, 320), config, log=False)
    assert again.metrics["val_huber"] == m["val_huber"]  # seeded: the same data gives the same model


def test_too_little_data_is_refused_with_what_is_needed() -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_WINDOW} readings"):
        fine_tune(artifact.load(), [np.arange(50.0)], log=False)


def test_readings_inside_episodes_are_left_out_and_split_the_series() -> None:
    rows = [("a", float(t), ("x", "y"), [float(t), -float(t)]) for t in range(100)]
    rows += [("b", float(t), None, [1.0]) for t in range(50)]
    h = History.collect(rows, {"a": [(40.0, 60.0)], "b": [(0.0, math.inf)]}, since=10.0, until=90.0)
    assert h.excluded == 20 + 40 and h.readings == 60 and h.out_of_window == 30 and h.devices == 2
    assert sorted(len(s) for s in h.series) == [30, 30, 30, 30]  # a's two channels, before and after
    assert {float(s[0]) for s in h.series} >= {10.0, 60.0, -10.0, -60.0}


def test_alert_episodes_come_from_firing_and_resolved_events() -> None:
    def alert(aid: str, state: str, ts: float, started: float) -> bytes:
        return orjson.dumps({"alert_id": aid, "device_id": "d", "state": state, "ts": ts,
                             "started_at": started})

    spans = episodes_from_alerts([alert("1", "firing", 10, 10), alert("1", "resolved", 25, 10),
                                  alert("2", "firing", 40, 40)])
    assert spans == {"d": [(10.0, 25.0), (40.0, math.inf)]}


def test_labels_take_epoch_seconds_or_rfc3339_and_name_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "labels.csv"
    good.write_text("device_id,start,end\nd,60,1970-01-01T00:02:00Z\n")
    assert episodes_from_labels(good) == {"d": [(60.0, 120.0)]}
    bad = tmp_path / "bad.csv"
    bad.write_text("device,start\nd,60\n")
    with pytest.raises(ConfigError, match="missing column"):
        episodes_from_labels(bad)


def test_train_csv_fine_tunes_and_the_artifact_records_its_provenance(tmp_path: Path) -> None:
    data = tmp_path / "fleet.csv"
    series = _alternating(4, 400)
    data.write_text("timestamp,a,b,c,d\n" + "".join(
        f"{t}," + ",".join(f"{s[t]:.5f}" for s in series) + "\n" for t in range(400)))
    out = tmp_path / "tuned"
    assert main(["train", "--csv", str(data), "--init-model", str(artifact.default_model_dir()),
                 "--output", str(out), "--steps", "5", "--threads", "1"]) == 0
    tuned, base = artifact.load(out), artifact.load()
    assert tuned.version != base.version
    assert tuned.training["fine_tuned_from"] == base.version and tuned.training["readings"] == 1600
    assert tuned.training["holdout"] == 0.2
    assert {"val_huber", "val_huber_base", "val_huber_previous_value"} <= set(tuned.metrics)


@pytest.mark.kafka
def test_train_from_topic_leaves_out_the_alert_episodes(kafka_bootstrap: str, topic_factory, tmp_path: Path
                                                        ) -> None:
    """The fleet's readings and alerts on a real broker: the episode's readings are not trained on."""
    from kafka import KafkaProducer

    from streamer.ingest.codec import encode_readings

    readings, alerts = topic_factory(partitions=2), topic_factory(partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for d, series in enumerate(_alternating(2, 400)):
        device = f"dev-{d}"
        for start in range(0, 400, 50):  # batch messages of 50 readings
            rows = [(1_700_000_000.0 + 60 * t, {"v": float(series[t])}) for t in range(start, start + 50)]
            producer.send(readings, key=device.encode(), value=encode_readings(device, rows))
    episode = {"alert_id": "a1", "device_id": "dev-1", "started_at": 1_700_000_000.0 + 60 * 100}
    producer.send(alerts, key=b"dev-1", value=orjson.dumps({**episode, "state": "firing",
                                                            "ts": episode["started_at"]}))
    producer.send(alerts, key=b"dev-1", value=orjson.dumps({**episode, "state": "resolved",
                                                            "ts": 1_700_000_000.0 + 60 * 130}))
    producer.flush()
    producer.close()
    out = tmp_path / "fleet-model"
    assert main(["train", "--from-topic", readings, "--bootstrap", kafka_bootstrap, "--alerts-topic", alerts,
                 "--output", str(out), "--steps", "5", "--threads", "1"]) == 0
    tuned = artifact.load(out)
    assert tuned.training["readings"] == 800 - 30 and tuned.training["excluded_readings"] == 30
    assert tuned.training["devices"] == 2 and tuned.training["series"] == 3  # dev-1 cut in two
    assert tuned.training["fine_tuned_from"] == artifact.load().version


@pytest.mark.kafka
def test_train_from_a_missing_topic_or_labels_file_says_which(kafka_bootstrap: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.csv"
    args = ["train", "--from-topic", "no-such-topic-7f3a", "--bootstrap", kafka_bootstrap, "--labels",
            str(labels), "--output", str(tmp_path / "m")]
    assert main(args) == 2
    assert "no such file" in capsys.readouterr().err
    labels.write_text("device_id,start,end\n")
    assert main(args) == 2
    assert "topic 'no-such-topic-7f3a' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
