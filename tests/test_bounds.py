"""Certified lower bounds: valid against brute force over the Grassmannian, exact where the optimum is known.

``lower`` is the bound L throughout (ruff's SIM300 reads a capital L as a constant)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import seeded
from torch import nn

import nlinit
from nlinit.activations import Activation
from nlinit.bounds import _CONJUGATE_CELLS, _conjugate_upper, _envelope, _grid, certify, nlra_lower_bound
from nlinit.inits import init_factors
from nlinit.inits.nlra_opt import ascend_subspace
from nlinit.objective import exact_loss
from nlinit.report import FactorizeReport
from nlinit.subspace import leaky_norm_factor, subspace_objective

F64 = torch.float64
ALPHAS = [0.0, 0.2, -0.5, 1.5]
SOLVERS = ("baseline", "spectral", "relu-svd", "nlra-opt")


def _act(alpha: float) -> Activation:
    return Activation("leaky_relu", negative_slope=alpha)


def _weight(seed: int, d_out: int, d_in: int) -> torch.Tensor:
    g = seeded(seed)
    W = torch.randn(d_out, d_in, dtype=F64, generator=g)
    return W * (0.2 + 2 * torch.rand(d_out, 1, dtype=F64, generator=g))  # unequal row norms


def _R(W: torch.Tensor, Y: torch.Tensor, act: Activation) -> float:
    return float(exact_loss(W, Y, act))


def _R0(W: torch.Tensor, act: Activation) -> float:
    return _R(W, torch.zeros_like(W), act)


def _brute_force_min(W: torch.Tensor, rank: int, alpha: float, g: torch.Generator) -> float:
    r"""min over rank-r Y of R, by Theorem 2.1 = (1 + alpha^2)/2 (||W||^2 - max_S F(S)), max_S F by search.

    r = 1: 2e5 random directions on the sphere (d <= 4: spacing ~1e-2 rad), best 10 refined by the ascent.
    r = 2, d = 3: subspaces are normals' complements, so the same sphere search over normals n.
    r = 2, d = 4: 3e4 random subspaces plus the ascent from 40 random starts.
    Every candidate is a genuine subspace, so each value is >= the true minimum.
    """
    d = W.shape[1]
    if rank == 1 or (rank == 2 and d == 3):
        X = torch.randn(200_000, d, dtype=F64, generator=g)
        X = X / X.norm(dim=1, keepdim=True)
        if rank == 1:
            Qs = X[:, :, None]  # (B, d, 1)
        else:
            # orthonormal basis of the complement of n: the eigenvalue-1 eigenvectors of I - n n^T
            Qs = torch.linalg.eigh(torch.eye(d, dtype=F64) - X[:, :, None] * X[:, None, :]).eigenvectors[
                ..., 1:
            ]
    else:
        Qs = torch.linalg.qr(torch.randn(30_000, d, rank, dtype=F64, generator=g)).Q
    F = subspace_objective(W, Qs, alpha)
    best = float(F.max())
    for i in F.topk(10).indices:
        best = max(best, float(ascend_subspace(W, Qs[i], alpha, max_iter=300, tol=0.0)[1]))
    if rank == 2 and d == 4:
        for _ in range(40):
            Q = torch.linalg.qr(torch.randn(d, rank, dtype=F64, generator=g)).Q
            best = max(best, float(ascend_subspace(W, Q, alpha, max_iter=300, tol=0.0)[1]))
    return 0.5 * (1 + alpha * alpha) * (float(W.square().sum()) - best)


# ---------------------------------------------------------------------------------------- validity


@pytest.mark.parametrize(
    ("d", "rank", "alpha"),
    [(2, 1, 0.0), (3, 1, 0.0), (4, 1, 0.0), (3, 2, 0.0), (4, 2, 0.0), (3, 1, 0.2), (4, 2, -0.5), (4, 1, 1.5)],
)
def test_bound_below_brute_force_and_every_solver(d, rank, alpha):
    g = seeded(100 * d + rank)
    act = _act(alpha)
    for trial in range(2):
        W = _weight(10 * d + trial, 9, d)
        lower = nlra_lower_bound(W, rank, act)
        R0 = _R0(W, act)
        brute = _brute_force_min(W, rank, alpha, g)
        assert lower <= brute
        for method in SOLVERS:
            U, V = init_factors(W, rank, method, act, generator=g)
            assert lower <= _R(W, U @ V.T, act)
        Ys = torch.randn(200, 9, rank, dtype=F64, generator=g) @ torch.randn(
            200, rank, d, dtype=F64, generator=g
        )
        assert all(lower <= _R(W, Y, act) for Y in Ys)
        # Not vacuous: measured gaps to the brute-force optimum are 1e-4 .. 5e-3 of R(0) here.
        assert lower > 0 and (brute - lower) / R0 < 2e-2


@given(
    seed=st.integers(0, 2**31 - 1),
    d_out=st.integers(1, 7),
    d_in=st.integers(1, 7),
    alpha=st.sampled_from([0.0, 0.2, 1.0]),
    data=st.data(),
)
def test_bound_below_nlra_opt_and_random_Y(seed, d_out, d_in, alpha, data):
    rank = data.draw(st.integers(1, min(d_out, d_in)))
    W = _weight(seed, d_out, d_in)
    act = _act(alpha)
    lower = nlra_lower_bound(W, rank, act)
    assert lower >= 0.0
    U, V = init_factors(W, rank, "nlra-opt", act, generator=seeded(seed))
    assert lower <= _R(W, U @ V.T, act)
    g = seeded(seed + 1)
    for _ in range(5):
        Y = torch.randn(d_out, rank, dtype=F64, generator=g) @ torch.randn(rank, d_in, dtype=F64, generator=g)
        assert lower <= _R(W, Y, act)


def test_bound_valid_at_every_iteration_count():
    """Frank-Wolfe's dual bound is valid at every iterate, not only at convergence."""
    W = _weight(1, 30, 12)
    act = Activation("relu")
    U, V = init_factors(W, 3, "nlra-opt", act)
    best = _R(W, U @ V.T, act)
    for it in (1, 2, 5):
        assert 0 < nlra_lower_bound(W, 3, act, max_iter=it, tol=0.0) <= best


