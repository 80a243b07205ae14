"""A pipeline wrapped by another (a shadow model beside it, a hot swap in progress): the `Scorer` contract's
answers are the live pipeline's (its store is the durable one; its model and version name what is in
service)."""

from __future__ import annotations

import torch

from model.forecaster import Forecaster
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline
from streamer.scoring.state_store import StateStore


class WrapsLive:
    """`store`, `model`, `model_version`, `device` and `config` of `self.live`."""

    live: ScoringPipeline

    @property
    def store(self) -> StateStore:
        return self.live.store

    @property
    def model(self) -> Forecaster:
        return self.live.model

    @property
    def model_version(self) -> str:
        return self.live.model_version

    @property
    def device(self) -> torch.device:
        return self.live.device

    @property
    def config(self) -> PipelineConfig:
        return self.live.config
