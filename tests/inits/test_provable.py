"""init 'provable': within eps ||W||_F^2 of the NLRA optimum (docs/theory.md, section 8), by brute force.

The brute force below is independent of the library: its own numpy F(S) = sum_i a_i^2 k(rho_i(S))^2, a dense
grid (d = 2, 3) or many random subspaces (d >= 4) of the Grassmannian, and BFGS from the best few. It is
checked to be at least as good as the algorithm's net itself (so it is the finer search).
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize, minimize_scalar
from strategies import seeded

from nlinit.inits import init_factors, init_options, list_inits
from nlinit.inits.provable import (
    ProvableSolution,
    _grid_batch,
    _make_plan,
    _margin,
    _net_bases,
    _search_net,
    provable,
    provable_net,
    provable_solve,
)
from nlinit.objective import nlra_loss

F64 = torch.float64


def _weight(seed: int, d_out: int, d_in: int, spread: float = 0.0) -> torch.Tensor:
    """N(0, 1/d_in) entries, rows rescaled by exp(spread * N(0, 1)) to make unequal unit norms."""
    gen = seeded(seed)
    W = torch.randn(d_out, d_in, dtype=F64, generator=gen) / math.sqrt(d_in)
    return W * torch.exp(spread * torch.randn(d_out, 1, dtype=F64, generator=gen))


def _spec(alpha: float) -> str:
    return {0.0: "relu", 1.0: "identity"}.get(alpha, f"leaky_relu({alpha})")


def _R(W: torch.Tensor, U: torch.Tensor, V: torch.Tensor, alpha: float) -> float:
    return nlra_loss(W, U @ V.T, _spec(alpha)).item()


# ------------------------------------------------------------------------------------ brute force (numpy)


def _k(rho: np.ndarray, alpha: float) -> np.ndarray:
    g = (np.sqrt(1 - rho * rho) + (np.pi - np.arccos(rho)) * rho) / np.pi
    return (2 * alpha * rho + (1 - alpha) ** 2 * g) / (1 + alpha * alpha)


def _F(W: np.ndarray, proj2: np.ndarray, alpha: float) -> np.ndarray:
    """F = sum_i a_i^2 k(rho_i)^2 from ||P_S w_i||^2 (..., d_out)."""
    a2 = (W * W).sum(1)
    rho = np.sqrt(np.clip(proj2 / a2, 0.0, 1.0))
    return (a2 * _k(rho, alpha) ** 2).sum(-1)


def _F_basis(W: np.ndarray, B: np.ndarray, alpha: float) -> float:
    Q = np.linalg.qr(B.reshape(W.shape[1], -1))[0]
    return float(_F(W, ((W @ Q) ** 2).sum(1), alpha))


def _brute_max_F(W: np.ndarray, r: int, alpha: float, seed: int = 0) -> float:
    """max_S F(S) over r-dim subspaces of R^d: a fine search, then BFGS from the 8 best."""
    d = W.shape[1]
    rng = np.random.default_rng(seed)
    if r == d:
        return float(_F(W, (W * W).sum(1), alpha))
    if d == 2:  # lines at 20001 angles: spacing 1.6e-4 rad
        th = np.linspace(0, np.pi, 20001)
        bases = np.stack([np.cos(th), np.sin(th)], 1)[:, :, None]
    elif d == 3:  # Fibonacci sphere, 60000 unit vectors (spacing ~0.015 rad); r = 2: their complements
        i = np.arange(60000) + 0.5
        z, phi = 1 - 2 * i / 60000, np.pi * (1 + 5**0.5) * i
        u = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)
        # r = 2: the plane orthogonal to u, spanned by the first two columns of a QR of I - u u^T
        # (rank 2; columns of Q past the rank may be arbitrary, so take an explicit orthonormal pair).
        helper = np.where(np.abs(u[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
        e1 = np.cross(u, helper)
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        bases = u[:, :, None] if r == 1 else np.stack([e1, np.cross(u, e1)], 2)
    else:  # 100000 random subspaces
        bases = np.linalg.qr(rng.standard_normal((100000, d, r)))[0]
    values = _F(W, (np.einsum("md,ndr->nmr", W, bases) ** 2).sum(2), alpha)
    best = float(values.max())
    for j in np.argsort(values)[-8:]:
        res = minimize(lambda b: -_F_basis(W, b, alpha), bases[j].ravel(), method="BFGS")
        best = max(best, -float(res.fun))
    return best


def _brute_R(W: torch.Tensor, r: int, alpha: float) -> float:
    """min R over rank <= r by Theorem 2.1: (1 + alpha^2)/2 (||W||_F^2 - max F)."""
    Wn = W.numpy()
    return (1 + alpha * alpha) / 2 * (float((Wn * Wn).sum()) - _brute_max_F(Wn, r, alpha))


# ------------------------------------------------------------------------------------------------ tests


def test_registered():
    assert "provable" in list_inits()
    assert init_options("provable") == ["eps", "max_points", "polish"]


@pytest.mark.parametrize(
    ("d_out", "d_in", "rank", "eps", "alpha"),
    [
        (5, 2, 1, 0.05, 0.0),
        (8, 3, 1, 0.05, 0.0),
        (8, 3, 2, 0.05, 0.2),
        (8, 4, 1, 0.05, 0.0),
        (6, 4, 1, 0.1, -0.5),
        (8, 4, 2, 0.15, 0.0),
    ],
)
def test_within_eps_of_brute_force(d_out, d_in, rank, eps, alpha):
    W = _weight(d_out * 10 + d_in, d_out, d_in, spread=1.0)
    fro2 = W.square().sum().item()
    tol = 1e-9 * fro2  # float64 rounding of O(||W||^2) sums; BFGS stops at ~1e-9 relative gradient
    brute = _brute_R(W, rank, alpha)
    net = provable_solve(W, rank, eps, alpha, polish=False)
    sol = provable_solve(W, rank, eps, alpha)
    # The brute force is the finer search: at least as good as the best point of the net.
    assert brute <= net.objective + tol
    # The theorem: R(provable) <= min R + eps ||W||_F^2, for the net alone and after polishing.
    for s in (net, sol):
        assert s.objective <= brute + eps * fro2
        assert s.objective - brute <= s.guarantee + tol  # the certificate is valid ...
        assert s.lower_bound <= brute + tol  # ... as a lower bound on every rank-r Y
        assert s.guarantee <= eps * fro2 * (1 + 1e-9)
    assert sol.objective <= net.objective + tol  # polishing only improves
    # The reported objective is the objective of the returned factors (closed form, Theorem 1.4).
    assert _R(W, sol.U, sol.V, alpha) == pytest.approx(sol.objective, abs=tol)
    assert (sol.net_size, sol.k, sol.n) == (net.net_size, net.k, net.n)
    assert provable_net(W, rank, eps, alpha) == (float(sol.net_size), sol.k, sol.n)


@pytest.mark.parametrize(
    ("d_out", "d_in", "rank", "eps", "alpha"), [(8, 4, 2, 0.2, 0.0), (7, 3, 1, 0.1, 0.2), (6, 4, 1, 0.1, 0.0)]
)
def test_never_beaten_by_relu_svd_or_lfai_ws(d_out, d_in, rank, eps, alpha):
    W = _weight(d_out + d_in, d_out, d_in, spread=1.0)
    fro2 = W.square().sum().item()
    U, V = init_factors(W, rank, "provable", _spec(alpha), eps=eps)
    sol = provable_solve(W, rank, eps, alpha)
    assert torch.equal(U, sol.U) and torch.equal(V, sol.V)
    ours = _R(W, U, V, alpha)
    for method, options in (("relu-svd", {}), ("lfai-ws", {"objective": "exact"})):
        other = _R(W, *init_factors(W, rank, method, _spec(alpha), **options), alpha)
        assert ours <= other + eps * fro2
        assert sol.lower_bound <= other + 1e-12 * fro2  # the certificate bounds every rank-r Y
    # relu-svd's subspace is a candidate of the net, and polishing only improves: never worse at all.
    rsvd = _R(W, *init_factors(W, rank, "relu-svd", _spec(alpha)), alpha)
    assert ours <= rsvd + 1e-12 * fro2


@given(
    seed=st.integers(0, 2**31 - 1),
    d_out=st.integers(1, 6),
    d_in=st.integers(1, 4),
    rank_frac=st.floats(0.0, 1.0),
    eps=st.sampled_from([0.2, 0.3, 0.6]),
    alpha=st.sampled_from([0.0, 0.2, -0.5, 1.0]),
    dtype=st.sampled_from([torch.float32, F64]),
)
def test_properties(seed, d_out, d_in, rank_frac, eps, alpha, dtype):
    rank = 1 + int(rank_frac * (min(d_out, d_in) - 1))
    W64 = _weight(seed, d_out, d_in, spread=0.5)
    W = W64.to(dtype)
    W_before = W.clone()
    sol = provable_solve(W, rank, eps, alpha)
    assert torch.equal(W, W_before)
    assert isinstance(sol, ProvableSolution)
    assert sol.U.shape == (d_out, rank) and sol.V.shape == (d_in, rank)
    assert sol.U.dtype == dtype and sol.V.dtype == dtype
    assert torch.isfinite(sol.U).all() and torch.isfinite(sol.V).all()
    W64 = W.double()  # the problem actually solved
    fro2 = W64.square().sum().item()
    tol = 1e-9 * fro2 if dtype == F64 else 1e-5 * fro2  # float32 factors carry ~1e-7 relative rounding
    assert 0.0 <= sol.guarantee <= eps * fro2 * (1 + 1e-9)
    assert sol.lower_bound <= sol.objective + 1e-12 * fro2  # not just clipped at 0
    assert _R(W64, sol.U.double(), sol.V.double(), alpha) == pytest.approx(sol.objective, abs=tol)
    # The lower bound is below the objective of every rank-r Y tried: the SVD-based inits and random ones.
    gen = torch.Generator().manual_seed(seed)
    candidates = [init_factors(W64, rank, m, _spec(alpha)) for m in ("spectral", "relu-svd")]
    for _ in range(3):
        U = torch.randn(d_out, rank, dtype=F64, generator=gen)
        candidates.append((U, W64.T @ torch.randn(d_out, rank, dtype=F64, generator=gen)))
    for U, V in candidates:
        assert sol.lower_bound <= _R(W64, U, V, alpha) + 1e-12 * fro2
    assert sol.objective <= _R(W64, *candidates[1], alpha) + 1e-12 * fro2  # never worse than relu-svd
    if alpha == 1.0:  # Eckart-Young: exact, no net; the guarantee is the floating-point margin alone
        assert sol.net_size == 1 and sol.guarantee == pytest.approx(2 * sol.rounding_margin, rel=1e-6)
        assert sol.objective == pytest.approx(_R(W64, *candidates[0], 1.0), abs=1e-12 * fro2)


@pytest.mark.parametrize("alpha", [0.0, 0.2])
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(3, 8), r=st.integers(1, 3), eps=st.floats(0.05, 0.5))
def test_net_no_larger_than_the_theorem_bound(alpha, seed, d, r, eps):
    # Theorem P.6(iii): k0 = min(min(d_out, d_in), max(r, ceil(16 r c^2 / eps^2) - 1)) and
    # n0 = ceil(4 c sqrt(r (k0 - r)) / eps) are feasible; the algorithm picks the smallest feasible net, so
    # it is never larger than C(k0, r) (n0 + 1)^(r (k0 - r)) + 1.
    r = min(r, d)
    W = _weight(seed, 9, d, spread=1.0)
    c = (1 + alpha * alpha) / 2
    # in floating point the plan's budget is eps less 2 c mu / ||W||_F^2 (the margin, ~1e-12 here)
    eps = eps - 2 * c * _margin(9, d, r, 1.0)
    k0 = min(d, max(r, math.ceil(16 * r * c * c / eps**2) - 1))
    n0 = math.ceil(4 * c * math.sqrt(r * (k0 - r)) / eps)
    bound = 1 if k0 == r else math.comb(k0, r) * (n0 + 1) ** (r * (k0 - r)) + 1
    size, k, n = provable_net(W, r, eps + 2 * c * _margin(9, d, r, 1.0), alpha)
    assert size <= bound
    assert r <= k <= d and (n == 0) == (k == r) == (size == 1)
    # The plan's two error terms are the lemmas' (P.4: leaving T; P.3, P.5: rounding to the grid), and
    # together they meet the budget eps ||W||_F^2 / c.
    plan = _make_plan(W, r, eps + 2 * c * _margin(9, d, r, 1.0), alpha)[0]
    s = torch.linalg.svdvals(W)
    fro = W.norm().item()
    eta_red = 2 * fro * s[k : k + r].square().sum().sqrt().item()
    if n == 0:
        k0 = (1 - alpha) ** 2 / (
            math.pi * (1 + alpha**2)
        )  # k(0): every subspace is within (1 - k0^2) ||W||^2
        assert plan.eta_red == pytest.approx(min(eta_red, (1 - k0**2) * fro**2), rel=1e-9)
    else:
        assert plan.eta_red == pytest.approx(eta_red, rel=1e-9, abs=1e-12 * fro**2)
        lip = 2 * fro * s[:k].square().sum().sqrt().item() * math.sqrt(r * (k - r))
        assert plan.eta_net == pytest.approx(lip / n, rel=1e-9)
    assert c * (plan.eta_red + plan.eta_net) <= eps * fro**2 * (1 + 1e-12)  # eps less the margin


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 5), r_frac=st.floats(0, 1), n=st.integers(1, 6))
def test_net_covers_the_grassmannian(seed, k, r_frac, n):
    # Lemma P.5: every r-dim S in R^k has a basis [I; X] on its maximal-volume pivot rows with |X_ij| <= 1;
    # the net point with X rounded to the grid is within sqrt(r (k - r)) / n of S in projector distance.
    r = 1 + int(r_frac * (k - 2))
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((k, r))
    pivots = max(itertools.combinations(range(k), r), key=lambda J: abs(np.linalg.det(B[list(J)])))
    X = B @ np.linalg.inv(B[list(pivots)])
    rest = [i for i in range(k) if i not in pivots]
    assert np.abs(X).max() <= 1 + 1e-12 and np.allclose(X[list(pivots)], np.eye(r))
    digits = np.rint((X[rest] + 1) * n / 2).astype(np.int64)  # nearest grid point -1 + 2 j / n
    index = int((digits.ravel() * (n + 1) ** np.arange(digits.size)).sum())
    Xg = _grid_batch(torch.tensor([index]), n, (k - r, r), F64)[0].numpy()
    assert np.abs(Xg - X[rest]).max() <= 1 / n + 1e-12
    Qn = _net_bases(torch.from_numpy(Xg)[None], pivots, k)[0].numpy()
    Qs = np.linalg.qr(B)[0]
    dist = np.linalg.norm(Qs @ Qs.T - Qn @ Qn.T, 2)
    assert dist <= math.sqrt(r * (k - r)) / n + 1e-12


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 4), r_frac=st.floats(0, 1), n=st.integers(1, 3))
def test_search_net_matches_an_independent_enumeration(alpha, seed, k, r_frac, n):
    # The net is every pivot set J and every X in {-1, -1 + 2/n, ..., 1}^((k-r) x r); its value is max F(N),
    # its certificate max_N sum_i a_i^2 k(min(1, rho_i(N) + delta tau_i))^2 with delta = sqrt(r (k - r)) / n.
    r = 1 + int(r_frac * (k - 2))
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((5, k))  # coordinates of P_T w_i
    a2 = (Z * Z).sum(1) + rng.uniform(0, 1, 5)  # ||w_i||^2 >= ||P_T w_i||^2
    a2[0] = (Z[0] ** 2).sum()  # one row inside T
    delta = math.sqrt(r * (k - r)) / n
    tau = np.sqrt((Z * Z).sum(1) / a2)
    values, cells = [], []
    grid = -1 + 2 * np.arange(n + 1) / n
    for J in itertools.combinations(range(k), r):
        rest = [i for i in range(k) if i not in J]
        for entries in itertools.product(grid, repeat=r * (k - r)):
            B = np.zeros((k, r))
            B[list(J)] = np.eye(r)
            B[rest] = np.reshape(entries, (k - r, r))
            Q = np.linalg.qr(B)[0]
            rho = np.sqrt(np.clip(((Z @ Q) ** 2).sum(1) / a2, 0, 1))
            values.append((a2 * _k(rho, alpha) ** 2).sum())
            cells.append((a2 * _k(np.minimum(1, rho + delta * tau), alpha) ** 2).sum())
    best, upper, Q = _search_net(torch.from_numpy(Z), torch.from_numpy(a2), r, n, alpha)
    assert best == pytest.approx(max(values), rel=1e-12)
    assert upper == pytest.approx(max(cells), rel=1e-12)
    Qn = Q.numpy()
    rho = np.sqrt(np.clip(((Z @ Qn) ** 2).sum(1) / a2, 0, 1))
    assert (a2 * _k(rho, alpha) ** 2).sum() == pytest.approx(best, rel=1e-12)  # the returned basis


@given(seed=st.integers(0, 2**31 - 1), d=st.integers(2, 6), r_frac=st.floats(0, 1), k_frac=st.floats(0, 1))
def test_dimension_reduction_lemma(seed, d, r_frac, k_frac):
    # Lemma P.4: for every S (dim r) the subspace S'' = P_T S (padded to dim r inside T) has
    # F(S) <= F(S'') + 2 ||W||_F (sigma_{k+1}^2 + ... + sigma_{k+r}^2)^{1/2}; checked at random S, ReLU.
    rng = np.random.default_rng(seed)
    r = 1 + int(r_frac * (d - 1))
    k = r + int(k_frac * (d - r))
    W = rng.standard_normal((7, d)) * np.exp(rng.standard_normal((7, 1)))
    _, s, Vt = np.linalg.svd(W)
    T = Vt[:k].T
    for _ in range(20):
        S = np.linalg.qr(rng.standard_normal((d, r)))[0]
        C = T.T @ S  # (k, r): P_T S in T's coordinates; pad with T's other directions up to rank r
        Ub, sv, _ = np.linalg.svd(C)
        rank = int((sv > 1e-12).sum())
        S2 = T @ np.concatenate([Ub[:, :rank], Ub[:, rank:r]], 1)
        eta_red = 2 * np.linalg.norm(W) * np.sqrt((s[k : k + r] ** 2).sum())
        f_s = _F(W, ((W @ S) ** 2).sum(1), 0.0)
        f_s2 = _F(W, ((W @ S2) ** 2).sum(1), 0.0)
        assert f_s <= f_s2 + eta_red + 1e-12 * (W * W).sum()


def test_dimension_reduction_with_a_decaying_spectrum():
    # W = P diag(s) Q^T with s falling fast: the net covers only the top-k right singular subspace (k < d_in),
    # and the result is still within eps of brute force over all of Gr(1, 6).
    gen = torch.Generator().manual_seed(3)
    P = torch.linalg.qr(torch.randn(9, 6, dtype=F64, generator=gen))[0]
    Q = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=gen))[0]
    W = P * torch.tensor([1.0, 0.8, 0.1, 0.02, 0.01, 0.005], dtype=F64) @ Q.T
    eps = 0.05
    sol = provable_solve(W, 1, eps)
    assert sol.k < 6
    brute = _brute_R(W, 1, 0.0)
    fro2 = W.square().sum().item()
    assert sol.objective <= brute + eps * fro2
    assert sol.lower_bound <= brute + 1e-9 * fro2


def test_exact_cases():
    # rank(W) <= r: some S contains every w_i, so min R = 0, and the net's k = r subspace is that S.
    u = torch.tensor([[1.0], [-2.0], [0.5], [0.0]], dtype=F64)
    W = u @ torch.tensor([[0.3, -1.0, 2.0]], dtype=F64)  # rank 1, with a zero row
    sol = provable_solve(W, 1, 0.01)
    assert (sol.net_size, sol.k) == (1, 1)
    fro2 = W.square().sum().item()
    assert sol.objective <= 1e-12 * fro2
    assert sol.guarantee <= 2 * sol.rounding_margin + 1e-12 * fro2  # only the floating-point margin
    assert sol.rounding_margin <= 1e-11 * fro2
    assert torch.allclose(sol.U @ sol.V.T, W, atol=1e-12)
    # eps >= c (1 - k(0)^2): any single subspace meets it, so the net is relu-svd's subspace alone.
    W = _weight(0, 7, 5)
    sol = provable_solve(W, 2, 0.5, polish=False)
    assert sol.net_size == 1
    Ur, Vr = init_factors(W, 2, "relu-svd")
    assert torch.allclose(sol.U @ sol.V.T, Ur @ Vr.T, atol=1e-12)


_W = _weight(0, 6, 4)
_NAN = _W.clone()
_NAN[2, 3] = float("nan")
_SILU = r"init 'provable' needs the closed-form .* 'silu'; available: identity, leaky_relu, relu"


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "error", "message"),
    [
        (init_factors, (_W, 2, "provable"), {"eps": 0.0}, ValueError, r"eps must be a positive .*got 0\.0"),
        (init_factors, (_W, 2, "provable"), {"eps": -0.1}, ValueError, r"eps must be .*got -0\.1"),
        (init_factors, (_W, 2, "provable"), {"eps": math.nan}, ValueError, r"eps must be .*got nan"),
        (init_factors, (_W, 2, "provable"), {"eps": True}, ValueError, r"eps must be .*got True"),
        (
            init_factors,
            (_W, 2, "provable"),
            {"max_points": 0},
            ValueError,
            "max_points must be a positive int",
        ),
        (init_factors, (_W, 2, "provable"), {"polish": "yes"}, ValueError, "polish must be True or False"),
        (init_factors, (_W, 2, "provable", "silu"), {}, ValueError, _SILU),
        (provable, (_W, 2), {"activation": "silu"}, ValueError, _SILU),
        (provable, (_W, 2), {"activation": "nope"}, ValueError, "unknown activation 'nope'"),
        (provable, (_W.int(), 2), {}, TypeError, "W must be a floating-point tensor, got dtype torch.int32"),
        (provable_solve, (_NAN, 1), {}, ValueError, r"W has 1 non-finite \(NaN or Inf\) entries"),
        (provable_solve, (_W[0], 1), {}, ValueError, "W must be a 2-D"),
        (provable_solve, ([[1.0]], 1), {}, TypeError, "W must be a torch.Tensor, got list"),
        (provable_solve, (_W, 0), {}, ValueError, r"rank must be an int in \[1, 4\] for a 6x4 weight, got 0"),
        (provable_solve, (_W, 5), {}, ValueError, r"rank must be an int in \[1, 4\] .* got 5"),
        (provable_solve, (_W, 1.0), {}, ValueError, r"rank must be an int .* got 1\.0"),
        (provable_solve, (_W, 1, 0.1, math.nan), {}, ValueError, "alpha must be a finite number .* got nan"),
        (provable_solve, (_W, 1, 0.1, True), {}, ValueError, "alpha must be a finite number .* got True"),
        (
            provable_solve,
            (_W, 1, 0.1, 0.0),
            {"max_points": 2.5},
            ValueError,
            "max_points must be a positive int",
        ),
        # below the floating-point margin no net can certify it: refused, with the smallest eps there is
        (
            provable_solve,
            (_W, 1, 1e-15),
            {},
            ValueError,
            r"eps=1e-15 is below the floating-point margin .* exceed",
        ),
        (provable_net, (_W, 1, 1e-15), {}, ValueError, "eps=1e-15 is below the floating-point margin"),
        (provable_net, (_W, 1, 0.1, math.inf), {}, ValueError, "alpha must be a finite number .* got inf"),
        (provable_net, (_W, 1, "0.1"), {}, ValueError, r"eps must be a positive finite number .*got '0\.1'"),
        (provable_net, (_NAN, 1), {}, ValueError, "W has 1 non-finite"),
        (provable_net, (_W, 7), {}, ValueError, r"rank must be an int in \[1, 4\]"),
    ],
)
def test_bad_input_raises_and_changes_nothing(fn, args, kwargs, error, message):
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(error, match=message):
        fn(*args, **kwargs)
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_degenerate_inputs():
    """W = 0: zero factors, objective = lower bound = guarantee = 0 (Y = 0 is optimal); zero rows change
    nothing for the other rows' problem."""
    sol = provable_solve(torch.zeros(5, 3, dtype=F64), 2, 0.1)
    assert (sol.objective, sol.lower_bound, sol.guarantee, sol.net_size) == (0.0, 0.0, 0.0, 1)
    assert not sol.U.any() and not sol.V.any()
    W = _weight(4, 6, 3)
    Wz = torch.cat([W, torch.zeros(2, 3, dtype=F64)])
    a, b = provable_solve(W, 1, 0.2), provable_solve(Wz, 1, 0.2)
    assert b.objective == pytest.approx(a.objective, rel=1e-12)
    assert b.lower_bound <= a.objective + 1e-12