# ------------------------------------------------------------------------- exact where the optimum is known


@pytest.mark.parametrize(("d_out", "d_in", "rank"), [(20, 12, 5), (8, 30, 3)])
def test_identity_bound_is_eckart_young(d_out, d_in, rank):
    W = _weight(2, d_out, d_in)
    act = Activation("identity")
    optimum = float(torch.linalg.svdvals(W)[rank:].square().sum())
    lower = nlra_lower_bound(W, rank, act)
    assert lower <= optimum
    # loses only the grid's chord error and rounding margins, ~1e-8 of ||W||^2 (= R(0) for the identity)
    assert optimum - lower <= 1e-7 * _R0(W, act)


def test_full_rank_is_zero_and_near_full_is_valid():
    W = _weight(3, 10, 6)
    act = Activation("relu")
    assert nlra_lower_bound(W, 6, act) == 0.0  # Y = W is feasible
    lower = nlra_lower_bound(W, 5, act)
    U, V = init_factors(W, 5, "nlra-opt", act)
    assert 0.0 <= lower <= _R(W, U @ V.T, act)
    tall = _weight(4, 4, 9)
    assert nlra_lower_bound(tall, 4, act) == 0.0


def test_zero_rows_change_nothing():
    W = _weight(5, 12, 7)
    Wz = torch.cat([W[:4], torch.zeros(3, 7, dtype=F64), W[4:]])
    assert nlra_lower_bound(Wz, 3) == nlra_lower_bound(W, 3)
    assert nlra_lower_bound(torch.zeros(5, 4), 2) == 0.0
    # fewer nonzero rows than the rank: Y = W has rank <= r, so the optimum is 0
    few = torch.zeros(6, 5, dtype=F64)
    few[:2] = _weight(6, 2, 5)
    assert nlra_lower_bound(few, 3) == 0.0


def test_float32_input_matches_float64():
    W = _weight(7, 16, 10)
    assert nlra_lower_bound(W.float(), 4) == pytest.approx(nlra_lower_bound(W.float().double(), 4), abs=0)


# ------------------------------------------------------------------------------------ the rigorous parts


