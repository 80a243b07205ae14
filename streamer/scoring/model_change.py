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
