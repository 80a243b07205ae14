"""Build a ScoringPipeline from the settings the edges hold: model artifact path and device name."""

from __future__ import annotations

from dataclasses import replace

import torch

from model.artifact import ArtifactError, load
from streamer.errors import ConfigError, ModelError
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline


def build_pipeline(model_dir: str | None, device: str = "auto",
                   config: PipelineConfig | None = None, cpu_threads: int | None = 1) -> ScoringPipeline:
    """Load the artifact (None = the shipped model) and place the pipeline on `device`.

    `cpu_threads` sets torch's intra-op thread count (process-wide; None leaves torch's default). One
    thread is the default: a wave's tensors are small enough that fork/join across cores costs more
    than it saves, and a second busy thread starves the Kafka client's IO thread. Measured with
    `rnnwatch bench scoring --threads 1|2` on the 2-core development machine under load: 132-235 k vs
    31-52 k readings/s.
    """
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
        config = replace(config or PipelineConfig(), kernel_threads=cpu_threads)
    try:
        artifact = load(model_dir)
    except ArtifactError as exc:
        raise ModelError(str(exc)) from exc
    return ScoringPipeline(artifact, config, resolve_device(device))


def resolve_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch device, with an actionable error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)