def test_too_large_net_is_refused_with_a_fitting_eps():
    W = _weight(1, 8, 8)
    W_before = W.clone()
    pattern = (
        r"provable: the net for rank 2 at eps=0\.05 has (\S+) points \(k=(\d+) of 8\), over max_points=1000; "
        r"use eps >= (\S+), a lower rank, or a larger max_points"
    )
    with pytest.raises(ValueError, match=pattern) as info:
        provable_solve(W, 2, 0.05, max_points=1000)
    assert torch.equal(W, W_before)
    size, _, fit = re.match(pattern, str(info.value)).groups()  # type: ignore[union-attr]
    assert float(size) > 1000 and float(size) == pytest.approx(provable_net(W, 2, 0.05)[0], rel=1e-2)
    # The suggested eps fits (it is rounded up to 3 digits) and one 1 % smaller does not.
    assert provable_net(W, 2, float(fit))[0] <= 1000
    assert provable_net(W, 2, float(fit) * 0.99)[0] > 1000
    sol = provable_solve(W, 2, float(fit), max_points=1000)
    assert sol.net_size <= 1000 and sol.guarantee <= float(fit) * W.square().sum().item() * (1 + 1e-9)


#: A 4 x 2 W (||W||_F = 1) with W^T W = I/2 up to 1.6e-7: every direction of R^2 is a top singular direction
#: up to s_1^2 - s_2^2 = 7.5e-7, so the SVD subspace of relu-svd says nothing about the rho_i here.
_TIED = torch.tensor(
    [[0.644052, -0.102966], [-0.056786, 0.20653], [-0.241923, -0.556709], [0.15312, -0.369889]], dtype=F64
)


