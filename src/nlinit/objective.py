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

The other registered activations (silu, gelu, hardswish, tanh, sigmoid, relu6) have no closed form; their
per-unit Gaussian integrals are computed deterministically by tensor-product Gauss-Hermite quadrature
(:func:`_quadrature_loss`, differentiable in Y). Any activation can also be estimated by Monte Carlo.

For a conv in the "channel" layout, x is a patch vector: every output pixel of a conv applied to an image
of i.i.d. N(0, 1) entries sees an N(0, I) patch, so the conv objective per pixel equals R on the matrix
view (borders aside).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice, check_matrix
from .activations import LEAKY_FAMILY, Activation, parse_activation

__all__ = [
    "CLOSED_FORM_ACTIVATIONS",
    "EXACT_ACTIVATIONS",
    "QUADRATURE_NODES",
    "arccos_kernel",
    "exact_loss",
    "mc_loss",
    "nlra_loss",
]

#: the leaky-ReLU family: closed form (Theorem 1.4 of docs/theory.md), exact up to rounding.
CLOSED_FORM_ACTIVATIONS = LEAKY_FAMILY

#: Gauss-Hermite nodes per dimension for the activations without a closed form, from the measured worst
#: relative error per unit against an independent reference for a, b in [0.1, 3], rho in [-0.99, 0.999]
#: (benchmarks/quadrature_accuracy.py, table in benchmarks/OBJECTIVE.md): silu 2.5e-9, gelu 1.1e-8,
#: sigmoid 5.9e-9 at n = 64; tanh 4.6e-7 at n = 96 (5.9e-4 at 64). The piecewise-linear relu6 and hardswish
#: converge only slowly (kinks): hardswish 6.3e-4 at n = 192 (1.1e-3 at 128); relu6 stalls at ~2e-3
#: (2.2e-3 at 128, 2.0e-3 at 256; its kink through the origin defeats the tensor rule). Float32 adds < 1e-6.
QUADRATURE_NODES: dict[str, int] = {
    "gelu": 64,
    "hardswish": 192,
    "relu6": 128,
    "sigmoid": 64,
    "silu": 64,
    "tanh": 96,
}

#: activations for which ``method="exact"`` works: closed form or deterministic quadrature.
EXACT_ACTIVATIONS = tuple(sorted(CLOSED_FORM_ACTIVATIONS + tuple(QUADRATURE_NODES)))


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
    return _ArcCosKernel.apply(rho)


