"""The recurrent step of one row (one channel of one device), from the torch model's own weights.

It follows `torch.gru_cell` / `torch.lstm_cell` and the linear head operation by operation, each
rounded to float32 as torch rounds it (exp and tanh computed in float64 here, torch's float32 ones
from Sleef: within a unit in the last place) (sums of products are accumulated in float64 and rounded once,
where torch's matrix product accumulates in float32 in an order of its own: the two agree to a unit in
the last place), and the state is stored back at half precision like `StateStore.rows["hidden"]`.

GRU gates are [reset | update | new], LSTM gates [input | forget | cell | output]; an LSTM's state is
[h | c] (see `model.forecaster`).
"""

from __future__ import annotations

import math

import numpy as np

from streamer.scoring.kernel.half import double_of, f32_to_bits, to_float
from streamer.scoring.kernel.jit import jit
from streamer.scoring.kernel.slab import Weights

f32 = np.float32


_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(12))  # exp's series to r^11 (|r| <= ln2 / 2)


@jit
def exp(x: float) -> float:
    """e^x to float64 rounding (|x| <= 700), without a branch or a call, so a loop of them vectorises:
    x = n ln2 + r, e^x = 2^n e^r with e^r from its series (error below 1e-13, r^12 / 12!)."""
    x = min(max(x, -700.0), 700.0)
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _TAYLOR[11]
    for k in range(10, -1, -1):
        p = p * r + _TAYLOR[k]
    return p * double_of(np.int64(int(n) + 1023) << np.int64(52))


@jit
def sigmoid(x: np.float32) -> np.float32:
    return f32(1.0 / (1.0 + exp(-float(x))))


@jit
def tanh(x: np.float32) -> np.float32:
    """1 - 2 / (e^2x + 1) in float64 (its cancellation near 0 costs digits float32 does not keep)."""
    return f32(1.0 - 2.0 / (exp(2.0 * float(x)) + 1.0))


@jit
def gates(zin: np.float32, flag: np.float32, h: np.ndarray, wt: Weights, g: np.ndarray) -> None:
    """Input and hidden projections of every gate row: g[:G] = W_ih x + b_ih, g[G:] = W_hh h + b_hh,
    each float32 (stored in the float64 scratch g (2G,)); h (H or more,) the previous hidden state."""
    n_gates, hidden = wt.w_hh.shape
    acc = g[n_gates:]
    acc[:] = 0.0
    for k in range(hidden):  # along the gates, so the compiler vectorises (each gate's sum keeps its order)
        hk = h[k]
        row = wt.w_hh_t[k]
        for j in range(n_gates):
            acc[j] += row[j] * hk
    for j in range(n_gates):
        g[j] = f32(float(wt.w_ih[j, 0]) * zin + float(wt.w_ih[j, 1]) * flag + wt.b_ih[j])
        acc[j] = f32(acc[j] + wt.b_hh[j])


@jit
def gru_update(h: np.ndarray, g: np.ndarray, hidden: int) -> None:
    """h (H,) <- the GRU's new hidden state from the gate projections g (2G,) (float32 values)."""
    n_gates = 3 * hidden
    for k in range(hidden):
        reset = sigmoid(f32(g[n_gates + k] + g[k]))
        update = sigmoid(f32(g[n_gates + hidden + k] + g[hidden + k]))
        new = tanh(f32(g[2 * hidden + k] + f32(g[n_gates + 2 * hidden + k] * reset)))
        h[k] = f32(f32(f32(h[k] - new) * update) + new)


@jit
def lstm_update(h: np.ndarray, g: np.ndarray, hidden: int) -> None:
    """h (2H,) = [h | c] <- the LSTM's new state from the gate projections g (2G,) (float32 values)."""
    n_gates = 4 * hidden
    for k in range(hidden):
        i_gate = sigmoid(f32(g[n_gates + k] + g[k]))
        f_gate = sigmoid(f32(g[n_gates + hidden + k] + g[hidden + k]))
        c_gate = tanh(f32(g[n_gates + 2 * hidden + k] + g[2 * hidden + k]))
        o_gate = sigmoid(f32(g[n_gates + 3 * hidden + k] + g[3 * hidden + k]))
        c = f32(f32(f_gate * f32(h[hidden + k])) + f32(i_gate * c_gate))
        h[hidden + k] = c
        h[k] = f32(o_gate * tanh(c))


@jit
def step_row(r: int, zin: np.float32, flag: np.float32, hidden_bits: np.ndarray, pred: np.ndarray,
             wt: Weights, h: np.ndarray, g: np.ndarray) -> None:
    """Step row r: clipped z and first-step flag in, the state hidden_bits[r] (S,) float16 bits and the
    forecast pred[r] updated; h (S,) and g (2G,) float64 scratch."""
    size = hidden_bits.shape[1]
    hidden = wt.w_hh.shape[1]
    for k in range(size):
        h[k] = to_float(hidden_bits[r, k])
    gates(zin, flag, h, wt, g)
    if wt.lstm:
        lstm_update(h, g, hidden)
    else:
        gru_update(h, g, hidden)
    acc = 0.0
    for k in range(hidden):
        acc += float(wt.head_w[k]) * h[k]
    pred[r] = f32(acc + wt.head_b[0])
    for k in range(size):
        hidden_bits[r, k] = f32_to_bits(f32(h[k]))
