r"""The nonlinear low-rank approximation (NLRA) objective of one layer.

.. math::
    R(Y) = \mathbb{E}_{x \sim N(0, I_{d_{in}})} \lVert \sigma(Y x) - \sigma(W x) \rVert^2,
    \qquad W, Y \in \mathbb{R}^{d_{out} \times d_{in}}

Rows w_i of W and y_i of Y are the units; a_i = ||w_i||, b_i = ||y_i||, c_i = <w_i, y_i>, and
rho_i = c_i / (a_i b_i). Each unit's pair (y_i . x, w_i . x) is a bivariate normal, so R is a sum over
units of Gaussian integrals. For the leaky-ReLU family sigma(z) = alpha z + (1 - alpha) relu(z)
(alpha = 0: ReLU, alpha = 1: identity) they are in closed form (docs/theory.md, section 1):

.. math::
    R(Y) = \sum_i \tfrac{1 + \alpha^2}{2} (a_i^2 + b_i^2) - 2 \alpha c_i - (1 - \alpha)^2 a_i b_i g(\rho_i),
    \qquad g(\rho) = \frac{\sqrt{1 - \rho^2} + (\pi - \arccos \rho)\, \rho}{\pi}

using E relu(u)^2 = b^2/2, E u relu(v) = c/2 and 2 E relu(u) relu(v) = a b g(rho) (the first-order
arc-cosine kernel). For ReLU this is the paper's R(Y) = ||W||^2/2 + ||Y||^2/2 - sum_i a_i b_i g(rho_i);
for the identity it is ||Y - W||_F^2.

relu6 and hardswish are continuous piecewise polynomials (degree 1 and 2), so their per-unit integrals are
closed forms too, in the normal pdf / cdf and the bivariate normal CDF (:mod:`nlinit.gaussian`,
docs/theory.md section 10). The smooth activations (silu, gelu, tanh, sigmoid) are computed
deterministically by tensor-product Gauss-Hermite quadrature (:func:`_quadrature_loss`, differentiable in
Y). Any activation can also be estimated by Monte Carlo, or on given input samples.

**General Gaussian inputs, scales and offsets** (nlinit's, not the paper's). With x ~ N(mu, Sigma), a per-unit
scale s and offsets c (target) and c' (approximant), unit i compares u_i = s_i (y_i . x) + c'_i with
v_i = s_i (w_i . x) + c_i, still a bivariate normal pair (:func:`unit_moments`); :func:`unit_loss` gives
E (f(u_i) - f(v_i))^2 per unit and :func:`nlra_loss` their sum (``mean=``, ``cov=``, ``scale=``,
``offset=``, ``offset_y=``).

For a conv in the "channel" layout, x is a patch vector: every output pixel of a conv applied to an image
of i.i.d. N(0, 1) entries sees an N(0, I) patch, so the conv objective per pixel equals R on the matrix
view (borders aside).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice, check_finite, check_int, check_matrix
from .activations import LEAKY_FAMILY, Activation, parse_activation
from .gaussian import PiecewisePolynomial, _piecewise_pair_loss

__all__ = [
    "CLOSED_FORM_ACTIVATIONS",
    "EXACT_ACTIVATIONS",
    "QUADRATURE_NODES",
    "UnitMoments",
    "approx_unit_loss",
    "arccos_kernel",
    "exact_loss",
    "mc_loss",
    "nlra_loss",
    "normalized_loss",
    "sample_loss",
    "standardize_rows",
    "unit_loss",
    "unit_moments",
]

#: activations whose per-unit objective is a closed form, exact up to rounding: the leaky-ReLU family
#: (Theorem 1.4 of docs/theory.md) and the piecewise polynomials relu6 and hardswish (section 10). Measured
#: worst relative error per unit against an independent reference (benchmarks/OBJECTIVE.md): relu6 3.5e-10,
#: hardswish 1.3e-10 for a, b in [0.1, 3], |rho| <= 0.999999 (float64 cancellation as the loss vanishes);
#: <= 3.3e-12 for all four with means in [-3, 4].
CLOSED_FORM_ACTIVATIONS = (*LEAKY_FAMILY, "hardswish", "relu6")

#: Gauss-Hermite nodes per dimension for the smooth activations, from the measured worst relative error per
#: unit against an independent reference (benchmarks/quadrature_accuracy.py, benchmarks/OBJECTIVE.md): for
#: a, b in [0.1, 3], |rho| <= 0.999999: silu 4.8e-9, gelu 2.1e-8, sigmoid 1.2e-8 at n = 64; tanh 2.7e-6 at
#: n = 96 (one unit, a = b = 3, rho = 0.999999, a tiny loss; 4.6e-7 for |rho| <= 0.999; 4.4e-9 at n = 128).
#: With means in [-3, 4] the worst units are the same. Float32 adds < 1e-6.
QUADRATURE_NODES: dict[str, int] = {
    "gelu": 64,
    "sigmoid": 64,
    "silu": 64,
    "tanh": 96,
}

#: activations for which ``method="exact"`` works: closed form or deterministic quadrature.
EXACT_ACTIVATIONS = tuple(sorted(CLOSED_FORM_ACTIVATIONS + tuple(QUADRATURE_NODES)))

F64 = torch.float64


class _ArcCosKernel(torch.autograd.Function):
    """g(rho) with its derivative g'(rho) = (pi - arccos rho) / pi, finite on all of [-1, 1].

    Autograd through the formula would add the two infinite derivatives of sqrt(1 - rho^2) and
    arccos(rho) at rho = +-1 and return NaN; their sum is finite, so the backward is written out.
    """

    @staticmethod
    def forward(ctx, rho: Tensor) -> Tensor:  # type: ignore[override]
        rho = rho.clamp(-1.0, 1.0)
        ctx.save_for_backward(rho)
        return (torch.sqrt(1.0 - rho * rho) + (math.pi - torch.arccos(rho)) * rho) / math.pi

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (rho,) = ctx.saved_tensors
        return grad * (math.pi - torch.arccos(rho)) / math.pi


def arccos_kernel(rho: Tensor) -> Tensor:
    r"""First-order arc-cosine kernel g(rho) = (sqrt(1 - rho^2) + (pi - arccos rho) rho) / pi.

    2 E[relu(u) relu(v)] = g(rho) for standard normals u, v with correlation rho; g(-1) = 0,
    g(0) = 1/pi, g(1) = 1, and g(rho) >= rho on [-1, 1]. Input is clamped to [-1, 1].

    Example:
        >>> arccos_kernel(torch.tensor([0.0, 1.0]))
        tensor([0.3183, 1.0000])
    """
    if not isinstance(rho, Tensor) or not rho.is_floating_point():
        got = f"dtype {rho.dtype}" if isinstance(rho, Tensor) else type(rho).__name__
        raise TypeError(f"rho must be a floating-point torch.Tensor, got {got}")
    return _ArcCosKernel.apply(rho)


def _leaky_alpha(act: Activation) -> float:
    alpha = act.leaky_slope
    if alpha is not None:
        return alpha
    raise NotImplementedError(
        f"exact objective for activation {str(act)!r} is not implemented; "
        f"available: {', '.join(EXACT_ACTIVATIONS)} (use method='mc' for others)"
    )


def _piecewise(act: Activation) -> PiecewisePolynomial | None:
    """``act`` as a continuous piecewise polynomial (ascending coefficients), or None if it is not one.

    leaky-ReLU family: alpha z below 0, z above; relu6 = clamp(z, 0, 6); hardswish(z) = z (z + 3) / 6 on
    [-3, 3), 0 below, z above (tests check each table against the activation itself).
    """
    alpha = act.leaky_slope
    if alpha is not None:
        return PiecewisePolynomial((0.0,), ((0.0, alpha), (0.0, 1.0)))
    if act.name == "relu6":
        return PiecewisePolynomial((0.0, 6.0), ((0.0,), (0.0, 1.0), (6.0,)))
    if act.name == "hardswish":
        return PiecewisePolynomial((-3.0, 3.0), ((0.0,), (0.0, 0.5, 1.0 / 6.0), (0.0, 1.0)))
    return None


#: the rule's nodes span |z| <= this many standard deviations (the Gaussian mass beyond is ~2e-19).
_QUADRATURE_SPAN = 9.0


@functools.lru_cache(maxsize=16)
def _hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes s_k, weights w_k with sum_k w_k h(s_k) ~ E h(z), z ~ N(0, 1): Gauss-Hermite, compressed.

    The plain rule (s = sqrt(2) t, w = w_hermgauss / sqrt(pi)) spreads its nodes over |z| <~ 2 sqrt(n),
    far past where the Gaussian has mass. Substituting z = sigma s' with sigma = 9 / max|s| gives
    E h(z) = E_{s'}[h(sigma s') sigma exp((1 - sigma^2) s'^2 / 2)]: the same n nodes, squeezed into
    |z| <= 9, so sigma times finer. For n = 64 that is 1.8x finer and 3-5 orders of magnitude more accurate
    for silu/gelu/tanh/sigmoid at a, b ~ 3 (benchmarks/quadrature_accuracy.py).
    """
    t, w = np.polynomial.hermite.hermgauss(n)
    s = t * math.sqrt(2.0)
    sigma = min(1.0, _QUADRATURE_SPAN / float(s.max()))
    return sigma * s, w / math.sqrt(math.pi) * sigma * np.exp((1.0 - sigma * sigma) * s * s / 2.0)


