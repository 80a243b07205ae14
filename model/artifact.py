"""The model artifact: a directory with `model.safetensors` (weights) and `config.json` (everything else).

Loading reads tensors with safetensors and JSON with the json module: nothing is ever unpickled, so an
artifact from an untrusted place cannot run code; and nothing is allocated before every config field
and the weights file's header are checked against each other (`model.artifact_schema`), so it cannot
make the loader allocate more than the largest allowed model either. The version is derived from the
weights' content, so two artifacts with the same version score identically. Every refusal is an
`ArtifactError` (the CLI turns it into one line and exit status 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.artifact_schema import ArtifactError, check_config, check_weights, read_config
from model.forecaster import RecurrentForecaster
from model.normaliser import NormaliserConfig

FORMAT = "rnnwatch-forecaster/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"

__all__ = ["CONFIG", "FORMAT", "WEIGHTS", "ArtifactError", "ModelArtifact", "default_model_dir", "load",
           "save"]


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded model with its description."""

    model: RecurrentForecaster
    version: str
    normaliser: NormaliserConfig
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def save(
    model: RecurrentForecaster,
    directory: str | Path,
    normaliser: NormaliserConfig,
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> str:
    """Write the artifact; returns its version."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    version = f"{model.config.cell}-h{model.config.hidden_size}-{_weights_digest(state)}"
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT, "version": version})
    config = {
        "format": FORMAT,
        "version": version,
        "architecture": model.config.to_dict(),
        "channel_handling": "independent: one row per (device, channel), shared weights, per-row online "
        "normalisation; any channel count works without retraining",
        "normaliser": dataclasses.asdict(normaliser),
        "training": training,
        "metrics": metrics,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return version


def load(directory: str | Path | None = None) -> ModelArtifact:
    """Load an artifact directory (default: the model shipped in the package)."""
    path = Path(directory) if directory is not None else default_model_dir()
    config_path, weights_path = path / CONFIG, path / WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise ArtifactError(
            f"no model artifact at {path}: expected {CONFIG} and {WEIGHTS}; "
            "train one with `rnnwatch train` or leave RNNWATCH_MODEL unset for the shipped model"
        )
    config = read_config(config_path)
    architecture, normaliser = check_config(config, config_path, FORMAT)
    check_weights(weights_path, architecture)  # before a tensor or a layer is allocated
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{weights_path}: safetensors cannot read it ({exc})") from None
    if not all(bool(torch.isfinite(t).all()) for t in state.values()):
        raise ArtifactError(f"{weights_path}: weights hold NaN or infinite values")
    if _weights_digest(state) not in config["version"]:
        raise ArtifactError(f"{path}: weights do not match version {config['version']} (corrupt copy?)")
    model = RecurrentForecaster(architecture)
    model.load_state_dict(state, strict=True)  # names and shapes checked above: it fits
    model.eval()
    return ModelArtifact(
        model=model,
        version=str(config["version"]),
        normaliser=normaliser,
        training=config.get("training", {}),
        metrics=config.get("metrics", {}),
        path=str(path),
    )


def default_model_dir() -> Path:
    return Path(str(resources.files("model") / "default"))
