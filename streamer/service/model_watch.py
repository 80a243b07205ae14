"""Watching the model directory: a new artifact there starts a hot swap (`streamer.scoring.swap`).

Every `RNNWATCH_MODEL_CHECK_INTERVAL_S` (or at once on SIGHUP) the daemon reads the version in the
artifact's `config.json` (a few hundred bytes). A version other than the one scoring, and other than
one already refused, is loaded in full (`model.artifact.load`: checksums, allowed sizes, safetensors
only) and checked against the live model: the same recurrent state size (cell and hidden size) and
the same normaliser settings, since the device states carry over. A Kubernetes volume update (a
ConfigMap or a PVC written by a training job) changes the directory's files; a directory caught half
written fails its checks, is refused, and is tried again once its files change.

A refusal never touches the model in service: it is logged with the reason and what to do, and
counted in `rnnwatch_model_swaps_total{outcome="refused"}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from model.artifact import ArtifactError, ModelArtifact, default_model_dir, load
from streamer.scoring.pipeline import ScoringPipeline

log = logging.getLogger(__name__)

Fingerprint = tuple[str, tuple[tuple[str, int, int], ...]]  # version, (file, size, mtime_ns) of the files


class ModelWatcher:
    """Finds a new, compatible artifact in `directory` (None: the shipped model's)."""

    def __init__(self, directory: str | None, interval_s: float, *,
                 on_refused: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory) if directory else default_model_dir()
        self.interval_s = interval_s
        self._on_refused = on_refused
        self._clock = clock
        self._next_at = clock() + interval_s
        self._refused: Fingerprint | None = None

    def request(self) -> None:
        """Check at the next turn (SIGHUP)."""
        self._next_at = self._clock()

    def due(self) -> bool:
        return self.interval_s > 0 and self._clock() >= self._next_at

    def check(self, live: ScoringPipeline) -> ModelArtifact | None:
        """The artifact to swap to, or None (nothing new, or refused: logged and counted)."""
        self._next_at = self._clock() + self.interval_s if self.interval_s > 0 else float("inf")
        version = self._version()
        if version is None or version == live.model_version:
            return None
        seen = self._fingerprint(version)
        if seen == self._refused:
            return None
        try:
            artifact = load(self.directory)
        except ArtifactError as exc:
            self._refuse(seen, f"it does not load: {exc}")
            return None
        problem = incompatibility(artifact, live)
        if problem is not None:
            self._refuse(seen, problem)
            return None
        return artifact

    def _version(self) -> str | None:
        try:
            version = orjson.loads((self.directory / "config.json").read_bytes()).get("version")
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            log.debug("model directory %s not readable now: %s", self.directory, exc)
            return None
        return version if isinstance(version, str) else None

    def _fingerprint(self, version: str) -> Fingerprint:
        files = []
        for path in sorted(self.directory.iterdir()) if self.directory.is_dir() else ():
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((path.name, stat.st_size, stat.st_mtime_ns))
        return version, tuple(files)

    def _refuse(self, seen: Fingerprint, why: str) -> None:
        self._refused = seen
        self._on_refused()
        log.error("model swap to %s in %s refused: %s; the model in service keeps scoring. Fix the artifact "
                  "(rnnwatch train writes a complete one) or point RNNWATCH_MODEL back",
                  seen[0], self.directory, why, extra={"event": "model_swap_refused", "version": seen[0]})


def incompatibility(artifact: ModelArtifact, live: ScoringPipeline) -> str | None:
    """Why `artifact` cannot take over from `live` without a restart, or None."""
    new, old = artifact.model.config, live.model.config
    if new.state_size != old.state_size:
        return (f"its recurrent state ({new.cell}, hidden size {new.hidden_size}) differs from the live "
                f"model's ({old.cell}, hidden size {old.hidden_size}); restart rnnwatch to change the "
                "architecture")
    if artifact.normaliser != live.normaliser:
        return "its normaliser settings differ from the live model's; restart rnnwatch to change them"
    return None