def _hermite_unit_loss(
    m_u: Tensor | None,
    m_v: Tensor | None,
    a: Tensor,
    alpha: Tensor,
    beta: Tensor,
    act: Activation,
    num_nodes: int,
    max_elements: int = 2**22,
) -> Tensor:
    r"""E (f(u) - f(v))^2 per unit for v = m_v + a z1, u = m_u + alpha z1 + beta z2 (z1, z2 i.i.d. N(0, 1)).

    Summed as squares on the n x n rule of :func:`_hermite_rule`: sum_{j,k} w_j w_k (f(m_u + alpha s_j +
    beta s_k) - f(m_v + a s_j))^2; means of None are 0 (and are not added, so the centred case is bitwise
    the same as without means). Units are processed in chunks of max_elements // n^2 so the forward
    temporaries stay O(max_elements); autograd keeps what it needs for the backward.
    Returns (units,) in a's dtype.
    """
    dtype = a.dtype
    s_np, w_np = _hermite_rule(num_nodes)
    s = torch.as_tensor(s_np, dtype=dtype, device=a.device)  # (n,)
    w = torch.as_tensor(w_np, dtype=dtype, device=a.device)  # (n,)
    w2 = w[:, None] * w[None, :]  # (n, n)
    rows = max(1, max_elements // (num_nodes * num_nodes))
    out = []
    for i in range(0, a.shape[0], rows):
        sl = slice(i, i + rows)
        v = a[sl, None] * s  # (m, n): v at z1 = s_j
        if m_v is not None:
            v = m_v[sl, None] + v
        u = alpha[sl, None, None] * s[:, None]  # (m, n, 1)
        if m_u is not None:
            u = m_u[sl, None, None] + u
        u = u + beta[sl, None, None] * s  # (m, n, n): [unit, j, k]
        out.append(((act(u) - act(v)[:, :, None]).square() * w2).sum((1, 2)))
    return torch.cat(out) if out else a.new_zeros(0)


def _rowdot(A: Tensor, B: Tensor) -> Tensor:
    """(A * B).sum(1) without the (d_out, d_in) temporary (5x faster on CPU for 512 x 4608)."""
    return torch.einsum("ij,ij->i", A, B)


def _safe_sqrt(p: Tensor) -> Tensor:
    """sqrt(p) for p >= 0 with a finite gradient at 0 (where it is set to 0), and exactly 0 there."""
    root = torch.sqrt(p.clamp_min(torch.finfo(p.dtype).tiny))
    return torch.where(p > 0, root, torch.zeros_like(root))


def _quadrature_loss(
    W: Tensor, Y: Tensor, act: Activation, num_nodes: int, max_elements: int = 2**22
) -> Tensor:
    r"""R(Y) for any elementwise activation f by tensor-product Gauss-Hermite quadrature.

    Per unit, (u, v) = (y . x, w . x) is bivariate normal. Decompose along w: with z1, z2 i.i.d. N(0, 1),

    .. math::
        v = a z_1, \qquad u = \frac{c}{a} z_1 + \beta z_2, \qquad \beta = \lVert y - (c / a^2) w \rVert
        \;(= b \sqrt{1 - \rho^2}),

    and the unit's term is E(f(u) - f(v))^2 = sum_{j,k} w_j w_k (f(c/a s_j + beta s_k) - f(a s_j))^2 on the
    n x n rule of :func:`_hermite_rule` (Gauss-Hermite, compressed). This is the same integral as
    E f(u)^2 + E f(v)^2 - 2 E f(u) f(v), but summed as a square it is >= 0 per unit and has no cancellation
    of O(||W||^2) terms when Y ~ W (it is exactly 0 at Y = W), so float32 keeps its relative accuracy.
    beta is computed from the residual vector, not from 1 - rho^2, so it is accurate for rho ~ 1. Guards:
    a = 0 rows (v = 0, c = 0: u = ||y|| z2) and b = 0 rows (u = 0, f(u) = f(0)) fall out of the same
    formula; beta = sqrt(p) with its gradient set to 0 at p = 0 (:func:`_safe_sqrt`; the true gradient there
    through beta is 0 by Stein's lemma, since it carries a factor beta).

    Measured worst relative error per unit against a composite Gauss-Legendre reference for a, b in [0.1, 3],
    rho in [-0.99, 0.999] (benchmarks/OBJECTIVE.md): silu, gelu, sigmoid < 2e-8 at n = 64, tanh 5e-7 at
    n = 96 (all < 1e-4). It works for any activation, but converges slowly for kinked ones (relu6 stalls
    near 2e-3, hardswish 6e-4 at n = 192), which therefore use their closed forms instead.
    """
    dtype = W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32
    Wc, Yc = W.to(dtype), Y.to(dtype)
    a2 = _rowdot(Wc, Wc)  # (d_out,)
    c = _rowdot(Wc, Yc)  # (d_out,)
    pos = a2 > 0
    safe_a2 = torch.where(pos, a2, torch.ones_like(a2))
    coef = torch.where(pos, c / safe_a2, torch.zeros_like(c))  # c / a^2
    a = torch.sqrt(safe_a2) * pos  # a, with a finite gradient at a = 0
    alpha = coef * a  # c / a
    resid = Yc - coef[:, None] * Wc  # y minus its projection on w
    beta = _safe_sqrt(_rowdot(resid, resid))
    return _hermite_unit_loss(None, None, a, alpha, beta, act, num_nodes, max_elements).sum().to(W.dtype)


# --- per-unit moments and losses ------------------------------------------------------------------------


class UnitMoments(NamedTuple):
    r"""Per-unit parameters of the bivariate normal pair (u_i, v_i); every field has shape (d_out,).

    mean_u = E u, mean_v = E v, var_u = Var u, var_v = Var v, cov_uv = Cov(u, v). ``cond_var_u`` (optional)
    is Var(u | v) = var_u - cov_uv^2 / var_v (var_u where var_v = 0), computed without that subtraction's
    cancellation, e.g. from a residual vector (:func:`unit_moments` does). When given it must be computed
    from the same inputs as the other fields: the quadrature differentiates through it, the closed forms
    through var_u.
    """

    mean_u: Tensor
    mean_v: Tensor
    var_u: Tensor
    var_v: Tensor
    cov_uv: Tensor
    cond_var_u: Tensor | None = None


def _moments64(
    W: Tensor,
    Y: Tensor,
    mean: Tensor | None = None,
    cov: Tensor | None = None,
    scale: Tensor | None = None,
    offset: Tensor | None = None,
    offset_y: Tensor | None = None,
    WS: Tensor | None = None,
    YS: Tensor | None = None,
) -> UnitMoments:
    """:func:`unit_moments` without checks, in float64 (None: mean 0, cov I, scale 1, offsets 0). ``WS``,
    ``YS``: W Sigma and Y Sigma (float64) when the caller has them (several Y for one W; Y Sigma from the
    factors of a low-rank Y)."""
    W64, Y64 = W.to(F64), Y.to(F64)
    S = None if cov is None else cov.to(F64)
    if WS is None:
        WS = W64 if S is None else W64 @ S  # (d_out, d_in)
    var_v = _rowdot(WS, W64)
    cov_uv = _rowdot(WS, Y64)
    pos = var_v > 0
    coef = torch.where(pos, cov_uv / torch.where(pos, var_v, torch.ones_like(var_v)), torch.zeros_like(var_v))
    E = Y64 - coef[:, None] * W64  # y minus its Sigma-projection on w: (u | v)'s direction
    ES = E if S is None else E @ S if YS is None else YS - coef[:, None] * WS
    cond = _rowdot(ES, E).clamp_min(0.0)
    var_u = cond + coef * cov_uv  # = y^T Sigma y, without recomputing it
    if mean is None:
        m_u = torch.zeros_like(var_u)
        m_v = torch.zeros_like(var_v)
    else:
        mu = mean.to(F64)
        m_u, m_v = Y64 @ mu, W64 @ mu
    if scale is not None:
        s = scale.to(F64)
        m_u, m_v = s * m_u, s * m_v
        s2 = s * s
        var_u, var_v, cov_uv, cond = s2 * var_u, s2 * var_v, s2 * cov_uv, s2 * cond
    if offset is not None:
        m_v = m_v + offset.to(F64)
    if offset_y is not None:
        m_u = m_u + offset_y.to(F64)
    return UnitMoments(m_u, m_v, var_u, var_v, cov_uv, cond)


def _unit_loss(m: UnitMoments, act: Activation, nodes: int | None = None) -> Tensor:
    """:func:`unit_loss` without checks; ``nodes``: Gauss-Hermite with that many nodes, for any activation."""
    f = _piecewise(act) if nodes is None else None
    if f is not None:
        return _piecewise_pair_loss(f, m)  # UnitMoments: the six fields in that order
    if nodes is None and act.name not in QUADRATURE_NODES:
        _leaky_alpha(act)  # raises NotImplementedError naming the activation
    dtype = torch.promote_types(m.var_v.dtype, torch.float32)
    var_u, var_v, cov_uv = (t.to(dtype) for t in (m.var_u, m.var_v, m.cov_uv))
    pos = var_v > 0
    safe = torch.where(pos, var_v, torch.ones_like(var_v))
    a = torch.sqrt(safe) * pos  # sd of v, with a finite gradient at 0
    alpha = torch.where(pos, cov_uv / torch.sqrt(safe), torch.zeros_like(cov_uv))  # Cov(u, v) / sd(v)
    cond = m.cond_var_u.to(dtype) if m.cond_var_u is not None else var_u - alpha * alpha
    beta = _safe_sqrt(cond)
    m_u, m_v = m.mean_u.to(dtype), m.mean_v.to(dtype)
    return _hermite_unit_loss(m_u, m_v, a, alpha, beta, act, nodes or QUADRATURE_NODES[act.name])


def approx_unit_loss(moments: UnitMoments, activation: Activation, nodes: int = 20) -> Tensor:
    """:func:`unit_loss` on a small n x n Gauss-Hermite rule for any activation, without input checks.

    Fast and smooth in the moments, but only about as accurate as the rule (for searches whose result is
    then compared on :func:`unit_loss`, e.g. the per-unit norms of :func:`nlinit.subspace.best_row_norms`).
    Only O(1) checks (it runs inside those searches' loops): moments a UnitMoments of tensors, a known
    activation, nodes an int in [1, 512].
    """
    if not isinstance(moments, UnitMoments) or not isinstance(moments.var_v, Tensor):
        raise TypeError(f"moments must be a UnitMoments of tensors, got {type(moments).__name__}")
    act = parse_activation(activation)
    check_int("nodes", nodes, low=1, high=512)
    return _unit_loss(moments, act, nodes)


def _conditional_target(
    activation: Activation, a: Tensor, rho: Tensor, sin: Tensor, nodes: int = 20, offset: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""A unit's target given the direction its row meets: (x, w, h, c) on the n-node rule of xi.

    With v = d + a z1 and a row of unit norm at cosine rho to w (norm a), xi = rho z1 + sin z2 (z1, z2
    i.i.d. N(0, 1); rho^2 + sin^2 = 1), condition on xi: v = d + a rho xi + a sin z', z' ~ N(0, 1)
    independent of xi. Every u = b xi + d' (a row b e along that direction, offset d') then has

    .. math::
        \mathbb{E}(f(u) - f(v))^2 = \mathbb{E}_\xi\big(f(b \xi + d') - h(\xi)\big)^2 + c, \qquad
        h(\xi) = \mathbb{E}_{z'} f(d + a \rho \xi + a \sin z'),

    with c = E f(v)^2 - E h(xi)^2,

    and neither h nor c depends on (b, d'). On an n x n Gauss-Hermite rule (:func:`_hermite_rule`, the
    accuracy of :func:`approx_unit_loss` with ``nodes`` n), h is tabulated once at the n nodes x of xi:
    each evaluation of a unit's loss then costs n activations instead of n^2.

    Args:
        a, rho, sin: (d_out,) float64 (sin passed, not derived, for accuracy near rho = 1). nodes: n.
        offset: (d_out,) d, or None (0).
    Returns:
        x (n,), w (n,), h (d_out, n), c (d_out,): the loss of (b, d') is
        sum_j w_j (f(b x_j + d') - h_j)^2 + c.
    """
    f = activation
    x_np, w_np = _hermite_rule(nodes)
    x = torch.as_tensor(x_np, dtype=F64, device=a.device)
    w = torch.as_tensor(w_np, dtype=F64, device=a.device)
    inner = (a * rho)[:, None, None] * x[None, :, None] + (a * sin)[:, None, None] * x[None, None, :]
    if offset is not None:
        inner = inner + offset[:, None, None]
    h = (f(inner) * w).sum(-1)  # (d_out, n): h at the nodes
    v = a[:, None] * x if offset is None else offset[:, None] + a[:, None] * x
    c = (f(v) ** 2 * w).sum(-1) - (h**2 * w).sum(-1)
    return x, w, h, c


def _row_scale_loss(
    activation: Activation, a: Tensor, rho: Tensor, sin: Tensor, nodes: int = 20
) -> Callable[[Tensor], Tensor]:
    r"""Per unit, b -> E (f(b xi) - f(v))^2 for a row of norm b at cosine rho to w (norm a), no offsets: a
    1-D search on :func:`_conditional_target`'s rule (n activations per unit and call).

    Args:
        a, rho, sin: (d_out,) float64: ||w_i||, the cosine of y_i to w_i, and sqrt(1 - rho_i^2). nodes: n.
    Returns:
        A function of b (d_out,) -> (d_out,) losses, float64.
    """
    x, w, h, c = _conditional_target(activation, a, rho, sin, nodes)

    def loss(b: Tensor) -> Tensor:
        return ((activation(b[:, None] * x) - h) ** 2 * w).sum(-1) + c

    return loss


def _fit_scale_and_offset(
    activation: Activation,
    a: Tensor,
    rho: Tensor,
    sin: Tensor,
    offset: Tensor,
    starts: list[tuple[Tensor, Tensor]],
    nodes: int = 20,
    steps: int = 30,
) -> tuple[Tensor, Tensor]:
    r"""Per unit, (b, d') minimizing E (f(b xi + d') - f(v))^2 (:func:`_conditional_target`): the best on the
    rule of the searches from each of ``starts`` ((b, d') pairs of (d_out,) tensors).

    On the rule it is a weighted least-squares problem in two parameters per unit,
    sum_j w_j (f(b x_j + d') - h_j)^2: Levenberg-Marquardt on all units at once (the Gauss-Newton
    matrix [sum w f'^2 x^2, sum w f'^2 x; ., sum w f'^2] plus lambda I, solved in closed form per unit;
    a step is kept where it lowers the unit's loss, lambda shrinks by 3 then, else grows by 4). f' by
    autograd of the elementwise f. At most ``steps`` iterations, 2 evaluations of n activations per unit
    each; it stops early once accepted steps lower no unit's loss by more than 1e-13 of the largest (on
    ResNet-50's layers the sum of the units' exact losses is the same to 8 digits after 10 and 30 steps).
    The objective is not convex (f's kinks and tails leave local minima: with gelu and a large negative
    offset, the search from the linear optimum can stop in one that a start at d' = 0 avoids), hence
    several starts. Returns (b, d') (d_out,) float64; no unit's rule loss is higher than at its first
    start.
    """
    x, w, h, c = _conditional_target(activation, a, rho, sin, nodes, offset)
    k, n = len(starts), a.numel()
    assert k >= 1, "starts is empty"
    h, c = h.repeat(k, 1), c.repeat(k)  # every start's search in one batch of k * d_out units
    alpha = activation.leaky_slope

    def evaluate(b: Tensor, dn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = b[:, None] * x + dn[:, None]
        if alpha is not None:  # the leaky-ReLU family: f' is a step
            fz, slope = activation(z), torch.where(z > 0, 1.0, alpha)
        else:
            z.requires_grad_(True)
            with torch.enable_grad():
                fz = activation(z)
                (slope,) = torch.autograd.grad(fz.sum(), z)
            fz = fz.detach()
        r = fz - h
        return (w * r * r).sum(-1), r, slope

    b0 = torch.cat([start[0] for start in starts])
    d0 = torch.cat([start[1] for start in starts])
    loss, b, d_new = (t.view(k, n) for t in _levenberg_marquardt(evaluate, b0, d0, x, w, c, steps))
    pick = loss.argmin(0)[None]  # the first start wins ties
    return b.gather(0, pick)[0], d_new.gather(0, pick)[0]


def _levenberg_marquardt(
    evaluate: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
    b: Tensor,
    d_new: Tensor,
    x: Tensor,
    w: Tensor,
    c: Tensor,
    steps: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_fit_scale_and_offset`'s search from one start: (rule loss without c, b, d'), per unit."""
    loss, r, slope = evaluate(b, d_new)
    lam = torch.full_like(b, 1e-3)
    powers = torch.stack([x * x, x, torch.ones_like(x)], 1)  # (n, 3): the sums below as two small GEMMs
    for _ in range(steps):
        ws = w * slope  # (d_out, n)
        hbb, hbd, hdd = ((ws * slope) @ powers).unbind(1)  # sum w f'^2 x^2, sum w f'^2 x, sum w f'^2
        gb, gd = ((ws * r) @ powers[:, 1:]).unbind(1)  # sum w r f' x, sum w r f'
        scale = hbb + hdd
        damp = lam * torch.where(scale > 0, scale, 1.0)
        det = (hbb + damp) * (hdd + damp) - hbd * hbd
        ok = det > 0
        safe = torch.where(ok, det, 1.0)
        step_b = torch.where(ok, -((hdd + damp) * gb - hbd * gd) / safe, 0.0)
        step_d = torch.where(ok, -((hbb + damp) * gd - hbd * gb) / safe, 0.0)
        new_b, new_d = (b + step_b).clamp_min(0.0), d_new + step_d
        new_loss, new_r, new_slope = evaluate(new_b, new_d)
        better = new_loss < loss
        gain = float((loss - new_loss).clamp_min(0.0).max()) if loss.numel() else 0.0
        b, d_new = torch.where(better, new_b, b), torch.where(better, new_d, d_new)
        loss = torch.where(better, new_loss, loss)
        r = torch.where(better[:, None], new_r, r)
        slope = torch.where(better[:, None], new_slope, slope)
        lam = torch.where(better, lam / 3, lam * 4)
        if bool(better.any()) and gain <= 1e-13 * float(loss.max() + c.abs().max()):
            break  # steps still succeed but no unit gains beyond rounding: converged on the rule
    return loss, b, d_new


def _check_per_unit(name: str, x: object, n: int, device: torch.device) -> Tensor:
    """A (d_out,) tensor, a 0-dim tensor or a real number (both broadcast to (d_out,)); finite."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {x!r}")
        return torch.full((n,), float(x), dtype=F64, device=device)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a number or a torch.Tensor of shape ({n},), got {type(x).__name__}")
    if x.dim() == 0:
        x = x.expand(n)
    return _check_tensor(name, x, (n,), f"one per output unit, d_out = {n}", device)


def _check_tensor(name: str, x: object, shape: tuple[int, ...], what: str, device: torch.device) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but W is on {device}; put both on one device")
    return check_finite(name, x)


def _check_cov(cov: object, d_in: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(cov symmetrized, a factor F with cov = F F^T), float64; raises for a non-symmetric or non-PSD cov.

    Cholesky when cov is positive definite; otherwise (singular but PSD, e.g. a calibration covariance of
    low rank) the eigendecomposition, with eigenvalues down to -d_in eps ||cov|| taken as 0 (rounding).
    """
    c = _check_tensor("cov", cov, (d_in, d_in), f"d_in x d_in, d_in = {d_in}", device)
    eps = torch.finfo(c.dtype).eps
    S = c.to(F64)
    big = float(S.abs().max())
    asym = float((S - S.T).abs().max())
    if asym > 100 * eps * big:
        raise ValueError(f"cov must be symmetric, got max |cov - cov^T| = {asym:.3g} (max |cov| = {big:.3g})")
    S = (S + S.T) / 2
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) == 0:
        return S, L
    evals, evecs = torch.linalg.eigh(S)
    lo, hi = float(evals[0]), max(float(evals[-1]), 0.0)
    if lo < -d_in * eps * hi or (hi == 0.0 and lo < 0.0):
        raise ValueError(
            f"cov must be positive semi-definite, got smallest eigenvalue {lo:.3g} (largest {hi:.3g})"
        )
    return S, evecs * evals.clamp_min(0.0).sqrt()


def _low_rank_losses(
    W: Tensor,
    approximants: Sequence[tuple[Tensor, Tensor, Tensor]],
    act: Activation,
    *,
    mean: Tensor | None,
    cov: Tensor | None,
    scale: Tensor,
    offset: Tensor,
) -> tuple[list[float], float]:
    """The exact objectives R(U V^T) (offsets c' per approximant (U, V, c')) of one W and R(0), in float64,
    without input checks (the caller's cov is symmetric PSD, e.g. from calibration statistics).

    W Sigma is computed once (O(d_out d_in^2)), each Y Sigma from the factors as U (V^T Sigma)
    (O(r d_in^2 + d_out d_in r)): no factorization of Sigma (the exact objective needs only its quadratic
    forms), and the conditional variance from the residual (Y - c W) Sigma = Y Sigma - c W Sigma, as in
    :func:`unit_moments`.
    """
    W64 = W.to(F64)
    S = None if cov is None else cov.to(F64)
    WS = W64 if S is None else W64 @ S
    losses = []
    for U, V, offset_y in approximants:
        U64, V64 = U.to(F64), V.to(F64)
        YS = None if S is None else U64 @ (V64.T @ S)
        m = _moments64(W64, U64 @ V64.T, mean, S, scale, offset, offset_y, WS=WS, YS=YS)
        losses.append(float(_unit_loss(m, act).sum()))
    nil = torch.zeros_like(offset, dtype=F64)
    m_v = W64 @ mean.to(F64) if mean is not None else nil
    var_v = _rowdot(WS, W64)
    s2 = scale.to(F64) ** 2
    ref = UnitMoments(offset.to(F64), scale.to(F64) * m_v + offset.to(F64), nil, s2 * var_v, nil, nil)
    return losses, float(_unit_loss(ref, act).sum())


def _sample_losses(
    W: Tensor,
    approximants: Sequence[tuple[Tensor, Tensor, Tensor]],
    act: Activation,
    X: Tensor,
    *,
    scale: Tensor,
    offset: Tensor,
    batch: int = 4096,
) -> tuple[list[float], float]:
    """On the rows x_k of X (N, d_in): each approximant's
    (1/N) sum_k ||f(s (U V^T x_k) + c') - f(s (W x_k) + c)||^2 and R(0)'s (each unit the constant f(c)), in
    float64, without input checks.

    The target f(s (W x) + c) once per batch of rows (N d_in d_out), each approximant from its factors,
    (X V) U^T (N r (d_in + d_out)); :func:`nlra_loss` with ``samples`` forms it again for every Y and for
    R(0).
    """
    W64, s, c = W.to(F64), scale.to(F64), offset.to(F64)
    factors = [(U.to(F64), V.to(F64), cy.to(F64)) for U, V, cy in approximants]
    totals = [0.0] * len(factors)
    ref = 0.0
    for rows in X.to(F64).split(batch):
        target = act((rows @ W64.T) * s + c)  # (n, d_out)
        ref += float((act(c) - target).square().sum())
        for j, (U, V, cy) in enumerate(factors):
            totals[j] += float((act(((rows @ V) @ U.T) * s + cy) - target).square().sum())
    n = X.shape[0]
    return [t / n for t in totals], ref / n


class _Inputs(NamedTuple):
    """Validated input distribution and per-unit affine maps; None: mean 0, cov I, scale 1, offset 0."""

    mean: Tensor | None = None
    cov: Tensor | None = None
    factor: Tensor | None = None  # cov = factor factor^T, for sampling
    scale: Tensor | None = None
    offset: Tensor | None = None
    offset_y: Tensor | None = None

    def reference(self) -> _Inputs:
        """The same inputs for the zero approximant's reference: Y = 0 with offset_y = offset."""
        return self._replace(offset_y=self.offset)

    def is_default(self) -> bool:
        """x ~ N(0, I), s = 1, c = c' = 0: the paper's objective."""
        return all(t is None for t in self)


def _check_inputs(
    W: Tensor,
    mean: object = None,
    cov: object = None,
    scale: object = None,
    offset: object = None,
    offset_y: object = None,
) -> _Inputs:
    d_out, d_in = W.shape
    dev = W.device
    S = F = None
    if cov is not None:
        S, F = _check_cov(cov, d_in, dev)
    return _Inputs(
        mean=None
        if mean is None
        else _check_tensor("mean", mean, (d_in,), f"one per input, d_in = {d_in}", dev),
        cov=S,
        factor=F,
        scale=None if scale is None else _check_per_unit("scale", scale, d_out, dev),
        offset=None if offset is None else _check_per_unit("offset", offset, d_out, dev),
        offset_y=None if offset_y is None else _check_per_unit("offset_y", offset_y, d_out, dev),
    )


def _check_pair(W: Tensor, Y: Tensor) -> None:
    check_matrix("W", W)
    check_matrix("Y", Y)
    if Y.shape != W.shape:
        raise ValueError(f"Y must have W's shape {tuple(W.shape)}, got {tuple(Y.shape)}")


def unit_moments(
    W: Tensor,
    Y: Tensor,
    *,
    mean: Tensor | None = None,
    cov: Tensor | None = None,
    scale: Tensor | float | None = None,
    offset: Tensor | float | None = None,
    offset_y: Tensor | float | None = None,
) -> UnitMoments:
    r"""The bivariate normal of each unit's pair u_i = s_i (y_i . x) + c'_i, v_i = s_i (w_i . x) + c_i.

    For x ~ N(mu, Sigma):

    .. math::
        E u_i = s_i\, y_i^\top \mu + c'_i, \quad E v_i = s_i\, w_i^\top \mu + c_i, \quad
        \mathrm{Var}\, v_i = s_i^2\, w_i^\top \Sigma w_i, \quad
        \mathrm{Cov}(u_i, v_i) = s_i^2\, y_i^\top \Sigma w_i,

    Var(u_i | v_i) = s_i^2 e_i^T Sigma e_i with e_i = y_i - (y_i^T Sigma w_i / w_i^T Sigma w_i) w_i (no
    cancellation as y_i -> w_i), and Var u_i = Var(u_i | v_i) + Cov^2 / Var v_i. Cost: two (d_out, d_in) x
    (d_in, d_in) products and a Cholesky of Sigma (its PSD check) when ``cov`` is given, else O(d_out d_in).

    Args:
        W, Y: (d_out, d_in) target and approximant.
        mean: (d_in,) mu (default 0). cov: (d_in, d_in) Sigma, symmetric PSD (default I).
        scale: (d_out,) s, or a number (default 1). offset: (d_out,) c of the target, offset_y: (d_out,) c'
            of the approximant, or numbers (default 0).
    Returns:
        :class:`UnitMoments`, float64 tensors of shape (d_out,), differentiable in every input.
    Raises:
        ValueError / TypeError: shapes, non-finite entries, a non-symmetric or non-PSD cov, devices.

    Example:
        >>> m = unit_moments(torch.eye(2), torch.zeros(2, 2), offset=torch.tensor([0.5, -1.0]))
        >>> m.mean_v, m.var_v
        (tensor([ 0.5000, -1.0000], dtype=torch.float64), tensor([1., 1.], dtype=torch.float64))
    """
    _check_pair(W, Y)
    inp = _check_inputs(W, mean, cov, scale, offset, offset_y)
    return _moments64(W, Y, inp.mean, inp.cov, inp.scale, inp.offset, inp.offset_y)


def unit_loss(moments: UnitMoments, activation: str | Activation = "relu") -> Tensor:
    r"""E (f(u) - f(v))^2 for each unit's bivariate normal pair (u, v): exact, differentiable.

    .. math::
        \ell_i = \mathbb{E}\big(f(u_i) - f(v_i)\big)^2, \qquad
        (u_i, v_i) \sim N\Big(\begin{pmatrix} m_{u,i} \\ m_{v,i} \end{pmatrix},
        \begin{pmatrix} \sigma^2_{u,i} & c_i \\ c_i & \sigma^2_{v,i} \end{pmatrix}\Big)

    * leaky-ReLU family, relu6, hardswish: closed form in phi, Phi and the bivariate normal CDF
      (:func:`nlinit.gaussian.piecewise_pair_loss`; docs/theory.md section 10), computed in float64 with
      absolute error ~1e-15 (E f(u)^2 + E f(v)^2); gradients by Price's theorem, finite at rho = +-1 and
      at zero variances.
    * silu, gelu, tanh, sigmoid: v = m_v + sigma_v z1, u = m_u + (c / sigma_v) z1 + sqrt(Var(u | v)) z2 on
      the n x n Gauss-Hermite rule of :data:`QUADRATURE_NODES`, summed as squares; measured accuracy with
      means in benchmarks/OBJECTIVE.md.

    Args:
        moments: :class:`UnitMoments` (e.g. from :func:`unit_moments`), all fields of one shape.
        activation: a name or :class:`Activation` in :data:`EXACT_ACTIVATIONS`.
    Returns:
        Tensor of the fields' shape, >= 0: float64 for the closed forms, the fields' dtype (at least
        float32) for the quadrature.
    Raises:
        ValueError / TypeError: fields of different shapes, non-finite, negative variances, or a 2x2
            covariance that is not PSD (|cov_uv| > sqrt(var_u var_v) beyond rounding).
        NotImplementedError: an activation outside :data:`EXACT_ACTIVATIONS`.

    Example:
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> unit_loss(UnitMoments(0 * one, 0 * one, one, one, 0 * one), "relu")  # independent: 1 - 1/pi
        tensor([0.6817], dtype=torch.float64)
    """
    act = parse_activation(activation)
    if not isinstance(moments, tuple) or len(moments) not in (5, 6):
        raise TypeError(f"moments must be a UnitMoments, got {type(moments).__name__}")
    m = UnitMoments(*moments)
    names = [n for n in m._fields if getattr(m, n) is not None]
    shape = None
    for name in names:
        t = getattr(m, name)
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"moments.{name} must be a floating-point torch.Tensor, got {t!r:.60}")
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            raise ValueError(f"moments.{name} has shape {tuple(t.shape)}, but mean_u has {tuple(shape)}")
        check_finite(f"moments.{name}", t)
    for name in ("var_u", "var_v", "cond_var_u"):
        t = getattr(m, name)
        if t is not None and bool((t < 0).any()):
            raise ValueError(f"moments.{name} must be >= 0, got min {float(t.min()):.3g}")
    slack = math.sqrt(torch.finfo(m.var_u.dtype).eps)
    prod = (m.var_u.detach() * m.var_v.detach()).to(F64)
    excess = m.cov_uv.detach().to(F64) ** 2 - prod * (1 + slack)
    if bool((excess > 0).any()):
        i = int(excess.flatten().argmax())
        raise ValueError(
            f"moments are not a covariance: cov_uv^2 > var_u var_v at unit {i} "
            f"({float(m.cov_uv.flatten()[i]):.6g}^2 > {float(prod.flatten()[i]):.6g})"
        )
    cond = None if m.cond_var_u is None else m.cond_var_u.reshape(-1)
    flat = UnitMoments(*(t.reshape(-1) for t in m[:5]), cond_var_u=cond)  # type: ignore[misc]
    return _unit_loss(flat, act).reshape(shape)  # type: ignore[arg-type]


def exact_loss(W: Tensor, Y: Tensor, act: Activation) -> Tensor:
    """R(Y) without sampling, x ~ N(0, I); differentiable in Y (and W). O(1) input checks only.

    relu, leaky_relu and identity use the arc-cosine closed form (Theorem 1.4); relu6 and hardswish their
    closed forms through the bivariate normal CDF (:func:`unit_loss`, docs/theory.md section 10; measured
    relative error per unit <= 3.5e-10, benchmarks/OBJECTIVE.md), computed in float64 whatever W's dtype;
    silu, gelu, tanh, sigmoid deterministic Gauss-Hermite quadrature (:func:`_quadrature_loss`; relative
    error <= 2.7e-6, < 1e-7 but for tanh).

    Args:
        W: (d_out, d_in) target weight. Y: (d_out, d_in) approximation. act: one of :data:`EXACT_ACTIVATIONS`.
    Returns:
        0-dim tensor in W's dtype, R(Y) >= 0, with R(W) = 0 up to rounding (exactly 0 for relu, identity and
        the quadrature).
    Raises:
        NotImplementedError: for an activation outside :data:`EXACT_ACTIVATIONS`.
        ValueError: W and Y not 2-D tensors of one shape, an unknown activation. Only these O(1) checks (it
            runs inside the solvers' loops): entries are not checked.
    """
    if not isinstance(W, Tensor) or not isinstance(Y, Tensor) or W.dim() != 2 or Y.shape != W.shape:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (W, Y)]
        raise ValueError(f"W and Y must be 2-D tensors of one shape, got {shapes[0]} and {shapes[1]}")
    act = parse_activation(act)
    if act.name in QUADRATURE_NODES:
        return _quadrature_loss(W, Y, act, QUADRATURE_NODES[act.name])
    if act.leaky_slope is None and act.name in CLOSED_FORM_ACTIVATIONS:
        return _unit_loss(_moments64(W, Y), act).sum().to(W.dtype)
    alpha = _leaky_alpha(act)
    a2 = (W * W).sum(1)  # (d_out,)
    b2 = (Y * Y).sum(1)  # (d_out,)
    c = (W * Y).sum(1)  # (d_out,)
    loss = 0.5 * (1 + alpha * alpha) * (a2 + b2) - 2 * alpha * c
    if alpha != 1.0:
        ab2 = a2 * b2
        nz = ab2 > 0
        ab = torch.sqrt(torch.where(nz, ab2, torch.ones_like(ab2)))
        h = torch.where(nz, ab * arccos_kernel(c / ab), torch.zeros_like(ab))  # a_i b_i g(rho_i)
        loss = loss - (1 - alpha) ** 2 * h
    return loss.sum().clamp_min(0.0)


def _estimate(W: Tensor, Y: Tensor, act: Activation, batches: Iterator[Tensor], inp: _Inputs) -> Tensor:
    """(1/N) sum_k ||act(s (Y x_k) + c') - act(s (W x_k) + c)||^2 over the batches' rows x_k."""
    total = torch.zeros((), dtype=W.dtype, device=W.device)
    count = 0
    s, c, c2 = (None if t is None else t.to(W.dtype) for t in (inp.scale, inp.offset, inp.offset_y))
    for X in batches:
        v, u = X @ W.T, X @ Y.T  # (n, d_out)
        if s is not None:
            v, u = v * s, u * s
        if c is not None:
            v = v + c
        if c2 is not None:
            u = u + c2
        total = total + (act(u) - act(v)).pow(2).sum()
        count += X.shape[0]
    return total / count


def _gaussian_batches(
    W: Tensor, num_samples: int, batch_size: int, generator: torch.Generator | None, inp: _Inputs
) -> Iterator[Tensor]:
    """x = mean + F z, z ~ N(0, I), in chunks of batch_size rows (x = z without mean and cov)."""
    F = None if inp.factor is None else inp.factor.to(W.dtype)
    mu = None if inp.mean is None else inp.mean.to(W.dtype)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        X = torch.randn(n, W.shape[1], dtype=W.dtype, device=W.device, generator=generator)  # (n, d_in)
        if F is not None:
            X = X @ F.T
        if mu is not None:
            X = X + mu
        yield X
        done += n


def mc_loss(
    W: Tensor,
    Y: Tensor,
    act: Activation,
    *,
    num_samples: int = 8192,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    mean: Tensor | None = None,
    cov: Tensor | None = None,
    scale: Tensor | float | None = None,
    offset: Tensor | float | None = None,
    offset_y: Tensor | float | None = None,
) -> Tensor:
    """Monte Carlo estimate (1/N) sum_k ||act(s (Y x_k) + c') - act(s (W x_k) + c)||^2, x_k ~ N(mean, cov).

    Defaults: mean 0, cov I, s = 1, c = c' = 0 (the paper's objective). Standard error shrinks as N^(-1/2).
    Samples are drawn in chunks of ``batch_size`` rows from ``generator`` (on W's device) as
    x = mean + F z with cov = F F^T (Cholesky, or the eigendecomposition for a singular cov), so memory is
    O(batch_size (d_in + d_out) + d_in^2).

    Raises:
        ValueError: num_samples or batch_size not an int >= 1; bad shapes or values of the statistics (as in
            :func:`unit_moments`).
    """
    check_int("num_samples", num_samples, low=1)
    check_int("batch_size", batch_size, low=1)
    _check_pair(W, Y)
    act = parse_activation(act)
    _check_generator(generator)
    inp = _check_inputs(W, mean, cov, scale, offset, offset_y)
    return _estimate(W, Y, act, _gaussian_batches(W, num_samples, batch_size, generator, inp), inp)


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_samples(X: object, d_in: int, device: torch.device) -> Tensor:
    if not isinstance(X, Tensor) or X.dim() != 2:
        shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
        raise ValueError(f"samples must be a 2-D (N, d_in) tensor with d_in = {d_in}, got {shape}")
    if X.shape[0] < 1:
        raise ValueError(f"samples must have at least one row, got shape {tuple(X.shape)}")
    return _check_tensor("samples", X, (X.shape[0], d_in), f"N x d_in, d_in = {d_in}", device)


def sample_loss(
    W: Tensor,
    Y: Tensor,
    act: Activation,
    samples: Tensor,
    *,
    scale: Tensor | float | None = None,
    offset: Tensor | float | None = None,
    offset_y: Tensor | float | None = None,
    batch_size: int = 4096,
) -> Tensor:
    """The objective on given inputs: (1/N) sum_k ||act(s (Y x_k) + c') - act(s (W x_k) + c)||^2.

    Args:
        samples: X (N, d_in), one input x_k per row (e.g. a layer's calibration inputs); cast to W's dtype.
        scale, offset, offset_y: as in :func:`unit_moments`. batch_size: rows per chunk (memory).
    Returns:
        0-dim tensor, differentiable in Y (and W).
    Raises:
        ValueError: X not (N, d_in) with N >= 1, non-finite entries, bad statistics or batch_size.
    """
    check_int("batch_size", batch_size, low=1)
    _check_pair(W, Y)
    act = parse_activation(act)
    X = _check_samples(samples, W.shape[1], W.device).to(W.dtype)
    inp = _check_inputs(W, scale=scale, offset=offset, offset_y=offset_y)
    return _estimate(W, Y, act, iter(X.split(batch_size)), inp)


def resolve_method(act: Activation, method: str) -> str:
    """``method`` with "auto" replaced by "exact" where ``act`` has an exact objective, else "mc"."""
    act = parse_activation(act)
    check_choice("method", method, ("auto", "exact", "mc"))
    if method != "auto":
        return method
    return "exact" if act.name in EXACT_ACTIVATIONS else "mc"


def _relative(loss: Tensor, ref: Tensor) -> Tensor:
    """loss / ref; 0 when both are 0; ValueError when only the reference R(0) is 0."""
    if float(ref) > 0:
        return loss / ref
    if float(loss) == 0:
        return loss * 0.0
    raise ValueError(
        f"the relative objective is undefined: R(0) = 0 (every unit of W is constant under the input "
        f"distribution, e.g. W = 0) while R(Y) = {float(loss):.6g} > 0; use relative=False"
    )


def nlra_loss(
    W: Tensor,
    Y: Tensor,
    activation: str | Activation = "relu",
    method: str | None = None,
    *,
    relative: bool = False,
    num_samples: int = 8192,
    generator: torch.Generator | None = None,
    mean: Tensor | None = None,
    cov: Tensor | None = None,
    scale: Tensor | float | None = None,
    offset: Tensor | float | None = None,
    offset_y: Tensor | float | None = None,
    samples: Tensor | None = None,
) -> Tensor:
    r"""NLRA objective of approximating W by Y: by default R(Y) = E_{x ~ N(0, I)} ||act(Y x) - act(W x)||^2.

    In general (nlinit's extension for data-aware layers; docs/theory.md section 10)

    .. math::
        R(Y) = \mathbb{E}_{x \sim N(\mu, \Sigma)}
        \big\lVert f(s \odot (Y x) + c') - f(s \odot (W x) + c) \big\rVert^2

    with a per-unit scale s (e.g. an eval-mode BatchNorm's), the target's offset c (its bias and shift) and
    the approximant's offset c'; or the mean over given inputs X (``samples=X``, ``method="samples"``).

    Args:
        W: (d_out, d_in) full-rank weight (for convs, the "channel" matrix view).
        Y: (d_out, d_in) approximation, e.g. U @ V.T.
        activation: a name from :data:`nlinit.activations.ACTIVATIONS` or an :class:`Activation`.
        method: ``"exact"`` (closed form for relu, leaky_relu, identity, relu6, hardswish; Gauss-Hermite
            quadrature for silu, gelu, tanh, sigmoid; :func:`unit_loss`), ``"mc"`` (Monte Carlo, any act),
            ``"samples"`` (the mean over ``samples``, any act), ``"auto"`` (exact where available, else mc;
            "samples" when samples are given) or None (the default: "samples" when samples are given, else
            "exact").
        relative: divide by R(0), the objective of the zero approximant under the same distribution: Y = 0
            with offset_y = offset (so each unit outputs the constant f(c_i)); the same samples for "mc".
            When R(0) = 0 (every unit of W constant: W = 0, or rows in cov's null space) the ratio is
            undefined: the result is 0 if R(Y) = 0 too, else ValueError.
        num_samples, generator: Monte Carlo sample count (an int >= 1) and random source (``"mc"`` only).
        mean: (d_in,) mu, default 0. cov: (d_in, d_in) Sigma, symmetric PSD, default I (not with samples).
        scale: (d_out,) s or a number, default 1. offset, offset_y: (d_out,) c, c' or numbers, default 0.
        samples: X (N, d_in), the inputs for ``method="samples"``.
    Returns:
        0-dim tensor in W's dtype, differentiable in Y.
    Raises:
        ValueError: bad shapes, non-finite entries, unknown activation or method, num_samples not an int
            >= 1, a non-symmetric or non-PSD cov, samples with mean/cov or with a method other than
            "samples"/"auto", method "samples" without samples, an undefined relative objective.
        NotImplementedError: ``method="exact"`` for an activation outside :data:`EXACT_ACTIVATIONS`.

    Example:
        >>> W = torch.randn(16, 8)
        >>> nlra_loss(W, W).item()
        0.0
        >>> float(nlra_loss(W, W, "relu6", offset=1.0, offset_y=0.0)) > 0  # a shifted threshold
        True
    """
    _check_pair(W, Y)
    act = parse_activation(activation)
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be a bool, got {relative!r}")
    _check_generator(generator)
    if method is None:
        method = "exact" if samples is None else "samples"
    check_choice("method", method, ("auto", "exact", "mc", "samples"))
    check_int("num_samples", num_samples, low=1)
    if samples is not None:
        if method not in ("auto", "samples"):
            raise ValueError(f"samples are given, so method must be 'samples' or 'auto', got {method!r}")
        if mean is not None or cov is not None:
            raise ValueError("give either samples or mean/cov: the samples are the input distribution")
        method = "samples"
    elif method == "samples":
        raise ValueError("method='samples' needs samples=X, an (N, d_in) tensor of inputs")
    else:
        method = resolve_method(act, method)
    inp = _check_inputs(W, mean, cov, scale, offset, offset_y)
    if method == "exact":
        return _exact_with_inputs(W, Y, act, inp, relative)
    zero = torch.zeros_like(W)
    if method == "samples":
        X = _check_samples(samples, W.shape[1], W.device).to(W.dtype)
        loss = _estimate(W, Y, act, iter(X.split(4096)), inp)
        return (
            _relative(loss, _estimate(W, zero, act, iter(X.split(4096)), inp.reference()))
            if relative
            else loss
        )
    if generator is None:
        seed = int(torch.randint(2**62, (1,)))  # from the global RNG, as torch.randn would draw
        generator = torch.Generator(device=W.device).manual_seed(seed)
    state = generator.get_state()
    loss = _estimate(W, Y, act, _gaussian_batches(W, num_samples, 4096, generator, inp), inp)
    if not relative:
        return loss
    generator.set_state(state)  # same samples for the reference, so the ratio's noise partly cancels
    ref = _estimate(
        W, zero, act, _gaussian_batches(W, num_samples, 4096, generator, inp.reference()), inp.reference()
    )
    return _relative(loss, ref)


def _exact_with_inputs(W: Tensor, Y: Tensor, act: Activation, inp: _Inputs, relative: bool) -> Tensor:
    """:func:`nlra_loss`'s ``method="exact"`` on validated inputs."""
    if inp.is_default():
        loss = exact_loss(W, Y, act)
        return _relative(loss, exact_loss(W, torch.zeros_like(W), act)) if relative else loss
    m = _moments64(W, Y, inp.mean, inp.cov, inp.scale, inp.offset, inp.offset_y)
    loss = _unit_loss(m, act).sum().to(W.dtype)
    if not relative:
        return loss
    # the zero approximant: u = c exactly (Y = 0, offset_y = offset), v as before
    nil = torch.zeros_like(m.var_v)
    m_u = nil if inp.offset is None else inp.offset.to(F64)
    ref = _unit_loss(UnitMoments(m_u, m.mean_v, nil, m.var_v, nil, nil), act)
    return _relative(loss, ref.sum().to(W.dtype))


def standardize_rows(W: Tensor, cov: Tensor | None = None) -> Tensor:
    """W with each row w_i divided by sqrt(w_i^T Sigma w_i) (Sigma = I: its norm); zero-variance rows stay 0.

    What a per-unit normalization (BatchNorm in training mode) does to a unit's pre-activation w_i . x:
    subtract its mean and divide by its standard deviation, leaving the unit direction under Sigma.

    Raises:
        ValueError / TypeError: W not a finite floating-point matrix; cov not a finite symmetric PSD
            (d_in, d_in) tensor on W's device.
    """
    check_matrix("W", W)
    if cov is not None:
        _check_cov(cov, W.shape[1], W.device)
    return _standardize_rows(W, cov)


def _standardize_rows(W: Tensor, cov: Tensor | None = None) -> Tensor:
    """:func:`standardize_rows` without checks."""
    var = W.square().sum(1) if cov is None else ((W @ cov.to(W.dtype)) * W).sum(1)
    pos = var > 0
    return torch.where(pos[:, None], W / torch.where(pos, var, 1.0).sqrt()[:, None], 0.0)


def normalized_loss(
    W: Tensor,
    Y: Tensor,
    activation: str | Activation = "relu",
    *,
    relative: bool = False,
    cov: Tensor | None = None,
    gamma: Tensor | float | None = None,
    beta: Tensor | float | None = None,
) -> Tensor:
    r"""The scale-free objective of units followed by a per-unit normalization (BatchNorm in training mode).

    .. math::
        R_{norm}(Y) = \sum_i \mathbb{E}\big(f(\gamma_i \hat u_i + \beta_i)
            - f(\gamma_i \hat v_i + \beta_i)\big)^2,
        \qquad \hat v_i = \frac{w_i^\top (x - \mu)}{\sqrt{w_i^\top \Sigma w_i}}, \quad
        \hat u_i = \frac{y_i^\top (x - \mu)}{\sqrt{y_i^\top \Sigma y_i}},

    x ~ N(mu, Sigma): normalization removes every positive per-unit scale (and offset) of the layer's output,
    so only the directions of the rows matter, each unit weighs the same, and mu drops out. For ReLU with
    Sigma = I, gamma = 1, beta = 0: R_norm(Y) = sum_i (1 - g(rho_i)), rho_i = cos(y_i, w_i)
    (docs/theory.md, section 11). A zero row of Y is a constant unit (normalized to 0).

    Args:
        W, Y: (d_out, d_in). activation: as in :func:`nlra_loss`. relative: divide by the objective of
            Y = 0. cov: (d_in, d_in) Sigma, default I. gamma, beta: the normalization's affine (d_out,) or
            numbers, default 1 and 0.
    Returns:
        0-dim tensor, differentiable in Y.
    Raises:
        ValueError / TypeError: W or Y not a finite floating-point matrix, different shapes, a bad cov
            (as in :func:`standardize_rows`), gamma or beta not a finite number or (d_out,) tensor, relative
            not a bool. NotImplementedError: an activation outside :data:`EXACT_ACTIVATIONS`.
    """
    _check_pair(W, Y)
    act = parse_activation(activation)
    if act.name not in EXACT_ACTIVATIONS:
        _leaky_alpha(act)  # raises NotImplementedError naming the activation
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be a bool, got {relative!r}")
    inp = _check_inputs(W, cov=cov, scale=gamma, offset=beta, offset_y=beta)
    return _exact_with_inputs(_standardize_rows(W, cov), _standardize_rows(Y, cov), act, inp, relative)