@pytest.mark.parametrize("alpha", ALPHAS + [1.0, -1.0])
def test_conjugate_bound_dominates_dense_sampling(alpha):
    r"""conj(beta) >= sup_t phi(t) - beta t, checked on t = rho^2 for 2e5 uniform rho (phi = k(rho)^2)."""
    rho = torch.linspace(0, 1, 200_001, dtype=F64)
    t, phi = rho * rho, leaky_norm_factor(rho, alpha).square()
    env = _envelope(alpha)
    betas = torch.cat([env.slope, torch.tensor([0.0, 0.3, 1.0, 2.5, 40.0], dtype=F64)])
    sup = torch.stack([(phi - b * t).max() for b in betas])
    conj = _conjugate_upper(betas, alpha)
    assert bool((conj >= sup).all())
    assert float((conj - sup).max()) < 1e-6  # and tight: the grid's chord error (and the sampling's)
    assert torch.allclose(env.conj, _conjugate_upper(env.slope, alpha))
    # between grid points the hull can sit below phi (near t = 0, where phi has infinite slope): by at most
    # delta = 6.1e-5 (ReLU), so D <= D_hat + delta ||W||^2 only (docs/theory.md 7.3); 0 for the identity
    delta = float((phi - env.at(t)[0]).max())
    assert -1e-15 <= delta <= {0.0: 6.2e-5, 0.2: 5.3e-5, 1.0: 1e-15}.get(alpha, 1e-4)
    # the envelope dominates phi at the grid points it was built from, and is concave (slopes decrease)
    rho, psi = _grid(alpha, 2**11)
    assert bool((env.at(rho * rho)[0] >= psi - 1e-12).all())
    assert bool((env.slope[1:] <= env.slope[:-1] + 1e-9).all())


def test_conjugate_bound_refuses_negative_or_nan_slopes():
    """Clamping beta < 0 to 0 inside the conjugate while the eigenvalue term keeps beta would make D(beta)
    invalid: it raises instead."""
    with pytest.raises(ValueError, match=r"slopes beta >= 0, got 1 that are not \(e\.g\. -0\.5\)"):
        _conjugate_upper(torch.tensor([1.0, -0.5, 2.0], dtype=F64), 0.0)
    with pytest.raises(ValueError, match=r"got 1 that are not \(e\.g\. nan\)"):
        _conjugate_upper(torch.tensor([math.nan], dtype=F64), 0.2)
    for alpha in ALPHAS + [1.0, -1.0]:  # the slopes the envelope hands to it are all >= 0 (phi increases)
        assert bool((_envelope(alpha).slope > 0).all())


def _psi(rho: torch.Tensor, alpha: float) -> torch.Tensor:
    """psi = k^2 with 1 - rho^2 formed as (1 - rho)(1 + rho): accurate to a few ulps up to rho = 1, where
    the library's 1 - rho * rho loses digits (its error on the grid is measured below)."""
    g = (torch.sqrt((1 - rho) * (1 + rho)) + (math.pi - torch.arccos(rho)) * rho) / math.pi
    return ((2 * alpha * rho + (1 - alpha) ** 2 * g) / (1 + alpha * alpha)).square()


def _dpsi(rho: torch.Tensor, alpha: float) -> torch.Tensor:
    """psi' = 2 k k' with k' = (2 alpha + (1 - alpha)^2 g') / (1 + alpha^2), g' = (pi - arccos rho) / pi."""
    dk = (2 * alpha + (1 - alpha) ** 2 * (math.pi - torch.arccos(rho)) / math.pi) / (1 + alpha * alpha)
    return 2 * _psi(rho, alpha).sqrt() * dk


@pytest.mark.parametrize("alpha", [0.0, 0.2, -0.5, 1.5, -1.0])
def test_last_cell_where_psi_curvature_is_unbounded(alpha):
    """On the last grid cell [rho_{n-1}, 1] psi'' ~ 1 / sqrt(1 - rho^2) is unbounded, so the interior
    cells' chord error (h^2 / 8) max psi'' says nothing there. What holds (docs/theory.md 7.4): psi is
    convex and C^1, so the chord lies above psi and exceeds it by at most h (psi'(1) - psi'(rho_{n-1})) / 4
    with psi'(1) = 2. Checked by sampling the last cell densely (a uniform sampling of [0, 1] puts no
    point inside it), and the conjugate bound on the last three cells."""
    rho, psi = _grid(alpha, _CONJUGATE_CELLS)
    # the grid's psi is within 1e-13 of an accurate evaluation (the margin 1e-12 covers it); worst at the
    # point next to rho = 1, measured 5.4e-14 (alpha = -1) against 40-digit arithmetic
    assert float((psi - _psi(rho, alpha)).abs().max()) <= 1e-13
    assert float(_dpsi(torch.tensor(1.0, dtype=F64), alpha)) == pytest.approx(2.0, rel=1e-12)
    lo, hi = float(rho[-2]), float(rho[-1])
    x = torch.linspace(lo, hi, 20_001, dtype=F64)
    error = psi[-2] + (psi[-1] - psi[-2]) / (hi - lo) * (x - lo) - _psi(x, alpha)  # chord - psi
    assert float(error.min()) >= -1e-13  # the chord is above psi, up to the grid's rounding of psi
    assert float(error.max()) <= (hi - lo) * (2.0 - float(_dpsi(rho[-2], alpha))) / 4 + 1e-13
    theta = torch.linspace(0.0, 3 * (math.pi / 2) / _CONJUGATE_CELLS, 6_001, dtype=F64)
    r = torch.cos(theta)
    betas = torch.cat([_envelope(alpha).slope, torch.tensor([0.0, 0.5, 1.0, 2.0, 1e3], dtype=F64)])
    sup = (_psi(r, alpha)[None, :] - betas[:, None] * (r * r)[None, :]).amax(1)
    assert bool((_conjugate_upper(betas, alpha) >= sup).all())


