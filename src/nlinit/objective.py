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
for the identity it is ||Y - W||_F^2. Any activation can be estimated by Monte Carlo.

For a conv in the "channel" layout, x is a patch vector: every output pixel of a conv applied to an image
of i.i.d. N(0, 1) entries sees an N(0, I) patch, so the conv objective per pixel equals R on the matrix
view (borders aside).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix
from .activations import Activation, parse_activation

__all__ = ["EXACT_ACTIVATIONS", "arccos_kernel", "exact_loss", "mc_loss", "nlra_loss"]

#: activations whose objective has a closed form here (alpha of the leaky-ReLU family).
EXACT_ACTIVATIONS = ("identity", "leaky_relu", "relu")


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
    if act.name == "relu":
        return 0.0
    if act.name == "identity":
        return 1.0
    if act.name == "leaky_relu":
        return act.kwargs["negative_slope"]
    raise NotImplementedError(
        f"exact objective for activation {str(act)!r} is not implemented; "
        f"available: {', '.join(EXACT_ACTIVATIONS)} (use method='mc' for others)"
    )


def exact_loss(W: Tensor, Y: Tensor, act: Activation) -> Tensor:
    """Closed-form R(Y) for the leaky-ReLU family; differentiable in Y (and W). No input checks.

    Args:
        W: (d_out, d_in) target weight. Y: (d_out, d_in) approximation. act: relu, leaky_relu or identity.
    Returns:
        0-dim tensor, R(Y) >= 0, with R(W) = 0.
    """
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
        method: ``"exact"`` (closed form; relu, leaky_relu, identity), ``"mc"`` (Monte Carlo, any act) or
            ``"auto"`` (exact where a closed form exists, else mc).
        relative: divide by R(0) = E||act(0) - act(W x)||^2, the loss of Y = 0 (same samples for "mc").
        num_samples, generator: Monte Carlo sample count and random source (``method="mc"`` only).
    Returns:
        0-dim tensor, differentiable in Y.
    Raises:
        ValueError: bad shapes, non-finite entries, unknown activation or method.
        NotImplementedError: ``method="exact"`` for an activation without a closed form.

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
    check_choice("method", method, ("auto", "exact", "mc"))
    if method == "auto":
        method = "exact" if act.name in EXACT_ACTIVATIONS else "mc"
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
