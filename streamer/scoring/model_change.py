"""What a device keeps when the model that scores it changes: everything but what the model taught.

A device's state mixes what describes the sensor and its normal (the normaliser, the daily profile,
the short-term level and volatility, the running range, the repeat run, how its channels move
together, the calibration of the signals measured on those, its alert state and held normal, an
operator's silence) with what the recurrent model produced (its hidden state and forecast, the
forecast error's short-term bias and spread, and the calibration of the two signals measured on the
forecast error: `FORECAST` and `BIAS`). When a state written by another model version is restored
(a restart on a new model), only the second part is reset: the device keeps scoring and alerting on
every other signal from its first reading, its open episode carries on under the same alert id, and
the two forecast signals warm up again over the calibration's `warmup` readings. The recurrent state
steps from zero (`steps` 0), as after a long gap.

    >>> import numpy as np
    >>> from streamer.scoring.pipeline import ScoringPipeline
    >>> from model.artifact import load
    >>> pipe = ScoringPipeline(load())
    >>> slots, _ = pipe.store.slots_for(["d"], np.array([1]), [None])
    >>> pipe.store.cols["cal_count"][slots] = 100
    >>> forget_the_model(pipe.store, slots)
    >>> pipe.store.cols["cal_count"][slots[0]].tolist()
    [0, 0, 100, 100, 100, 100, 100, 100, 100]
"""

from __future__ import annotations

import numpy as np
import torch

from streamer.scoring.signals import Signal
from streamer.scoring.state_store import StateStore

MODEL_ROWS = ("hidden", "pred", "bias", "resid_var")  # what the model's forecasts produced, per row
MODEL_SIGNALS = (Signal.FORECAST, Signal.BIAS)  # the signals calibrated on its forecast error
_CALIBRATION_FILL = (("cal_count", 0), ("cal_mean", 0.0), ("cal_var", 1.0))


def forget_the_model(store: StateStore, slots: np.ndarray) -> None:
    """Reset what the model produced for these devices (m,), keep the rest (see the module doc)."""
    if len(slots) == 0:
        return
    rows = torch.from_numpy(store.rows_of(slots)[0]).to(store.device)
    for name in MODEL_ROWS:
        store.rows[name][rows] = 0
    model_signals = np.array(MODEL_SIGNALS, dtype=np.int64)
    for name, fill in _CALIBRATION_FILL:
        column = store.cols[name]
        block = column[slots]
        block[:, model_signals] = fill
        column[slots] = block
    store.cols["steps"][slots] = 0


def copy_state(src: StateStore, src_slots: np.ndarray, dst: StateStore, dst_slots: np.ndarray, *,
               part: str = "all") -> None:
    """Copy devices' state, in place, between two stores of one layout (a hot swap's live and incoming
    stores: same state size, columns and blocks; each device with the same channels in both). `part`:
    "all", "model" (only what the model produced) or "sensor" (all but that). Where each store keeps
    its rows and cells, and the checkpointer's bookkeeping, stay as they are."""
    if len(src_slots) == 0:
        return
    src_rows = torch.from_numpy(src.rows_of(src_slots)[0]).to(src.device)
    dst_rows = torch.from_numpy(dst.rows_of(dst_slots)[0]).to(dst.device)
    for name, tensor in src.rows.items():
        if part == "all" or (name in MODEL_ROWS) == (part == "model"):
            dst.rows[name][dst_rows] = tensor[src_rows].to(dst.device)
    for name in _copied_columns(src):
        _copy_column(src.cols[name], src_slots, dst.cols[name], dst_slots, name, part)
    if part != "model":
        for name in src.block_fields:
            cells = torch.from_numpy(src.cells_of(src_slots, name)).to(src.device)
            dst.blocks[name][torch.from_numpy(dst.cells_of(dst_slots, name)).to(dst.device)] = \
                src.blocks[name][cells].to(dst.device)


def _copied_columns(store: StateStore) -> list[str]:
    local = {"row_start", "n_channels", *(b.start_column for b in store.block_fields.values())}
    return [name for name in store.columns if name not in local and not name.startswith("ckpt_")]


def _copy_column(src: np.ndarray, src_slots: np.ndarray, dst: np.ndarray, dst_slots: np.ndarray, name: str,
                 part: str) -> None:
    """One column: per-signal calibration columns split into the model's signals and the others."""
    if part == "all":
        dst[dst_slots] = src[src_slots]
        return
    model = np.array(MODEL_SIGNALS, dtype=np.int64)
    if name in {fill[0] for fill in _CALIBRATION_FILL}:
        block = dst[dst_slots]
        if part == "model":
            block[:, model] = src[src_slots][:, model]
        else:
            kept = block[:, model].copy()
            block = src[src_slots].copy()
            block[:, model] = kept
        dst[dst_slots] = block
    elif (name == "steps") == (part == "model"):
        dst[dst_slots] = src[src_slots]
