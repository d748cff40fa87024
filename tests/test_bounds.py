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
from nlinit.bounds import _conjugate_upper, _envelope, _grid, certify, nlra_lower_bound
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
    # the envelope dominates phi at the grid points it was built from, and is concave (slopes decrease)
    rho, psi = _grid(alpha, 2**11)
    assert bool((env.at(rho * rho)[0] >= psi - 1e-12).all())
    assert bool((env.slope[1:] <= env.slope[:-1] + 1e-9).all())


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


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda W: nlra_lower_bound(W, 2, "silu"),
            NotImplementedError,
            r"got 'silu' \(supported: identity, ",
        ),
        (
            lambda W: nlra_lower_bound(W, 0),
            ValueError,
            r"rank must be an int in \[1, 5\] for a 8x5 weight, got 0",
        ),
        (lambda W: nlra_lower_bound(W, 6), ValueError, "rank must be an int"),
        (lambda W: nlra_lower_bound(W[0], 1), ValueError, "W must be a 2-D"),
        (lambda W: nlra_lower_bound(W * float("nan"), 1), ValueError, "non-finite"),
        (lambda W: nlra_lower_bound(W, 2, max_iter=0), ValueError, "max_iter must be an int >= 1, got 0"),
        (lambda W: nlra_lower_bound(W, 2, tol=-1.0), ValueError, r"tol must be a number >= 0, got -1\.0"),
        (lambda W: nlra_lower_bound(W, 2, "bogus"), ValueError, "unknown activation 'bogus'"),
        (lambda W: certify(W, W[:, :3], 2), ValueError, r"Y must have W's shape \(8, 5\), got \(8, 3\)"),
        (lambda W: certify(W, W, 2, "gelu"), NotImplementedError, "got 'gelu'"),
    ],
)
def test_bad_inputs_raise(call, error, message):
    W = _weight(9, 8, 5)
    before = W.clone()
    with pytest.raises(error, match=message):
        call(W)
    assert torch.equal(W, before)


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
    report = nlinit.factorize(model, rank=4, init="nlra-opt", certify=True, restarts=0)
    by_name = {layer.name: layer for layer in report.layers}
    for name in ("a", "c"):  # relu and identity (reaches the head): certified
        layer = by_name[name]
        assert layer.certified_gap is not None and layer.objective_lower_bound is not None
        assert 0 <= layer.objective_lower_bound <= layer.objective_init
        # objective_init is R/R0 of the float32 layer, the certificate's R is float64: float32 rounding
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
    with pytest.raises(ValueError, match="certify must be True or False, got 'yes'"):
        nlinit.factorize(_Net(), rank=4, init="relu-svd", certify="yes")  # type: ignore[arg-type]


def test_math_constant_sanity():
    # phi(1) = k(1)^2 = 1 for every alpha, so F(R^d) = ||W||_F^2 (used by the full-rank shortcut)
    for alpha in ALPHAS:
        assert float(leaky_norm_factor(torch.tensor(1.0, dtype=F64), alpha)) == pytest.approx(1.0, abs=1e-15)
    assert math.isclose(float(_grid(0.0, 8)[1][0]), 1 / math.pi**2, rel_tol=1e-14)
