"""NAB scoring (Numenta Anomaly Benchmark v1.1), exhaustive threshold sweep, no pandas.

The rules follow NAB's own sweeper (commit ea702d7), summarised in the data set's NOTES.md:
probation ``P = min(floor(0.15 N), 750)`` rows per file; scaled-sigmoid weights; a window earns its
earliest detection's weight (``A_TP`` at its first row) or ``-A_FN``; each detection outside windows
costs its (negative) weight; one threshold per profile over the whole corpus, chosen among 1.1 (no
detection) and every distinct post-probation score, ties going to the higher threshold; scores are
normalised so that the null detector gets 0 and the perfect one 100.

>>> round(float(scaled_sigmoid(np.array(-1.0))), 5)
0.98661
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROBATION_FRACTION = 0.15
PROBATION_CAP = 750
NO_DETECTION_THRESHOLD = 1.1

Limits = list[tuple[np.datetime64, np.datetime64]]
Detections = Mapping[str, tuple[np.ndarray, np.ndarray]]  # key -> (timestamps (N,), scores (N,))


@dataclass(frozen=True)
class Profile:
    """One NAB application profile: the weights of a detected window, a false positive, a miss."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


@dataclass(frozen=True)
class FileTally:
    """One file at the chosen threshold: windows detected / missed, detection rows outside windows."""

    tp: int
    fp: int
    fn: int
    raw_score: float


@dataclass(frozen=True)
class ProfileResult:
    """The best threshold of one profile and the corpus score there.

    ``tp`` / ``fn`` count windows (detected / missed); ``fp`` counts detection rows outside windows.
    """

    profile: str
    threshold: float
    raw_score: float
    normalised_score: float
    tp: int
    fp: int
    fn: int
    per_file: Mapping[str, FileTally]


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are neither scored nor threshold candidates."""
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_CAP)


def scaled_sigmoid(y: np.ndarray) -> np.ndarray:
    """NAB's S(y) = 2 / (1 + e^{5y}) − 1, and −1 for y > 3."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0)


