"""nlinit.objective: the closed-form NLRA objective against Monte Carlo, its invariants and its errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import seeded

from nlinit.activations import parse_activation
from nlinit.objective import EXACT_ACTIVATIONS, arccos_kernel, exact_loss, mc_loss, nlra_loss

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

QUAD_SPECS = ["silu", "gelu", "hardswish", "tanh", "sigmoid", "relu6"]


@pytest.mark.parametrize("spec", QUAD_SPECS)
@pytest.mark.parametrize(("case", "seed"), [("random", 0), ("near-parallel", 2), ("zero-row", 5)])
def test_quadrature_matches_monte_carlo(spec, case, seed):
    W, Y = _pair(case, seed)
    exact = nlra_loss(W, Y, spec, "exact").item()
    n = 200_000
    mc = nlra_loss(W, Y, spec, "mc", num_samples=n, generator=seeded(300 + seed)).item()
    se = _per_sample_losses(W, Y, spec, n, seed=400 + seed).std().item() / math.sqrt(n)
    # 5 SE as above; the quadrature's own error (< 1e-4 smooth, < 3e-3 kinked, relative) is added.
    assert abs(mc - exact) <= 5 * se + 3e-3 * exact, (exact, mc, se)
    assert 5 * se < 0.05 * exact  # the check has teeth


@pytest.mark.parametrize("spec", QUAD_SPECS)
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
    with pytest.raises(ValueError, match=r"unknown method 'closed'; available: .*exact, mc$"):
        nlra_loss(W, W, method="closed")
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; available: "):
        nlra_loss(W, W, "swish")