def _line_R(W: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """min R over Y with rows on the line at angle theta (Theorem 2.1, ReLU): 1/2 sum a_i^2 (1 - g^2)."""
    a2 = (W * W).sum(1)
    rho = np.abs(np.stack([np.cos(theta), np.sin(theta)], -1) @ W.T) / np.sqrt(a2)
    return 0.5 * (a2 * (1 - _k(np.clip(rho, 0.0, 1.0), 0.0) ** 2)).sum(-1)


def _line_extremes(W: np.ndarray) -> tuple[float, float, float]:
    """(min, max of R over the lines of R^2, the worst line's angle): 2e5 angles (spacing 1.6e-5 rad, so
    the grid's R is within ~1e-10 of the extremes), each refined by a bounded scalar search."""
    theta = np.linspace(0.0, np.pi, 200_001)
    R = _line_R(W, theta)
    out = []
    for sign, j in ((1.0, R.argmin()), (-1.0, R.argmax())):
        res = minimize_scalar(
            lambda t, sign=sign: sign * float(_line_R(W, np.array(t))),
            bounds=(theta[j] - 1e-4, theta[j] + 1e-4),
            method="bounded",
            options={"xatol": 1e-12},
        )
        out.append((sign * float(res.fun), float(res.x)))
    return out[0][0], out[1][0], out[1][1]


def test_relu_svd_can_be_far_from_the_optimum():
    """docs/theory.md P.6: relu-svd's distance to the optimum has no small worst case. For _TIED, R over the
    candidate "top singular directions" (all lines) ranges from R* to R* + 0.0150 ||W||_F^2 (3 % of
    R(0) = ||W||_F^2 / 2). LAPACK's top singular vector of _TIED costs 0.0030; moving W by 1e-4 along the
    worst line makes that line the top one, and relu-svd is then 0.0149 from the optimum, certified by
    provable (R(provable) is within its guarantee of R*, and its lower bound is below R*)."""
    fro2 = float(_TIED.square().sum())
    assert fro2 == pytest.approx(1.0, abs=1e-6)
    s = torch.linalg.svdvals(_TIED)
    assert float(s[0] ** 2 - s[1] ** 2) < 1e-6  # every line captures the top singular value up to 7.5e-7
    R_star, R_worst, worst = _line_extremes(_TIED.numpy())
    R0 = float(nlra_loss(_TIED, torch.zeros_like(_TIED), "relu"))
    # the search is accurate to ~1e-10 (grid spacing, then 1e-12 in the angle); 1e-6 is the claim's rounding
    assert R_worst - R_star == pytest.approx(0.014977, abs=1e-6)
    assert (R_worst - R_star) / R0 == pytest.approx(0.030, abs=5e-4)
    U, V = init_factors(_TIED, 1, "relu-svd")
    assert float(nlra_loss(_TIED, U @ V.T, "relu")) - R_star == pytest.approx(0.002958, abs=1e-6)

    q = torch.tensor([math.cos(worst), math.sin(worst)], dtype=F64)
    W = _TIED @ (torch.eye(2, dtype=F64) + 1e-4 * torch.outer(q, q))
    W = W / W.norm()
    R_star, _, _ = _line_extremes(W.numpy())
    U, V = init_factors(W, 1, "relu-svd")
    R_relu_svd = float(nlra_loss(W, U @ V.T, "relu"))
    assert R_relu_svd - R_star == pytest.approx(0.014903, abs=1e-6)
    sol = provable_solve(W, 1, 1e-3)  # the certified interval for R(relu-svd) - R*, without the brute force
    assert sol.lower_bound <= R_star + 1e-12 and sol.objective - R_star <= sol.guarantee
    assert R_relu_svd - sol.objective >= 0.0149 and R_relu_svd - sol.lower_bound <= 0.0156