# ------------------------------------------------------------------------------------------- certify


def test_certificate_fields():
    W = _weight(8, 25, 10)
    act = _act(0.2)
    U, V = init_factors(W, 3, "nlra-opt", act)
    c = certify(W, U @ V.T, 3, act)
    R0 = _R0(W, act)
    assert c.objective == _R(W, U @ V.T, act)
    assert c.lower_bound == nlra_lower_bound(W, 3, act)
    assert c.gap == c.objective - c.lower_bound >= 0
    assert c.zero_objective == R0 and c.relative_gap == c.gap / R0
    worse = certify(W, torch.zeros_like(W), 3, act)
    assert worse.lower_bound == c.lower_bound and worse.relative_gap > c.relative_gap
    assert isinstance(c, nlinit.Certificate) and nlinit.certify is certify


_W = _weight(9, 8, 5)  # the bad-input tables' W (8 x 5); a rank-2 Y for certify below
_Y2 = _W[:, :2] @ torch.linalg.pinv(_W[:, :2]) @ _W
_NAN = _W.clone()
_NAN[3, 1] = float("nan")


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (([[1.0]], 1), TypeError, "W must be a torch.Tensor, got list"),
        ((_W.long(), 1), TypeError, "W must be a floating-point tensor, got dtype torch.int64"),
        ((_W.to(torch.complex128), 1), TypeError, "floating-point tensor, got dtype torch.complex128"),
        ((_W[0], 1), ValueError, r"W must be a 2-D \(d_out, d_in\) matrix, got shape \(5,\)"),
        ((_NAN, 1), ValueError, r"W has 1 non-finite \(NaN or Inf\) entries"),
        ((_W * math.inf, 1), ValueError, "W has 40 non-finite"),
        ((_W, 0), ValueError, r"rank must be an int in \[1, 5\] for a 8x5 weight, got 0"),
        ((_W, 6), ValueError, r"rank must be an int in \[1, 5\] for a 8x5 weight, got 6"),
        ((_W, 2.0), ValueError, r"rank must be an int .* got 2\.0"),
        ((_W, True), ValueError, "rank must be an int .* got True"),
        ((_W, 2, "silu"), NotImplementedError, r"got 'silu' \(supported: identity, "),
        ((_W, 2, "bogus"), ValueError, "unknown activation 'bogus'"),
        ((_W, 2, "relu", 0), ValueError, "max_iter must be an int >= 1, got 0"),
        ((_W, 2, "relu", 2.5), ValueError, "max_iter must be an int >= 1, got 2.5"),
        ((_W, 2, "relu", True), ValueError, "max_iter must be an int >= 1, got True"),
        ((_W, 2, "relu", 10, -1.0), ValueError, r"tol must be a finite number >= 0, got -1\.0"),
        ((_W, 2, "relu", 10, math.nan), ValueError, "tol must be a finite number >= 0, got nan"),
        ((_W, 2, "relu", 10, math.inf), ValueError, "tol must be a finite number >= 0, got inf"),
        ((_W, 2, "relu", 10, "1e-6"), ValueError, "tol must be a finite number >= 0, got '1e-6'"),
    ],
)
def test_lower_bound_bad_inputs(args, error, message):
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(error, match=message):
        nlra_lower_bound(*args[:3], **dict(zip(("max_iter", "tol"), args[3:])))
    for a, b in zip(args, before):  # nothing was changed in place
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((_W, _W[:, :3], 2), ValueError, r"Y must have W's shape \(8, 5\), got \(8, 3\)"),
        ((_W, [[0.0]], 2), TypeError, "Y must be a torch.Tensor, got list"),
        ((_W, _Y2.int(), 2), TypeError, "Y must be a floating-point tensor, got dtype torch.int32"),
        ((_W, _NAN, 2), ValueError, "Y has 1 non-finite"),
        ((_NAN, _Y2, 2), ValueError, "W has 1 non-finite"),
        ((_W, _Y2, 0), ValueError, r"rank must be an int in \[1, 5\] for a 8x5 weight, got 0"),
        ((_W, _Y2, 2, "gelu"), NotImplementedError, "got 'gelu'"),
        # a Y of higher rank than asked for: it could beat every rank-r Y, so no certificate
        ((_W, _W, 2), ValueError, r"Y has numerical rank 5 > rank=2 \(5 singular values above \S+ = "),
        ((_W, _Y2, 1), ValueError, r"Y has numerical rank 2 > rank=1 .*certify needs a Y of rank <= 1"),
        ((_W, _Y2.float(), 1), ValueError, r"numerical rank 2 > rank=1 .* eps\(torch.float32\)"),
        ((_W, _Y2, 2, "relu", 0), ValueError, "max_iter must be an int >= 1, got 0"),
        ((_W, _Y2, 2, "relu", 10, -1.0), ValueError, "tol must be a finite number >= 0"),
    ],
)
def test_certify_bad_inputs(args, error, message):
    with pytest.raises(error, match=message):
        certify(*args[:4], **dict(zip(("max_iter", "tol"), args[4:])))