def _leaky_alpha(act: Activation) -> float:
    alpha = act.leaky_slope
    if alpha is not None:
        return alpha
    raise NotImplementedError(
        f"exact objective for activation {str(act)!r} is not implemented; "
        f"available: {', '.join(EXACT_ACTIVATIONS)} (use method='mc' for others)"
    )


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
    formula; beta = sqrt(max(p, tiny)) keeps the gradient finite at beta = 0 (the true gradient there
    through beta is 0 by Stein's lemma, since it carries a factor beta).

    Measured worst relative error per unit against a composite Gauss-Legendre reference for a, b in [0.1, 3],
    rho in [-0.99, 0.999] (benchmarks/OBJECTIVE.md): silu, gelu, sigmoid < 2e-8 at n = 64, tanh 5e-7 at
    n = 96 (all < 1e-4); hardswish 6.3e-4 at n = 192; relu6 2.2e-3 at n = 128 (stalls near 2e-3).
    Units are processed in chunks of max_elements // n^2 so the forward
    temporaries stay O(max_elements); autograd keeps what it needs for the backward.
    """
    dtype = W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32
    Wc, Yc = W.to(dtype), Y.to(dtype)
    s_np, w_np = _hermite_rule(num_nodes)
    s = torch.as_tensor(s_np, dtype=dtype, device=W.device)  # (n,)
    w = torch.as_tensor(w_np, dtype=dtype, device=W.device)  # (n,)
    w2 = w[:, None] * w[None, :]  # (n, n)
    a2 = (Wc * Wc).sum(1)  # (d_out,)
    c = (Wc * Yc).sum(1)  # (d_out,)
    pos = a2 > 0
    safe_a2 = torch.where(pos, a2, torch.ones_like(a2))
    coef = torch.where(pos, c / safe_a2, torch.zeros_like(c))  # c / a^2
    a = torch.sqrt(safe_a2) * pos  # a, with a finite gradient at a = 0
    alpha = coef * a  # c / a
    resid = Yc - coef[:, None] * Wc  # y minus its projection on w
    beta = torch.sqrt((resid * resid).sum(1).clamp_min(torch.finfo(dtype).tiny))
    rows = max(1, max_elements // (num_nodes * num_nodes))
    total = torch.zeros((), dtype=dtype, device=W.device)
    for i in range(0, W.shape[0], rows):
        sl = slice(i, i + rows)
        fv = act(a[sl, None] * s)  # (m, n): f(v) at z1 = s_j
        u = alpha[sl, None, None] * s[:, None] + beta[sl, None, None] * s  # (m, n, n): [unit, j, k]
        total = total + ((act(u) - fv[:, :, None]).square() * w2).sum()
    return total.to(W.dtype)


def exact_loss(W: Tensor, Y: Tensor, act: Activation) -> Tensor:
    """R(Y) without sampling; differentiable in Y (and W). No input checks.

    relu, leaky_relu and identity use the closed form (exact up to rounding); the activations in
    :data:`QUADRATURE_NODES` (silu, gelu, hardswish, tanh, sigmoid, relu6) use deterministic Gauss-Hermite
    quadrature (:func:`_quadrature_loss`; relative error < 1e-6 for the smooth ones, < 1e-3 for
    hardswish, ~2e-3 for relu6).

    Args:
        W: (d_out, d_in) target weight. Y: (d_out, d_in) approximation. act: one of :data:`EXACT_ACTIVATIONS`.
    Returns:
        0-dim tensor, R(Y) >= 0, with R(W) = 0.
    Raises:
        NotImplementedError: for an activation outside :data:`EXACT_ACTIVATIONS`.
    """
    if act.name in QUADRATURE_NODES:
        return _quadrature_loss(W, Y, act, QUADRATURE_NODES[act.name])
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


def mc_loss(
    W: Tensor,
    Y: Tensor,
    act: Activation,
    *,
    num_samples: int = 8192,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
) -> Tensor:
    """Monte Carlo estimate (1/N) sum_k ||act(Y x_k) - act(W x_k)||^2 with x_k ~ N(0, I_{d_in}).

    Standard error shrinks as N^(-1/2). Samples are drawn in chunks of ``batch_size`` rows from
    ``generator`` (on W's device), so memory is O(batch_size * (d_in + d_out)).
    """
    total = torch.zeros((), dtype=W.dtype, device=W.device)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        X = torch.randn(n, W.shape[1], dtype=W.dtype, device=W.device, generator=generator)  # (n, d_in)
        total = total + (act(X @ Y.T) - act(X @ W.T)).pow(2).sum()
        done += n
    return total / num_samples


def resolve_method(act: Activation, method: str) -> str:
    """``method`` with "auto" replaced by "exact" where ``act`` has an exact objective, else "mc"."""
    check_choice("method", method, ("auto", "exact", "mc"))
    if method != "auto":
        return method
    return "exact" if act.name in EXACT_ACTIVATIONS else "mc"


def nlra_loss(
    W: Tensor,
    Y: Tensor,
    activation: str | Activation = "relu",
    method: str = "exact",
    *,
    relative: bool = False,
    num_samples: int = 8192,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""NLRA objective R(Y) = E_{x ~ N(0, I)} ||act(Y x) - act(W x)||^2 of approximating W by Y.

    Args:
        W: (d_out, d_in) full-rank weight (for convs, the "channel" matrix view).
        Y: (d_out, d_in) approximation, e.g. U @ V.T.
        activation: a name from :data:`nlinit.activations.ACTIVATIONS` or an :class:`Activation`.
        method: ``"exact"`` (closed form for relu, leaky_relu, identity; Gauss-Hermite quadrature for
            silu, gelu, hardswish, tanh, sigmoid, relu6), ``"mc"`` (Monte Carlo, any act) or ``"auto"``
            (exact where available, else mc).
        relative: divide by R(0) = E||act(0) - act(W x)||^2, the loss of Y = 0 (same samples for "mc").
        num_samples, generator: Monte Carlo sample count and random source (``method="mc"`` only).
    Returns:
        0-dim tensor, differentiable in Y.
    Raises:
        ValueError: bad shapes, non-finite entries, unknown activation or method.
        NotImplementedError: ``method="exact"`` for an activation outside :data:`EXACT_ACTIVATIONS`.

    Example:
        >>> W = torch.randn(16, 8)
        >>> nlra_loss(W, W).item()
        0.0
    """
    check_matrix("W", W)
    check_matrix("Y", Y)
    if Y.shape != W.shape:
        raise ValueError(f"Y must have W's shape {tuple(W.shape)}, got {tuple(Y.shape)}")
    act = parse_activation(activation)
    method = resolve_method(act, method)
    if method == "exact":
        loss = exact_loss(W, Y, act)
        return loss / exact_loss(W, torch.zeros_like(W), act) if relative else loss
    if generator is None:
        seed = int(torch.randint(2**62, (1,)))  # from the global RNG, as torch.randn would draw
        generator = torch.Generator(device=W.device).manual_seed(seed)
    state = generator.get_state()
    loss = mc_loss(W, Y, act, num_samples=num_samples, generator=generator)
    if not relative:
        return loss
    generator.set_state(state)  # same samples for the reference, so the ratio's noise partly cancels
    return loss / mc_loss(W, torch.zeros_like(W), act, num_samples=num_samples, generator=generator)
