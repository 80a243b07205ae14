"""Half-precision (float16) storage read and written from compiled code, bit for bit as torch and numpy.

numba has no float16 arithmetic on the CPU, so the kernel sees the store's float16 tensors and columns
as their uint16 bit patterns (`ndarray.view(np.uint16)`) and converts here: `to_float` exactly,
`to_bits` with one round-to-nearest-even from float64 (what `ndarray.astype(np.float16)` does) and
`f32_to_bits` the same from float32 (what `Tensor.to(torch.float16)` does), with integer operations on
the float's bits (the hot path: every hidden state value of every step).

>>> import numpy as np
>>> xs = np.array([0.1, -2.5e-6, 65519.0, 65520.0, 1e-8, -0.0, np.nan, 3.14159], dtype=np.float64)
>>> bits = np.array([to_bits(x) for x in xs], dtype=np.uint16)
>>> bool((bits == xs.astype(np.float16).view(np.uint16)).all())
True
>>> [float(to_float(b)) for b in bits[:3]] == [float(v) for v in xs[:3].astype(np.float16)]
True
>>> int(f32_to_bits(np.float32(0.1))) == int(bits[0])
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from streamer.scoring.kernel.jit import jit

_OVERFLOW = 65520.0  # the smallest magnitude that rounds to infinity
_SMALLEST_NORMAL = 2.0**-14
NAN_BITS = np.uint16(0x7E00)
TINY_BITS = np.uint16(0x0400)  # torch.finfo(torch.float16).tiny


@intrinsic
def _bits_intrinsic(typingctx, x):  # type: ignore[no-untyped-def]  # float32 -> its uint32 bit pattern
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _float_intrinsic(typingctx, x):  # type: ignore[no-untyped-def]  # uint32 bit pattern -> its float32
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _double_intrinsic(typingctx, x):  # type: ignore[no-untyped-def]  # int64 bit pattern -> its float64
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


double_of = cast(Callable[[np.int64], float], _double_intrinsic)
_bits_of = cast(Callable[[np.float32], np.uint32], _bits_intrinsic)
_float_of = cast(Callable[[np.uint32], np.float32], _float_intrinsic)
_MAGIC = np.float32(2.0**-14)  # float32 with exponent field 113: rebias of a subnormal half


@jit
def to_float(bits: np.uint16) -> np.float32:
    """float16 bits -> the value as float32 (exact)."""
    h = np.uint32(bits)
    o = np.uint32((h & np.uint32(0x7FFF)) << np.uint32(13))
    exp = o & np.uint32(0x0F800000)
    o = np.uint32(o + np.uint32(112 << 23))
    if exp == np.uint32(0x0F800000):  # infinity or NaN
        o = np.uint32(o + np.uint32(112 << 23))
    elif exp == np.uint32(0):  # zero or subnormal
        o = _bits_of(np.float32(_float_of(np.uint32(o + np.uint32(1 << 23))) - _MAGIC))
    return _float_of(np.uint32(o | ((h & np.uint32(0x8000)) << np.uint32(16))))


@jit
def f32_to_bits(x: np.float32) -> np.uint16:
    """A float32 value -> float16 bits, rounded to nearest even (overflow to infinity)."""
    f: np.uint32 = _bits_of(x)
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    f = f & np.uint32(0x7FFFFFFF)
    if f >= np.uint32(0x47800000):  # 65536 and beyond, infinity, NaN
        o = np.uint32(0x7E00) if f > np.uint32(0x7F800000) else np.uint32(0x7C00)
    elif f < np.uint32(0x38800000):  # below the smallest normal half: let float addition round
        o = np.uint32(_bits_of(np.float32(_float_of(f) + np.float32(0.5))) - np.uint32(0x3F000000))
    else:
        odd = (f >> np.uint32(13)) & np.uint32(1)
        o = np.uint32(f + np.uint32(0xC8000FFF) + odd) >> np.uint32(13)  # rebias 127 -> 15, round
    return np.uint16(o | sign)


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
