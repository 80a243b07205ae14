"""The cross-channel relation model (`streamer.scoring.relation`): its packed covariance and the level
of its residuals."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.scoring import relation


def _full_reference(u: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r_k^2 and D^2 straight from the definition, with a full matrix: P = (S + ridge I)^-1."""
    p = torch.linalg.inv(s + relation.RIDGE * torch.eye(s.shape[-1], dtype=s.dtype))
    pu = (p @ u.unsqueeze(-1)).squeeze(-1)
    return pu * pu / torch.diagonal(p, dim1=-2, dim2=-1), (u * pu).sum(-1)


@settings(max_examples=30, deadline=None)
@given(c=st.integers(2, 7), seed=st.integers(0, 2**31 - 1))
def test_packed_covariance_scores_and_learns_like_the_full_matrix(c: int, seed: int) -> None:
    """The block stores each covariance's lower triangle: scoring reads the whole symmetric matrix back
    from it, and learning writes back the lower triangle of the full update."""
    rng = np.random.default_rng(seed)
    m = 3
    x = rng.normal(size=(m, 64, c))
    full = np.einsum("mti,mtj->mij", x, x) / 64  # (m, c, c) positive semi-definite
    lower = np.tril_indices(c)
    cov = torch.from_numpy(full[:, lower[0], lower[1]].astype(np.float32))  # (m, cells(c))
    assert cov.shape[1] == relation.cells(c)
    u = torch.from_numpy(rng.normal(size=(m, c)).astype(np.float32))
    learned = torch.full((m,), 1000.0)
    r2, d2, new = relation.score_and_learn(u, cov, learned, torch.tensor([True, False, True]), 0.01)
    s = torch.from_numpy(full.astype(np.float32)).to(torch.float64)
    want_r2, want_d2 = _full_reference(u.to(torch.float64), s)
    assert torch.allclose(r2, want_r2, rtol=1e-9, atol=1e-9) and torch.allclose(d2, want_d2, rtol=1e-9)
    assert torch.equal(new[1], cov[1])  # not learned: unchanged
    (unpacked,) = relation.unpack(new[0].numpy(), c)
    assert np.allclose(unpacked, unpacked.T) and not np.allclose(unpacked, full[0].astype(np.float32))
    assert np.allclose(relation.unpack(cov[0].numpy(), c)[0], full[0].astype(np.float32))


def test_blocks_above_the_limit_are_packed_one_after_the_other() -> None:
    c = relation.BLOCK + 3
    assert relation.cells(c) == relation.triangle(relation.BLOCK) + relation.triangle(3)
    packed = np.arange(relation.cells(c), dtype=np.float32)
    big, small = relation.unpack(packed, c)
    assert big.shape == (relation.BLOCK, relation.BLOCK) and small.shape == (3, 3)
    assert small[0, 0] == relation.triangle(relation.BLOCK) and small[2, 1] == small[1, 2]


def test_the_residual_level_averages_known_residuals_and_skips_missing_ones() -> None:
    level = torch.zeros(4, dtype=torch.float16)
    rows = torch.tensor([1, 3])
    beta = 1.0 / 16
    out = relation.level_and_update(np.array([16.0, math.nan]), level, rows, beta)
    assert out[0] == 1.0 and math.isnan(out[1])  # 0 + (16 - 0) / 16; a missing residual is NaN
    assert level.tolist() == [0.0, 1.0, 0.0, 0.0]  # only the known row moved
    for _ in range(200):  # a relation that stays broken: the level settles at the residual (within
        out = relation.level_and_update(np.array([9.0, 4.0]), level, rows, beta)  # float16's last steps)
    assert abs(out[0] - 9.0) < 0.09 and abs(out[1] - 4.0) < 0.04
    huge = relation.level_and_update(np.array([1e30, 1e30]), level, rows, 1.0)
    assert np.isfinite(huge).all() and huge.max() == float(torch.finfo(torch.float16).max)  # saturates
