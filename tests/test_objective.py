"""nlinit.objective: exact objectives against Monte Carlo and quadrature, the general Gaussian objective,
their invariants and their errors."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate
from strategies import seeded

from nlinit.activations import parse_activation
from nlinit.objective import (
    EXACT_ACTIVATIONS,
    UnitMoments,
    _moments64,
    _piecewise,
    _unit_loss,
    arccos_kernel,
    exact_loss,
    mc_loss,
    nlra_loss,
    sample_loss,
    unit_loss,
    unit_moments,
)

F64 = torch.float64
EXACT_SPECS = ["relu", "leaky_relu(0.2)", "identity"]


def _pair(case: str, seed: int, d_out: int = 6, d_in: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = seeded(seed)
    W = torch.randn(d_out, d_in, dtype=F64, generator=g)
    noise = torch.randn(d_out, d_in, dtype=F64, generator=g)
    if case == "random":
        Y = noise
    elif case == "near-parallel":
        Y = 1.3 * W + 1e-3 * noise  # rho_i = 1 - O(1e-7): the arccos / sqrt(1 - rho^2) corner
    elif case == "anti-parallel":
        Y = -0.7 * W  # rho_i = -1
    elif case == "zero":
        Y = torch.zeros_like(W)
    elif case == "zero-row":
        Y = noise.clone()
        Y[0] = 0.0
    else:
        raise AssertionError(case)
    return W, Y


def _per_sample_losses(W, Y, spec, n, seed):
    """||act(Y x) - act(W x)||^2 for n independent x ~ N(0, I), to estimate the Monte Carlo spread."""
    act = parse_activation(spec)
    X = torch.randn(n, W.shape[1], dtype=W.dtype, generator=seeded(seed))
    return (act(X @ Y.T) - act(X @ W.T)).pow(2).sum(1)


MC_CASES = [
    ("random", 0),
    ("random", 1),
    ("near-parallel", 2),
    ("anti-parallel", 3),
    ("zero", 4),
    ("zero-row", 5),
]


@pytest.mark.parametrize("spec", EXACT_SPECS)
@pytest.mark.parametrize(("case", "seed"), MC_CASES)
def test_exact_matches_monte_carlo(spec, case, seed):
    W, Y = _pair(case, seed)
    exact = nlra_loss(W, Y, spec, "exact").item()
    n = 50_000
    mc = nlra_loss(W, Y, spec, "mc", num_samples=n, generator=seeded(100 + seed)).item()
    # Standard error estimated from an independent batch of per-sample losses of the same distribution.
    # A correct closed form is off by more than 5 SE with probability < 1e-6 (CLT); the 1e-12 term covers
    # float64 rounding of the closed form itself (cancellation of O(||W||^2) terms when Y ~ W).
    se = _per_sample_losses(W, Y, spec, n, seed=200 + seed).std().item() / math.sqrt(n)
    assert abs(mc - exact) <= 5 * se + 1e-12 * W.pow(2).sum().item(), (exact, mc, se)
    # The check has teeth: 5 SE is a small fraction of the loss itself, so a wrong constant or a dropped
    # cross term would fail it.
    assert 5 * se < 0.05 * exact


def test_monte_carlo_any_activation_is_reproducible():
    W, Y = _pair("random", 3)
    a = nlra_loss(W, Y, "silu", "mc", num_samples=1000, generator=seeded(5))
    b = nlra_loss(W, Y, "silu", "mc", num_samples=1000, generator=seeded(5))
    assert a.item() == b.item()  # same generator state, same samples
    assert a.item() > 0


def test_monte_carlo_single_sample():
    # The estimate is the mean over samples, so with one sample it is ||act(Y x) - act(W x)||^2 for the
    # first x the generator gives.
    W, Y = _pair("random", 4)
    act = parse_activation("relu")
    one = mc_loss(W, Y, act, num_samples=1, generator=seeded(9)).item()
    x = torch.randn(1, W.shape[1], dtype=F64, generator=seeded(9))
    assert one == pytest.approx((act(x @ Y.T) - act(x @ W.T)).pow(2).sum().item(), rel=1e-12)


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_closed_forms_at_special_points(spec):
    W, _ = _pair("random", 6)
    a2 = W.pow(2).sum().item()
    alpha = {"relu": 0.0, "leaky_relu(0.2)": 0.2, "identity": 1.0}[spec]
    # Y = 0: E sigma(w.x)^2 = (1 + alpha^2)/2 ||w||^2 per unit (module docstring).
    zero = nlra_loss(W, torch.zeros_like(W), spec).item()
    assert zero == pytest.approx((1 + alpha**2) / 2 * a2, rel=1e-13)  # float64 rounding only
    # Y = -W: rho = -1, g(-1) = 0, so the loss is (1 + alpha^2) a^2 + 2 alpha a^2 = (1 + alpha)^2 a^2.
    anti = nlra_loss(W, -W, spec).item()
    assert anti == pytest.approx((1 + alpha) ** 2 * a2, rel=1e-13)


@given(seed=st.integers(0, 2**31 - 1), d_out=st.integers(1, 6), d_in=st.integers(1, 6))
def test_loss_nonnegative_and_zero_at_W(seed, d_out, d_in):
    g = seeded(seed)
    W = torch.randn(d_out, d_in, dtype=F64, generator=g)
    Y = torch.randn(d_out, d_in, dtype=F64, generator=g)
    for spec in EXACT_SPECS:
        assert nlra_loss(W, Y, spec).item() >= 0.0
    # relu and identity: exactly 0 at Y = W (rho = 1 exactly, g(1) = 1 exactly, terms cancel exactly).
    assert nlra_loss(W, W.clone(), "relu").item() == 0.0
    assert nlra_loss(W, W.clone(), "identity").item() == 0.0
    # leaky: (1 + a^2) - 2a - (1 - a)^2 cancels only up to rounding of the three O(||W||^2) terms.
    assert nlra_loss(W, W.clone(), "leaky_relu(0.2)").item() <= 1e-14 * W.pow(2).sum().item()


@given(seed=st.integers(0, 2**31 - 1), d_out=st.integers(1, 6), d_in=st.integers(1, 6))
def test_identity_loss_is_frobenius(seed, d_out, d_in):
    g = seeded(seed)
    W = torch.randn(d_out, d_in, dtype=F64, generator=g)
    Y = torch.randn(d_out, d_in, dtype=F64, generator=g)
    expected = (Y - W).pow(2).sum().item()
    # ||Y||^2 + ||W||^2 - 2<W, Y> vs ||Y - W||^2: differ by rounding relative to ||W||^2 + ||Y||^2.
    scale = W.pow(2).sum().item() + Y.pow(2).sum().item()
    assert abs(nlra_loss(W, Y, "identity").item() - expected) <= 1e-13 * scale


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_relative_is_loss_over_loss_at_zero(spec):
    W, Y = _pair("random", 7)
    rel = nlra_loss(W, Y, spec, relative=True).item()
    ratio = nlra_loss(W, Y, spec).item() / nlra_loss(W, torch.zeros_like(W), spec).item()
    assert rel == pytest.approx(ratio, rel=1e-14)  # the same two float64 numbers divided
    assert nlra_loss(W, torch.zeros_like(W), spec, relative=True).item() == pytest.approx(1.0, rel=1e-15)


def test_relative_monte_carlo_uses_same_samples():
    W, Y = _pair("random", 8)
    n = 2000
    rel = nlra_loss(W, Y, "silu", "mc", relative=True, num_samples=n, generator=seeded(1)).item()
    num = nlra_loss(W, Y, "silu", "mc", num_samples=n, generator=seeded(1)).item()
    den = nlra_loss(W, torch.zeros_like(W), "silu", "mc", num_samples=n, generator=seeded(1)).item()
    assert rel == pytest.approx(num / den, rel=1e-12)  # identical samples: only division rounding differs


def test_arccos_kernel_values():
    rho = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    g = arccos_kernel(rho)
    assert g[0].item() == 0.0
    assert g[1].item() == pytest.approx(1 / math.pi, rel=1e-15)
    assert g[2].item() == 1.0
    # Clamped outside [-1, 1].
    assert torch.equal(
        arccos_kernel(torch.tensor([-1.5, 2.0], dtype=F64)), torch.tensor([0.0, 1.0], dtype=F64)
    )


def test_arccos_kernel_matches_gaussian_expectation(generator):
    # 2 E[relu(u) relu(v)] = g(rho) for standard normals with correlation rho. 400k samples: the product's
    # SD is < 1.2, so SE < 2e-3; 5 SE = 1e-2.
    n = 400_000
    g = generator
    z1 = torch.randn(n, dtype=F64, generator=g)
    z2 = torch.randn(n, dtype=F64, generator=g)
    for r in (-0.8, -0.3, 0.0, 0.4, 0.9):
        v = r * z1 + math.sqrt(1 - r * r) * z2
        samples = 2 * torch.relu(z1) * torch.relu(v)
        se = samples.std().item() / math.sqrt(n)
        assert abs(samples.mean().item() - arccos_kernel(torch.tensor(r, dtype=F64)).item()) <= 5 * se


def test_arccos_kernel_dominates_identity():
    rho = torch.linspace(-1, 1, 20001, dtype=F64)
    # g(rho) - rho = (sqrt(1 - rho^2) - rho arccos rho) / pi >= 0; near rho = 1 both sides are ~1 and
    # the difference ~0, so allow float64 rounding (a few ulp of 1).
    assert bool((arccos_kernel(rho) >= rho - 1e-15).all())
    inner = rho[1:-1]
    assert bool((arccos_kernel(inner) > inner).all())  # strict inside (-1, 1)


def test_arccos_kernel_gradient_formula_and_endpoints():
    rho = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    arccos_kernel(rho).sum().backward()
    expected = (math.pi - torch.arccos(rho.detach())) / math.pi
    assert torch.isfinite(rho.grad).all()
    assert torch.allclose(rho.grad, expected, rtol=0, atol=1e-15)  # the backward is the formula itself
    assert rho.grad[0].item() == 0.0 and rho.grad[-1].item() == 1.0


def test_arccos_kernel_gradcheck_interior():
    rho = torch.linspace(-0.95, 0.95, 9, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(arccos_kernel, (rho,))  # finite differences stay inside (-1, 1)


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_exact_loss_gradcheck(spec):
    W, Y = _pair("random", 12, d_out=4, d_in=3)
    act = parse_activation(spec)
    Y = Y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: exact_loss(W, y, act), (Y,))


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_exact_gradient_zero_at_W(spec):
    W, _ = _pair("random", 13)
    Y = W.clone().requires_grad_(True)
    nlra_loss(W, Y, spec).backward()
    assert torch.isfinite(Y.grad).all()
    # The minimum: grad = (1 + a^2) w - 2 a w - (1 - a)^2 w = 0 up to rounding of O(||w||) terms.
    assert Y.grad.abs().max().item() <= 1e-13 * W.abs().max().item()


def test_gradient_matches_loss_decrease():
    # One gradient step from a random Y lowers the exact ReLU objective (it is differentiable in Y).
    W, Y = _pair("random", 14)
    Y = Y.requires_grad_(True)
    loss = nlra_loss(W, Y, "relu")
    loss.backward()
    with torch.no_grad():
        assert nlra_loss(W, Y - 1e-3 * Y.grad, "relu").item() < loss.item()


def test_exact_not_implemented_names_activation(monkeypatch):
    # Every registered activation now has an exact objective; an unregistered one still raises.
    import nlinit.activations as acts

    monkeypatch.setitem(acts.ACTIVATIONS, "softplus", torch.nn.functional.softplus)
    W, Y = _pair("random", 15)
    with pytest.raises(
        NotImplementedError, match=r"activation 'softplus' is not implemented; available: gelu"
    ):
        exact_loss(W, Y, acts.Activation("softplus"))
    with pytest.raises(NotImplementedError, match=r"'softplus'.*method='mc'"):
        nlra_loss(W, Y, acts.Activation("softplus"), "exact")
    assert EXACT_ACTIVATIONS == (
        "gelu", "hardswish", "identity", "leaky_relu", "relu", "relu6", "sigmoid", "silu", "tanh"
    )  # fmt: skip


# --- Gauss-Hermite quadrature for the activations without a closed form -------------------------------

SMOOTH_SPECS = ["silu", "gelu", "tanh", "sigmoid"]
PIECEWISE_SPECS = ["hardswish", "relu6"]  # closed forms through the bivariate normal CDF (section 10)
QUAD_SPECS = SMOOTH_SPECS + PIECEWISE_SPECS


@pytest.mark.parametrize("spec", QUAD_SPECS)
@pytest.mark.parametrize(("case", "seed"), [("random", 0), ("near-parallel", 2), ("zero-row", 5)])
def test_quadrature_matches_monte_carlo(spec, case, seed):
    W, Y = _pair(case, seed)
    exact = nlra_loss(W, Y, spec, "exact").item()
    n = 200_000
    mc = nlra_loss(W, Y, spec, "mc", num_samples=n, generator=seeded(300 + seed)).item()
    se = _per_sample_losses(W, Y, spec, n, seed=400 + seed).std().item() / math.sqrt(n)
    # 5 SE as above, plus the exact objective's own error: quadrature < 1e-4 relative (smooth), closed
    # forms ~1e-15 of the O(||W||^2) terms that cancel (relu6, hardswish).
    own = 1e-4 * exact if spec in SMOOTH_SPECS else 1e-12 * W.pow(2).sum().item()
    assert abs(mc - exact) <= 5 * se + own, (exact, mc, se)
    assert 5 * se < 0.05 * exact  # the check has teeth


@pytest.mark.parametrize("spec", SMOOTH_SPECS)
def test_quadrature_zero_at_W_and_finite_gradient(spec):
    W, _ = _pair("random", 13)
    act = parse_activation(spec)
    for dtype in (torch.float64, torch.float32):
        Wd = W.to(dtype)
        Y = Wd.clone().requires_grad_(True)
        loss = exact_loss(Wd, Y, act)
        # Y = W: c = a^2 exactly, so u = a s_j + beta s_k with beta = sqrt(tiny) ~ 1e-154 (1e-19 in float32)
        # and f(u) == f(v) in floating point: every summand is exactly 0.
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(Y.grad).all()
        # The minimum: the gradient vanishes (each term carries f(u) - f(v) = 0).
        assert Y.grad.abs().max().item() == 0.0
    # Nonnegative and finite-gradient at a zero row of Y and of W.
    W0, Y0 = _pair("zero-row", 5)
    W0[1] = 0.0
    Y0 = Y0.requires_grad_(True)
    loss = exact_loss(W0, Y0, act)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(Y0.grad).all()


@pytest.mark.parametrize("spec", PIECEWISE_SPECS)
def test_piecewise_near_zero_at_W_and_finite_gradient(spec):
    W, _ = _pair("random", 13)
    act = parse_activation(spec)
    for dtype in (torch.float64, torch.float32):
        Wd = W.to(dtype)
        Y = Wd.clone().requires_grad_(True)
        loss = exact_loss(Wd, Y, act)
        # Closed form E f(u)^2 + E f(v)^2 - 2 E f(u) f(v) (computed in float64 whatever the input dtype): 0
        # up to the cancellation of those O(||W||^2) terms, ~1e-15 relative (benchmarks/OBJECTIVE.md).
        r0 = exact_loss(Wd, torch.zeros_like(Wd), act).item()
        assert 0.0 <= loss.item() <= 1e-13 * r0
        loss.backward()
        assert torch.isfinite(Y.grad).all()
        # The minimum: the gradient (Price's theorem, 2 E[(f(u) - f(v)) f'(u)] ...) vanishes to rounding.
        assert Y.grad.abs().max().item() <= 1e-12 * W.abs().max().item()
    W0, Y0 = _pair("zero-row", 5)
    W0[1] = 0.0
    Y0 = Y0.requires_grad_(True)
    loss = exact_loss(W0, Y0, act)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(Y0.grad).all()


@pytest.mark.parametrize("spec", QUAD_SPECS)
def test_quadrature_gradcheck(spec):
    W, Y = _pair("random", 12, d_out=3, d_in=3)
    act = parse_activation(spec)
    Y = Y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: exact_loss(W, y, act), (Y,))


def test_quadrature_float32_matches_float64():
    W, Y = _pair("random", 16, d_out=32, d_in=16)
    act = parse_activation("silu")
    l64 = exact_loss(W, Y, act).item()
    l32 = exact_loss(W.float(), Y.float(), act).item()
    # Squares summed per unit (no cancellation): float32 keeps ~1e-6 relative.
    assert l32 == pytest.approx(l64, rel=1e-5)
    near = W + 1e-3 * Y
    n64 = exact_loss(W, near, act).item()
    n32 = exact_loss(W.float(), near.float(), act).item()
    assert n32 == pytest.approx(n64, rel=1e-3)  # R ~ 1e-6 ||W||^2, still accurate in float32


def test_nlra_exact_silu_and_auto():
    W, Y = _pair("random", 17)
    exact = nlra_loss(W, Y, "silu", "exact")
    assert exact.item() > 0
    assert nlra_loss(W, Y, "silu", "auto").item() == exact.item()  # auto now picks the quadrature
    rel = nlra_loss(W, Y, "silu", "exact", relative=True).item()
    assert rel == pytest.approx(exact.item() / nlra_loss(W, torch.zeros_like(W), "silu").item(), rel=1e-14)


def test_lfai_ws_exact_silu_not_worse_than_spectral():
    from nlinit.inits import init_factors

    g = seeded(18)
    W = torch.randn(64, 32, generator=g) / math.sqrt(32)
    act = parse_activation("silu")
    U, V = init_factors(W, 8, "lfai-ws", act, generator=seeded(19), objective="exact", max_epochs=1)
    Us, Vs = init_factors(W, 8, "spectral", act)
    assert exact_loss(W, U @ V.T, act).item() <= exact_loss(W, Us @ Vs.T, act).item()


def test_shape_mismatch():
    W = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"Y must have W's shape \(4, 3\), got \(3, 4\)"):
        nlra_loss(W, torch.zeros(3, 4))


def test_not_a_matrix():
    with pytest.raises(ValueError, match=r"W must be a 2-D \(d_out, d_in\) matrix, got shape \(4,\)"):
        nlra_loss(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"Y must be a 2-D \(d_out, d_in\) matrix, got shape \(1, 4, 3\)"):
        nlra_loss(torch.zeros(4, 3), torch.zeros(1, 4, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_entries(bad):
    W = torch.ones(4, 3)
    Y = torch.ones(4, 3)
    Y[1, 2] = bad
    with pytest.raises(ValueError, match=r"Y has 1 non-finite \(NaN or Inf\) entries"):
        nlra_loss(W, Y)
    with pytest.raises(ValueError, match=r"W has 1 non-finite \(NaN or Inf\) entries"):
        nlra_loss(Y, W)


def test_wrong_types():
    with pytest.raises(TypeError, match=r"W must be a torch.Tensor, got list"):
        nlra_loss([[1.0]], torch.ones(1, 1))
    with pytest.raises(TypeError, match=r"W must be a floating-point tensor, got dtype torch.int64"):
        nlra_loss(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2))


def test_unknown_method_and_activation():
    W = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"unknown method 'closed'; available: auto, exact, mc, samples$"):
        nlra_loss(W, W, method="closed")
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; available: "):
        nlra_loss(W, W, "swish")


# --- closed forms for relu6 and hardswish, and the general Gaussian objective ------------------------------

ALL_EXACT = ["relu", "leaky_relu(0.2)", "identity", "relu6", "hardswish", "silu", "gelu", "tanh", "sigmoid"]


@pytest.mark.parametrize(
    "spec", ["relu", "leaky_relu(0.2)", "leaky_relu(-0.5)", "identity", "relu6", "hardswish"]
)
def test_piecewise_tables_are_the_activations(spec):
    act = parse_activation(spec)
    f = _piecewise(act)
    z = torch.linspace(-10, 10, 4001, dtype=F64)  # includes the kinks -3, 0, 3, 6
    assert torch.allclose(f(z), act(z), rtol=0, atol=1e-15)
    assert np.abs(f.jumps()).max() == 0.0  # continuous, as the closed form requires
    assert _piecewise(parse_activation("silu")) is None


def _reference_unit(spec: str, m_u: float, m_v: float, a: float, b: float, rho: float) -> float:
    """E (f(u) - f(v))^2 by nested adaptive quadrature of the square, split at the kinks (|rho| <= 0.9 only:
    nearer +-1 a layer of width b sqrt(1 - rho^2) / |b rho| needs a graded mesh: see
    benchmarks/quadrature_accuracy.py).
    """
    pw = _piecewise(parse_activation(spec))
    kinks, table = pw.kinks, pw.table().tolist()

    def f(x: float) -> float:  # plain Python: the integrand is called ~1e5 times
        c = table[bisect.bisect_right(kinks, x)]
        return c[0] + x * (c[1] + x * c[2]) if len(c) == 3 else c[0] + x * c[1]

    alpha, beta = b * rho, b * math.sqrt(1 - rho * rho)
    pts1 = sorted(
        p for p in {(k - m_v) / a for k in kinks} | {(k - m_u) / alpha for k in kinks} if abs(p) < 12
    )

    def inner(z1: float) -> float:
        fv, mu = f(m_v + a * z1), m_u + alpha * z1
        pts2 = sorted(p for p in ((k - mu) / beta for k in kinks) if abs(p) < 12)
        g = lambda z2: math.exp(-0.5 * z2 * z2) * (f(mu + beta * z2) - fv) ** 2  # noqa: E731
        return integrate.quad(g, -12, 12, points=pts2 or None, epsabs=0, epsrel=1e-11, limit=200)[0]

    outer = lambda z1: math.exp(-0.5 * z1 * z1) * inner(z1)  # noqa: E731
    return integrate.quad(outer, -12, 12, points=pts1 or None, epsabs=0, epsrel=1e-11, limit=200)[0] / (
        2 * math.pi
    )


@pytest.mark.parametrize("spec", ["relu", "leaky_relu(0.2)", "relu6", "hardswish"])
@pytest.mark.parametrize(
    ("m_u", "m_v", "a", "b", "rho"),
    [(0.0, 0.0, 2.0, 1.0, 0.6), (1.5, -0.5, 2.0, 3.0, -0.7), (-1.0, 2.0, 3.0, 0.5, 0.3)],
)
def test_closed_forms_match_adaptive_quadrature(spec, m_u, m_v, a, b, rho):
    moments = UnitMoments(*(torch.tensor([x], dtype=F64) for x in (m_u, m_v, b * b, a * a, a * b * rho)))
    ours = float(unit_loss(moments, spec))
    ref = _reference_unit(spec, m_u, m_v, a, b, rho)
    # The reference (scipy quad, epsrel 1e-11) integrates the square itself and shares nothing with the
    # closed form; the two agree to ~1e-13 (benchmarks/OBJECTIVE.md), 1e-9 leaves room for the reference.
    assert ours == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("spec", ["relu", "leaky_relu(0.2)", "leaky_relu(-0.5)", "identity"])
@pytest.mark.parametrize(("case", "seed"), MC_CASES)
def test_leaky_arccos_form_matches_bvn_form(spec, case, seed):
    # Two closed forms of the same integral: Theorem 1.4's arc-cosine kernel and section 10's orthant moments
    # (bivariate normal CDF); they differ by rounding of O(||W||^2 + ||Y||^2) terms.
    W, Y = _pair(case, seed)
    act = parse_activation(spec)
    arccos = exact_loss(W, Y, act).item()
    bvn = _unit_loss(_moments64(W, Y), act).sum().item()
    assert abs(arccos - bvn) <= 1e-14 * (W.pow(2).sum() + Y.pow(2).sum()).item()


def _spd(d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    A = torch.randn(d, rank or d, dtype=F64, generator=seeded(seed))
    return A @ A.T / (rank or d) + (0.0 if rank else 0.2) * torch.eye(d, dtype=F64)


def _stats_case(name: str, d_out: int = 6, d_in: int = 5) -> dict:
    g = seeded(hash(name) % 1000)
    vec = lambda n, s: s * torch.randn(n, dtype=F64, generator=g)  # noqa: E731
    if name == "mean+offsets":
        return {"mean": vec(d_in, 0.7), "offset": vec(d_out, 1.0), "offset_y": vec(d_out, 1.0)}
    if name == "cov+mean":
        return {"mean": vec(d_in, 0.5), "cov": _spd(d_in, 3)}
    if name == "singular-cov+scale":  # rank 2 in R^5, and scales of both signs (an eval BatchNorm's gamma)
        return {
            "cov": _spd(d_in, 4, rank=2),
            "scale": torch.tensor([1.5, -0.8, 0.3, 2.0, -1.2, 1.0], dtype=F64),
        }
    if name == "all":
        return {
            "mean": vec(d_in, 0.4),
            "cov": 2.0 * _spd(d_in, 5),
            "scale": 0.5 + torch.rand(d_out, dtype=F64, generator=g),
            "offset": vec(d_out, 2.0),
            "offset_y": vec(d_out, 2.0),
        }
    raise AssertionError(name)


STATS_CASES = ["mean+offsets", "cov+mean", "singular-cov+scale", "all"]


def _per_sample_general(W, Y, spec, n, seed, stats):
    """||f(s (Y x) + c') - f(s (W x) + c)||^2 for n fresh x ~ N(mean, cov), eigh factor (not nlinit's)."""
    act = parse_activation(spec)
    d_in = W.shape[1]
    cov = stats.get("cov", torch.eye(d_in, dtype=F64))
    evals, evecs = torch.linalg.eigh(cov)
    F = evecs * evals.clamp_min(0).sqrt()
    X = torch.randn(n, d_in, dtype=F64, generator=seeded(seed)) @ F.T + stats.get(
        "mean", torch.zeros(d_in, dtype=F64)
    )
    s = stats.get("scale", 1.0)
    u = s * (X @ Y.T) + stats.get("offset_y", 0.0)
    v = s * (X @ W.T) + stats.get("offset", 0.0)
    return (act(u) - act(v)).pow(2).sum(1)


@pytest.mark.parametrize("spec", ALL_EXACT)
@pytest.mark.parametrize("case", STATS_CASES)
def test_general_gaussian_matches_monte_carlo(spec, case):
    W, Y = _pair("random", 20)
    stats = _stats_case(case)
    exact = nlra_loss(W, Y, spec, **stats).item()
    n = 100_000
    mc = nlra_loss(W, Y, spec, "mc", num_samples=n, generator=seeded(21), **stats).item()
    se = _per_sample_general(W, Y, spec, n, 22, stats).std().item() / math.sqrt(n)
    # 5 SE (a correct exact value fails with probability < 1e-6; the draws are seeded, so never flaky),
    # plus the exact value's own error: < 1e-4 relative for the quadrature, rounding for the closed forms.
    own = 1e-4 * exact if spec in SMOOTH_SPECS else 1e-12 * exact
    assert abs(mc - exact) <= 5 * se + own, (exact, mc, se)
    assert 5 * se < 0.05 * exact  # the check has teeth


@pytest.mark.parametrize("spec", ALL_EXACT)
@pytest.mark.parametrize(
    ("case", "seed"), [("random", 0), ("near-parallel", 2), ("anti-parallel", 3), ("zero-row", 5)]
)
def test_general_reduces_to_default(spec, case, seed):
    # mean 0, cov I, scale 1, offsets 0: the general path (unit_moments -> unit_loss) computes the same
    # integrals as the default path. Smooth activations: the same Hermite rule on the same (a, c/a, beta) up
    # to rounding of W @ I; leaky family: the orthant-moment form vs the arc-cosine form; relu6 / hardswish:
    # the same closed form. So they agree to rounding of the O(||W||^2) terms.
    W, Y = _pair(case, seed)
    d_out, d_in = W.shape
    trivial = {
        "mean": torch.zeros(d_in, dtype=F64),
        "cov": torch.eye(d_in, dtype=F64),
        "scale": torch.ones(d_out, dtype=F64),
        "offset": torch.zeros(d_out, dtype=F64),
        "offset_y": 0.0,
    }
    general = nlra_loss(W, Y, spec, **trivial).item()
    default = nlra_loss(W, Y, spec).item()
    assert abs(general - default) <= 1e-13 * (W.pow(2).sum() + Y.pow(2).sum()).item()
    rel_g = nlra_loss(W, Y, spec, relative=True, **trivial).item()
    assert rel_g == pytest.approx(nlra_loss(W, Y, spec, relative=True).item(), rel=1e-12, abs=1e-13)


def test_unit_moments_formulas():
    W, Y = _pair("random", 23)
    st = _stats_case("all")
    m = unit_moments(W, Y, **st)
    s, S, mu = st["scale"], st["cov"], st["mean"]
    assert torch.allclose(m.mean_u, s * (Y @ mu) + st["offset_y"], rtol=1e-14, atol=1e-14)
    assert torch.allclose(m.mean_v, s * (W @ mu) + st["offset"], rtol=1e-14, atol=1e-14)
    assert torch.allclose(m.var_v, s**2 * torch.einsum("ij,jk,ik->i", W, S, W), rtol=1e-13)
    assert torch.allclose(m.var_u, s**2 * torch.einsum("ij,jk,ik->i", Y, S, Y), rtol=1e-13)
    assert torch.allclose(m.cov_uv, s**2 * torch.einsum("ij,jk,ik->i", Y, S, W), rtol=1e-13)
    assert torch.allclose(m.cond_var_u, m.var_u - m.cov_uv**2 / m.var_v, rtol=1e-10)
    # numbers broadcast; defaults are 0 / I / 1
    m0 = unit_moments(W, Y, scale=1.0, offset=0.0)
    assert torch.equal(m0.mean_u, torch.zeros(6, dtype=F64)) and torch.allclose(m0.var_v, W.pow(2).sum(1))


def test_unit_loss_any_shape_and_dtype():
    g = seeded(24)
    var = torch.rand(2, 3, generator=g) + 0.5
    m = UnitMoments(torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g), var, var, 0.5 * var)
    for spec, dtype in (
        ("relu6", F64),
        ("silu", torch.float32),
    ):  # closed forms in float64, quadrature in input's
        out = unit_loss(m, spec)
        assert out.shape == (2, 3) and out.dtype == dtype and bool((out > 0).all())
    flat = unit_loss(UnitMoments(*(t.flatten().double() for t in m[:5])), "relu6")
    assert torch.allclose(unit_loss(m, "relu6").flatten(), flat, rtol=1e-6)  # float32 inputs, rounded


@pytest.mark.parametrize("spec", ALL_EXACT)
def test_general_gradcheck(spec):
    W, Y = _pair("random", 25, d_out=3, d_in=3)
    stats = {
        "mean": torch.tensor([0.3, -0.5, 0.8], dtype=F64),
        "cov": _spd(3, 26),
        "scale": torch.tensor([1.2, -0.7, 0.5], dtype=F64),
        "offset": torch.tensor([0.4, -1.0, 0.2], dtype=F64),
        "offset_y": torch.tensor([-0.3, 0.6, 0.1], dtype=F64),
    }
    Y = Y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: nlra_loss(W, y, spec, **stats), (Y,))
    # gradients in the statistics themselves (the offsets are what bias correction solves for)
    c2 = stats.pop("offset_y").requires_grad_(True)
    mu = stats.pop("mean").requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, m: nlra_loss(W, Y.detach(), spec, offset_y=c, mean=m, **stats), (c2, mu)
    )


@pytest.mark.parametrize("spec", ALL_EXACT)
def test_general_gradient_finite_at_degenerate_units(spec):
    W, _ = _pair("random", 27)
    S = _spd(5, 28, rank=3)  # singular: some rows of W are nearly, one exactly, in its null space
    null = torch.linalg.eigh(S).eigenvectors[:, 0]
    W[2] = null * W[2].norm()
    c = torch.linspace(-1, 1, 6, dtype=F64)
    for Y0 in (W.clone(), -0.5 * W, torch.cat([torch.zeros(1, 5, dtype=F64), W[1:]])):
        Y = Y0.requires_grad_(True)
        loss = nlra_loss(W, Y, spec, cov=S, offset=c, offset_y=c, mean=torch.full((5,), 0.2, dtype=F64))
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(Y.grad).all(), (spec, Y0[0])


@pytest.mark.parametrize("method", ["exact", "mc", "samples"])
def test_relative_reference_is_the_zero_approximant(method):
    W, Y = _pair("random", 29)
    st = {"offset": torch.linspace(-1, 1, 6, dtype=F64), "offset_y": 0.5, "scale": 2.0}
    X = torch.randn(300, 5, dtype=F64, generator=seeded(2))
    if method != "samples":
        st["mean"] = torch.full((5,), 0.3, dtype=F64)

    def kw() -> dict:  # a fresh generator per call: the same samples for all three
        return {"mc": {"num_samples": 4000, "generator": seeded(1)}, "samples": {"samples": X}}.get(
            method, {}
        )

    rel = nlra_loss(W, Y, "relu6", method, relative=True, **st, **kw()).item()
    num = nlra_loss(W, Y, "relu6", method, **st, **kw()).item()
    ref_st = {**st, "offset_y": st["offset"]}  # Y = 0 outputs f(c): the zero approximant keeps the offset
    den = nlra_loss(W, torch.zeros_like(W), "relu6", method, **ref_st, **kw()).item()
    assert rel == pytest.approx(num / den, rel=1e-12)


@pytest.mark.parametrize("method", ["exact", "mc", "samples"])
@pytest.mark.parametrize("spec", ["relu", "relu6", "silu"])
def test_relative_with_zero_reference(method, spec):
    # R(0) = 0 when every unit of W is constant: W = 0 (with or without offsets).
    W = torch.zeros(4, 3, dtype=F64)
    Y = 0.1 * torch.ones(4, 3, dtype=F64)
    kw = {"samples": torch.randn(50, 3, dtype=F64, generator=seeded(3))} if method == "samples" else {}
    if method == "mc":
        kw = {"num_samples": 500, "generator": seeded(4)}
    for stats in ({}, {"offset": 0.7, "offset_y": 0.7}):
        zero = nlra_loss(W, torch.zeros_like(W), spec, method, relative=True, **stats, **kw)
        assert zero.item() == 0.0  # 0 / 0 is defined as 0: Y is as good as the (perfect) reference
        with pytest.raises(
            ValueError, match=r"relative objective is undefined: R\(0\) = 0 .* while R\(Y\) = "
        ):
            nlra_loss(W, Y, spec, method, relative=True, **stats, **kw)
    # rows of W in cov's null space are constant too
    S = torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=F64))
    W1 = torch.tensor([[2.0, 0.0, 0.0]] * 4, dtype=F64)
    if method == "exact":
        assert nlra_loss(W1, W1, spec, cov=S, relative=True).item() == 0.0
        with pytest.raises(ValueError, match=r"relative objective is undefined"):
            nlra_loss(W1, Y, spec, cov=S, relative=True)


def test_samples_estimator():
    W, Y = _pair("random", 30)
    X = torch.randn(37, 5, dtype=F64, generator=seeded(31))
    act = parse_activation("hardswish")
    c = torch.linspace(-2, 2, 6, dtype=F64)
    manual = (act(0.5 * X @ Y.T) - act(0.5 * X @ W.T + c)).pow(2).sum(1).mean()
    Yg = Y.clone().requires_grad_(True)
    got = nlra_loss(
        W, Yg, act, samples=X, scale=0.5, offset=c
    )  # method "exact" by default, samples win: auto
    assert got.item() == pytest.approx(manual.item(), rel=1e-14)
    got.backward()
    assert torch.isfinite(Yg.grad).all() and Yg.grad.abs().sum() > 0
    assert sample_loss(W, Y, act, X, scale=0.5, offset=c, batch_size=5).item() == pytest.approx(
        manual.item(), rel=1e-13
    )


def test_monte_carlo_singular_cov_matches_exact():
    W, Y = _pair("random", 32)
    S = _spd(5, 33, rank=2)
    exact = nlra_loss(W, Y, "relu", cov=S).item()
    n = 100_000
    mc = mc_loss(W, Y, parse_activation("relu"), num_samples=n, generator=seeded(34), cov=S).item()
    se = _per_sample_general(W, Y, "relu", n, 35, {"cov": S}).std().item() / math.sqrt(n)
    assert abs(mc - exact) <= 5 * se


# --- bad input: one line naming the value, for every entry point -------------------------------------------

_W = torch.ones(4, 3, dtype=F64)
_BAD_NLRA = [
    ({"method": "mc", "num_samples": 0}, ValueError, r"^num_samples must be an int >= 1, got 0$"),
    ({"method": "mc", "num_samples": -3}, ValueError, r"^num_samples must be an int >= 1, got -3$"),
    ({"method": "mc", "num_samples": 2.5}, ValueError, r"^num_samples must be an int >= 1, got 2.5$"),
    ({"method": "mc", "num_samples": True}, ValueError, r"^num_samples must be an int >= 1, got True$"),
    ({"method": "foo"}, ValueError, r"^unknown method 'foo'; available: auto, exact, mc, samples$"),
    (
        {"mean": torch.zeros(4, dtype=F64)},
        ValueError,
        r"^mean must have shape \(3,\) \(one per input, d_in = 3\), got \(4,\)$",
    ),
    ({"mean": torch.zeros(1, 3, dtype=F64)}, ValueError, r"^mean must have shape \(3,\) .*, got \(1, 3\)$"),
    (
        {"mean": torch.tensor([0.0, float("nan"), 0.0])},
        ValueError,
        r"^mean has 1 non-finite \(NaN or Inf\) entries",
    ),
    (
        {"mean": torch.zeros(3, dtype=torch.long)},
        TypeError,
        r"^mean must be a floating-point tensor, got dtype torch.int64$",
    ),
    ({"mean": [0.0, 0.0, 0.0]}, TypeError, r"^mean must be a torch.Tensor of shape \(3,\), got list$"),
    (
        {"cov": torch.eye(4, dtype=F64)},
        ValueError,
        r"^cov must have shape \(3, 3\) \(d_in x d_in, d_in = 3\), got \(4, 4\)$",
    ),
    (
        {"cov": torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]])},
        ValueError,
        r"^cov must be symmetric, got max \|cov - cov\^T\| = 0.5",
    ),
    (
        {"cov": torch.diag(torch.tensor([1.0, -0.5, 2.0]))},
        ValueError,
        r"^cov must be positive semi-definite, got smallest eigenvalue -0.5 \(largest 2\)$",
    ),
    ({"cov": torch.full((3, 3), float("inf"))}, ValueError, r"^cov has 9 non-finite \(NaN or Inf\) entries"),
    (
        {"scale": torch.ones(3, dtype=F64)},
        ValueError,
        r"^scale must have shape \(4,\) \(one per output unit, d_out = 4\), got \(3,\)$",
    ),
    ({"scale": float("nan")}, ValueError, r"^scale must be finite, got nan$"),
    ({"scale": "2"}, TypeError, r"^scale must be a number or a torch.Tensor of shape \(4,\), got str$"),
    (
        {"offset": torch.zeros(2, 2, dtype=F64)},
        ValueError,
        r"^offset must have shape \(4,\) .*, got \(2, 2\)$",
    ),
    ({"offset_y": torch.tensor([0.0, float("inf"), 0.0, 0.0])}, ValueError, r"^offset_y has 1 non-finite"),
    (
        {"samples": torch.zeros(5, 4, dtype=F64)},
        ValueError,
        r"^samples must have shape \(5, 3\) \(N x d_in, d_in = 3\), got \(5, 4\)$",
    ),
    (
        {"samples": torch.zeros(3, dtype=F64)},
        ValueError,
        r"^samples must be a 2-D \(N, d_in\) tensor with d_in = 3, got \(3,\)$",
    ),
    (
        {"samples": torch.zeros(0, 3, dtype=F64)},
        ValueError,
        r"^samples must have at least one row, got shape \(0, 3\)$",
    ),
    ({"samples": torch.full((2, 3), float("nan"))}, ValueError, r"^samples has 6 non-finite"),
    ({"samples": torch.zeros(2, 3), "mean": torch.zeros(3)}, ValueError, r"^give either samples or mean/cov"),
    (
        {"samples": torch.zeros(2, 3), "method": "exact"},
        ValueError,
        r"^samples are given, so method must be 'samples' or 'auto', got 'exact'$",
    ),
    ({"method": "samples"}, ValueError, r"^method='samples' needs samples=X"),
    (
        {"method": "exact", "relative": True, "W": torch.zeros(4, 3)},
        ValueError,
        r"^the relative objective is undefined",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"), _BAD_NLRA, ids=[f"nlra{i}" for i in range(len(_BAD_NLRA))]
)
def test_nlra_loss_bad_input(kwargs, exc, match):
    kwargs = dict(kwargs)
    W = kwargs.pop("W", _W)
    method = kwargs.pop("method", None)
    with pytest.raises(exc, match=match):
        nlra_loss(W, torch.full((4, 3), 0.5, dtype=F64), "relu", method, **kwargs)


_ACT = parse_activation("relu")
_BAD_OTHER = [
    (lambda: mc_loss(_W, _W, _ACT, num_samples=0), ValueError, r"^num_samples must be an int >= 1, got 0$"),
    (lambda: mc_loss(_W, _W, _ACT, batch_size=0), ValueError, r"^batch_size must be an int >= 1, got 0$"),
    (lambda: mc_loss(_W, _W, _ACT, cov=-torch.eye(3)), ValueError, r"^cov must be positive semi-definite"),
    (
        lambda: sample_loss(_W, _W, _ACT, torch.zeros(2, 3), batch_size=-1),
        ValueError,
        r"^batch_size must be an int >= 1",
    ),
    (lambda: sample_loss(_W, _W, _ACT, torch.zeros(2, 2)), ValueError, r"^samples must have shape \(2, 3\)"),
    (
        lambda: sample_loss(_W, _W.T, _ACT, torch.zeros(2, 3)),
        ValueError,
        r"^Y must have W's shape \(4, 3\), got \(3, 4\)$",
    ),
    (lambda: unit_moments(_W, _W, scale=torch.ones(5)), ValueError, r"^scale must have shape \(4,\)"),
    (lambda: unit_moments(_W, _W[:, :2]), ValueError, r"^Y must have W's shape"),
    (
        lambda: unit_loss((1.0,) * 5),
        TypeError,
        r"^moments.mean_u must be a floating-point torch.Tensor, got 1.0$",
    ),
    (lambda: unit_loss(torch.ones(5)), TypeError, r"^moments must be a UnitMoments, got Tensor$"),
    (
        lambda: unit_loss(UnitMoments(*[torch.ones(2)] * 4, torch.ones(3))),
        ValueError,
        r"^moments.cov_uv has shape \(3,\), but mean_u has \(2,\)$",
    ),
    (
        lambda: unit_loss(UnitMoments(*[torch.ones(2)] * 2, -torch.ones(2), torch.ones(2), torch.zeros(2))),
        ValueError,
        r"^moments.var_u must be >= 0, got min -1$",
    ),
    (
        lambda: unit_loss(UnitMoments(*[torch.ones(2)] * 4, torch.tensor([0.5, 1.5]))),
        ValueError,
        r"^moments are not a covariance: cov_uv\^2 > var_u var_v at unit 1 \(1.5\^2 > 1\)$",
    ),
    (
        lambda: unit_loss(UnitMoments(*[torch.ones(2)] * 4, torch.tensor([0.5, float("nan")]))),
        ValueError,
        r"^moments.cov_uv has 1 non-finite",
    ),
    (
        lambda: unit_loss(UnitMoments(*[torch.ones(2)] * 5), "swish"),
        ValueError,
        r"^unknown activation 'swish'",
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "match"), _BAD_OTHER, ids=[f"other{i}" for i in range(len(_BAD_OTHER))]
)
def test_other_entry_points_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_unit_loss_not_implemented(monkeypatch):
    import nlinit.activations as acts

    monkeypatch.setitem(acts.ACTIVATIONS, "softplus", torch.nn.functional.softplus)
    with pytest.raises(NotImplementedError, match=r"activation 'softplus' is not implemented"):
        unit_loss(UnitMoments(*[torch.ones(2)] * 5), acts.Activation("softplus"))
