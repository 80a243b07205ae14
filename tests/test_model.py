"""The forecaster and its artifact: sequence and step agree, artifacts load safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import artifact
from model.forecaster import CellType, ForecasterConfig, RecurrentForecaster
from model.normaliser import NormaliserConfig, normalise_and_update


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_equals_sequence_form(cell: CellType) -> None:
    torch.manual_seed(0)
    model = RecurrentForecaster(ForecasterConfig(cell=cell, hidden_size=8)).eval()
    x = torch.randn(5, 20, 2)  # (R, T, F)
    with torch.no_grad():
        seq_pred, seq_h = model(x)
        h = model.initial_state(5)
        steps = []
        for t in range(20):
            p, h = model.step(x[:, t], h)
            steps.append(p)
    torch.testing.assert_close(torch.stack(steps, 1), seq_pred, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, seq_h, atol=1e-5, rtol=0)
    assert h.shape == (5, model.config.state_size)


def test_normaliser_scores_the_past_then_learns() -> None:
    count, mean, var = (torch.zeros(2, dtype=torch.float64) for _ in range(3))
    cfg = NormaliserConfig()
    z0 = normalise_and_update(torch.tensor([5.0, 1e9]), count, mean, var, cfg)
    assert z0.tolist() == [0.0, 0.0] and mean.tolist() == [5.0, 1e9]
    for v in (6.0, 4.0, 5.0, 6.0, 4.0):
        normalise_and_update(torch.tensor([v, 1e9 + v]), count, mean, var, cfg)
    z = normalise_and_update(torch.tensor([50.0, 1e9 + 5.0]), count, mean, var, cfg)
    assert z[0] > 20 and abs(float(z[1])) < 1  # a counter near 1e9 keeps its precision


def test_shipped_model_loads_and_describes_itself() -> None:
    art = artifact.load()
    assert art.version.startswith(art.model.config.cell)
    config = json.loads((artifact.default_model_dir() / "config.json").read_text())
    assert config["training"]["source"].startswith("synthetic")
    assert "independent" in config["channel_handling"]
    assert config["metrics"]["val_huber"] > 0
    # written when channel_independent was a field: still accepted, no longer carried or saved
    assert config["architecture"]["channel_independent"] is True
    assert "channel_independent" not in art.model.config.to_dict()


def test_artifact_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = RecurrentForecaster(ForecasterConfig(hidden_size=8))
    version = artifact.save(model, tmp_path, NormaliserConfig(), training={"source": "test"}, metrics={})
    loaded = artifact.load(tmp_path)
    assert loaded.version == version
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)

    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / artifact.WEIGHTS))
    weights["head.bias"] = weights["head.bias"] + 1
    save_file(weights, str(tmp_path / artifact.WEIGHTS))
    with pytest.raises(artifact.ArtifactError, match="do not match version"):
        artifact.load(tmp_path)


def test_missing_or_foreign_artifact_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(artifact.ArtifactError, match="rnnwatch train"):
        artifact.load(tmp_path)
    (tmp_path / artifact.CONFIG).write_text(json.dumps({"format": "pickle"}))
    (tmp_path / artifact.WEIGHTS).write_bytes(b"")
    with pytest.raises(artifact.ArtifactError, match="format"):
        artifact.load(tmp_path)
