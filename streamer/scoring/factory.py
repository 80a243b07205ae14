"""Build a ScoringPipeline from the settings the edges hold: model artifact path and device name."""

from __future__ import annotations

from model.artifact import ArtifactError, load
from streamer.errors import ModelError
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline, resolve_device


def build_pipeline(model_dir: str | None, device: str = "auto",
                   config: PipelineConfig | None = None) -> ScoringPipeline:
    """Load the artifact (None = the shipped model) and place the pipeline on `device`."""
    try:
        artifact = load(model_dir)
    except ArtifactError as exc:
        raise ModelError(str(exc)) from exc
    return ScoringPipeline(artifact, config, resolve_device(device))
