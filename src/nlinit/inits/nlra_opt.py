r"""nlra-opt: the best NLRA solver nlinit has (docs/theory.md, section 7).

For the leaky-ReLU family sigma(z) = alpha z + (1 - alpha) relu(z) (relu: alpha = 0, identity: alpha = 1),
Theorem 2.1 reduces NLRA to a search over r-dimensional subspaces S of R^{d_in}:

.. math::
    \min_{\mathrm{rank}\,Y \le r} R(Y) = \frac{1 + \alpha^2}{2}\Big(\lVert W \rVert_F^2 - \max_S F(S)\Big),
    \qquad F(S) = \sum_i a_i^2\, k(\rho_i(S))^2, \qquad \rho_i(S) = \lVert P_S w_i \rVert / a_i,

with k the optimal norm factor (:func:`nlinit.subspace.leaky_norm_factor`). ``nlra-opt`` maximizes F
by a monotone minorize-maximize ascent on the Grassmannian (:func:`ascend_subspace`) from the SVD subspace
(where ``relu-svd`` stops) and from ``restarts`` random subspaces, keeps the best, and returns the closed-form
optimum on it. It never does worse than ``relu-svd``: it starts there and F never decreases.

Other activations (silu, gelu, relu6, ...) have no subspace reduction; there it runs L-BFGS on the exact
objective (:func:`nlinit.objective.exact_loss`: closed forms for relu6 and hardswish, deterministic quadrature
for the smooth ones) from relu-svd's generalized rows (never worse than spectral), and returns the best
factors seen, so it is never worse than that start.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .. import subspace
from .._checks import check_int
from .._compat import moved
from ..activations import Activation
from ..graph import PostOp
from ..layer_function import InitResult, LayerFunction, from_whitened, whitened_problem, whitened_svd
from ..objective import EXACT_ACTIVATIONS, exact_loss, unit_loss, unit_moments
from ..subspace import (
    SVD,
    _balance,
    _factors_on_subspace,
    _fit_rows_and_offsets,
    _projection_factors,
    ascend_normalized,
    best_normalized_subspace,
    leaky_norm_factor,
    top_svd,
)

__all__ = ["ascend_subspace", "nlra_opt"]

__getattr__ = moved(__name__, {"subspace_objective": "nlinit.subspace"})


def leaky_alpha(activation: Activation | None) -> float | None:
    """Deprecated: use :attr:`Activation.leaky_slope` (None stood for ReLU here)."""
    warnings.warn(
        "nlinit.inits.nlra_opt.leaky_alpha is deprecated; use Activation.leaky_slope",
        DeprecationWarning,
        stacklevel=2,
    )
    return 0.0 if activation is None else activation.leaky_slope


#: at most 2^this extrapolation factor per ascent step (a safeguard; a step rarely doubles more than 4x).
_MAX_DOUBLINGS = 20


def _mm_matrix(W: Tensor, Q: Tensor, alpha: float, a: Tensor) -> Tensor:
    r"""X = W^T diag(D) A (d_in, r): the subspace S' = span(polar(X)) has F(S') >= F(span(Q)).

    A (d_out, r) holds the optimal rows on span(Q) in Q's coordinates (norm a_i k(rho_i) along Q^T w_i)
    and D_i = 2 alpha + (1 - alpha)^2 g'(rho_i) = -dR/dc_i. With the row norms b_i = ||A_i|| held fixed,
    R(Q A^T-rows) is a concave function of Q (g is convex, c_i = w_i^T Q A_i is linear in Q), so it lies
    below its tangent plane and the Stiefel point maximizing <X, Q> = -<dR/dQ, Q>, polar(X), does not
    increase R; re-optimizing A on the new subspace then gives F(S') >= F(S) (docs/theory.md, section 7).
    """
    B = W @ Q  # (d_out, r): Q^T w_i
    proj = B.norm(dim=1)  # (d_out,)
    hit = proj > 0
    rho = torch.where(a > 0, proj / torch.where(a > 0, a, 1.0), 0.0).clamp(0.0, 1.0)
    target = a * leaky_norm_factor(rho, alpha)  # (d_out,) optimal row norms
    A = torch.where(hit[:, None], B * (target / torch.where(hit, proj, 1.0))[:, None], 0.0)
    A[~hit, 0] = target[~hit]  # zero projection: norm a_i k(0) along the first basis vector
    D = 2 * alpha + (1 - alpha) ** 2 * (math.pi - torch.arccos(rho)) / math.pi  # (d_out,) g' = (pi - acos)/pi
    return W.T @ (D[:, None] * A)


def _polar(X: Tensor) -> Tensor:
    """The orthonormal factor U V^T of X = U S V^T: argmax of <X, Q> over Q with orthonormal columns."""
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def ascend_subspace(
    W: Tensor, Q: Tensor, alpha: float, *, max_iter: int = 500, tol: float = 1e-8, polish: bool = True
) -> tuple[Tensor, Tensor, int]:
    r"""Maximize F(S) (:func:`subspace_objective`) over r-dim subspaces from span(Q); F never decreases.

    Phase 1, minorize-maximize: each step takes Q_1 = polar(X) of :func:`_mm_matrix`, which provably has
    F(Q_1) >= F(Q), aligns its basis to Q (orthogonal Procrustes), and extrapolates along the chord,
    Q_s = qr(Q + s (Q_1 - Q)) for s = 2, 4, 8, ... while F keeps increasing; the best point becomes the next
    iterate. It stops after ``max_iter`` steps or when a step gains less than tol ||W||_F^2 (R improves by
    less than tol R(0)). Phase 2 (``polish``): L-BFGS with a strong Wolfe line search on Q = qr(Z), from the
    phase-1 point, for at most ``max_iter`` iterations or until F changes by less than 1e-3 tol ||W||_F^2;
    its result is kept only if F is larger. The minorize-maximize steps make fast progress from the start
    but converge linearly; the polish converges much faster near the optimum (at 256 x 576, r = 26:
    phase 1 to 1e-11 takes 467 steps, phase 1 to 1e-8 (46 steps) plus L-BFGS reaches the same F in
    a third of the time).

    Args:
        W: (d_out, d_in) float64. Q: (d_in, r) float64, orthonormal columns. alpha: the leaky slope.
        max_iter: step limit per phase. tol: relative gain that counts as converged. polish: run phase 2.
    Returns:
        (Q, F, steps): the final basis (d_in, r), F(span Q) (0-dim) and the number of phase-1 steps.
    """
    a = W.norm(dim=1)  # (d_out,)
    scale = W.square().sum()
    F = subspace._subspace_objective(W, Q, alpha)
    steps = 0
    while steps < max_iter:
        steps += 1
        Q1 = _polar(_mm_matrix(W, Q, alpha, a))
        Q1 = Q1 @ _polar(Q1.T @ Q)  # same span, basis closest to Q
        best_F, best_Q = F, Q
        s, trial = 1.0, Q1
        for _ in range(_MAX_DOUBLINGS):
            F_trial = subspace._subspace_objective(W, trial, alpha)
            if not F_trial > best_F:
                break
            best_F, best_Q = F_trial, trial
            s *= 2.0
            trial = torch.linalg.qr(Q + s * (Q1 - Q)).Q
        gain = best_F - F
        F, Q = best_F, best_Q
        if not gain > tol * scale:
            break
    if polish and max_iter > 0 and float(scale) > 0:
        Qp = subspace._descend_over_subspaces(
            lambda Qz: -subspace._subspace_objective(W, Qz, alpha) / scale,
            Q,
            max_iter=max_iter,
            tol=1e-3 * tol,
        )
        if Qp is not Q:
            F, Q = subspace._subspace_objective(W, Qp, alpha), Qp
    return Q, F, steps


def _random_basis(d: int, r: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A uniformly random r-dim subspace of R^d: QR of a (d, r) standard normal matrix, float64."""
    gen_device = generator.device if generator is not None else device
    Z = torch.randn(d, r, dtype=torch.float64, device=gen_device, generator=generator)
    return torch.linalg.qr(Z.to(device)).Q


def _descend(
    params: list[Tensor], loss: Callable[..., Tensor], *, max_iter: int, tol: float, scale: float
) -> list[Tensor]:
    """Full-batch L-BFGS (strong Wolfe line search) on loss(*params) from ``params``, float64.

    Returns the best params evaluated (the start included). Stops after ``max_iter`` L-BFGS iterations or
    when the loss changes by less than tol * scale.
    """
    xs = [p.detach().contiguous().clone().requires_grad_(True) for p in params]  # L-BFGS flattens .grad
    with torch.no_grad():
        best = float(loss(*xs))
    best_xs = [x.detach().clone() for x in xs]
    if max_iter > 0:
        opt = torch.optim.LBFGS(
            xs,
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=0.0,
            tolerance_change=tol * scale,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            value = loss(*xs)
            value.backward()
            return value

        with torch.enable_grad():  # init_factors calls solvers under no_grad
            opt.step(closure)
        with torch.no_grad():
            final = float(loss(*xs))
        if math.isfinite(final) and final < best:
            best_xs = [x.detach().clone() for x in xs]
    return best_xs


def _descend_exact(
    W: Tensor, U: Tensor, V: Tensor, act: Activation, *, max_iter: int, tol: float
) -> tuple[Tensor, Tensor]:
    """:func:`_descend` on R(U V^T) = exact_loss (stopping at changes below tol R(0)); balanced factors."""
    R0 = float(exact_loss(W, torch.zeros_like(W), act))
    Uf, Vf = _descend([U, V], lambda U, V: exact_loss(W, U @ V.T, act), max_iter=max_iter, tol=tol, scale=R0)
    Qv, Rv = torch.linalg.qr(Vf)  # U V^T = (U Rv^T) Qv^T with Qv orthonormal
    return _balance(Uf @ Rv.T, Qv)


def _offset_loss(Wt: Tensor, d: Tensor, act: Activation) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """(U, V, d') -> sum_i E (f(y_i . z + d'_i) - f(w_i . z + d_i))^2, z ~ N(0, I), exactly."""
    return lambda U, V, dn: unit_loss(unit_moments(Wt, U @ V.T, offset=d, offset_y=dn), act).sum()


def _nlra_opt_function(
    W: Tensor,
    rank: int,
    act: Activation,
    fn: LayerFunction,
    generator: torch.Generator | None,
    restarts: int,
    max_iter: int,
    tol: float,
) -> InitResult:
    """nlra-opt on the layer's real function, in whitened coordinates (docs/theory.md, section 11).

    Normalized: :func:`ascend_normalized` from the better SVD subspace. Leaky family: the subspace ascent
    on W~ (the offset-free F, which is the problem exactly when the offsets are 0), then each unit's norm and
    offset on it; the result is kept only if it beats the same fit on the SVD subspace (relu-svd's).
    Other activations: relu-svd's rows and offsets, then L-BFGS on the exact objective in (U, V, d').
    """
    Wt, d, white = whitened_problem(W, fn)
    if fn.normalized:
        Q = ascend_normalized(Wt, best_normalized_subspace(Wt, rank, act), act, max_iter=max_iter, tol=tol)
        return from_whitened(*_balance(Wt @ Q, Q), None, fn, white, W)
    loss = _offset_loss(Wt, d, act)
    Q0 = whitened_svd(Wt, white, rank).Q
    A, d_new = _fit_rows_and_offsets(Wt, d, Q0, act)  # relu-svd's start (svd_rows_and_offsets, whitened)
    U, V = _balance(A, Q0)
    if act.leaky_slope is not None and act.leaky_slope != 1.0:
        Q1 = _ascended(Wt, Q0, act.leaky_slope, rank, generator, restarts, max_iter, tol)
        A1, d1 = _fit_rows_and_offsets(Wt, d, Q1, act)
        U1, V1 = _balance(A1, Q1)
        if float(loss(U1, V1, d1)) < float(loss(U, V, d_new)):
            U, V, d_new = U1, V1, d1
    elif act.leaky_slope is None:
        scale = float(loss(torch.zeros_like(U), V, d))
        U, V, d_new = _descend([U, V, d_new], loss, max_iter=max_iter, tol=tol, scale=scale)
        Qv, Rv = torch.linalg.qr(V)
        U, V = _balance(U @ Rv.T, Qv)
    return from_whitened(U, V, d_new, fn, white, W)


def nlra_opt(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    restarts: int = 2,
    max_iter: int = 500,
    tol: float = 1e-8,
    svd: SVD | None = None,
    post: PostOp | None = None,
    function: LayerFunction | None = None,
) -> InitResult:
    r"""The best rank-r NLRA solution nlinit can find: relu-svd's closed form on an optimized subspace.

    .. math::
        \max_{\dim S = r} F(S) = \sum_i a_i^2\, k\big(\lVert P_S w_i \rVert / a_i\big)^2, \qquad
        Y^\star = \text{the optimum with rows in } S \text{ (Theorem 2.1)}

    Leaky-ReLU family (relu, leaky_relu, identity): :func:`ascend_subspace` from the SVD subspace and from
    ``restarts`` random subspaces drawn from ``generator``; the subspace with the largest F wins (the SVD
    start on ties), and the factors are :func:`~nlinit.subspace.factors_on_subspace` on it. The
    ascent is monotone, so R(nlra-opt) <= R(relu-svd) <= R(spectral). For the identity the SVD subspace is
    already optimal (Eckart-Young): it returns ``spectral``'s product at once, without search or restarts.
    Other activations with an exact objective (silu, gelu, hardswish, tanh, sigmoid, relu6): L-BFGS on
    :func:`~nlinit.objective.exact_loss` from relu-svd's rows on the SVD subspace (each row's best norm,
    :func:`~nlinit.subspace.best_row_norms`); the best point seen is returned, so it is never worse than
    relu-svd, which is never worse than spectral.
    How far the result can be from optimal: :func:`nlinit.bounds.certify` (leaky family).

    Args:
        W: (d_out, d_in). rank: r. activation: default relu. generator: the random starts' source.
        restarts: random starting subspaces beyond the SVD one (leaky family; ignored otherwise).
        max_iter: per start, the limit on minorize-maximize steps and on L-BFGS polish iterations
            (leaky family, :func:`ascend_subspace`); L-BFGS iterations (others).
        svd: W's top-r SVD if the caller has it (:func:`nlinit.subspace.top_svd`).
        post: the layer's post-op (:class:`nlinit.graph.PostOp`). For "normalized" (BatchNorm in training
            mode) it lowers the scale-free objective (:func:`nlinit.objective.normalized_loss`) by L-BFGS
            over subspaces (:func:`nlinit.subspace.ascend_normalized`) from the better of the SVD subspaces
            of W and of W with unit rows (:func:`nlinit.subspace.best_normalized_subspace`), so never worse
            than relu-svd's (which is spectral's there).
        function: the layer's real function (:class:`nlinit.layer_function.LayerFunction`): the same
            searches in whitened coordinates with each unit's offset refitted; returns (U, V, bias').
        tol: the ascent's steps stop when one improves R by less than tol R(0) and its polish at changes
            below 1e-3 tol R(0); other activations' L-BFGS stops at changes below tol R(0).
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), in W's dtype and on its device, balanced.
    Raises:
        ValueError: bad restarts, max_iter or tol.
        NotImplementedError: an activation with no exact objective.

    Example:
        >>> U, V = nlra_opt(torch.randn(64, 32), 8, restarts=0)
    """
    check_int("restarts", restarts, low=0)
    check_int("max_iter", max_iter, low=0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    act = activation if activation is not None else Activation("relu")
    alpha = act.leaky_slope
    if act.name not in EXACT_ACTIVATIONS:
        raise NotImplementedError(
            f"nlra-opt needs an exact objective; activation {str(act)!r} has none "
            f"(available: {', '.join(EXACT_ACTIVATIONS)})"
        )
    W64 = W.double()
    if function is not None and not function.is_plain:
        if post is not None and post.kind == "normalized" and not function.normalized:
            function = dataclasses.replace(function, normalized=True)
        return _nlra_opt_function(W, rank, act, function, generator, restarts, max_iter, tol)
    if post is not None and post.kind == "normalized":
        Qn = best_normalized_subspace(W64, rank, act, svd)
        return _projection_factors(W, ascend_normalized(W64, Qn, act, max_iter=max_iter, tol=tol))
    Q0 = top_svd(W64, rank, svd).Q.double()
    if alpha is None:  # from relu-svd's generalized rows (never worse than spectral), descend the objective
        U0, V0 = _factors_on_subspace(W64, Q0, act)
        U, V = _descend_exact(W64, U0, V0, act, max_iter=max_iter, tol=tol)
        return U.to(W.dtype), V.to(W.dtype)
    if alpha == 1.0:  # F(S) = ||W P_S||_F^2: the SVD subspace is optimal (Eckart-Young), nothing to search
        return _factors_on_subspace(W, Q0, alpha)
    return _factors_on_subspace(W, _ascended(W64, Q0, alpha, rank, generator, restarts, max_iter, tol), alpha)


def _ascended(
    W64: Tensor,
    Q0: Tensor,
    alpha: float,
    rank: int,
    generator: torch.Generator | None,
    restarts: int,
    max_iter: int,
    tol: float,
) -> Tensor:
    """The best subspace :func:`ascend_subspace` finds from Q0 and from ``restarts`` random starts."""
    # The best subspace can be taken inside W's row space (projecting S onto it never lowers any rho_i),
    # so for d_in > d_out work in coordinates of an orthonormal basis of it: W = Wc B^T, Wc (d_out, d_out).
    B: Tensor | None = None
    Wc = W64
    if W64.shape[1] > W64.shape[0]:
        B, R = torch.linalg.qr(W64.T)  # (d_in, d_out), (d_out, d_out)
        Wc = R.T
        Q0 = torch.linalg.qr(B.T @ Q0).Q  # orthonormal again (B^T Q0 is not if rank(W) < r)
    best_Q, best_value, _ = ascend_subspace(Wc, Q0, alpha, max_iter=max_iter, tol=tol)
    for _ in range(restarts):
        Q = _random_basis(Wc.shape[1], rank, generator, W64.device)
        Q, value, _ = ascend_subspace(Wc, Q, alpha, max_iter=max_iter, tol=tol)
        if value > best_value:
            best_Q, best_value = Q, value
    return best_Q if B is None else B @ best_Q
