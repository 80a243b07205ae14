"""The scoring pipeline: the one object that replay, the benchmarks and the daemon all drive.

    batch --validate--> waves --normalise--> recurrent step --error--> calibrate --> alert policy

A batch is split into *waves*: wave k holds the k-th reading of every device in the batch, so each
device's readings are applied in order while a batch of 10 k devices costs one batched step, not
10 k. Within a wave every device appears once, so gathers and scatters of its rows never collide.

Event time: a reading whose timestamp is not newer than its device's last one is dropped and counted
(OUT_OF_ORDER). A gap longer than `gap_reset_s` *resets* the device's recurrent state (hidden state
and forecast) while keeping its normaliser and calibration: after a long outage the model's memory of
the last minutes is stale, but the sensor's scale and its usual error level are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from model.artifact import ModelArtifact
from model.normaliser import (
    Z_CLIP,
    day_bins,
    day_rates,
    day_residual_and_update,
    ewma_update,
    model_input,
    normalise_and_update,
    row_std,
)
from streamer.errors import ConfigError
from streamer.scoring.alert_policy import AlertPolicy, AlertPolicyConfig, Transitions, alert_id
from streamer.scoring.calibration import SIGNALS, CalibrationConfig, Calibrator
from streamer.scoring.evidence import COLUMNS as EVIDENCE_COLUMNS
from streamer.scoring.evidence import repeat_evidence, repeat_runs, standardise_and_update
from streamer.scoring.readings import AlertEvent, ChannelAttribution, DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.state_store import StateStore


@dataclass(frozen=True)
class PipelineConfig:
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    policy: AlertPolicyConfig = field(default_factory=AlertPolicyConfig)
    gap_reset_s: float = math.inf  # reset a device's recurrent state after a silence this long


def resolve_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch device, with an actionable error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


@dataclass
class _Wave:
    """The readings of one wave that survived validation, and what stepping them produced."""

    idx: np.ndarray  # (m,) positions in the batch
    slots: np.ndarray  # (m,) device slots
    ts: np.ndarray  # (m,) event time
    err: np.ndarray  # (m, c_max) per-channel squared error (0 beyond a device's channels)
    above: np.ndarray  # (m, c_max) bool, value above the forecast
    evidence: np.ndarray  # (m, SIGNALS) what the calibration scores, largest over channels (NaN: none)


class ScoringPipeline:
    """Per-device recurrent state + calibration + alert policy over batches of readings."""

    def __init__(
        self,
        artifact: ModelArtifact,
        config: PipelineConfig | None = None,
        device: torch.device | str = "cpu",
        store: StateStore | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        self.device = torch.device(device)
        self.model = artifact.model.to(self.device).eval()
        self.model_version = artifact.version
        self.normaliser = artifact.normaliser
        self.calibrator = Calibrator(self.config.calibration)
        self.policy = AlertPolicy(self.config.policy)
        self.store = store or StateStore(
            self.model.config.state_size,
            columns=(*EVIDENCE_COLUMNS, *Calibrator.columns(), *AlertPolicy.columns()),
            device=self.device,
        )

    def score(self, batch: ReadingBatch) -> ScoredBatch:
        n = len(batch)
        scores = np.full(n, np.nan, dtype=np.float32)
        alerting = np.zeros(n, dtype=bool)
        top = np.full(n, -1, dtype=np.int16)
        slots, status = self._validate(batch)
        events: list[AlertEvent] = []
        valid = np.flatnonzero(status == DropReason.SCORED)
        waves = _wave_ranks(slots[valid])
        n_waves = int(waves.max()) + 1 if len(valid) else 0
        with torch.inference_mode():
            for k in range(n_waves):
                idx = valid[waves == k]
                wave = self._step(batch, idx, slots[idx], status)
                if wave is None:
                    continue
                evidence = wave.evidence  # (m, SIGNALS)
                wave_scores = self.calibrator.update(self.store, wave.slots, evidence)
                transitions = self.policy.update(self.store, wave.slots, wave_scores, wave.ts)
                scores[wave.idx] = wave_scores
                alerting[wave.idx] = transitions.firing
                top[wave.idx] = wave.err.argmax(axis=1)
                events.extend(self._events(batch, wave, wave_scores, transitions))
        events.sort(key=lambda e: (e.offset, e.ts))
        return ScoredBatch(scores, alerting, status, top, events, n_waves)

    # ---- steps of score() -----------------------------------------------------------------------
    def _validate(self, batch: ReadingBatch) -> tuple[np.ndarray, np.ndarray]:
        """Every reading's slot (n,) and its drop reason if decidable before stepping (n,) uint8."""
        slots, mismatch = self.store.slots_for(batch.device_ids, batch.n_channels, batch.channels)
        c_max = batch.values.shape[1]
        in_range = np.arange(c_max)[None, :] < batch.n_channels[:, None]
        non_finite = (~np.isfinite(batch.values) & in_range).any(axis=1)
        applied = (batch.offsets >= 0) & (batch.offsets <= self.store.cols["source_offset"][slots])
        status = np.zeros(len(batch), dtype=np.uint8)
        status[applied] = DropReason.ALREADY_APPLIED
        status[non_finite] = DropReason.NON_FINITE
        status[mismatch] = DropReason.CHANNEL_MISMATCH
        return slots, status

    def _step(
        self, batch: ReadingBatch, idx: np.ndarray, slots: np.ndarray, status: np.ndarray
    ) -> _Wave | None:
        """Apply one wave (readings idx of the batch, on device slots; each device at most once)."""
        cols, rows_of = self.store.cols, self.store.rows
        ts = batch.ts[idx]
        last = cols["last_ts"][slots]
        fresh = ts > last
        status[idx[~fresh]] = DropReason.OUT_OF_ORDER
        idx, slots, ts, last = idx[fresh], slots[fresh], ts[fresh], last[fresh]
        if len(idx) == 0:
            return None
        gap = np.isfinite(last) & (ts - last > self.config.gap_reset_s)
        cols["last_ts"][slots] = ts
        cols["source_offset"][slots] = np.maximum(cols["source_offset"][slots], batch.offsets[idx])

        rows, owner = self.store.rows_of(slots)  # (r,), (r,)
        chan = np.arange(len(rows)) - np.repeat(np.cumsum(batch.n_channels[idx]) - batch.n_channels[idx],
                                                batch.n_channels[idx])
        rows_t = torch.from_numpy(rows).to(self.device)
        if gap.any():
            self.store.reset_rows(torch.from_numpy(self.store.rows_of(slots[gap])[0]).to(self.device))
            cols["steps"][slots[gap]] = 0
        first_dev = cols["steps"][slots] == 0
        x = torch.from_numpy(batch.values[idx[owner], chan]).to(self.device)  # (r,)
        count, mean, var = (rows_of[k][rows_t] for k in ("norm_count", "norm_mean", "norm_var"))
        std = row_std(mean, var, self.normaliser).to(torch.float32)  # (r,) raw units per unit of z
        z = normalise_and_update(x, count, mean, var, self.normaliser)  # (r,)
        for key, value in (("norm_count", count), ("norm_mean", mean), ("norm_var", var)):
            rows_of[key][rows_t] = value
        first = torch.from_numpy(first_dev[owner]).to(self.device)  # (r,) bool
        resid = torch.where(first, torch.zeros_like(z), z - rows_of["pred"][rows_t])  # (r,)
        pred, hidden = self.model.step(model_input(z, first), rows_of["hidden"][rows_t])  # (r,), (r, S)
        rows_of["hidden"][rows_t] = hidden
        rows_of["pred"][rows_t] = pred
        cols["steps"][slots] += 1

        # evidence, one value per signal (see streamer.scoring.calibration): forecast error and bias (in units
        # of the channel's usual error), deviation from the mean, from the time-of-day profile, short-term
        # level; squared, largest channel; and the device's repeat run (see streamer.scoring.evidence)
        seen = count > self.normaliser.settle  # (r,) the normaliser had settled: z means something
        n_ch = batch.n_channels[idx].astype(np.int64)  # (m,)
        starts = np.cumsum(n_ch) - n_ch  # (m,) each device's first row
        run = repeat_runs(x, rows_of["last_value"], rows_t, count > 1, starts, cols["repeat_run"][slots])
        cols["repeat_run"][slots] = run  # (m,)
        zc = z.clamp(-Z_CLIP, Z_CLIP)
        day_rate = torch.from_numpy(day_rates(ts - last, self.normaliser)[owner]).to(self.device)
        day_bin = torch.from_numpy(day_bins(ts)[owner]).to(self.device)
        day = day_residual_and_update(zc, seen, rows_of["day_profile"], rows_t, day_bin, day_rate)  # (r,)
        beta = self.normaliser.level_beta
        level = ewma_update(zc, seen, rows_of["level"], rows_t, beta)  # (r,)
        resid_c = resid.clamp(-Z_CLIP, Z_CLIP)
        bias = ewma_update(resid_c, seen, rows_of["bias"], rows_t, beta)  # (r,)
        scale = standardise_and_update(resid_c * std, seen, count - self.normaliser.settle - 1,
                                       rows_of["resid_var"], rows_t, self.normaliser.alpha)  # (r,) NaN: none
        dev = torch.where(first, 0.0, z)
        per_row = torch.stack([resid_c * std / scale, bias * std / scale, dev, day, level], 1)
        per_row = per_row.to("cpu", torch.float64).numpy()
        per_row *= per_row  # (r, 5)
        evidence = np.empty((len(idx), SIGNALS))  # (m, SIGNALS)
        evidence[:, :5] = np.fmax.reduceat(per_row, starts, axis=0)  # the largest channel
        evidence[:, 5] = repeat_evidence(run)
        err = np.zeros((len(idx), batch.values.shape[1]))
        above = np.zeros(err.shape, dtype=bool)
        err[owner, chan] = np.nan_to_num(per_row[:, 0])
        above[owner, chan] = (resid > 0).cpu().numpy()
        return _Wave(idx, slots, ts, err, above, evidence)

    def _events(
        self, batch: ReadingBatch, wave: _Wave, scores: np.ndarray, transitions: Transitions
    ) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        policy = self.policy.config
        started = self.store.cols["alert_started_at"]
        for j, state, threshold in (
            *((j, "firing", policy.open_threshold) for j in transitions.opened),
            *((j, "resolved", policy.close_threshold) for j in transitions.closed),
        ):
            i, slot = int(wave.idx[j]), int(wave.slots[j])
            device_id = batch.device_ids[i]
            begun = float(started[slot])
            out.append(AlertEvent(
                alert_id=alert_id(device_id, begun, self.model_version),
                device_id=device_id,
                state=state,  # type: ignore[arg-type]
                ts=float(wave.ts[j]),
                started_at=begun,
                score=float(scores[j]),
                threshold=threshold,
                channels=self._attribution(batch, i, slot, wave.err[j], wave.above[j]),
                model_version=self.model_version,
                partition=int(batch.partitions[i]),
                offset=int(batch.offsets[i]),
            ))
        return out

    def _attribution(
        self, batch: ReadingBatch, i: int, slot: int, err: np.ndarray, above: np.ndarray
    ) -> tuple[ChannelAttribution, ...]:
        c = int(batch.n_channels[i])
        names = self.store.channel_names(slot) or tuple(str(k) for k in range(c))
        total = float(err[:c].sum())
        shares = err[:c] / total if total > 0 else np.full(c, 1.0 / c)
        return tuple(
            ChannelAttribution(names[k], round(float(shares[k]), 6), "above" if above[k] else "below")
            for k in range(c)
        )


def _wave_ranks(slots: np.ndarray) -> np.ndarray:
    """For readings in arrival order, how many earlier readings of the same device: (n,) -> (n,)."""
    if len(slots) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(slots)]))
    ranks = np.empty(len(slots), dtype=np.int64)
    ranks[order] = np.arange(len(slots)) - group_start
    return ranks
