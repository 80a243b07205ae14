"""`rnnwatch replay` and `rnnwatch train` end to end on small files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from streamer.cli import main


def _write_csv(path: Path, n: int, channels: int, seed: int, spike_at: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *[f"ch{k}" for k in range(channels)]])
        for t in range(n):
            vals = 20 + np.sin(2 * np.pi * t / 48 + np.arange(channels)) + rng.normal(0, 0.1, channels)
            if t == spike_at:
                vals[-1] += 15
            stamp = f"2024-01-{1 + t // 288:02d} {(t % 288) // 12:02d}:{5 * (t % 12):02d}:00"
            w.writerow([stamp, *(f"{v:.4f}" for v in vals)])


def test_replay_writes_one_row_per_input_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write_csv(tmp_path / "in" / "pump.csv", 1000, 3, 0, spike_at=800)
    _write_csv(tmp_path / "in" / "sub" / "fan.csv", 600, 1, 1)
    rc = main(["replay", "in/pump.csv", "in/sub/fan.csv", "--output-dir", "out", "--device", "cpu"])
    assert rc == 0
    pump = list(csv.DictReader((tmp_path / "out" / "in" / "pump.csv").open()))
    fan = list(csv.DictReader((tmp_path / "out" / "in" / "sub" / "fan.csv").open()))
    assert len(pump) == 1000 and len(fan) == 600
    assert list(pump[0]) == ["timestamp", "anomaly_score", "alert", "top_channel", "status"]
    assert pump[0]["timestamp"] == "2024-01-01 00:00:00"
    assert all(r["status"] == "scored" for r in pump + fan)
    scores = np.array([float(r["anomaly_score"]) for r in pump])
    assert ((scores >= 0) & (scores < 1)).all()
    assert int(np.argmax(scores)) == 800 and pump[800]["top_channel"] == "ch2"
    assert pump[800]["alert"] == "1" and sum(r["alert"] == "1" for r in pump[:800]) == 0


def test_replay_columns_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _write_csv(tmp_path / "a.csv", 200, 2, 0)
    assert main(["replay", "a.csv", "--output-dir", "o", "--columns", "ch1", "--device", "cpu"]) == 0
    rows = list(csv.DictReader((tmp_path / "o" / "a.csv").open()))
    assert {r["top_channel"] for r in rows} == {"ch1"}
    assert main(["replay", "a.csv", "--output-dir", "o", "--timestamp-column", "time"]) == 2
    assert "use --timestamp-column" in capsys.readouterr().err


def test_train_writes_a_loadable_artifact(tmp_path: Path) -> None:
    from model import artifact

    _write_csv(tmp_path / "train.csv", 400, 2, 3)
    out = tmp_path / "model"
    assert main(["train", "--csv", str(tmp_path / "train.csv"), "--output", str(out), "--epochs", "1",
                 "--hidden-size", "8", "--cell", "lstm"]) == 0
    loaded = artifact.load(out)
    assert loaded.model.config.cell == "lstm" and loaded.training["source"] == "csv"
    assert os.path.getsize(out / "model.safetensors") > 0
