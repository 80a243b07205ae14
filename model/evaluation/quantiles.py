"""Quantiles of the normal and F distributions, in the standard library only (scipy is not a dependency).

``normal_ppf`` is Acklam's rational approximation refined by one Halley step on ``math.erfc`` (error
below 1e-13 over (1e-300, 1 - 1e-16)). ``f_ppf`` inverts the F distribution's CDF, the regularised
incomplete beta function ``I_u(d1/2, d2/2)`` at ``u = d1 x / (d1 x + d2)``, by bisection on ``u``; the
incomplete beta is the continued fraction of Numerical Recipes §6.4 (modified Lentz).

>>> round(normal_ppf(0.975), 6)
1.959964
>>> round(f_ppf(0.99, 2, 10), 4)  # closed form for d1 = 2: 5 (0.01^-0.2 - 1)
7.5594
"""

from __future__ import annotations

import math

_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_LOW_TAIL = 0.02425


def _check_probability(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must lie strictly between 0 and 1, got {p}")


def normal_ppf(p: float) -> float:
    """The standard normal quantile: x with P(Z <= x) = p."""
    _check_probability(p)
    if p < _LOW_TAIL or p > 1.0 - _LOW_TAIL:
        q = math.sqrt(-2.0 * math.log(min(p, 1.0 - p)))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
        x = x if p < 0.5 else -x
    else:
        q = p - 0.5
        r = q * q
        x = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
            (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
    e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p  # Halley refinement
    u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if a <= 0.0 or b <= 0.0 or not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def f_ppf(p: float, d1: float, d2: float) -> float:
    """The F(d1, d2) quantile: x with P(F <= x) = p."""
    _check_probability(p)
    if d1 <= 0 or d2 <= 0:
        raise ValueError(f"F degrees of freedom must be positive, got d1={d1}, d2={d2}")
    lo, hi = 0.0, 1.0  # u = d1 x / (d1 x + d2) is increasing in x
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if betainc(d1 / 2.0, d2 / 2.0, mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    u = (lo + hi) / 2.0
    return d2 * u / (d1 * (1.0 - u))
