"""asvd: ASVD's formula Y = (W S)_r S^{-1}, its optimality in the S-weighted norm, alpha = 0 is spectral,
the refitted bias keeps each unit's mean, and the errors without statistics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import problems, seeded, weight

from nlinit import LayerFunction, LayerStats, init_factors
from nlinit.inits.asvd import asvd_scale

F64 = torch.float64


def inputs(seed: int, n: int, d_in: int) -> torch.Tensor:
    """Inputs with a non-zero mean and very different magnitudes per dimension (what ASVD reacts to)."""
    scales = torch.logspace(-1.5, 1, d_in, dtype=F64)
    return 0.4 + torch.randn(n, d_in, dtype=F64, generator=seeded(seed)) * scales


def function(X: torch.Tensor, bias: torch.Tensor | None = None) -> LayerFunction:
    return LayerFunction.from_stats(LayerStats.from_samples(X, samples=0), bias=bias)


@given(problems(max_dim=9), st.sampled_from([0.25, 0.5, 1.0]))
def test_asvd_is_the_truncated_svd_of_w_s_mapped_back(problem, alpha):
    seed, d_out, d_in, rank = problem
    W, X = weight(seed, d_out, d_in), inputs(seed + 1, 64, d_in)
    fit = init_factors(W, rank, "asvd", function=function(X), alpha=alpha)
    S = X.abs().mean(0) ** alpha  # no entry is near the floor here
    P, s, Qh = torch.linalg.svd(W * S, full_matrices=False)
    expected = (P[:, :rank] * s[:rank]) @ Qh[:rank] / S
    torch.testing.assert_close(fit.U @ fit.V.T, expected, rtol=0, atol=1e-9)  # float64, two SVD routes


@given(problems(max_dim=9))
def test_asvd_never_worse_than_spectral_in_the_weighted_norm(problem):
    """Y minimizes ||(Y - W) S||_F over rank-r Y (Eckart-Young on W S), so no rank-r Y does better."""
    seed, d_out, d_in, rank = problem
    W, X = weight(seed, d_out, d_in), inputs(seed + 1, 64, d_in)
    S = asvd_scale(X.abs().mean(0), 0.5)
    a = init_factors(W, rank, "asvd", function=function(X))
    sp = init_factors(W, rank, "spectral")
    err_a = torch.linalg.norm((a.U @ a.V.T - W) * S)
    err_sp = torch.linalg.norm((sp.U @ sp.V.T - W) * S)
    assert err_a <= err_sp * (1 + 1e-9) + 1e-12  # float64 rounding only


def test_alpha_zero_gives_spectral_factors_exactly():
    W, X = weight(3, 12, 10, dtype=torch.float32), inputs(4, 100, 10)
    a = init_factors(W, 4, "asvd", function=function(X), alpha=0.0)
    sp = init_factors(W, 4, "spectral")
    assert torch.equal(a.U, sp.U) and torch.equal(a.V, sp.V)


def test_bias_keeps_each_units_mean_on_the_calibration_inputs():
    W, X = weight(5, 7, 9), inputs(6, 200, 9)
    b = torch.linspace(-1, 1, 7, dtype=F64)
    fit = init_factors(W, 3, "asvd", function=function(X, bias=b))
    before = (X @ W.T + b).mean(0)
    after = (X @ (fit.U @ fit.V.T).T + fit.bias).mean(0)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    assert not torch.allclose(fit.bias, b)  # it was refitted, not copied


def test_floor_and_all_zero_scale():
    m = torch.tensor([0.0, 1e-12, 2.0], dtype=F64)
    torch.testing.assert_close(asvd_scale(m, 1.0), torch.tensor([2e-6, 2e-6, 2.0], dtype=F64))
    assert torch.equal(asvd_scale(torch.zeros(3, dtype=F64), 0.5), torch.ones(3, dtype=F64))


def test_errors():
    W = weight(0, 6, 5)
    with pytest.raises(ValueError, match=r"init 'asvd' needs the inputs' mean \|x\|"):
        init_factors(W, 2, "asvd", function=LayerFunction(mean=torch.zeros(5, dtype=F64)))
    with pytest.raises(ValueError, match=r"alpha must be a finite number >= 0, got -0.5"):
        init_factors(W, 2, "asvd", function=function(inputs(1, 20, 5)), alpha=-0.5)
