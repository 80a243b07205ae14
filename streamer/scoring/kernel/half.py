"""Half-precision (float16) storage read and written from compiled code, bit for bit as torch and numpy.

numba has no float16 arithmetic on the CPU, so the kernel sees the store's float16 tensors and columns
as their uint16 bit patterns (`ndarray.view(np.uint16)`) and converts here: `to_float` exactly,
`to_bits` with one round-to-nearest-even from float64 (what `Tensor.to(torch.float16)` does from
float32 and `ndarray.astype(np.float16)` from float64; a float32 value is exact in float64, so one
function serves both).

>>> import numpy as np
>>> xs = np.array([0.1, -2.5e-6, 65519.0, 65520.0, 1e-8, -0.0, np.nan, 3.14159], dtype=np.float64)
>>> bits = np.array([to_bits(x) for x in xs], dtype=np.uint16)
>>> bool((bits == xs.astype(np.float16).view(np.uint16)).all())
True
>>> [float(to_float(b)) for b in bits[:3]] == [float(v) for v in xs[:3].astype(np.float16)]
True
"""

from __future__ import annotations

import math

import numpy as np

from streamer.scoring.kernel.jit import jit

_OVERFLOW = 65520.0  # the smallest magnitude that rounds to infinity
_SMALLEST_NORMAL = 2.0**-14
NAN_BITS = np.uint16(0x7E00)
TINY_BITS = np.uint16(0x0400)  # torch.finfo(torch.float16).tiny


@jit
def to_float(bits: np.uint16) -> np.float32:
    """float16 bits -> the value as float32 (exact)."""
    b = np.int64(bits)
    sign = -1.0 if b & 0x8000 else 1.0
    e = (b >> 10) & 0x1F
    m = b & 0x3FF
    if e == 0:
        return np.float32(sign * math.ldexp(float(m), -24))
    if e == 31:
        return np.float32(sign * math.inf) if m == 0 else np.float32(math.nan)
    return np.float32(sign * math.ldexp(float(1024 + m), int(e) - 25))


@jit
def to_bits(x: float) -> np.uint16:
    """A float64 value -> float16 bits, rounded to nearest even once (overflow to infinity)."""
    if x != x:
        return NAN_BITS
    sign = 0x8000 if (x < 0.0 or (x == 0.0 and math.copysign(1.0, x) < 0.0)) else 0
    a = abs(x)
    if a >= _OVERFLOW:
        return np.uint16(sign | 0x7C00)
    if a < _SMALLEST_NORMAL:
        return np.uint16(sign | int(np.rint(a * 16777216.0)))  # 1024 is the smallest normal's bits
    frac, e = math.frexp(a)  # a = frac * 2**e, frac in [0.5, 1)
    sig = int(np.rint(frac * 2048.0))  # 11 significant bits, in [1024, 2048]
    if sig == 2048:
        sig, e = 1024, e + 1
    return np.uint16(sign | ((e + 14) << 10) | (sig - 1024))
