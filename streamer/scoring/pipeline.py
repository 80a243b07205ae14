"""The scoring pipeline: the one object that replay, the benchmarks and the daemon all drive.

    batch --validate--> waves --normalise--> recurrent step --error--> calibrate --> alert policy

A batch is split into *waves*: wave k holds the k-th reading of every device in the batch, so each
device's readings are applied in order while a batch of 10 k devices costs one batched step, not
10 k. Within a wave every device appears once, so gathers and scatters of its rows never collide.

Event time: a reading whose timestamp is not newer than its device's last one is dropped and counted
(OUT_OF_ORDER). A gap longer than `gap_reset_s` *resets* the device's recurrent state (hidden state
and forecast) while keeping its normaliser and calibration: after a long outage the model's memory of
the last minutes is stale, but the sensor's scale and its usual error level are not. A device whose
clock went back is re-based (`event_time.py`); one whose channels changed is re-initialised for them
(`shape.py`).

On the CPU the same scoring can run as one compiled pass per batch (`path="kernel"`, `kernel/`: its
cost is per reading, not per wave); the waves here stay its definition, the default, the CUDA path,
and what scores a batch the kernel leaves (a clock re-based, a channel set changed: `kernel_fallbacks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

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
from streamer.scoring import relation
from streamer.scoring.alert_events import WaveReadings, wave_events
from streamer.scoring.alert_policy import AlertPolicy, AlertPolicyConfig, Transitions
from streamer.scoring.calibration import Calibrated, CalibrationConfig, Calibrator
from streamer.scoring.event_time import REBASE_AFTER, EventClock
from streamer.scoring.evidence import (
    range_excess_and_update,
    repeat_evidence,
    repeat_runs,
    standardise_and_update,
)
from streamer.scoring.held_normal import held_evidence, held_statistics, held_z, hold_rows
from streamer.scoring.kernel import PATHS
from streamer.scoring.kernel.scorer import kernel_for
from streamer.scoring.readings import AlertEvent, DropReason, ReadingBatch, ScoredBatch
from streamer.scoring.shape import RESHAPE_AFTER, ShapeTracker
from streamer.scoring.signals import PER_CHANNEL, REPEAT_RUNS, SHARE_COLUMN, SIGNALS, Signal
from streamer.scoring.state_store import Column, StateStore
from streamer.scoring.waves import wave_ranks as _wave_ranks

ScoringPath = Literal["kernel", "torch"]
# event time the device's normal began learning: float32 epoch seconds (128 s steps) serve a one-day maturity
_COLUMNS = (Column("learn_since", np.float32, fill=np.nan),)


@dataclass(frozen=True)
class PipelineConfig:
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    policy: AlertPolicyConfig = field(default_factory=AlertPolicyConfig)
    gap_reset_s: float = math.inf  # reset a device's recurrent state after a silence this long
    mature_s: float = 86400.0  # event time a device learns before an episode it opens holds its normal
    rebase_after: int = REBASE_AFTER  # readings in a row older than a device's clock re-base it
    reshape_after: int = RESHAPE_AFTER  # readings in a row in one new channel set re-initialise it
    range_margin: float = 0.05  # a value beyond its running range by this share of its width is out of range
    range_warmup: int = 60  # settled values a row's range learns before it judges
    path: ScoringPath = PATHS[0]  # type: ignore[assignment]  # on the CPU: the torch waves or the compiled kernel
    kernel_threads: int | None = None  # threads of the kernel's device loop (None: every core)


_SHARE_COLUMN = np.array(SHARE_COLUMN, dtype=np.int64)


@dataclass
class _Rows:
    """Where a wave's devices keep their rows: r rows for m devices, in device then channel order."""

    rows: torch.Tensor  # (r,) int64 row indices in the store
    owner: np.ndarray  # (r,) position in the wave of each row's device
    chan: np.ndarray  # (r,) channel index of each row within its device
    starts: np.ndarray  # (m,) position of each device's first row among the r
    n_ch: np.ndarray  # (m,) int64 channel count of each device


