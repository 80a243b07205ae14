"""Tennessee Eastman figures from per-reading decisions: detection rate, delay, episodes, false alarms.

Input is one boolean array per test file (``True`` = flagged / alert open after that reading), keyed by
fault number, ``0`` being the normal run ``d00``. Readings ``0 .. onset-1`` (0-based; 1..160 1-based in
the benchmark) are normal in every file, readings ``onset ..`` are faulty in every file but ``d00``.

- detection rate: share of faulty readings flagged;
- delay: readings from the onset to the first flag at or after it (0 = flagged at the onset, None =
  never);
- episodes: flagged runs that *start* at or after the onset (a run already open at the onset does not
  count);
- false-alarm rate of a file: share of its readings before the onset flagged;
- overall false-alarm rate: share flagged among all of ``d00`` and the pre-onset readings of every fault
  file (each reading counted once);
- mean detection rate over the faults other than 3, 9 and 15 (practically undetectable, left out of the
  literature's averages), and over every fault given.

>>> f = fault_figures(np.array([0, 1, 0, 0, 1, 1, 0, 1], bool), onset=3)
>>> (f.detection_rate, f.delay, f.episodes, f.false_alarm_rate)
(0.6, 1, 2, 0.3333333333333333)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ONSET = 160  # 0-based index of the first faulty reading (reading 161, 1-based)
UNDETECTABLE = frozenset({3, 9, 15})


@dataclass(frozen=True)
class FaultFigures:
    """One fault file's figures (see the module docstring)."""

    detection_rate: float
    delay: int | None
    episodes: int
    false_alarm_rate: float


@dataclass(frozen=True)
class TepFigures:
    """One detector over the whole benchmark."""

    faults: Mapping[int, FaultFigures]  # fault number (1..21) -> figures
    false_alarm_rate: float  # d00 + pre-onset readings of every fault file
    normal_run_false_alarm_rate: float  # d00 alone
    mean_detection_rate: float | None  # faults other than 3, 9, 15 (None when none of them is given)
    mean_detection_rate_all: float


def _as_flags(flags: np.ndarray, onset: int, what: str) -> np.ndarray:
    flags = np.asarray(flags)
    if flags.ndim != 1 or flags.dtype != np.bool_:
        raise ValueError(f"{what}: expected a 1-D bool array of per-reading decisions, got "
                         f"{flags.dtype} {flags.shape}")
    if not 0 < onset < len(flags):
        raise ValueError(f"{what}: onset {onset} must lie inside the {len(flags)} readings")
    return flags


def fault_figures(flags: np.ndarray, onset: int = ONSET) -> FaultFigures:
    """Figures of one fault file: ``flags`` (T,) bool, faulty from index ``onset`` on."""
    flags = _as_flags(flags, onset, "fault_figures")
    after = flags[onset:]
    first = np.flatnonzero(after)
    starts = after & ~flags[onset - 1 : -1]  # (T - onset,) a flag whose previous reading was not flagged
    return FaultFigures(detection_rate=float(after.mean()), delay=int(first[0]) if first.size else None,
                        episodes=int(starts.sum()), false_alarm_rate=float(flags[:onset].mean()))


def tep_figures(flags: Mapping[int, np.ndarray], onset: int = ONSET) -> TepFigures:
    """Figures of one detector: ``flags[0]`` is d00, ``flags[n]`` fault n's file, each (T,) bool."""
    if 0 not in flags:
        raise ValueError("tep_figures: flags[0] (the normal run d00) is missing; "
                         "the false-alarm rate needs it")
    faults = {n: fault_figures(f, onset) for n, f in sorted(flags.items()) if n != 0}
    if not faults:
        raise ValueError("tep_figures: no fault files given (keys other than 0)")
    normal_run = _as_flags(flags[0], onset, "flags[0]")
    before = [_as_flags(flags[n], onset, f"flags[{n}]")[:onset] for n in faults]
    normal = np.concatenate([normal_run, *before])
    counted = [f.detection_rate for n, f in faults.items() if n not in UNDETECTABLE]
    return TepFigures(faults=faults, false_alarm_rate=float(normal.mean()),
                      normal_run_false_alarm_rate=float(normal_run.mean()),
                      mean_detection_rate=float(np.mean(counted)) if counted else None,
                      mean_detection_rate_all=float(np.mean([f.detection_rate for f in faults.values()])))
