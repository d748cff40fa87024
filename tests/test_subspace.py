"""nlinit.subspace: the truncated SVD (exact Gram path, randomized path, its guard), SVD, top_svd, balance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from strategies import problems, seeded, weight

from nlinit.subspace import (
    SVD,
    _gram_svd,
    _top_eigh,
    balance,
    canonical_signs,
    randomized_svd,
    top_svd,
    truncated_svd,
)

F64 = torch.float64


def _with_spectrum(m: int, n: int, s: torch.Tensor, seed: int) -> torch.Tensor:
    """An m x n matrix with singular values s (len min(m, n)) and random singular vectors."""
    g = seeded(seed)
    U = torch.linalg.qr(torch.randn(m, len(s), dtype=F64, generator=g)).Q
    V = torch.linalg.qr(torch.randn(n, len(s), dtype=F64, generator=g)).Q
    return (U * s) @ V.T


@given(problem=problems(max_dim=12))
def test_gram_path_matches_the_full_svd(problem):
    seed, d_out, d_in, rank = problem
    W = weight(seed, d_out, d_in)
    P, s, Q = truncated_svd(W, rank, method="gram")
    ref = torch.linalg.svdvals(W)[:rank]
    # float64 Gram eigh: relative error ~ eps (s_1 / s_i)^2; random 12 x 12 matrices can be ill-conditioned,
    # and where s_r <= 1e-6 s_1 the full SVD is used, so (s_1 / s_r)^2 <= 1e12 and 1e-3 s_1 is safe.
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-3 * float(ref[0]) + 1e-12)
    # the triplets are singular triplets: W^T P = Q diag(s), and P, Q have orthonormal columns
    torch.testing.assert_close(W.T @ P, Q * s, rtol=0, atol=1e-6 * float(ref[0]) + 1e-12)
    torch.testing.assert_close(P.T @ P, torch.eye(rank, dtype=F64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(40, 90), (90, 40)])
@pytest.mark.parametrize("rank", [1, 7, 20])
def test_top_eigh_subset_equals_full_eigh(shape, rank):
    W = weight(0, *shape)
    G = W @ W.T if shape[0] <= shape[1] else W.T @ W
    evals, E = _top_eigh(G, rank)
    full_vals, full_vecs = torch.linalg.eigh(G)
    torch.testing.assert_close(evals, full_vals.flip(0)[:rank], rtol=1e-12, atol=1e-14)
    # eigenvectors up to sign: |<e_j, f_j>| = 1 (the MP spectrum of a 40 x 90 matrix has distinct values)
    overlap = (E * full_vecs.flip(1)[:, :rank]).sum(0).abs()
    torch.testing.assert_close(overlap, torch.ones(rank, dtype=F64), rtol=0, atol=1e-8)


def test_svd_type():
    W = weight(0, 9, 6)
    svd = truncated_svd(W, 3)
    assert isinstance(svd, SVD) and svd.rank == 3
    U, V = svd.factors()
    torch.testing.assert_close(U.T @ U, V.T @ V)  # balanced
    assert torch.equal(svd.product(), U @ V.T)  # the very matrix a spectral-initialized layer computes
    P, s, Q = svd  # still a tuple
    torch.testing.assert_close(svd.product(), (P * s) @ Q.T, rtol=1e-12, atol=1e-14)


def test_randomized_refuses_a_flat_spectrum():
    # a freshly initialized layer: N(0, 1/n) entries, stable rank ~ m / (1 + sqrt(m/n))^2 >> 3 r
    W = weight(0, 1024, 2048)
    assert randomized_svd(W, 40) is None
    assert torch.equal(truncated_svd(W, 40, method="randomized").s, _gram_svd(W, 40).s)  # the fallback


def test_randomized_is_accurate_where_it_accepts():
    m, n, r = 300, 700, 12
    s = torch.cat([torch.linspace(10.0, 5.0, r, dtype=F64), 0.01 * torch.ones(m - r, dtype=F64)])
    W = _with_spectrum(m, n, s, seed=1)  # a gap at r, as in a trained layer with a few strong directions
    svd = randomized_svd(W, r)
    assert svd is not None
    exact = _gram_svd(W, r)
    # the guard stops when an iteration gains < 1e-5 of the tail energy; with this gap the iteration
    # converges in one step to rounding, so the singular values agree to ~1e-12 relative.
    torch.testing.assert_close(svd.s, exact.s, rtol=1e-10, atol=0)
    # the same subspace: the projector difference is ~ (s_{r+1} / s_r)^(2q+1) ~ 1e-7 or smaller
    dP = svd.Q @ svd.Q.T - exact.Q @ exact.Q.T
    assert float(dP.norm()) < 1e-6
    assert truncated_svd(W, r, method="auto").s.shape == (r,)  # small: auto takes the Gram path


@pytest.mark.parametrize("power", [0.5, 1.0, 1.5])
def test_randomized_keeps_its_promise_on_a_power_law_spectrum(power):
    m, n, r = 400, 900, 10
    s = torch.arange(1, m + 1, dtype=F64) ** -power  # decays like a trained layer's, no gap at r
    W = _with_spectrum(m, n, s, seed=2)
    svd = randomized_svd(W, r)
    assert svd is not None  # k = 2r here: the gains shrink fast enough to converge
    exact = _gram_svd(W, r)
    tail = float(W.square().sum()) - float(exact.s.square().sum())
    deficit = float(exact.s.square().sum() - svd.s.square().sum())
    assert -1e-12 <= deficit <= 1e-4 * tail  # the guard aims at 1e-5 of the tail; 10x margin (measured 7e-7)


def test_top_svd_checks_a_given_svd():
    W = weight(0, 9, 6)
    svd = truncated_svd(W, 3)
    assert top_svd(W, 3, svd) is svd
    with pytest.raises(ValueError, match=r"svd has shapes P \(9, 3\), s \(3,\), Q \(6, 3\); a rank-2 SVD"):
        top_svd(W, 2, svd)


def test_unknown_svd_method():
    with pytest.raises(ValueError, match="unknown method 'lanczos'; available: auto, gram, randomized"):
        truncated_svd(weight(0, 4, 4), 2, method="lanczos")


def test_balance_rewrites_a_product():
    A = weight(0, 8, 3)
    Q = torch.linalg.qr(weight(1, 10, 3)).Q
    U, V = balance(A, Q)
    torch.testing.assert_close(U @ V.T, A @ Q.T, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(U.T @ U, V.T @ V, rtol=1e-10, atol=1e-14)
    assert math.isclose(float((U.T @ U).trace()), float(torch.linalg.svdvals(A).sum()), rel_tol=1e-12)


@given(problem=problems(max_dim=10))
def test_factors_are_canonical(problem):
    seed, d_out, d_in, rank = problem
    W = weight(seed, d_out, d_in)
    Q = truncated_svd(W, rank).Q
    for V in (Q, balance(weight(seed + 1, d_out, rank), Q)[1]):
        peak = V.gather(0, V.abs().argmax(0, keepdim=True))
        assert bool((peak >= 0).all())  # the sign convention: each V column's largest entry is positive
    U, V = canonical_signs(-W[:, :rank], W[:rank].T.clone())
    torch.testing.assert_close(U @ V.T, -W[:, :rank] @ W[:rank], rtol=0, atol=0)  # the product is kept


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)", "silu", "gelu", "relu6"])
def test_normalized_subspace_loss_is_normalized_loss_of_the_projection(act):
    """The per-unit form (cosines only) equals the scale-free objective of Y = W Q Q^T, also with a zero row
    of W (a constant unit) and a row orthogonal to span(Q) (a constant unit of Y)."""
    from nlinit.activations import parse_activation
    from nlinit.objective import normalized_loss
    from nlinit.subspace import normalized_subspace_loss

    W = weight(5, 12, 9).double()
    Q = torch.linalg.qr(torch.randn(9, 3, dtype=torch.float64, generator=seeded(6))).Q
    W[2] = 0.0
    W[7] = torch.randn(9, dtype=torch.float64, generator=seeded(7)) @ (
        torch.eye(9, dtype=torch.float64) - Q @ Q.T
    )
    fast = normalized_subspace_loss(W, Q, parse_activation(act))
    slow = normalized_loss(W, W @ Q @ Q.T, act)
    assert float(fast) == pytest.approx(float(slow), rel=1e-10, abs=1e-12)
    Qg = Q.clone().requires_grad_(True)
    normalized_subspace_loss(W, Qg, parse_activation(act)).backward()
    assert Qg.grad is not None and bool(torch.isfinite(Qg.grad).all())
