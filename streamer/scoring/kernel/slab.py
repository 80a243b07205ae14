"""What the kernel reads and writes: the state store's own arrays, its settings, the model's weights.

`Slab` views the very tensors and columns of a `StateStore` (no copy: the kernel's writes are the
store's state), float16 ones as their uint16 bits (see `half`). Take a fresh one for every batch: the
store replaces its arrays when it grows. `Params` are the pipeline's settings as plain numbers and
`Weights` the recurrent layer and head of a `RecurrentForecaster` as float32 arrays.

Shapes: D device slots, R rows, S state size, G gate rows (3H for a GRU, 4H for an LSTM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from model.forecaster import RecurrentForecaster
    from model.normaliser import NormaliserConfig
    from streamer.scoring.pipeline import PipelineConfig
    from streamer.scoring.state_store import StateStore


class Slab(NamedTuple):
    """Per-device columns (D,) or (D, width) and per-row fields (R,) or (R, width) of one store."""

    last_ts: np.ndarray  # (D,) float64
    source_offset: np.ndarray  # (D,) int64
    steps: np.ndarray  # (D,) uint16
    learn_since: np.ndarray  # (D,) float32
    n_channels: np.ndarray  # (D,) int16
    row_start: np.ndarray  # (D,) int32
    relation_start: np.ndarray  # (D,) int32
    cal_count: np.ndarray  # (D, SIGNALS) int16
    cal_mean: np.ndarray  # (D, SIGNALS) float32
    cal_var: np.ndarray  # (D, SIGNALS) float32
    cal_peak: np.ndarray  # (D,) float32
    cal_fired: np.ndarray  # (D,) float16 bits
    cal_since: np.ndarray  # (D,) uint8
    cal_held_mean: np.ndarray  # (D, STATE) float16 bits
    cal_held_std: np.ndarray  # (D, STATE) float16 bits
    alert_state: np.ndarray  # (D,) int8
    alert_hits: np.ndarray  # (D,) uint16
    alert_below: np.ndarray  # (D,) uint8
    alert_hold: np.ndarray  # (D,) float16 bits
    alert_peak: np.ndarray  # (D,) float16 bits
    alert_started_at: np.ndarray  # (D,) float64
    alert_cooldown_until: np.ndarray  # (D,) uint32, whole seconds
    hidden: np.ndarray  # (R, S) float16 bits
    norm_count: np.ndarray  # (R,) float32
    norm_mean: np.ndarray  # (R,) float64
    norm_var: np.ndarray  # (R,) float32
    pred: np.ndarray  # (R,) float32
    level: np.ndarray  # (R,) float32
    bias: np.ndarray  # (R,) float32
    resid_var: np.ndarray  # (R,) float32
    vol: np.ndarray  # (R,) float32
    last_value: np.ndarray  # (R,) float32
    repeat_run: np.ndarray  # (R,) int16
    day_profile: np.ndarray  # (R, DAY_BINS) float16 bits
    range_low: np.ndarray  # (R,) float16 bits
    range_high: np.ndarray  # (R,) float16 bits
    rel_level: np.ndarray  # (R,) float16 bits
    held_mean: np.ndarray  # (R,) float32
    held_sd: np.ndarray  # (R,) float32
    relation: np.ndarray  # (cells,) float32


_HALF_COLUMNS = frozenset({"cal_held_mean", "cal_held_std", "cal_fired", "alert_hold", "alert_peak"})
_HALF_ROWS = frozenset({"hidden", "day_profile", "range_low", "range_high", "rel_level"})


def slab_of(store: StateStore) -> Slab:
    """Views of the store's state (CPU only) in `Slab` order."""
    fields: dict[str, np.ndarray] = {}
    for name in Slab._fields:
        if name == "relation":
            fields[name] = store.blocks["relation"].numpy()
        elif name == "relation_start":
            fields[name] = store.cols["relation_start"]
        elif name in store.cols:
            col = store.cols[name]
            fields[name] = col.view(np.uint16) if name in _HALF_COLUMNS else col
        else:
            row = store.rows[name].numpy()
            fields[name] = row.view(np.uint16) if name in _HALF_ROWS else row
    return Slab(**fields)


class Params(NamedTuple):
    """The pipeline's, normaliser's, calibration's and alert policy's settings, as plain numbers."""

    gap_reset_s: float
    mature_s: float
    range_margin: float
    range_warmup: int
    norm_alpha: float
    rel_floor: float
    abs_floor: float
    day_weight: float
    level_beta: float
    settle: int
    cal_alpha: float
    warmup: int
    skip: int
    protect_z: float
    z_half: float
    z_max: float
    min_std: float
    peak_decay: float
    damp: float
    range_lift: float
    refractory: int
    refire: float
    open_threshold: float
    close_threshold: float
    confirm_m: int
    confirm_mask: int
    resolve_after: int
    hold_beta: float
    max_episode_s: float
    cooldown_s: float


def params_of(config: PipelineConfig, normaliser: NormaliserConfig) -> Params:
    cal, pol = config.calibration, config.policy
    return Params(
        config.gap_reset_s, config.mature_s, config.range_margin, config.range_warmup,
        normaliser.alpha, normaliser.rel_floor, normaliser.abs_floor, normaliser.day_weight,
        normaliser.level_beta, normaliser.settle,
        cal.alpha, cal.warmup, cal.skip, cal.protect_z, cal.z_half, cal.z_max, cal.min_std, cal.peak_decay,
        cal.damp, cal.range_lift, cal.refractory, cal.refire,
        pol.open_threshold, pol.close_threshold, pol.confirm_m, (1 << pol.confirm_n) - 1, pol.resolve_after,
        pol.hold_beta, pol.max_episode_s, pol.cooldown_s,
    )


class Weights(NamedTuple):
    """One recurrent layer and its linear head, float32."""

    w_ih: np.ndarray  # (G, F)
    w_hh: np.ndarray  # (G, H)
    w_hh_t: np.ndarray  # (H, G) float64, W_hh transposed: the step's inner loop runs along the gates
    b_ih: np.ndarray  # (G,)
    b_hh: np.ndarray  # (G,)
    head_w: np.ndarray  # (H,)
    head_b: np.ndarray  # (1,)
    lstm: bool


def weights_of(model: RecurrentForecaster) -> Weights:
    w_ih, w_hh, b_ih, b_hh = (t.detach().to("cpu", torch.float32).numpy().copy()
                              for t in model.rnn.all_weights[0])
    head_w = model.head.weight.detach().to("cpu", torch.float32).numpy().reshape(-1).copy()
    head_b = model.head.bias.detach().to("cpu", torch.float32).numpy().reshape(-1).copy()
    return Weights(w_ih, w_hh, np.ascontiguousarray(w_hh.T, dtype=np.float64), b_ih, b_hh, head_w, head_b,
                   model.config.cell == "lstm")
