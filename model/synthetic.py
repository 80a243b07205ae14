"""A seeded generator of varied synthetic sensor series: the only data the shipped model is trained on.

Each series mixes a few of the shapes real sensors show: daily / weekly seasonality, slow trends,
random walks, on-off regimes, counts, sawtooth cycles, quantised readings and flat stretches, under
autocorrelated noise, at a random offset and scale. A few rare glitches are left in, so that the model
learns to forecast through an odd value instead of chasing it.
"""

from __future__ import annotations

import numpy as np

PERIODS = np.array([12, 24, 48, 96, 144, 168, 288])


def _ar1(rng: np.random.Generator, n: int, phi: float, scale: float) -> np.ndarray:
    eps = rng.normal(0.0, scale, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + eps[i]
        out[i] = acc
    return out


def _seasonal(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t, dtype=float)
    for _ in range(rng.integers(1, 4)):
        period = rng.choice(PERIODS) * rng.uniform(0.9, 1.1)
        phase = rng.uniform(0, 2 * np.pi)
        shape = np.sin(2 * np.pi * t / period + phase)
        if rng.random() < 0.3:  # peaky daily profile (traffic-like)
            shape = np.exp(2.0 * shape) / np.exp(2.0)
        out += rng.uniform(0.2, 1.0) * shape
    return out


def _regimes(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n)
    i = 0
    level = 0.0
    while i < n:
        length = int(rng.integers(20, 400))
        out[i : i + length] = level
        level = rng.normal(0, 1.0) if rng.random() < 0.5 else 0.0
        i += length
    return out


def _sawtooth(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    period = rng.integers(10, 300)
    return (t % period) / period


def one_series(rng: np.random.Generator, n: int) -> np.ndarray:
    """One synthetic series of n values (float64)."""
    t = np.arange(n, dtype=float)
    kind = rng.integers(0, 6)
    if kind == 0:
        base = _seasonal(rng, t)
    elif kind == 1:
        base = np.cumsum(rng.normal(0, rng.uniform(0.01, 0.2), n))
    elif kind == 2:
        base = _regimes(rng, n) + 0.3 * _seasonal(rng, t) * rng.random()
    elif kind == 3:
        base = _sawtooth(rng, t)
    elif kind == 4:
        base = _seasonal(rng, t) + np.cumsum(rng.normal(0, 0.02, n))
    else:
        base = np.zeros(n)
    base = base + rng.normal(0, 1) * t / n * rng.random()  # slow trend
    noise = _ar1(rng, n, phi=rng.uniform(0.0, 0.95), scale=rng.uniform(0.01, 0.4))
    y = base + noise
    if rng.random() < 0.2:  # counts: Poisson around a positive rate
        rate = np.exp(np.clip(y, -3, 3)) * rng.uniform(1, 50)
        y = rng.poisson(rate).astype(float)
    elif rng.random() < 0.15:  # coarse sensor resolution
        y = np.round(y / rng.uniform(0.05, 0.5))
    if rng.random() < 0.15:  # flat stretches (sensor idle)
        start = int(rng.integers(0, n))
        y[start : start + int(rng.integers(10, n // 2))] = y[start]
    glitches = rng.random(n) < 0.002
    y[glitches] += rng.normal(0, 5 * (y.std() + 1e-3), int(glitches.sum()))
    return rng.uniform(-100, 100) + y * 10 ** rng.uniform(-2, 3)


def make_corpus(n_series: int, length: int, seed: int) -> np.ndarray:
    """(n_series, length) float64 array of synthetic series."""
    rng = np.random.default_rng(seed)
    return np.stack([one_series(rng, length) for _ in range(n_series)])
