"""The Tennessee Eastman figures as JSON-ready dicts and as a readable text table.

Both take ``{detector name: TepFigures}``; the first detector gets the full per-fault columns
(detection rate, delay, episodes, pre-onset false alarms), the others detection rate and delay (their
per-file episodes and false alarms are in the JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from model.evaluation.tep_metrics import UNDETECTABLE, TepFigures

JsonDict = dict[str, object]


def overall_dict(figures: TepFigures) -> JsonDict:
    return {"false_alarm_rate": figures.false_alarm_rate,
            "d00_false_alarm_rate": figures.normal_run_false_alarm_rate,
            "mean_detection_rate_18": figures.mean_detection_rate,
            "mean_detection_rate_21": figures.mean_detection_rate_all}


def figures_json(figures: Mapping[str, TepFigures]) -> JsonDict:
    """``{"faults": {"1": {detector: {...}}, ...}, "overall": {detector: {...}}}``."""
    faults = sorted(next(iter(figures.values())).faults)
    return {"faults": {str(n): {name: asdict(f.faults[n]) for name, f in figures.items()} for n in faults},
            "overall": {name: overall_dict(f) for name, f in figures.items()}}


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _delay(value: int | None) -> str:
    return "never" if value is None else str(value)


def _aligned(rows: list[list[str]]) -> list[str]:
    """Right-justify every column to its widest cell; columns separated by two spaces."""
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_table(figures: Mapping[str, TepFigures]) -> str:
    """Per-fault rows (all detectors side by side), then one overall row per detector."""
    names = list(figures)
    first = figures[names[0]]
    rows = [["fault", f"{names[0]} det", "delay", "episodes", "fa<161"]
            + [cell for name in names[1:] for cell in (f"{name} det", "delay")]]
    for n, f in first.faults.items():
        rows.append([f"{n}{'*' if n in UNDETECTABLE else ''}", _rate(f.detection_rate), _delay(f.delay),
                     str(f.episodes), _rate(f.false_alarm_rate)]
                    + [cell for name in names[1:] for cell in (_rate(figures[name].faults[n].detection_rate),
                                                               _delay(figures[name].faults[n].delay))])
    overall = [["detector", "false alarms %", "d00 alone %", "mean det (18)", "mean det (21)"]]
    overall += [[name, f"{100 * f.false_alarm_rate:.2f}", f"{100 * f.normal_run_false_alarm_rate:.2f}",
                 _rate(f.mean_detection_rate), _rate(f.mean_detection_rate_all)]
                for name, f in figures.items()]
    notes = ["* practically undetectable (IDV 3, 9, 15), left out of the 18-fault mean.",
             "det = share of readings 161..960 flagged; delay = readings from 161 to the first flag;",
             "fa<161 = share of readings 1..160 flagged; false alarms = all of d00 and readings 1..160 of",
             "every file."]
    return "\n".join([*_aligned(rows), "", *_aligned(overall), "", *notes])