@pytest.mark.parametrize(
    ("W", "rank", "expected"),
    [
        (torch.zeros(5, 4, dtype=F64), 2, 0.0),  # W = 0: R(0) = 0 is optimal
        (torch.zeros(5, 4, dtype=torch.float32), 1, 0.0),
        (torch.cat([torch.zeros(4, 3, dtype=F64), torch.ones(1, 3, dtype=F64)]), 1, 0.0),  # one nonzero row
        (_W, 5, 0.0),  # full rank: Y = W is feasible
    ],
)
def test_lower_bound_degenerate_inputs_return_the_optimum(W, rank, expected):
    assert nlra_lower_bound(W, rank) == expected


def test_certify_degenerate_inputs():
    zero = torch.zeros(6, 4, dtype=F64)
    c = certify(zero, zero, 2)
    assert (c.objective, c.lower_bound, c.gap, c.relative_gap, c.zero_objective) == (0.0, 0.0, 0.0, 0.0, 0.0)
    Y = torch.ones(6, 4, dtype=F64)  # rank 1, W = 0: infinitely worse than R(0) = 0, not "0 % from optimal"
    c = certify(zero, Y, 1)
    assert c.gap == c.objective > 0 and c.relative_gap == math.inf
    assert c.rank_margin == pytest.approx(0.0, abs=1e-12)  # exactly rank 1 up to float64 rounding


def test_rank_tolerance_accepts_products_formed_in_float32():
    """A rank-r product formed in float32 has rounding singular values beyond the r-th; the tolerance
    max(d_out, d_in) eps s_1 must pass them, and the certified gap is then >= -rank_margin, a margin that
    is itself at the rounding level (delta ~ eps_32 s_1)."""
    cases = [(*shape, m) for shape in ((12, 8, 2), (64, 64, 32)) for m in ("relu-svd", "nlra-opt")]
    for d_out, d_in, r, method in [*cases, (128, 288, 26, "relu-svd")]:
        W = _weight(d_out + d_in, d_out, d_in).float()
        U, V = init_factors(W, r, method, generator=seeded(0))
        Y = U @ V.T  # float32, as factorize forms it
        s = torch.linalg.svdvals(Y.double())
        eps = torch.finfo(torch.float32).eps
        assert float(s[r]) <= 4 * eps * float(s[0]) < max(d_out, d_in) * eps * float(s[0])  # measured <= 0.52
        c = certify(W, Y, r)
        assert c.gap >= -c.rank_margin
        assert c.rank_margin <= 1e-5 * c.zero_objective


