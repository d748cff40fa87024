"""nlinit.theory: the gap theory's formulas against independent computations, and their bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, special, stats

from nlinit.inits import init_factors
from nlinit.objective import arccos_kernel, nlra_loss
from nlinit.theory import (
    corollary_bound,
    corollary_L,
    energy_bound,
    fig32_value,
    g_minus_rho,
    log_hyp1f1,
    remark_bound,
    remark_union_term,
    svd_rho,
    theorem_339_bound,
    unit_rows,
)


def _g_numpy(rho: np.ndarray) -> np.ndarray:
    """The arc-cosine kernel written out again, independently of nlinit.objective."""
    return (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / np.pi


def _rho_numpy(W: np.ndarray, r: int) -> np.ndarray:
    """rho_i by LAPACK's SVD and an explicit projection of each row, one row at a time."""
    Vt = np.linalg.svd(W, full_matrices=False)[2][:r]  # (r, d): top-r right singular vectors
    return np.array([np.linalg.norm(Vt @ w) / np.linalg.norm(w) for w in W])


def _weights(seed: int, m: int, d: int, unit: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if unit:
        return unit_rows(m, d, generator=gen)
    return torch.randn(m, d, generator=gen, dtype=torch.float64) * torch.rand(
        m, 1, generator=gen, dtype=torch.float64
    )


def test_L_endpoints_and_identity_with_g():
    assert corollary_L(0.0) == 1.0
    assert corollary_L(1.0) == 0.0
    x = np.linspace(0, 1, 101)
    g = arccos_kernel(torch.tensor(x, dtype=torch.float64)).numpy()
    # L(x) = pi^2 (g(x) - x)^2: same quantity, two formulas; float64 rounding only.
    np.testing.assert_allclose(corollary_L(x), np.pi**2 * (g - x) ** 2, rtol=1e-12, atol=1e-15)
    L = corollary_L(x)
    assert np.all(np.diff(L) <= 0)  # decreasing
    assert np.all(np.diff(L, 2) >= -1e-15)  # convex (second differences >= 0 up to rounding)
    # the paper: "about 0.0507 per unit as r/d -> 0" (1/(2 pi^2) = 0.05066)
    assert corollary_bound(1, 10**8) == pytest.approx(1 / (2 * math.pi**2), rel=1e-3)


@pytest.mark.parametrize(("m", "d", "unit"), [(120, 20, True), (60, 30, False), (25, 40, True)])
def test_fig32_value_equals_direct_loop(m, d, unit):
    W = _weights(m + d, m, d, unit)
    ranks = [1, 3, min(m, d) // 2]
    for r in ranks:
        rho = _rho_numpy(W.numpy(), r)
        direct = sum((_g_numpy(p) - p) ** 2 for p in rho) / (2 * d)
        # eigh of the Gram matrix vs LAPACK's SVD: the subspaces agree to ~1e-13 for these random W
        assert fig32_value(W, r) == pytest.approx(direct, rel=1e-9)
    rho_all = svd_rho(W, ranks)  # one SVD for all ranks, as fig32_rows uses
    for k, r in enumerate(ranks):
        np.testing.assert_allclose(rho_all[k].numpy(), _rho_numpy(W.numpy(), r), atol=1e-10)


def test_svd_rho_is_relu_svds_rho():
    """relu-svd gives row i the norm a_i g(rho_i) with this rho (Theorem 3.3.8)."""
    W = _weights(1, 40, 16, unit=False)
    U, V = init_factors(W, 5, "relu-svd")
    expected = W.norm(dim=1) * arccos_kernel(svd_rho(W, 5))
    torch.testing.assert_close((U @ V.T).norm(dim=1), expected, rtol=1e-10, atol=1e-12)


@given(
    m=st.integers(2, 40),
    d=st.integers(2, 25),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    unit=st.booleans(),
)
def test_theorem_339_bound_is_spectral_minus_relu_svd(m, d, frac, seed, unit):
    """The guaranteed relation: the bound equals R(spectral) - R(relu-svd) (not merely <=), so it is at most
    the measured gap R(spectral) - R(best) exactly when R(best) <= R(relu-svd); nothing is claimed for a best
    that is worse than relu-svd. The finite form of Corollary 3.3.11 is below the bound for every W
    (Jensen)."""
    W = _weights(seed, m, d, unit)
    r = 1 + round(frac * (min(m, d) - 1))
    R = {
        name: float(nlra_loss(W, (lambda u, v: u @ v.T)(*init_factors(W, r, name))))
        for name in ("spectral", "relu-svd")
    }
    bound = theorem_339_bound(W, r)
    scale = float(W.square().sum())  # R values are O(||W||_F^2); float64 rounding is ~1e-16 of that per term
    assert bound == pytest.approx(R["spectral"] - R["relu-svd"], abs=1e-11 * scale)
    assert energy_bound(W, r) <= bound + 1e-12 * scale


@pytest.mark.parametrize(("a", "b"), [(0.5, 1.0), (2.5, 25.0), (10.0, 50.0), (3.0, 3.0)])
def test_log_hyp1f1_matches_scipy(a, b):
    for lam in (1e-3, 0.7, 12.0, 90.0, 400.0):
        assert log_hyp1f1(a, b, lam) == pytest.approx(math.log(special.hyp1f1(a, b, lam)), rel=1e-11)
    assert log_hyp1f1(a, b, 0.0) == 0.0


def test_log_hyp1f1_is_the_beta_log_mgf_and_survives_large_lambda():
    d, r, lam = 20, 3, 7.5
    X = stats.beta(r / 2, (d - r) / 2)
    mgf = integrate.quad(lambda x: math.exp(lam * x) * X.pdf(x), 0, 1)[0]
    assert log_hyp1f1(r / 2, d / 2, lam) == pytest.approx(math.log(mgf), rel=1e-8)  # quad's own accuracy
    # scipy overflows here; the large-lambda expansion log 1F1 = lam + (a - b) log lam + log G(b)/G(a)
    # + log(1 + (1 - a)(b - a)/lam + O(lam^-2)) pins it (the O(lam^-2) term is ~1e-4 at these values).
    a, b, lam = 5.0, 50.0, 1e4
    assert not math.isfinite(special.hyp1f1(a, b, lam))
    asym = lam + (a - b) * math.log(lam) + special.gammaln(b) - special.gammaln(a)
    assert log_hyp1f1(a, b, lam) - asym == pytest.approx(math.log1p((1 - a) * (b - a) / lam), abs=1e-3)


def test_remark_bound_decreases_to_sqrt_rank_scale():
    d, r = 50, 5
    values = [remark_bound(d, r, k * d) for k in (1, 2, 5, 20, 100, 10**4, 10**7)]
    assert all(x > y for x, y in zip(values, values[1:]))
    assert all(v >= math.sqrt(r / d) for v in values)  # c >= 0 and K(lambda) >= lambda r/d
    assert values[-1] == pytest.approx(math.sqrt(r / d), abs=2e-3)
    assert remark_bound(d, d, d) == 1.0
    # the search found the infimum: no point of a fine lambda grid does better
    c = 5 * math.log(10)
    grid = np.exp(np.linspace(-8, 9, 400))
    best = min((c + log_hyp1f1(r / 2, d / 2, lam)) / lam for lam in grid)
    assert remark_bound(d, r, d) ** 2 <= best + 1e-9


def test_remark_readings_against_measured_mean_rho():
    """At m = d, r/d = 0.1 the measured mean rho of the SVD subspace (~0.55) is above the per-unit reading
    (~0.36), so that reading is no bound, and below the "net" reading (~0.74); margins are ~0.2."""
    d, m, r = 100, 100, 10
    rho = svd_rho(unit_rows(m, d, generator=torch.Generator().manual_seed(0)), r)
    measured = float(rho.mean())
    assert remark_bound(d, r, m, "per-unit") < measured - 0.1 < measured + 0.1 < remark_bound(d, r, m, "net")


def test_g_minus_rho_is_h_over_pi():
    """g(rho) - rho = (sqrt(1 - rho^2) - rho arccos rho) / pi (G.1), 1/pi at 0, 0 at 1, decreasing."""
    rho = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    h = (torch.sqrt(1 - rho * rho) - rho * torch.arccos(rho)) / math.pi
    torch.testing.assert_close(g_minus_rho(rho), h, rtol=0, atol=1e-15)
    assert float(g_minus_rho(torch.tensor(0.0, dtype=torch.float64))) == 1 / math.pi
    assert float(g_minus_rho(torch.tensor(1.0, dtype=torch.float64))) == 0.0
    assert bool((g_minus_rho(rho[1000:]).diff() <= 0).all())


_W = unit_rows(6, 4, generator=torch.Generator().manual_seed(0))
_NAN = _W.clone()
_NAN[1, 2] = float("nan")


@pytest.mark.parametrize(
    ("fn", "args", "error", "message"),
    [
        (svd_rho, (_W.long(), 1), TypeError, "W must be a floating-point tensor, got dtype torch.int64"),
        (svd_rho, ([[1.0]], 1), TypeError, "W must be a torch.Tensor, got list"),
        (svd_rho, (_NAN, 1), ValueError, r"W has 1 non-finite \(NaN or Inf\) entries"),
        (svd_rho, (_W[0], 1), ValueError, "W must be a 2-D"),
        (svd_rho, (_W, 0), ValueError, r"rank must be an int in \[1, 4\] for a 6x4 weight, got 0"),
        (svd_rho, (_W, [1, 5]), ValueError, r"rank must be an int in \[1, 4\] .* got 5"),
        (svd_rho, (_W, []), ValueError, r"rank must be an int or a non-empty sequence of ints, got \[\]"),
        (svd_rho, (_W, 2.0), ValueError, "rank must be an int"),
        (fig32_value, (_W, 5), ValueError, r"rank must be an int in \[1, 4\]"),
        (theorem_339_bound, (_NAN, 1), ValueError, "W has 1 non-finite"),
        (energy_bound, (_W.int(), 1), TypeError, "floating-point tensor, got dtype torch.int32"),
        (energy_bound, (_W, True), ValueError, "rank must be an int .* got True"),
        (g_minus_rho, ([0.5],), TypeError, "rho must be a floating-point torch.Tensor, got list"),
        (g_minus_rho, (torch.tensor([0, 1]),), TypeError, "rho must be a floating-point torch.Tensor"),
        (
            g_minus_rho,
            (torch.tensor([0.5, 1.5]),),
            ValueError,
            r"rho must lie in \[-1, 1\], got 1 values .*1\.5",
        ),
        (
            g_minus_rho,
            (torch.tensor([math.nan]),),
            ValueError,
            r"rho must lie in \[-1, 1\], got 1 values outside \(e\.g\. nan\)",
        ),
        (corollary_L, (1.5,), ValueError, r"x must lie in \[0, 1\], got 1 values outside"),
        (corollary_L, (np.array([0.2, -0.1, np.nan]),), ValueError, "x must lie in .* got 2 values outside"),
        (corollary_bound, (0, 10), ValueError, r"rank must be an int in \[1, 10\] for a 10x10 weight, got 0"),
        (corollary_bound, (11, 10), ValueError, r"rank must be an int in \[1, 10\]"),
        (corollary_bound, (1, 0), ValueError, "d must be an int >= 1, got 0"),
        (corollary_bound, (1, 10.0), ValueError, r"d must be an int >= 1, got 10\.0"),
        (log_hyp1f1, (0.0, 1.0, 1.0), ValueError, r"needs 0 < a <= b and lambda >= 0, got a=0\.0"),
        (log_hyp1f1, (2.0, 1.0, 1.0), ValueError, "needs 0 < a <= b"),
        (log_hyp1f1, (1.0, 2.0, -1.0), ValueError, "needs 0 < a <= b and lambda >= 0"),
        (log_hyp1f1, (1.0, 2.0, math.nan), ValueError, "lam must be a finite number, got nan"),
        (log_hyp1f1, (1.0, 2.0, math.inf), ValueError, "lam must be a finite number, got inf"),
        (log_hyp1f1, (True, 2.0, 1.0), ValueError, "a must be a finite number, got True"),
        (remark_union_term, (10, 2, 0), ValueError, "m must be an int >= 1, got 0"),
        (
            remark_union_term,
            (10, 2, 20, "nope"),
            ValueError,
            "unknown reading 'nope'; available: net, per-unit",
        ),
        (remark_bound, (10, 11, 20), ValueError, r"rank must be an int in \[1, 10\]"),
        (remark_bound, (0, 1, 20), ValueError, "d must be an int >= 1, got 0"),
        (remark_bound, (10, 2, 2.5), ValueError, r"m must be an int >= 1, got 2\.5"),
        (unit_rows, (0, 3), ValueError, "m must be an int >= 1, got 0"),
        (unit_rows, (3, 2.0), ValueError, r"d must be an int >= 1, got 2\.0"),
    ],
)
def test_bad_inputs_raise_one_line(fn, args, error, message):
    with pytest.raises(error, match=message) as info:
        fn(*args)
    assert "\n" not in str(info.value)


def test_degenerate_inputs_return_documented_values():
    zero = torch.zeros(5, 3, dtype=torch.float64)
    assert svd_rho(zero, 2).tolist() == [0.0] * 5  # rows with a_i = 0 get rho = 0
    assert theorem_339_bound(zero, 2) == 0.0 and energy_bound(zero, 2) == 0.0
    with pytest.raises(ValueError, match="fig32_value needs rows of nonzero norm .* 5 zero rows .*row 0"):
        fig32_value(zero, 1)  # the paper's quantity counts every row alike: undefined for a zero row
    with_zero_row = torch.cat([_W, torch.zeros(1, 4, dtype=torch.float64)])
    assert float(svd_rho(with_zero_row, 2)[-1]) == 0.0
    assert theorem_339_bound(with_zero_row, 2) == pytest.approx(theorem_339_bound(_W, 2), rel=1e-12)
    assert remark_bound(5, 5, 1) == 1.0 and remark_union_term(5, 5, 1) == 0.0  # r = d: S is everything
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype, got torch.int64"):
        unit_rows(3, 2, dtype=torch.int64)
