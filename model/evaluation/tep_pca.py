"""PCA process monitoring (Hotelling's T² and Q / SPE), the classical Tennessee Eastman baseline.

Everything is fitted on the normal history alone, nothing on the data it monitors:

- each channel is z-scored with the history's mean and standard deviation (ddof 1);
- the number of components ``k`` is the smallest that explains ``variance`` (default 90 %) of the
  z-scored history's total variance (the eigenvalues of its correlation matrix);
- the T² limit is the F-distribution limit for a new observation,
  ``k (n-1)(n+1) / (n (n-k)) · F_{k, n-k}(confidence)`` (Tracy, Young & Mason 1992);
- the Q limit is Jackson & Mudholkar's (1979), from the residual eigenvalues ``λ_{k+1..}``:
  ``θ_i = Σ λ^i``, ``h0 = 1 - 2 θ1 θ3 / (3 θ2²)``,
  ``Q = θ1 [c √(2 θ2 h0²) / θ1 + 1 + θ2 h0 (h0 - 1) / θ1²]^(1/h0)`` with ``c`` the normal quantile.

Both limits assume Gaussian, independent readings; plant data is autocorrelated, so the false-alarm
rate on fresh normal data is above ``1 - confidence`` (the Tennessee Eastman test runs also spread
wider than the 500-reading history). ``matched_threshold`` is the hindsight alternative: the threshold
that gives a stated false-alarm rate on normal readings one already has labelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.evaluation.quantiles import f_ppf, normal_ppf


@dataclass(frozen=True)
class PcaMonitor:
    """A PCA model of normal operation with its T² and Q control limits."""

    mean: np.ndarray  # (C,) history mean per channel
    std: np.ndarray  # (C,) history standard deviation per channel
    loadings: np.ndarray  # (C, k) principal directions of the z-scored history
    eigenvalues: np.ndarray  # (C,) every eigenvalue of its correlation matrix, descending
    t2_limit: float
    q_limit: float

    @property
    def components(self) -> int:
        return int(self.loadings.shape[1])

    def statistics(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, C) readings -> T² (T,) and Q (T,)."""
        z = (np.asarray(values, dtype=np.float64) - self.mean) / self.std  # (T, C)
        if z.ndim != 2 or z.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (readings, {self.mean.shape[0]}) values, got {np.shape(values)}")
        scores = z @ self.loadings  # (T, k)
        t2 = np.sum(scores**2 / self.eigenvalues[: self.components], axis=1)
        residual = z - scores @ self.loadings.T  # (T, C)
        return t2, np.sum(residual**2, axis=1)


def components_for(eigenvalues: np.ndarray, variance: float) -> int:
    """The smallest number of leading eigenvalues whose share of the total reaches ``variance``."""
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance share must be in (0, 1], got {variance}")
    share = np.cumsum(eigenvalues) / np.sum(eigenvalues)
    return min(int(np.searchsorted(share, variance - 1e-12)) + 1, len(eigenvalues))


def t2_limit(components: int, readings: int, confidence: float) -> float:
    """The F-distribution T² limit for a new observation, ``components`` of ``readings`` fitted."""
    k, n = components, readings
    if not 0 < k < n:
        raise ValueError(f"T² limit needs 0 < components < readings, got {k} of {n}")
    return k * (n - 1) * (n + 1) / (n * (n - k)) * f_ppf(confidence, k, n - k)


def q_limit(residual_eigenvalues: np.ndarray, confidence: float) -> float:
    """Jackson & Mudholkar's Q limit from the eigenvalues left out of the model."""
    lam = np.asarray(residual_eigenvalues, dtype=np.float64)
    if lam.size == 0 or np.sum(lam) <= 0:
        raise ValueError("Q limit needs residual variance: lower the variance share so components < channels")
    theta1, theta2, theta3 = (float(np.sum(lam**i)) for i in (1, 2, 3))
    h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2**2)
    c = normal_ppf(confidence)
    inner = c * math.sqrt(2.0 * theta2 * h0**2) / theta1 + 1.0 + theta2 * h0 * (h0 - 1.0) / theta1**2
    return theta1 * inner ** (1.0 / h0)


def fit_pca(history: np.ndarray, variance: float = 0.90, confidence: float = 0.99) -> PcaMonitor:
    """Fit on (n, C) normal readings; limits at ``confidence`` (see the module docstring)."""
    x = np.asarray(history, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3 or not np.isfinite(x).all():
        raise ValueError(f"history must be a finite (readings, channels) array of 3+ readings, got {x.shape}")
    mean, std = x.mean(axis=0), x.std(axis=0, ddof=1)
    if np.any(std == 0):
        raise ValueError(f"channels {np.flatnonzero(std == 0).tolist()} are constant in the history; "
                         "drop them before fitting")
    z = (x - mean) / std  # (n, C)
    eigenvalues, vectors = np.linalg.eigh(z.T @ z / (len(z) - 1))  # ascending
    eigenvalues, vectors = np.clip(eigenvalues[::-1], 0.0, None), vectors[:, ::-1]
    k = components_for(eigenvalues, variance)
    return PcaMonitor(mean=mean, std=std, loadings=vectors[:, :k], eigenvalues=eigenvalues,
                      t2_limit=t2_limit(k, len(z), confidence), q_limit=q_limit(eigenvalues[k:], confidence))


def matched_threshold(normal_statistic: np.ndarray, false_alarm_rate: float) -> float:
    """Hindsight: the lowest observed threshold at which at most ``false_alarm_rate`` of the labelled
    normal readings lie strictly above it (flag = statistic > threshold).

    >>> matched_threshold(np.arange(1.0, 101.0), 0.05)
    95.0
    """
    stat = np.sort(np.asarray(normal_statistic, dtype=np.float64))[::-1]  # descending
    if stat.size == 0 or not 0.0 <= false_alarm_rate <= 1.0:
        raise ValueError(f"need normal readings and a rate in [0, 1], got {stat.size} and {false_alarm_rate}")
    allowed = math.floor(false_alarm_rate * stat.size + 1e-9)
    return float(stat[min(allowed, stat.size - 1)])