def test_certificate_gap_is_above_minus_the_rank_margin():
    """Y = (rank r) + eps s_1 u v^T with u, v orthogonal to the rank-r part: its (r+1)-th singular value is
    eps s_1. Below the tolerance max(d) eps_dtype s_1 it is certified, with rank_margin the documented
    2 l delta sqrt(R(Y)) + l^2 delta^2 at delta = eps s_1 and gap >= -rank_margin; above it, it raises."""
    W = _weight(11, 10, 6)
    for alpha, dtype, size, passes in (
        (0.0, F64, 1e-16, True),  # tolerance 10 * 2.2e-16 s_1
        (-0.5, F64, 1e-12, False),
        (1.5, torch.float32, 1e-7, True),  # tolerance 10 * 1.2e-7 s_1
        (0.0, torch.float32, 1e-5, False),
    ):
        act = _act(alpha)
        U, V = init_factors(W, 2, "nlra-opt", act, generator=seeded(1))
        Pu, Pv = (torch.linalg.qr(torch.cat([M, torch.ones(len(M), 1, dtype=F64)], 1)).Q for M in (U, V))
        s1 = float(torch.linalg.svdvals(U @ V.T)[0])
        Y = (U @ V.T + size * s1 * torch.outer(Pu[:, 2], Pv[:, 2])).to(dtype)
        if not passes:
            with pytest.raises(ValueError, match="Y has numerical rank 3 > rank=2"):
                certify(W, Y, 2, act)
            continue
        c = certify(W, Y, 2, act)
        lip, delta = max(1.0, abs(alpha)), float(torch.linalg.svdvals(Y.double())[2:].norm())  # ||Y - Y_2||_F
        assert c.rank_margin == pytest.approx(2 * lip * delta * math.sqrt(c.objective) + (lip * delta) ** 2)
        assert c.gap >= -c.rank_margin


# ------------------------------------------------------------------------------- factorize(certify=True)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(12, 24)
        self.a = nn.Linear(24, 24)
        self.b = nn.Linear(24, 24)
        self.c = nn.Linear(24, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a(x))
        x = nn.functional.silu(self.b(x))
        return self.head(self.c(x))


def test_factorize_certify(tmp_path):
    torch.manual_seed(0)
    model = _Net()
    # fit="paper": the paper's objective (the layers' biases would add offsets, which the bound
    # does not cover; see test_factorize_certify_says_why_not)
    report = nlinit.factorize(model, rank=4, init="nlra-opt", certify=True, restarts=0, fit="paper")
    by_name = {layer.name: layer for layer in report.layers}
    for name in ("a", "c"):  # relu and identity (reaches the head): certified
        layer = by_name[name]
        assert layer.certified_gap is not None and layer.objective_lower_bound is not None
        # the certificate's R(Y) is float64: its gap is >= -rank_margin, ~1e-8 R(0) for a float32 Y ...
        assert layer.certified_gap >= -1e-7
        # ... while objective_init is nlra_loss of the float32 layer in float32 (rounding ~1e-7 of R(0)),
        # which can sit a few 1e-8 below the float64 bound (2.1e-8 for the identity layer "c", where the
        # bound is tight): compare with float32's tolerance
        assert 0 <= layer.objective_lower_bound <= layer.objective_init + 1e-6
        assert layer.certified_gap == pytest.approx(
            layer.objective_init - layer.objective_lower_bound, abs=1e-6
        )
    assert by_name["b"].activation == "silu" and by_name["b"].certified_gap is None  # no bound for silu
    assert by_name["stem"].certified_gap is None  # not factorized
    assert by_name["c"].certified_gap < 1e-6  # identity: the SVD is optimal and the bound is exact
    md = report.to_markdown()
    assert "| gap to optimal |" in md and md.count("\n| ") == len(report.layers)
    assert FactorizeReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    with report.save(tmp_path / "r.csv").open(newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert float(rows["a"]["certified_gap"]) == by_name["a"].certified_gap
    assert report.config["certify"] is True

    plain = nlinit.factorize(_Net(), rank=4, init="spectral")
    assert all(layer.certified_gap is None for layer in plain.layers)
    assert "gap to optimal" not in plain.to_markdown()


def test_factorize_certify_says_why_not():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 24)
    )
    model.append(nn.SiLU())
    model.append(nn.Linear(24, 3))
    report = nlinit.factorize(model, rank=4, init="relu-svd", certify=True)  # BatchNorm in training mode
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["2"].certified_gap is None
    assert "not certified: the objective has offsets (bias, BatchNorm) or is normalized" in (
        by_name["2"].activation_note
    )
    assert "not certified: silu is outside the leaky-ReLU family" in by_name["5"].activation_note