def parse_timestamps(texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """'YYYY-MM-DD HH:MM:SS[.ffffff]' strings -> datetime64[us] (N,)."""
    return np.asarray(texts).astype("datetime64[us]")


def load_windows(path: Path) -> dict[str, Limits]:
    """combined_windows.json -> {"category/file.csv": [(start, end), ...]} in time order."""
    raw = json.loads(Path(path).read_text())
    return {key: [(parse_timestamps([a])[0], parse_timestamps([b])[0]) for a, b in spans]
            for key, spans in raw.items()}


def load_profiles(path: Path) -> dict[str, Profile]:
    """config/profiles.json -> {name: Profile}; A_TN is in the file but NAB never uses it."""
    raw = json.loads(Path(path).read_text())
    return {name: Profile(name, float(p["CostMatrix"]["tpWeight"]), float(p["CostMatrix"]["fpWeight"]),
                          float(p["CostMatrix"]["fnWeight"])) for name, p in raw.items()}


def read_csv_columns(path: Path) -> dict[str, list[str]]:
    """A CSV file with a header row -> {column: [cell, ...]}."""
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        columns: list[list[str]] = [[] for _ in header]
        for row in reader:
            for column, cell in zip(columns, row, strict=True):
                column.append(cell)
    return dict(zip(header, columns, strict=True))


def load_corpus(nab_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """data/<category>/<file>.csv -> {"category/file.csv": (timestamps (N,), values (N,))}."""
    corpus = {}
    for path in sorted((Path(nab_dir) / "data").glob("*/*.csv")):
        cols = read_csv_columns(path)
        key = f"{path.parent.name}/{path.name}"
        corpus[key] = (parse_timestamps(cols["timestamp"]), np.asarray(cols["value"], dtype=np.float64))
    return corpus


@dataclass(frozen=True)
class _Rows:
    """Post-probation rows of a corpus, concatenated in file order, ready for any profile."""

    files: list[str]
    score: np.ndarray  # (M,) anomaly scores
    window: np.ndarray  # (M,) int64 global window id, -1 outside every window
    unit: np.ndarray  # (M,) weight with A_TP = A_FP = 1: S(y)/S(-1) inside windows, S(y) outside
    file_of_row: np.ndarray  # (M,) int64
    file_of_window: np.ndarray  # (K,) int64

    def weights(self, profile: Profile) -> np.ndarray:
        return np.where(self.window >= 0, profile.a_tp, profile.a_fp) * self.unit  # (M,)


def _row_index(ts: np.ndarray, when: np.datetime64, key: str) -> int:
    i = int(np.searchsorted(ts, when))
    if i >= len(ts) or ts[i] != when:
        raise ValueError(f"{key}: window limit {when} is not a row timestamp; windows must come from "
                         "labels/combined_windows.json and the scores must cover every data row")
    return i


def _file_rows(key: str, ts: np.ndarray, limits: Limits) -> tuple[int, np.ndarray, np.ndarray]:
    """One file -> (probation P, local window id (N,), unit weight (N,))."""
    n = len(ts)
    left = np.array([_row_index(ts, a, key) for a, _ in limits], dtype=np.int64)
    right = np.array([_row_index(ts, b, key) for _, b in limits], dtype=np.int64)
    if np.any(right < left) or np.any(left[1:] <= right[:-1]):
        spans = np.stack([left, right], axis=1).tolist()
        raise ValueError(f"{key}: windows must be ordered and disjoint, got rows {spans}")
    i = np.arange(n)
    k = np.searchsorted(left, i, side="right") - 1  # last window starting at or before row i
    kk = np.maximum(k, 0)
    width = (right - left + 1).astype(np.float64)
    inside = (k >= 0) & (i <= right[kk]) if len(limits) else np.zeros(n, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        y_in = -(right[kk] - i + 1) / width[kk] if len(limits) else np.zeros(n)
        y_out = (i - right[kk]) / (width[kk] - 1.0) if len(limits) else np.full(n, np.inf)
    y_out = np.where((k >= 0) & np.isfinite(y_out), y_out, np.inf)  # no earlier window: −1
    unit = np.where(inside, scaled_sigmoid(y_in) / scaled_sigmoid(np.array(-1.0)), scaled_sigmoid(y_out))
    return probation_length(n), np.where(inside, k, -1), unit


def _prepare(detections: Detections, windows: Mapping[str, Limits]) -> _Rows:
    files: list[str] = []
    scores: list[np.ndarray] = []
    wins: list[np.ndarray] = []
    units: list[np.ndarray] = []
    file_ids: list[np.ndarray] = []
    win_files: list[int] = []
    for f, key in enumerate(sorted(detections)):
        if key not in windows:
            raise ValueError(f"{key} has no entry in the windows; score only NAB data files")
        ts = parse_timestamps(detections[key][0])
        score = np.asarray(detections[key][1], dtype=np.float64)
        if ts.shape != score.shape or not np.all(np.isfinite(score)):
            raise ValueError(f"{key}: need finite scores, one per timestamp ({ts.shape} vs {score.shape})")
        p, win, unit = _file_rows(key, ts, windows[key])
        win = win[p:]
        live = np.unique(win[win >= 0])  # windows with a post-probation row are the ones NAB counts
        remap = np.full(len(windows[key]) + 1, -1, dtype=np.int64)
        remap[live] = np.arange(len(live)) + len(win_files)
        files.append(key)
        scores.append(score[p:])
        wins.append(remap[win])
        units.append(unit[p:])
        file_ids.append(np.full(len(win), f, dtype=np.int64))
        win_files.extend([f] * len(live))
    return _Rows(files, np.concatenate(scores), np.concatenate(wins), np.concatenate(units),
                 np.concatenate(file_ids), np.asarray(win_files, dtype=np.int64))


def _sweep(rows: _Rows, profile: Profile) -> float:
    """Best threshold over 1.1 and every distinct score, by one pass over rows sorted by score."""
    weight = rows.weights(profile)  # (M,)
    order = np.argsort(-rows.score, kind="stable")  # (M,) highest score first
    win = rows.window[order]
    delta = np.where(win < 0, weight[order], 0.0)  # FP rows add their weight once detected
    pos = np.flatnonzero(win >= 0)
    pos = pos[np.argsort(win[pos], kind="stable")]  # grouped by window, in sweep order
    wid = win[pos]
    big = len(order) + 1
    earliest = np.minimum.accumulate(order[pos] - wid * big) + wid * big  # per-window running min
    first = np.ones(len(pos), dtype=bool)
    first[1:] = wid[1:] != wid[:-1]
    previous = np.where(first, -profile.a_fn, weight[np.roll(earliest, 1)])
    delta[pos] += weight[earliest] - previous  # 0 unless this row is the window's new earliest
    total = -profile.a_fn * len(rows.file_of_window) + np.cumsum(delta)  # (M,)
    ranked = rows.score[order]
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # last row of each tie group
    top = ranked[0] if len(ranked) else 0.0
    none = NO_DETECTION_THRESHOLD if top < NO_DETECTION_THRESHOLD else float(np.nextafter(top, np.inf))
    thresholds = np.concatenate([[none], ranked[ends]])
    candidates = np.concatenate([[-profile.a_fn * len(rows.file_of_window)], total[ends]])
    return float(thresholds[int(np.argmax(candidates))])  # argmax: first maximum = higher threshold


def _evaluate(rows: _Rows, profile: Profile, threshold: float) -> ProfileResult:
    weight = rows.weights(profile)
    detected = rows.score >= threshold
    n_files, n_windows = len(rows.files), len(rows.file_of_window)
    fp_rows = detected & (rows.window < 0)
    fp_sum = np.bincount(rows.file_of_row[fp_rows], weights=weight[fp_rows], minlength=n_files)
    fp_count = np.bincount(rows.file_of_row[fp_rows], minlength=n_files)
    earliest = np.full(n_windows, len(weight), dtype=np.int64)
    hits = detected & (rows.window >= 0)
    np.minimum.at(earliest, rows.window[hits], np.flatnonzero(hits))
    found = earliest < len(weight)
    part = np.where(found, weight[np.minimum(earliest, len(weight) - 1)], -profile.a_fn)
    win_sum = np.bincount(rows.file_of_window, weights=part, minlength=n_files)
    tp = np.bincount(rows.file_of_window, weights=found, minlength=n_files).astype(int)
    fn = np.bincount(rows.file_of_window, weights=~found, minlength=n_files).astype(int)
    per_file = {key: FileTally(int(tp[f]), int(fp_count[f]), int(fn[f]), float(fp_sum[f] + win_sum[f]))
                for f, key in enumerate(rows.files)}
    raw = math.fsum(fp_sum) + math.fsum(part)
    span = (profile.a_tp + profile.a_fn) * n_windows  # S_perfect − S_null
    normalised = 100.0 * (raw + profile.a_fn * n_windows) / span if span else float("nan")
    return ProfileResult(profile.name, float(threshold), raw, normalised, int(tp.sum()),
                         int(fp_count.sum()), int(fn.sum()), per_file)


def score_corpus(detections: Detections, windows: Mapping[str, Limits],
                 profiles: Mapping[str, Profile]) -> dict[str, ProfileResult]:
    """Sweep every threshold for each profile and score the corpus at the best one.

    ``detections`` maps "category/file.csv" to (timestamps, scores) covering every data row; the
    corpus is its keys, and each must be in ``windows`` (an empty list for files without anomalies).
    """
    rows = _prepare(detections, windows)
    return {name: _evaluate(rows, p, _sweep(rows, p)) for name, p in profiles.items()}


def score_at_threshold(detections: Detections, windows: Mapping[str, Limits], profile: Profile,
                       threshold: float) -> ProfileResult:
    """Score the corpus at a fixed threshold (a row is a detection when its score >= threshold)."""
    return _evaluate(_prepare(detections, windows), profile, threshold)


def _result_key(path: Path, root: Path, known: Mapping[str, Limits]) -> str | None:
    """results/<det>/<cat>/<det>_<file>.csv or <cat>/<file>.csv -> "cat/file.csv" (None if unknown)."""
    category = path.relative_to(root).parts[0]
    for name in (path.name, path.name.split("_", 1)[-1]):
        if f"{category}/{name}" in known:
            return f"{category}/{name}"
    return None


def score_files(nab_dir: Path, results: Path | Mapping[str, Path],
                profiles: Mapping[str, Profile] | None = None) -> dict[str, ProfileResult]:
    """Score per-file CSVs with an ``anomaly_score`` column (and ``timestamp``, else data-row order).

    ``results`` is a directory laid out as NAB's results/<detector>/ (``<category>/<detector>_<file>.csv``)
    or as rnnwatch writes (``<category>/<file>.csv``), or a mapping "category/file.csv" -> CSV path.
    Files that match no labelled data file (NAB's ``*_scores.csv`` summaries) are skipped.
    """
    nab_dir = Path(nab_dir)
    windows = load_windows(nab_dir / "labels" / "combined_windows.json")
    profiles = profiles if profiles is not None else load_profiles(nab_dir / "config" / "profiles.json")
    if isinstance(results, Mapping):
        paths = {key: Path(p) for key, p in results.items()}
    else:
        root = Path(results)
        found = ((_result_key(p, root, windows), p) for p in sorted(root.glob("*/*.csv")))
        paths = {key: p for key, p in found if key is not None}
    if not paths:
        raise ValueError(f"no result CSV under {results} matches a file of {nab_dir}/labels; expected "
                         "<category>/<file>.csv or <category>/<detector>_<file>.csv")
    detections = {}
    for key, path in paths.items():
        cols = read_csv_columns(path)
        if "timestamp" in cols:
            ts = parse_timestamps(cols["timestamp"])
        else:
            ts = parse_timestamps(read_csv_columns(nab_dir / "data" / key)["timestamp"])
        if "anomaly_score" not in cols or len(cols["anomaly_score"]) != len(ts):
            raise ValueError(f"{path}: need an anomaly_score column with one value per row of data/{key}")
        detections[key] = (ts, np.asarray(cols["anomaly_score"], dtype=np.float64))
    return score_corpus(detections, windows, profiles)
