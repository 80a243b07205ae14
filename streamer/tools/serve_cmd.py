"""`rnnwatch serve`: the long-running daemon. Reads readings from Kafka, publishes alerts, serves metrics.

Configuration: CLI flags over environment variables over defaults (see `streamer.service.settings`
for the full list). SIGTERM or SIGINT finishes the batch in hand, flushes, commits and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline

log = logging.getLogger("rnnwatch.serve")


def register(subparsers: Any) -> None:
    from streamer.service.settings import Settings

    parser = subparsers.add_parser(
        "serve", help="run the streaming anomaly detector against Kafka (the daemon)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    Settings.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamer.errors import RnnwatchError
    from streamer.service.logging_json import configure_logging
    from streamer.service.settings import Settings

    settings = Settings.from_sources(args, os.environ)
    configure_logging(settings.log_level)
    try:
        return _serve(settings)
    except RnnwatchError as exc:
        log.error("%s", exc, extra={"error": type(exc).__name__})
        raise


def pipeline_config(settings: Any) -> PipelineConfig:
    """The scoring settings the daemon runs with (the benchmarks measure the same)."""
    from streamer.scoring.pipeline import PipelineConfig

    return PipelineConfig(rebase_after=settings.clock_rebase_after, reshape_after=settings.reshape_after,
                          path=settings.scoring_path)


def live_pipeline(settings: Any) -> ScoringPipeline:
    """The daemon's live pipeline: its model, device, scoring settings and CPU threads."""
    from streamer.scoring.factory import build_pipeline

    return build_pipeline(settings.model, settings.device, pipeline_config(settings),
                          cpu_threads=settings.torch_threads)


def _serve(settings: Any) -> int:
    from streamer.scoring.factory import build_pipeline
    from streamer.scoring.shadow import ShadowedPipeline
    from streamer.service.daemon import Daemon

    live = live_pipeline(settings)
    pipeline: ScoringPipeline | ShadowedPipeline = live
    if settings.shadow_model:
        shadow = build_pipeline(settings.shadow_model, settings.device, pipeline_config(settings),
                                cpu_threads=None)
        log.info("shadow model %s scores beside %s; its alerts go to %s", shadow.model_version,
                 live.model_version, settings.shadow_alerts_topic)
        pipeline = ShadowedPipeline(live, shadow)
    daemon = Daemon(settings, pipeline)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        daemon.stop()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP received: looking for a new model artifact in the model directory now")
        daemon.check_model()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        return daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