@dataclass
class _Wave:
    """The readings of one wave that survived validation, and what stepping them produced."""

    idx: np.ndarray  # (m,) positions in the batch
    slots: np.ndarray  # (m,) device slots
    ts: np.ndarray  # (m,) event time
    locked: np.ndarray  # (m,) bool, the device's open episode opened past maturity: its alarm is the held one
    layout: _Rows
    table: np.ndarray  # (r, len(PER_CHANNEL)) float64 per-channel evidence (NaN: none yet)
    above: np.ndarray  # (r,) bool, the value is above its forecast / its normal
    evidence: np.ndarray  # (m, SIGNALS) against the live normal, largest over channels (NaN: none)
    held: np.ndarray  # (m, SIGNALS) against the held normal (devices holding one; NaN: not measured)
    prior: tuple[torch.Tensor, torch.Tensor]  # (r,) float64 the rows' normaliser mean, var before this one
    excess: np.ndarray  # (m,) how far the device's farthest channel lies outside its running range (share)
    runs: np.ndarray  # (r,) each row's repeat run beyond the grace (what a stuck channel gives REPEAT)

    def shares(self, signal: np.ndarray, c_max: int) -> np.ndarray:
        """Each channel's part in the winning signal (m,) Signal -> (m, c_max), zero past a device's
        channels. A device-level signal is attributed by what each channel gives it: the repeat run by
        each channel's own run (the stuck channels), the joint distance by each channel's relation
        residual (the channels the others no longer predict)."""
        lay = self.layout
        column = _SHARE_COLUMN[signal][lay.owner]  # (r,) see signals.SHARE_COLUMN
        per_row = self.table[np.arange(len(lay.owner)), np.maximum(column, 0)]  # (r,)
        per_row = np.where(column == REPEAT_RUNS, self.runs, per_row)
        out = np.zeros((len(self.idx), c_max))
        out[lay.owner, lay.chan] = np.nan_to_num(per_row)
        return out


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
        self.artifact = artifact
        self.model = artifact.model.to(self.device).eval()
        self.model_version = artifact.version
        self.normaliser = artifact.normaliser
        self.calibrator = Calibrator(self.config.calibration)
        self.policy = AlertPolicy(self.config.policy)
        self.store = store or StateStore(
            self.model.config.state_size,
            columns=(*Calibrator.columns(), *AlertPolicy.columns(), *_COLUMNS),
            device=self.device,
            blocks=relation.BLOCKS,
        )
        self.clock = EventClock(self.store, self.config.rebase_after)
        self.shapes = ShapeTracker(self.store, self.config.reshape_after)
        self.kernel = kernel_for(self) if self.config.path == "kernel" and self.device.type == "cpu" else None
        self.kernel_fallbacks = 0  # batches the kernel left to the waves (see `streamer.scoring.kernel`)

    def adopt(self, artifact: ModelArtifact) -> None:
        """Score with `artifact`'s model from now on, on the same state (a hot swap's end, `swap.py`)."""
        self.artifact, self.model = artifact, artifact.model.to(self.device).eval()
        self.model_version, self.normaliser = artifact.version, artifact.normaliser
        if self.kernel is not None:
            self.kernel = kernel_for(self)  # the compiled pass holds the weights and version it was given

    def score(self, batch: ReadingBatch) -> ScoredBatch:
        """Score a batch in order, device by device; one compiled pass where the kernel serves it."""
        slots, status = self._validate(batch)
        valid = np.flatnonzero(status == DropReason.SCORED)
        waves = _wave_ranks(slots[valid])
        n_waves = int(waves.max()) + 1 if len(valid) else 0
        scored = None if self.kernel is None or self.shapes.due else \
            self.kernel.score(batch, slots, status, n_waves, waves)
        self.kernel_fallbacks += self.kernel is not None and scored is None
        return scored or self._score_waves(batch, slots, status, valid, waves)

    def _score_waves(self, batch: ReadingBatch, slots: np.ndarray, status: np.ndarray, valid: np.ndarray,
                     waves: np.ndarray) -> ScoredBatch:
        """The torch path: wave k steps the k-th valid reading of every device in one batched step."""
        n = len(batch)
        scores = np.full(n, np.nan, dtype=np.float32)
        alerting = np.zeros(n, dtype=bool)
        top = np.full(n, -1, dtype=np.int16)
        events: list[AlertEvent] = []
        n_waves, rebased, reshaped = int(waves.max()) + 1 if len(valid) else 0, self.clock.rebased, 0
        with torch.inference_mode():
            for k in range(n_waves):
                idx = valid[waves == k]
                reshaped += self.shapes.apply(idx)
                wave = self._step(batch, idx, slots[idx], status)
                if wave is None:
                    continue
                cal, transitions = self._calibrate_and_decide(wave)
                shares = wave.shares(cal.signal, batch.values.shape[1])  # (m, c_max)
                scores[wave.idx] = cal.score
                alerting[wave.idx] = transitions.firing
                top[wave.idx] = shares.argmax(axis=1)
                readings = WaveReadings(wave.idx, wave.slots, wave.ts, wave.layout.starts, wave.above)
                events.extend(wave_events(batch, readings, cal.alarm, transitions, shares, self.store,
                                          self.policy.config, self.model_version))
        events.sort(key=lambda e: (e.offset, e.ts))
        rebased = self.clock.rebased - rebased
        return ScoredBatch(scores, alerting, status, top, events, n_waves, rebased, reshaped)

    # ---- steps of score() -----------------------------------------------------------------------
    def _calibrate_and_decide(self, wave: _Wave) -> tuple[Calibrated, Transitions]:
        """Score the wave's evidence, step the alert policy on the alarms, hold the normal of devices
        that opened an episode (before this reading is learned), let the live distributions learn it,
        and end the hold of episodes that closed."""
        out_of_range = wave.excess > self.config.range_margin  # (m,) bool
        cal = self.calibrator.score(self.store, wave.slots, wave.evidence, wave.held, out_of_range,
                                    wave.locked)
        transitions = self.policy.update(self.store, wave.slots, cal.alarm, wave.ts, cal.before)
        self._hold_normal(wave, transitions.opened)
        self.calibrator.learn(self.store, wave.slots, wave.evidence, cal)
        self.calibrator.release(self.store, wave.slots[np.r_[transitions.recovered, transitions.accepted]])
        return cal, transitions

    def _validate(self, batch: ReadingBatch) -> tuple[np.ndarray, np.ndarray]:
        """Every reading's slot (n,) and its drop reason if decidable before stepping (n,) uint8."""
        slots, mismatch = self.store.slots_for(batch.device_ids, batch.n_channels, batch.channels)
        c_max = batch.values.shape[1]
        in_range = np.arange(c_max)[None, :] < batch.n_channels[:, None]
        non_finite = (~np.isfinite(batch.values) & in_range).any(axis=1)
        applied = (batch.offsets >= 0) & (batch.offsets <= self.store.cols["source_offset"][slots])
        mismatch = self.shapes.resolve(batch, slots, mismatch, applied | non_finite)
        status = np.zeros(len(batch), dtype=np.uint8)
        status[applied] = DropReason.ALREADY_APPLIED
        status[non_finite] = DropReason.NON_FINITE
        status[mismatch] = DropReason.CHANNEL_MISMATCH
        return slots, status

    def _step(
        self, batch: ReadingBatch, idx: np.ndarray, slots: np.ndarray, status: np.ndarray
    ) -> _Wave | None:
        """Apply one wave (readings idx of the batch, on device slots; each device at most once)."""
        admitted = self._admit(batch, idx, slots, status)
        if admitted is None:
            return None
        idx, slots, ts, dt = admitted
        layout = self._layout(slots)
        holding_m = self.calibrator.holding(self.store, slots)  # (m,) bool, its episode holds its normal
        locked = holding_m & self._locked(slots, ts)  # (m,) and measures its alarm against it
        holding = torch.from_numpy(holding_m[layout.owner]).to(self.device)  # (r,)
        x = torch.from_numpy(batch.values[idx[layout.owner], layout.chan]).to(self.device)  # (r,)
        z, std, prior, count = self._normalise(x, layout.rows)
        held_normal = held_statistics(self.store.rows, layout.rows, self.normaliser) \
            if bool(holding.any()) else None
        z_held = held_z(x, z, held_normal, holding)  # (r,)
        first = torch.from_numpy(self.store.cols["steps"][slots][layout.owner] == 0).to(self.device)  # (r,)
        resid = self._forecast(z, first, layout.rows)
        steps = self.store.cols["steps"]
        steps[slots] = np.minimum(steps[slots].astype(np.int64) + 1, np.iinfo(steps.dtype).max)
        seen = count > self.normaliser.settle  # (r,) the normaliser had settled: z means something
        excess = self._range(z, seen, count, std, prior[0], layout)
        firing = torch.from_numpy(AlertPolicy.firing(self.store, slots)[layout.owner]).to(self.device)  # (r,)
        z_rel = torch.where(torch.from_numpy(locked[layout.owner]).to(self.device), z_held, z)  # (r,)
        table, device_level = self._evidence(x, z, z_rel, std, resid, first, seen, firing, layout, slots,
                                             ts, dt)
        held_table = held_evidence(z_held, first, seen, holding, table, prior, std, self.store.rows,
                                   layout.rows, held_normal)
        evidence, held = (_per_device(t, device_level, layout.starts) for t in (table, held_table))
        above = torch.where(first, z, resid).cpu().numpy() > 0
        runs = repeat_evidence(self.store.rows["repeat_run"][layout.rows].cpu().numpy())
        return _Wave(idx, slots, ts, locked, layout, table, above, evidence, held, prior, excess, runs)

    def _range(self, z: torch.Tensor, seen: torch.Tensor, count: torch.Tensor, std: torch.Tensor,
               mean: torch.Tensor, layout: _Rows) -> np.ndarray:
        """How far each device's farthest channel lies outside its running range (m,) (see
        `range_excess_and_update`); the range is re-expressed in z of the normaliser statistics just
        learned, from those before (mean (r,) float64, std (r,)), so it stays put in raw units."""
        cfg = self.config
        ready = count > self.normaliser.settle + cfg.range_warmup  # (r,)
        rows_of = self.store.rows
        new_mean = rows_of["norm_mean"][layout.rows]  # (r,) float64
        new_std = row_std(new_mean, rows_of["norm_var"][layout.rows], self.normaliser)
        rescale = ((std / new_std).to(torch.float32), ((mean - new_mean) / new_std).to(torch.float32))
        excess = range_excess_and_update(z, seen, ready, rescale, rows_of["range_low"], rows_of["range_high"],
                                         layout.rows)
        per_row = excess.to("cpu", torch.float64).numpy()
        return np.maximum.reduceat(per_row, layout.starts)

    def _locked(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Devices whose open episode opened after they had learned their normal for `mature_s` of event
        time (m,) bool (meaningful where an episode is open): its alarm is measured against the held
        normal. A younger device's episode holds its normal only to label the close (`alert_policy`), so a
        baseline that has not seen a whole cycle cannot lock. Stamps the time a device began learning."""
        since = self.store.cols["learn_since"]
        fresh = np.isnan(since[slots])
        since[slots[fresh]] = ts[fresh]
        started = self.store.cols["alert_started_at"][slots]
        return started - since[slots].astype(np.float64) >= self.config.mature_s

    def _admit(self, batch: ReadingBatch, idx: np.ndarray, slots: np.ndarray, status: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Event time, offsets and gaps: drop readings not newer than their device's last (counted as
        OUT_OF_ORDER), record the rest, reset the recurrent state after a long silence. Returns the
        admitted (idx, slots, ts, seconds since the device's previous reading), or None."""
        cols = self.store.cols
        ts = batch.ts[idx]
        fresh = self.clock.admit(slots, ts)  # re-bases a device whose clock went back
        last = cols["last_ts"][slots]
        status[idx[~fresh]] = DropReason.OUT_OF_ORDER
        idx, slots, ts, last = idx[fresh], slots[fresh], ts[fresh], last[fresh]
        if len(idx) == 0:
            return None
        gap = np.isfinite(last) & (ts - last > self.config.gap_reset_s)
        cols["last_ts"][slots] = ts
        cols["source_offset"][slots] = np.maximum(cols["source_offset"][slots], batch.offsets[idx])
        if gap.any():
            self.store.reset_rows(torch.from_numpy(self.store.rows_of(slots[gap])[0]).to(self.device))
            cols["steps"][slots[gap]] = 0
        return idx, slots, ts, ts - last

    def _layout(self, slots: np.ndarray) -> _Rows:
        rows, owner = self.store.rows_of(slots)  # (r,), (r,)
        n_ch = self.store.cols["n_channels"][slots].astype(np.int64)  # (m,)
        starts = np.cumsum(n_ch) - n_ch
        chan = np.arange(len(rows)) - np.repeat(starts, n_ch)
        return _Rows(torch.from_numpy(rows).to(self.device), owner, chan, starts, n_ch)

    def _normalise(self, x: torch.Tensor, rows: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """z (r,) float32 of raw values x (r,) under each row's live statistics, the raw units per unit
        of z (r,), the statistics before this value (mean, var (r,) float64) and the rows' value counts
        after it. The live statistics learn every value, in an episode or not (the held normal does not
        move: see `held_normal.held_z`)."""
        rows_of = self.store.rows
        count, mean, var = (rows_of[k][rows] for k in ("norm_count", "norm_mean", "norm_var"))
        std = row_std(mean, var, self.normaliser).to(torch.float32)  # (r,)
        prior = (mean.clone(), var.to(torch.float64))
        z = normalise_and_update(x, count, mean, var, self.normaliser)  # (r,)
        for key, value in (("norm_count", count), ("norm_mean", mean), ("norm_var", var)):
            rows_of[key][rows] = value
        return z, std, prior, count

    def _hold_normal(self, wave: _Wave, opened: np.ndarray) -> None:
        """The devices at these wave positions (k,) just opened an episode past maturity: hold their
        normal as it was before this reading (normaliser mean and spread per row; the calibration of
        the state signals)."""
        if len(opened) == 0:
            return
        at = np.flatnonzero(np.isin(wave.layout.owner, opened))  # (k_r,) their rows among the wave's
        pick = torch.from_numpy(at).to(self.device)
        hold_rows(self.store.rows, wave.layout.rows[pick], wave.prior[0][pick], wave.prior[1][pick])
        self.calibrator.hold(self.store, wave.slots[opened])

    def _forecast(self, z: torch.Tensor, first: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The one-step forecast error of z (r,) (0 on a device's first step); steps the recurrent state."""
        rows_of = self.store.rows
        resid = torch.where(first, torch.zeros_like(z), z - rows_of["pred"][rows])  # (r,)
        state = rows_of["hidden"][rows].to(torch.float32)  # (r, S)
        pred, hidden = self.model.step(model_input(z, first), state)  # (r,), (r, S)
        rows_of["hidden"][rows] = hidden.to(rows_of["hidden"].dtype)
        rows_of["pred"][rows] = pred
        return resid

    def _evidence(self, x: torch.Tensor, z: torch.Tensor, z_rel: torch.Tensor, std: torch.Tensor,
                  resid: torch.Tensor, first: torch.Tensor, seen: torch.Tensor, firing: torch.Tensor,
                  layout: _Rows, slots: np.ndarray, ts: np.ndarray, dt: np.ndarray
                  ) -> tuple[np.ndarray, dict[Signal, np.ndarray]]:
        """The per-channel evidence table (r, len(PER_CHANNEL)) float64, squared, NaN where not available,
        and the device-level signals {Signal: (m,)}; updates the evidence state of the rows. Everything
        follows the live normal except the relation, fed `z_rel` (r,): the held z where the device's
        episode is locked to its held normal, the live z elsewhere; its covariance does not learn while the
        device's episode is open (`firing` (r,), locked or not: the fault is not taught as how the
        channels relate)."""
        rows_of, rows = self.store.rows, layout.rows
        count = rows_of["norm_count"][rows]  # (r,) values each row's normaliser has learned
        run = repeat_runs(x, rows_of["last_value"], rows_of["repeat_run"], rows, count > 1, layout.starts)
        zc = z.clamp(-Z_CLIP, Z_CLIP)
        owner_t = layout.owner
        day_rate = torch.from_numpy(day_rates(dt, self.normaliser)[owner_t]).to(self.device)
        day_bin = torch.from_numpy(day_bins(ts)[owner_t]).to(self.device)
        day = day_residual_and_update(zc, seen, rows_of["day_profile"], rows, day_bin, day_rate)  # (r,)
        beta = self.normaliser.level_beta
        level = ewma_update(zc, seen, rows_of["level"], rows, beta)  # (r,)
        vol = ewma_update(zc * zc, seen, rows_of["vol"], rows, beta)  # (r,)
        resid_c = resid.clamp(-Z_CLIP, Z_CLIP)
        bias = ewma_update(resid_c, seen, rows_of["bias"], rows, beta)  # (r,)
        scale = standardise_and_update(resid_c * std, seen, count - self.normaliser.settle - 1,
                                       rows_of["resid_var"], rows, self.normaliser.alpha)  # (r,) NaN: none
        dev = torch.where(first, 0.0, z)
        stacked = torch.stack([resid_c * std / scale, bias * std / scale, dev, day, level], 1)
        per_row = stacked.to("cpu", torch.float64).numpy()
        per_row *= per_row  # (r, 5)
        r2, joint = self._relation(z_rel.clamp(-Z_CLIP, Z_CLIP), seen & ~firing, layout, count, slots)
        rel = relation.level_and_update(r2, rows_of["rel_level"], rows, beta)  # (r,) its short-term level
        table = np.column_stack([per_row, vol.to("cpu", torch.float64).numpy(), rel])  # (r, 7)
        return table, {Signal.REPEAT: repeat_evidence(run), Signal.JOINT: joint}

    def _relation(self, zc: torch.Tensor, learn: torch.Tensor, layout: _Rows, count: torch.Tensor,
                  slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-channel evidence (see `relation`): r_k^2 per row (r,) and D^2 per device (m,), NaN where
        none (one channel, or not learned yet); the devices' covariances learn where `learn`."""
        r2 = np.full(len(layout.owner), np.nan)
        joint = np.full(len(layout.starts), np.nan)
        cov_store = self.store.blocks["relation"]
        for c, pos in relation.device_groups(layout.n_ch):
            at = torch.from_numpy(layout.starts[pos][:, None] + np.arange(c)).to(self.device)  # (mc, c)
            cells = torch.from_numpy(self.store.cells_of(slots[pos], "relation").reshape(len(pos), -1)
                                     ).to(self.device)  # (mc, cells(c))
            learned = (count[at[:, 0]] - self.normaliser.settle - 1).clamp_min(0)  # (mc,)
            rb, db, new = relation.score_and_learn(zc[at], cov_store[cells], learned, learn[at[:, 0]],
                                                   self.normaliser.alpha)
            cov_store[cells] = new
            r2[at.cpu().numpy()] = rb.cpu().numpy()
            joint[pos] = db.cpu().numpy()
        return r2, joint


def _per_device(table: np.ndarray, device_level: dict[Signal, np.ndarray], starts: np.ndarray) -> np.ndarray:
    """Per-channel evidence (r, len(PER_CHANNEL)) and device-level signals -> (m, SIGNALS): the largest
    channel of each per-channel signal."""
    evidence = np.empty((len(starts), SIGNALS))
    evidence[:, list(PER_CHANNEL)] = np.fmax.reduceat(table, starts, axis=0)
    for sig, values in device_level.items():
        evidence[:, sig] = values
    return evidence
