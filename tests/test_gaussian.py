"""nlinit.gaussian: the bivariate normal CDF, orthant moments and the piecewise-polynomial pair loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import multivariate_normal, norm
from strategies import seeded

from nlinit.gaussian import LIMIT, PiecewisePolynomial, _Frame, bvn_cdf, bvn_upper, piecewise_pair_loss

F64 = torch.float64
RELU6 = PiecewisePolynomial((0.0, 6.0), ((0.0,), (0.0, 1.0), (6.0,)))
HARDSWISH = PiecewisePolynomial((-3.0, 3.0), ((0.0,), (0.0, 0.5, 1.0 / 6.0), (0.0, 1.0)))
LEAKY = PiecewisePolynomial((0.0,), ((0.0, 0.2), (0.0, 1.0)))
PIECEWISE = {"relu6": RELU6, "hardswish": HARDSWISH, "leaky": LEAKY}


def t64(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


# --- bivariate normal CDF -----------------------------------------------------------------------------------

GRID = (-5.0, -2.0, -0.7, 0.0, 0.3, 1.2, 3.0)
RHOS = (-0.999999, -0.99, -0.93, -0.92, -0.5, 0.0, 0.25, 0.8, 0.924, 0.926, 0.999, 0.999999)


def test_bvn_cdf_matches_scipy():
    h, k, r = (torch.tensor(v, dtype=F64).flatten() for v in np.meshgrid(GRID, GRID, RHOS, indexing="ij"))
    ours = bvn_cdf(h, k, r)
    ref = [
        multivariate_normal(mean=[0, 0], cov=[[1, c], [c, 1]]).cdf([a, b])
        for a, b, c in zip(h, k, r, strict=True)
    ]
    # Both are Genz's algorithm in float64 (scipy's Fortran, ours vectorized torch), absolute error ~1e-15
    # each (benchmarks/OBJECTIVE.md also checks ours against mpmath at 30 digits: 1.4e-15).
    assert float((ours - torch.tensor(ref, dtype=F64)).abs().max()) < 1e-14


@pytest.mark.parametrize("h", GRID)
def test_bvn_cdf_at_rho_pm1(h):
    k = t64(*GRID)
    hh = torch.full_like(k, h)
    # rho = 1: Y = X, P(X <= min(h, k)); rho = -1: Y = -X, P(-k <= X <= h).
    assert torch.allclose(bvn_cdf(hh, k, t64(1.0)), t64(*norm.cdf(np.minimum(h, GRID))), rtol=0, atol=1e-15)
    lower = np.maximum(0.0, norm.cdf(h) - norm.cdf(-np.array(GRID)))
    assert torch.allclose(bvn_cdf(hh, k, t64(-1.0)), t64(*lower), rtol=0, atol=1e-15)


def test_bvn_cdf_known_values():
    zero = t64(0.0)
    for rho in (-0.9, -0.3, 0.0, 0.5, 0.95):  # Sheppard: Phi2(0, 0; rho) = 1/4 + asin(rho) / (2 pi)
        assert float(bvn_cdf(zero, zero, t64(rho))) == pytest.approx(
            0.25 + math.asin(rho) / (2 * math.pi), abs=1e-15
        )
    # far tails and the +-LIMIT values used as infinities are exact 0 / 1
    assert float(bvn_upper(t64(LIMIT), t64(0.0), t64(0.5))) == 0.0
    assert float(bvn_upper(t64(-LIMIT), t64(-LIMIT), t64(0.999))) == 1.0
    assert float(bvn_upper(t64(-LIMIT), t64(LIMIT), t64(-1.0))) == 0.0


def test_bvn_cdf_gradcheck():
    g = seeded(0)
    h = (2 * torch.randn(8, dtype=F64, generator=g)).requires_grad_(True)
    k = (2 * torch.randn(8, dtype=F64, generator=g)).requires_grad_(True)
    rho = t64(-0.97, -0.6, -0.1, 0.0, 0.3, 0.7, 0.93, 0.98).requires_grad_(True)
    # Finite differences of the value (Genz, ~1e-15) against the exact backward formulas.
    assert torch.autograd.gradcheck(bvn_cdf, (h, k, rho))


def test_bvn_cdf_gradient_at_rho_pm1():
    h = t64(-1.0, 0.5, 0.5, 2.0).requires_grad_(True)
    k = t64(0.0, 0.5, 1.0, -1.0)
    rho = t64(1.0, 1.0, 1.0, 1.0).requires_grad_(True)
    bvn_cdf(h, k, rho).sum().backward()
    # rho = 1: Phi(min(h, k)); d/dh = phi(h) on h < k, half of it on the tie, 0 on h > k
    phi = torch.exp(-0.5 * h.detach() ** 2) / math.sqrt(2 * math.pi)
    assert torch.allclose(h.grad, phi * t64(1.0, 0.5, 1.0, 0.0), rtol=0, atol=1e-16)
    # d/drho = the density on the diagonal: 0 off it, +inf on it
    assert rho.grad.tolist() == [0.0, math.inf, 0.0, 0.0]


def test_bvn_cdf_broadcasts_and_keeps_dtype():
    h = torch.zeros(3, 1)
    out = bvn_cdf(h, torch.zeros(1, 4), torch.tensor(0.5))
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full((3, 4), 1 / 3))


# --- orthant moments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "k", "rho"), [(-0.5, 0.3, 0.6), (1.0, -1.5, -0.8), (0.2, 0.2, 0.95), (-2.0, 0.0, 0.0)]
)
def test_orthant_moments_against_2d_quadrature(h, k, rho):
    # I_ij = E[X^i Y^j 1{X > h, Y > k}] by tensor Gauss-Legendre on [h, h + 14] x [k, k + 14] of the density:
    # smooth on the box and negligible beyond it (Gaussian mass < 1e-40), so it is accurate to ~1e-13.
    x, w = np.polynomial.legendre.leggauss(200)
    X = torch.tensor(h + 7 * (x + 1), dtype=F64)[:, None]
    Yv = torch.tensor(k + 7 * (x + 1), dtype=F64)[None, :]
    wt = torch.tensor(7 * w, dtype=F64)
    r2 = 1 - rho * rho
    dens = torch.exp(-(X * X - 2 * rho * X * Yv + Yv * Yv) / (2 * r2)) / (2 * math.pi * math.sqrt(r2))
    frame = _Frame.build((h,), t64(0.0), t64(h - k), t64(1.0), t64(1.0), t64(rho), t64(math.sqrt(r2)))
    # one kink at h: u = X crosses it at X = h, v = Y + (h - k) at Y = k; the orthant is index [0, 1, 1]
    for i in range(3):
        for j in range(3):
            ref = float((wt[:, None] * wt[None, :] * dens * X**i * Yv**j).sum())
            assert float(frame.I[0, 1, 1, i, j]) == pytest.approx(ref, rel=1e-11, abs=1e-14), (i, j)


def test_orthant_moments_symmetry():
    # I_ij(h, k) = I_ji(k, h): the recursions in X and in Y must agree (I_12 is built by the Y-recursion).
    g = seeded(1)
    h, k = torch.randn(2, 5, dtype=F64, generator=g)
    rho = t64(-0.9, -0.2, 0.0, 0.6, 0.99)
    r = torch.sqrt(1 - rho * rho)
    one = torch.ones(5, dtype=F64)
    for a in range(5):
        f1 = _Frame.build(
            (0.0,), -h[a : a + 1], -k[a : a + 1], one[:1], one[:1], rho[a : a + 1], r[a : a + 1]
        )
        f2 = _Frame.build(
            (0.0,), -k[a : a + 1], -h[a : a + 1], one[:1], one[:1], rho[a : a + 1], r[a : a + 1]
        )
        assert torch.allclose(f1.I[0, 1, 1], f2.I[0, 1, 1].T, rtol=1e-13, atol=1e-15)


# --- piecewise polynomials and the pair loss ---------------------------------------------------------------


def test_piecewise_polynomial_algebra():
    z = torch.linspace(-8, 8, 1601, dtype=F64)
    assert torch.equal(RELU6(z), z.clamp(0, 6))
    assert torch.allclose(HARDSWISH(z), torch.nn.functional.hardswish(z), rtol=0, atol=1e-15)
    fp = HARDSWISH.derivative()
    off_kinks = (z + 3).abs().gt(1e-9) & (z - 3).abs().gt(1e-9)  # f' is one-sided at the kinks
    expected = torch.where(z.abs() < 3, (2 * z + 3) / 6, (z > 3).to(F64))
    assert torch.allclose(fp(z)[off_kinks], expected[off_kinks], rtol=0, atol=1e-15)
    assert torch.allclose((HARDSWISH * fp)(z), HARDSWISH(z) * fp(z), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"kinks differ: \(-3.0, 3.0\) and \(0.0, 6.0\)"):
        HARDSWISH * RELU6
    assert RELU6.derivative_jumps().tolist() == [1.0, -1.0]
    assert np.allclose(HARDSWISH.derivative_jumps(), [-0.5, -0.5])
    assert np.allclose(RELU6.jumps(), 0) and np.allclose(HARDSWISH.jumps(), 0)
    assert RELU6.values_at_kinks().tolist() == [0.0, 6.0]


@pytest.mark.parametrize(
    ("kinks", "coeffs", "match"),
    [
        ((0.0,), ((0.0,),), r"1 kinks need 2 pieces, got 1"),
        ((1.0, 0.0), ((0.0,), (1.0,), (2.0,)), r"kinks must be strictly increasing, got \(1.0, 0.0\)"),
        ((0.0, 0.0), ((0.0,), (1.0,), (2.0,)), r"kinks must be strictly increasing"),
    ],
)
def test_piecewise_polynomial_bad_input(kinks, coeffs, match):
    with pytest.raises(ValueError, match=match):
        PiecewisePolynomial(kinks, coeffs)


def test_pair_loss_refuses_discontinuous_or_cubic():
    step = PiecewisePolynomial((0.0,), ((0.0,), (1.0,)))
    one = t64(1.0)
    with pytest.raises(ValueError, match=r"f must be continuous; its jumps at \(0.0,\) are"):
        piecewise_pair_loss(step, one, one, one, one, 0 * one)
    cubic = PiecewisePolynomial((0.0,), ((0.0,), (0.0, 0.0, 0.0, 1.0)))
    with pytest.raises(ValueError, match=r"f must have degree <= 2, got 3"):
        piecewise_pair_loss(cubic, one, one, one, one, 0 * one)


def _random_units(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = seeded(seed)
    m_u, m_v = 2 * torch.randn(2, n, dtype=F64, generator=g)
    A = 1.5 * torch.randn(n, 2, 2, dtype=F64, generator=g)
    S = A @ A.transpose(1, 2)  # PSD 2x2 covariances
    return [m_u, m_v, S[:, 0, 0].clone(), S[:, 1, 1].clone(), S[:, 0, 1].clone()]


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_pair_loss_gradcheck(name):
    args = [t.requires_grad_(True) for t in _random_units(2)]
    # The backward is Price's theorem (expectations of f', f f', f''), not autograd through the value.
    assert torch.autograd.gradcheck(lambda *a: piecewise_pair_loss(PIECEWISE[name], *a), args)


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_pair_loss_gradient_finite_at_degenerate_units(name):
    f = PIECEWISE[name]
    # rho = +1 (u = v), rho = -1, a zero variance on a kink (mean 0 for relu6 / leaky, -3 for hardswish),
    # both variances zero, and u constant off the kinks.
    kink = f.kinks[0]
    m_u = t64(0.5, 0.0, kink, kink, 1.0).requires_grad_(True)
    m_v = t64(0.5, 0.0, 0.3, kink, -0.4).requires_grad_(True)
    var_u = t64(2.0, 1.5, 0.0, 0.0, 0.0).requires_grad_(True)
    var_v = t64(2.0, 1.5, 1.0, 0.0, 2.0).requires_grad_(True)
    cov = t64(2.0, -1.5, 0.0, 0.0, 0.0).requires_grad_(True)
    loss = piecewise_pair_loss(f, m_u, m_v, var_u, var_v, cov)
    loss.sum().backward()
    assert loss[0].item() <= 1e-14 and loss[3].item() == 0.0  # u = v in law and a.s.
    for t in (m_u, m_v, var_u, var_v, cov):
        assert torch.isfinite(t.grad).all()
    # at u = v (rho = 1, equal means and variances) the loss is minimal: every gradient vanishes
    assert max(abs(float(t.grad[0])) for t in (m_u, m_v)) < 1e-13


def test_pair_loss_gradient_is_one_sided_derivative_at_rho_one():
    # d/dcov at rho -> 1 from inside is finite and the backward at rho = 1 equals the limit.
    f = RELU6

    def loss_at(c):
        return piecewise_pair_loss(f, t64(0.3), t64(0.3), t64(4.0), t64(4.0), t64(c))

    cov = t64(4.0).requires_grad_(True)
    piecewise_pair_loss(f, t64(0.3), t64(0.3), t64(4.0), t64(4.0), cov).backward()
    eps = 1e-6
    fd = (loss_at(4.0) - loss_at(4.0 - eps)) / eps
    # one-sided difference: O(sqrt(eps)) from the sqrt(1 - rho) behaviour of the derivative near rho = 1
    assert float(cov.grad) == pytest.approx(float(fd), rel=2e-3)


def test_pair_loss_value_at_known_points():
    # relu, independent standard normals: 1/2 + 1/2 - 2 (1/sqrt(2 pi))^2 = 1 - 1/pi
    relu = PiecewisePolynomial((0.0,), ((0.0,), (0.0, 1.0)))
    one, zero = t64(1.0), t64(0.0)
    assert float(piecewise_pair_loss(relu, zero, zero, one, one, zero)) == pytest.approx(
        1 - 1 / math.pi, rel=1e-15
    )
    # constants: (f(c') - f(c))^2 exactly
    val = piecewise_pair_loss(
        RELU6, t64(7.0, 2.0, -1.0), t64(3.0, 2.0, 0.5), zero.expand(3), zero.expand(3), zero.expand(3)
    )
    assert val.tolist() == [9.0, 0.0, 0.25]


@given(
    name=st.sampled_from(sorted(PIECEWISE)),
    m=st.tuples(*[st.floats(-4, 4)] * 2),
    sd=st.tuples(*[st.floats(0.0, 3.0)] * 2),
    rho=st.floats(-1.0, 1.0),
)
def test_pair_loss_invariants(name, m, sd, rho):
    f = PIECEWISE[name]
    (m_u, m_v), (s_u, s_v) = m, sd
    args = (t64(m_u), t64(m_v), t64(s_u * s_u), t64(s_v * s_v), t64(rho * s_u * s_v))
    loss = float(piecewise_pair_loss(f, *args))
    swapped = float(piecewise_pair_loss(f, args[1], args[0], args[3], args[2], args[4]))
    # E f(u)^2 + E f(v)^2 - 2 E f(u) f(v) carries ~1e-15 of its terms in rounding (docs/theory.md, 10.5)
    scale = 1.0 + (abs(m_u) + 3 * s_u) ** 4 + (abs(m_v) + 3 * s_v) ** 4
    assert loss >= 0.0
    assert abs(loss - swapped) <= 1e-13 * scale  # symmetric in (u, v): the X- and Y-recursions agree
    same = float(piecewise_pair_loss(f, args[0], args[0], args[2], args[2], args[2]))
    assert same <= 1e-13 * scale  # u = v almost surely


ONE_KINK = {
    "relu": PiecewisePolynomial((0.0,), ((0.0,), (0.0, 1.0))),
    "leaky": LEAKY,
    "shifted, negative slope": PiecewisePolynomial((1.5,), ((3.0, -1.0), (-3.0, 3.0))),
}


def _grid_loss(f: PiecewisePolynomial, args: list[torch.Tensor]) -> torch.Tensor:
    """The value from the orthant grid of every piece (:class:`_Frame`), as before the one-kink form."""
    from nlinit.gaussian import _standardize

    frame = _Frame.build(f.kinks, args[0], args[1], *_standardize(args[2], args[3], args[4], None), order=1)
    ff = f * f
    return frame.expect_u(ff) + frame.expect_v(ff) - 2.0 * frame.expect_pair(f, f)


@given(
    name=st.sampled_from(sorted(ONE_KINK)),
    m=st.tuples(*[st.floats(-4, 4)] * 2),
    sd=st.tuples(*[st.sampled_from([0.0, 1e-9, 0.3, 1.0, 2.5])] * 2),
    rho=st.sampled_from([-1.0, -0.999999, -0.93, -0.3, 0.0, 0.5, 0.924, 0.999999, 1.0]),
)
def test_one_kink_closed_form_equals_the_orthant_grid(name, m, sd, rho):
    """The leaky-ReLU family's one-orthant form gives the grid's value, at zero variances, rho = +-1 and
    means on the kink too: both are sums of ~1e-15-accurate terms of size (|m| + 3 s)^2."""
    f = ONE_KINK[name]
    (m_u, m_v), (s_u, s_v) = m, sd
    args = [t64(m_u), t64(m_v), t64(s_u * s_u), t64(s_v * s_v), t64(rho * s_u * s_v)]
    got = float(piecewise_pair_loss(f, *args))
    want = float(_grid_loss(f, args).clamp_min(0.0))
    scale = 1.0 + 9.0 * (
        (abs(m_u) + abs(f.kinks[0]) + 3 * s_u) ** 2 + (abs(m_v) + abs(f.kinks[0]) + 3 * s_v) ** 2
    )
    assert got == pytest.approx(want, rel=1e-12, abs=1e-14 * scale)


def test_one_kink_closed_form_on_many_random_units():
    f = ONE_KINK["leaky"]
    args = _random_units(7, n=2000)
    got = piecewise_pair_loss(f, *args)
    torch.testing.assert_close(got, _grid_loss(f, args).clamp_min(0.0), rtol=1e-11, atol=1e-13)
