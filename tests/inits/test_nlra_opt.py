"""nlra-opt: the subspace objective, the monotone ascent, and R(nlra-opt) <= R(relu-svd) <= R(spectral)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import problems, seeded, weight

from nlinit.activations import Activation
from nlinit.inits import init_factors
from nlinit.inits.nlra_opt import (
    _mm_matrix,
    _polar,
    ascend_subspace,
    nlra_opt,
)
from nlinit.objective import exact_loss, nlra_loss
from nlinit.subspace import factors_on_subspace, subspace_objective, truncated_svd

F64 = torch.float64
# The leaky family: relu, leaky slopes inside and outside [0, 1] (Theorem 2.1 holds for every real alpha).
ALPHAS = [0.0, 0.2, -0.5, 1.5, 1.0]


def _act(alpha: float) -> Activation:
    return Activation("leaky_relu", negative_slope=alpha)


def _basis(seed: int, d: int, r: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, dtype=F64, generator=seeded(seed))).Q


def _R(W, U, V, act) -> float:
    return float(exact_loss(W.double(), (U @ V.T).double(), act))


# Rounding allowance for comparing objectives of different solutions in float64: exact_loss sums d_out
# terms each at most R(0), so its rounding error is below ~d_out eps R(0) << 1e-12 R(0) for d_out <= 8.
ROUND = 1e-12


# ------------------------------------------------------------------------------------ subspace objective


@pytest.mark.parametrize("alpha", ALPHAS)
def test_subspace_objective_is_the_closed_form_optimum(alpha):
    """R(best Y with rows in S) = (1 + alpha^2)/2 (||W||_F^2 - F(S)) (Theorem 2.1), for random S."""
    W = weight(0, 12, 7)
    W[3] = 0.0  # a zero row contributes nothing to either side
    for seed in range(4):
        Q = _basis(seed, 7, 3)
        U, V = factors_on_subspace(W, Q, alpha)
        expected = 0.5 * (1 + alpha * alpha) * (W.square().sum() - subspace_objective(W, Q, alpha))
        assert _R(W, U, V, _act(alpha)) == pytest.approx(float(expected), rel=1e-12)


def test_subspace_objective_batches_and_bounds():
    W = weight(1, 9, 5)
    Qs = torch.stack([_basis(s, 5, 2) for s in range(6)])  # (6, 5, 2)
    values = subspace_objective(W, Qs, 0.0)
    assert values.shape == (6,)
    for i in range(6):  # a batched GEMM may sum in another order than a single one (AVX512 kernels do):
        # equal to float64 rounding of a 9-row, 5-column sum, far below any difference between subspaces
        assert float(values[i]) == pytest.approx(float(subspace_objective(W, Qs[i], 0.0)), rel=1e-13)
    assert bool((values <= W.square().sum()).all())
    # S = R^d captures every row: F = ||W||_F^2 exactly (k(1) = 1)
    full = subspace_objective(W, torch.eye(5, dtype=F64), 0.0)
    assert float(full) == pytest.approx(float(W.square().sum()), rel=1e-14)


def test_leaky_slope():
    assert Activation("relu").leaky_slope == 0.0
    assert Activation("identity").leaky_slope == 1.0
    assert _act(0.3).leaky_slope == 0.3
    assert Activation("silu").leaky_slope is None


def test_moved_names_still_import_with_a_deprecation_warning():
    import importlib

    import nlinit.subspace as new

    # ``import nlinit.inits.spectral as m`` would give the function nlinit.inits.spectral, not the module
    old_spectral, old_relu_svd, old_nlra_opt = (
        importlib.import_module(f"nlinit.inits.{m}") for m in ("spectral", "relu_svd", "nlra_opt")
    )

    for module, name in [
        (old_spectral, "truncated_svd"),
        (old_spectral, "balance"),
        (old_relu_svd, "leaky_norm_factor"),
        (old_relu_svd, "factors_on_subspace"),
        (old_nlra_opt, "subspace_objective"),
    ]:
        with pytest.warns(DeprecationWarning, match=f"{name} moved to nlinit.subspace"):
            assert getattr(module, name) is getattr(new, name)
    with pytest.warns(DeprecationWarning, match="leaky_slope"):
        assert old_nlra_opt.leaky_alpha(None) == 0.0
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        old_spectral.nothing  # noqa: B018


# ------------------------------------------------------------------------------------ monotone ascent


@given(problem=problems(), alpha=st.sampled_from(ALPHAS), qseed=st.integers(0, 2**31 - 1))
def test_mm_step_never_decreases_F(problem, alpha, qseed):
    """The minorize-maximize step polar(W^T D A) alone has F >= F(Q) from ANY start (the concavity proof)."""
    seed, d_out, d_in, rank = problem
    W = weight(seed, d_out, d_in)
    Q = _basis(qseed, d_in, rank)
    Q1 = _polar(_mm_matrix(W, Q, alpha, W.norm(dim=1)))
    assert torch.allclose(Q1.T @ Q1, torch.eye(rank, dtype=F64), atol=1e-12)
    before, after = float(subspace_objective(W, Q, alpha)), float(subspace_objective(W, Q1, alpha))
    assert after >= before - ROUND * float(W.square().sum())


@pytest.mark.parametrize("alpha", [0.0, 0.2, -0.5])
def test_ascent_is_monotone_and_improves(alpha):
    W = weight(2, 40, 16)
    Q0 = truncated_svd(W, 4)[2]
    values = [
        float(ascend_subspace(W, Q0, alpha, max_iter=k, tol=0.0, polish=False)[1]) for k in range(0, 12)
    ]
    assert values == sorted(values)  # F after k steps is non-decreasing in k (only gains are accepted)
    assert values[-1] > values[0]  # and the SVD subspace is not a fixed point for a nonlinear sigma
    # the L-BFGS polish is kept only if it gains: never below the steps alone, and here it converges further
    mm_only = float(ascend_subspace(W, Q0, alpha, max_iter=20, tol=1e-8, polish=False)[1])
    Q, F, steps = ascend_subspace(W, Q0, alpha, max_iter=20, tol=1e-8)
    assert float(F) > mm_only
    assert torch.allclose(Q.T @ Q, torch.eye(4, dtype=F64), atol=1e-10)
    assert float(F) == pytest.approx(float(subspace_objective(W, Q, alpha)), rel=1e-15)
    assert 1 <= steps <= 20


# ------------------------------------------------------------------------- R(nlra-opt) <= R(relu-svd)


@given(problem=problems(), alpha=st.sampled_from(ALPHAS))
def test_ordering_nlra_opt_relu_svd_spectral(problem, alpha):
    seed, d_out, d_in, rank = problem
    W = weight(seed, d_out, d_in)
    act = _act(alpha)
    R = {
        m: _R(W, *init_factors(W, rank, m, act, generator=seeded(seed)), act)
        for m in ("nlra-opt", "relu-svd", "spectral")
    }
    tol = ROUND * float(exact_loss(W, torch.zeros_like(W), act))
    assert R["nlra-opt"] <= R["relu-svd"] + tol
    assert R["relu-svd"] <= R["spectral"] + tol


def test_nlra_opt_strictly_beats_relu_svd_on_a_typical_layer():
    """At 64 x 64, r = 6 (a small conv's scale) the SVD subspace is not optimal for ReLU."""
    W = weight(0, 64, 64)
    act = Activation("relu")
    r0 = float(exact_loss(W, torch.zeros_like(W), act))
    opt = _R(W, *nlra_opt(W, 6, activation=act, restarts=0), act)
    svd = _R(W, *init_factors(W, 6, "relu-svd", act), act)
    assert (svd - opt) / r0 > 1e-5  # measured 1.6e-4


def test_identity_gives_spectral_objective():
    W = weight(3, 20, 12)
    act = Activation("identity")
    R_opt = _R(W, *nlra_opt(W, 5, activation=act, generator=seeded(0)), act)
    R_spec = _R(W, *init_factors(W, 5, "spectral", act), act)
    s = torch.linalg.svdvals(W)
    assert R_opt == pytest.approx(R_spec, rel=1e-10)  # Eckart-Young: nothing beats the SVD
    assert R_opt == pytest.approx(float(s[5:].square().sum()), rel=1e-10)


def test_restarts_only_help_and_are_reproducible():
    W = weight(4, 24, 5)
    act = Activation("relu")
    R0 = _R(W, *nlra_opt(W, 1, activation=act, restarts=0), act)
    U, V = nlra_opt(W, 1, activation=act, generator=seeded(7), restarts=4)
    U2, V2 = nlra_opt(W, 1, activation=act, generator=seeded(7), restarts=4)
    assert torch.equal(U, U2) and torch.equal(V, V2)
    assert _R(W, U, V, act) <= R0  # the SVD start's result is kept unless a restart beats it


def test_zero_rows_and_rank_deficient_W():
    W = weight(5, 10, 6)
    W[[1, 4]] = 0.0
    W[:, 3:] = W[:, :3] @ torch.randn(3, 3, dtype=F64, generator=seeded(1))  # rank 3
    act = Activation("relu")
    for rank in (1, 3, 5):
        U, V = nlra_opt(W, rank, activation=act, generator=seeded(0))
        assert torch.isfinite(U).all() and torch.isfinite(V).all()
        assert _R(W, U, V, act) <= _R(W, *init_factors(W, rank, "relu-svd", act), act) + 1e-12
    U, V = nlra_opt(W, 6, activation=Activation("identity"))
    assert _R(W, U, V, Activation("identity")) == pytest.approx(0.0, abs=1e-12)
    wide = W.T.contiguous()  # (6, 10), rank 3: the row-space coordinates path with rank(W) < r
    for rank in (2, 3, 5):
        U, V = nlra_opt(wide, rank, activation=act, generator=seeded(0))
        assert torch.isfinite(U).all() and torch.isfinite(V).all()
        R_opt, R_svd = _R(wide, U, V, act), _R(wide, *init_factors(wide, rank, "relu-svd", act), act)
        assert R_opt <= R_svd + 1e-12
        if rank >= 3:  # the row space fits: Y = W is optimal
            assert R_opt == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------- other activations


@pytest.mark.parametrize("name", ["silu", "gelu", "tanh"])
def test_other_activations_descend_the_exact_objective(name):
    W = weight(6, 12, 10)
    act = Activation(name)
    R_opt = _R(W, *nlra_opt(W, 3, activation=act, max_iter=30), act)
    R_spec = _R(W, *init_factors(W, 3, "spectral", act), act)
    R_start = _R(W, *init_factors(W, 3, "relu-svd", act), act)  # each row's best norm on the SVD subspace
    assert R_start <= R_spec and R_opt < R_start  # L-BFGS from relu-svd's rows makes progress
    # and never ends worse than its start, even with no iterations
    assert _R(W, *nlra_opt(W, 3, activation=act, max_iter=0), act) == pytest.approx(R_start, rel=1e-12)


# ------------------------------------------------------------------------------ contract and arguments


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_shapes_dtype_device(dtype):
    W = weight(8, 15, 9, dtype)
    U, V = init_factors(W, 4, "nlra-opt", "relu", generator=seeded(0))
    assert U.shape == (15, 4) and V.shape == (9, 4)
    assert U.dtype == dtype and V.dtype == dtype and U.device == W.device
    assert torch.allclose(U.T @ U, V.T @ V, atol=1e-4 if dtype == torch.float32 else 1e-10)  # balanced


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    W = weight(9, 32, 20).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    U, V = init_factors(W, 4, "nlra-opt", "relu", generator=gen, restarts=1)
    assert U.is_cuda and V.is_cuda
    Uc, Vc = init_factors(W.cpu(), 4, "nlra-opt", "relu", restarts=0)
    assert float(nlra_loss(W, U @ V.T)) <= float(nlra_loss(W.cpu(), Uc @ Vc.T)) + 1e-10


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"restarts": -1}, "restarts must be an int >= 0, got -1"),
        ({"restarts": True}, "restarts must be an int >= 0, got True"),
        ({"max_iter": 2.5}, "max_iter must be an int >= 0, got 2.5"),
        ({"tol": -1e-3}, "tol must be a number >= 0, got -0.001"),
        ({"tol": float("nan")}, "tol must be a number >= 0, got nan"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("+", r"\+")):
        init_factors(weight(0, 6, 5), 2, "nlra-opt", **options)
