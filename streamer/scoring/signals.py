"""The evidence signals: one named column each, in the order the calibration holds them.

Per reading, every signal is one non-negative number for the device (NaN: "not available yet", which
neither scores nor teaches, see `calibration`). Per-channel signals are the largest over the device's
channels, so a fault on one channel of many is not diluted by the healthy ones; the channel that
gave the winning signal its value is what an alert attributes.

    >>> Signal.RELATION.label, len(Signal), [s.name for s in PER_CHANNEL][:2]
    ('relation', 9, ['FORECAST', 'BIAS'])
"""

from __future__ import annotations

import enum


class Signal(enum.IntEnum):
    """Evidence columns. Values are positions in the calibration's per-signal state: append only."""

    FORECAST = 0  # squared one-step forecast error, in units of the channel's usual error (`evidence`)
    BIAS = 1  # squared short-term average of that signed error: a forecast that keeps missing one way
    DEVIATION = 2  # z^2: the value against the normaliser's running mean (or the held one, see `calibration`)
    PROFILE = 3  # squared deviation of z from its time-of-day profile: a broken daily pattern
    LEVEL = 4  # squared short-term level of z: a sustained shift the one-step forecast stops seeing
    VOLATILITY = 5  # short-term mean of z^2: a channel that got noisier without moving its mean
    REPEAT = 6  # the device's run of exactly repeated values beyond a grace: a stuck sensor (`evidence`)
    RELATION = 7  # largest short-term level of the conditional residual r_k^2: a channel the others no
    # longer predict (`relation`)
    JOINT = 8  # Mahalanobis distance D^2 of all channels against their learned covariance (`relation`)

    @property
    def label(self) -> str:
        return self.name.lower()


SIGNALS = len(Signal)
PER_CHANNEL = (Signal.FORECAST, Signal.BIAS, Signal.DEVIATION, Signal.PROFILE, Signal.LEVEL,
               Signal.VOLATILITY, Signal.RELATION)  # the per-channel table's columns, in this order
COLUMN_OF = {sig: k for k, sig in enumerate(PER_CHANNEL)}  # Signal -> its column of the per-channel table
# Signal -> the per-channel table column that attributes it to channels: its own for a per-channel signal,
# the relation residual's for the joint distance, REPEAT_RUNS for the repeat run (each row's own run)
REPEAT_RUNS = -1
SHARE_COLUMN = tuple(COLUMN_OF.get(sig, COLUMN_OF[Signal.RELATION] if sig is Signal.JOINT else REPEAT_RUNS)
                     for sig in Signal)
