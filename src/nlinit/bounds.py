r"""Certified lower bounds on the NLRA objective: how far a rank-r solution can be from optimal.

For the leaky-ReLU family sigma(z) = alpha z + (1 - alpha) relu(z), Theorem 2.1 of docs/theory.md gives

.. math::
    R^\star = \min_{\mathrm{rank}\,Y \le r} R(Y)
    = \frac{1 + \alpha^2}{2}\Big(\lVert W \rVert_F^2 - \max_S F(S)\Big),
    \qquad F(S) = \sum_i a_i^2\, \varphi(t_i(S)), \qquad t_i(S) = \frac{w_i^\top P_S w_i}{a_i^2},
    \qquad \varphi(t) = k(\sqrt t)^2,

so an upper bound on max_S F is a lower bound on R^*. The bound used here is a dual one. For slopes
beta_i >= 0, the line t -> phi^*(beta_i) + beta_i t, with phi^*(beta) = sup_{t in [0, 1]} phi(t) - beta t,
lies above phi on [0, 1], hence for every rank-r projector P (and every P in the Fantope
{0 <= P <= I, tr P = r})

.. math::
    F(P) \le \sum_i a_i^2 \varphi^*(\beta_i) + \mathrm{tr}\Big(P \sum_i \beta_i w_i w_i^\top\Big)
    \le \sum_i a_i^2 \varphi^*(\beta_i) + \lambda_1 + \dots + \lambda_r\Big(\sum_i \beta_i w_i w_i^\top\Big)
    =: D(\beta).

Any beta gives a valid bound; the slopes are chosen by Frank-Wolfe on the concave relaxation
max over the Fantope of sum_i a_i^2 phi_hat(t_i(P)) (phi_hat the concave envelope of phi), whose duality gap
at an iterate is D at the envelope's slopes there. phi^* is bounded from above rigorously on a grid (phi is
convex in rho = sqrt t, so it lies below its chords), and the eigenvalue sum gets a floating-point margin.
docs/theory.md, section 7.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from ._checks import check_int, check_matrix, check_rank
from .activations import LEAKY_FAMILY, Activation, parse_activation
from .objective import exact_loss
from .subspace import leaky_norm_factor

__all__ = ["Certificate", "certify", "nlra_lower_bound"]

#: cells of the grid, uniform in theta = arccos(rho), on which phi^* is bounded (chord error <~ 1e-8).
_CONJUGATE_CELLS = 2**13
#: cells of the grid whose upper hull is the envelope phi_hat that guides Frank-Wolfe (not used for validity).
_HULL_CELLS = 2**11
#: units per chunk when bounding phi^* on the grid: memory O(_CHUNK * _CONJUGATE_CELLS).
_CHUNK = 256


@dataclass(frozen=True)
class Certificate:
    """How far a rank-r Y is from the best rank-r approximation, under a leaky-family activation.

    objective: R(Y). lower_bound: L <= R(Y') for every Y' of rank <= r. gap: R(Y) - L, an upper bound on
    R(Y) - R^*. relative_gap: gap / R(0); for W = 0 (R(0) = 0) it is 0.0 when gap = 0 and inf otherwise.
    zero_objective: R(0), the objective of Y = 0, the unit of the relative figures. rank_margin: how far
    below 0 the gap can be because Y is of rank r only up to rounding: with delta = ||Y - Y_r||_F (Y_r the
    truncated SVD of Y) and l = max(1, |alpha|), gap >= -rank_margin = -(2 l delta sqrt(R(Y)) + l^2 delta^2),
    up to the float64 rounding of R(Y) (docs/theory.md 7.3).
    """

    objective: float
    lower_bound: float
    gap: float
    relative_gap: float
    zero_objective: float
    rank_margin: float = 0.0


def _check_leaky(activation: str | Activation) -> tuple[Activation, float]:
    act = parse_activation(activation)
    alpha = act.leaky_slope
    if alpha is None:
        raise NotImplementedError(
            f"certified lower bounds need a leaky-ReLU-family activation; got {str(act)!r} "
            f"(supported: {', '.join(LEAKY_FAMILY)})"
        )
    return act, alpha


@functools.lru_cache(maxsize=32)
def _grid(alpha: float, cells: int) -> tuple[Tensor, Tensor]:
    r"""rho_j = cos(theta_j), theta uniform on [0, pi/2] (ascending rho), and psi_j = k(rho_j)^2, float64.

    Uniform in theta packs points near rho = 1, where psi'' ~ 1 / sqrt(1 - rho^2) is unbounded. On every cell
    but the last the chord error is at most (h_j^2 / 8) max psi'' = O(1 / cells^2); on the last cell
    [rho_{n-1}, 1], where psi'' is unbounded, it is at most h (psi'(1) - psi'(rho_{n-1})) / 4 = O(1 / cells^3)
    (psi is convex and C^1 with psi'(1) = 2; docs/theory.md 7.4). Either way the chord lies above psi.
    """
    theta = torch.linspace(math.pi / 2, 0.0, cells + 1, dtype=torch.float64)
    rho = torch.cos(theta)
    rho[0], rho[-1] = 0.0, 1.0
    return rho, leaky_norm_factor(rho, alpha).square()


class _Envelope(NamedTuple):
    """phi_hat: vertices (t, phi) of the upper concave hull, segment slopes, and for each slope beta an
    upper bound on phi^*(beta) (:func:`_conjugate_upper`)."""

    t: Tensor
    phi: Tensor
    slope: Tensor
    conj: Tensor

    def at(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """phi_hat(t) and the index of the segment holding t (its slope is a supergradient), t in [0, 1]."""
        seg = (torch.searchsorted(self.t, t.clamp(0.0, 1.0), right=True) - 1).clamp(0, len(self.slope) - 1)
        return self.phi[seg] + self.slope[seg] * (t - self.t[seg]), seg


@functools.lru_cache(maxsize=32)
def _envelope(alpha: float) -> _Envelope:
    r"""The upper concave hull phi_hat of the points (rho_j^2, psi_j), with the conjugate bound per slope.

    The hull is what Frank-Wolfe maximizes; its quality affects only how tight the final bound is, not
    whether it is valid (validity comes from :func:`_conjugate_upper`). Andrew's monotone chain on points
    sorted by t (scipy's qhull rejects the collinear points of the identity, phi(t) = t).
    """
    rho, psi = _grid(alpha, _HULL_CELLS)
    t, p = (rho * rho).tolist(), psi.tolist()
    hull: list[int] = []
    for j in range(len(t)):
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            # drop i1 if it lies on or below the segment i0 -> j (cross product >= 0)
            if (t[i1] - t[i0]) * (p[j] - p[i0]) - (p[i1] - p[i0]) * (t[j] - t[i0]) >= 0:
                hull.pop()
            else:
                break
        hull.append(j)
    tv = torch.tensor([t[j] for j in hull], dtype=torch.float64)
    pv = torch.tensor([p[j] for j in hull], dtype=torch.float64)
    slope = (pv[1:] - pv[:-1]) / (tv[1:] - tv[:-1])  # > 0: phi is increasing (k' > 0, k >= 0 on (0, 1])
    return _Envelope(tv, pv, slope, _conjugate_upper(slope, alpha))


def _conjugate_upper(beta: Tensor, alpha: float) -> Tensor:
    r"""Upper bounds on phi^*(beta_i) = sup_{t in [0, 1]} phi(t) - beta_i t, for beta_i >= 0.

    With t = rho^2 this is sup_rho psi(rho) - beta rho^2, psi = k^2. psi is convex on [0, 1] (k is convex,
    k >= 0 and k' >= 0 there), so on each grid cell [rho_j, rho_{j+1}] psi lies below its chord
    psi_j + s_j (rho - rho_j), the last cell (where psi'' is unbounded) included, and for beta >= 0
    chord - beta rho^2 is a concave quadratic whose maximum over the cell is at
    rho = clip(s_j / (2 beta), rho_j, rho_{j+1}). The max over cells bounds phi^* from above; 1e-12 covers
    the rounding of psi (psi <= 1). Cost O(len(beta) * _CONJUGATE_CELLS), in chunks.

    Raises:
        ValueError: a beta_i < 0 or NaN. For beta < 0 the quadratic is convex and the formula would not bound
            phi^*; clamping beta to 0 here while the caller's eigenvalue term uses the negative beta would
            make the dual bound D(beta) invalid, so the slopes must be >= 0 where they are chosen.
    """
    bad = ~(beta >= 0)  # NaN compares False: caught too
    if bool(bad.any()):
        raise ValueError(
            f"conjugate bound needs slopes beta >= 0, got {int(bad.sum())} that are not "
            f"(e.g. {float(beta[bad][0])!r})"
        )
    rho, psi = (x.to(beta.device) for x in _grid(alpha, _CONJUGATE_CELLS))
    lo, hi = rho[:-1], rho[1:]  # (n,)
    s = (psi[1:] - psi[:-1]) / (hi - lo)  # (n,) chord slopes
    out = []
    for b in beta.split(_CHUNK):
        bb = b[:, None]  # (c, 1)
        peak = torch.where(bb > 0, s / (2 * bb.clamp_min(1e-300)), hi)  # (c, n)
        x = torch.minimum(torch.maximum(peak, lo), hi)
        out.append((psi[:-1] + s * (x - lo) - bb * x * x).amax(1))
    return torch.cat(out) + 1e-12


def _linear_oracle(W: Tensor, G: Tensor | None, beta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    r"""Sum of the top-r eigenvalues of M = sum_i beta_i w_i w_i^T and t_i = w_i^T P w_i / a_i^2 for P the
    projector on its top-r eigenvectors (the Fantope's maximizer of tr(M P)).

    With G = W W^T given (d_out <= d_in) it works with K = B G B, B = diag(sqrt beta), which has M's
    nonzero eigenvalues; an eigenvector u of K gives v = W^T B u / sqrt(lambda), so
    w_i^T v = (G B u)_i / sqrt(lambda). Otherwise M itself (d_in x d_in).
    """
    a2 = W.square().sum(1)
    if G is not None:
        sb = beta.sqrt()
        evals, U = torch.linalg.eigh(sb[:, None] * G * sb[None, :])
        lam, U = evals[-rank:], U[:, -rank:]
        ok = lam > 0
        proj = (G @ (sb[:, None] * U[:, ok])) / lam[ok].sqrt()  # (d_out, #ok): w_i^T v_j
    else:
        evals, V = torch.linalg.eigh(W.T @ (beta[:, None] * W))
        lam = evals[-rank:]
        proj = W @ V[:, -rank:]
    return lam.sum(), (proj.square().sum(1) / a2).clamp(0.0, 1.0)


def _certified_value(W: Tensor, G: Tensor | None, beta: Tensor, conj: Tensor, rank: int) -> float:
    r"""D(beta) = sum_i a_i^2 conj_i + (sum of the top-r eigenvalues of M) + margin >= max_S F(S).

    conj_i >= phi^*(beta_i) (from :func:`_conjugate_upper`). Margin for the eigenvalue sum, with
    tr(M) = sum_i beta_i a_i^2 >= ||M||_F: rounding while forming M = W^T diag(beta) W perturbs it by at most
    ~d_out eps tr(M) in Frobenius norm, and forming K = B W W^T B by ~d_in d_out eps tr(M) (Cauchy-Schwarz);
    eigh is backward stable (O(n eps ||K||)); and a sum of r eigenvalues moves by at most sqrt(r) ||Delta||_F
    (Ky Fan). sqrt(r) (d_out + d_in)^2 eps tr(M) covers all of it; 1e-12 ||W||_F^2 covers the sums.
    """
    a2 = W.square().sum(1)
    eigsum, _ = _linear_oracle(W, G, beta, rank)
    trace = float((beta * a2).sum())
    eps = torch.finfo(torch.float64).eps
    margin = math.sqrt(rank) * (W.shape[0] + W.shape[1]) ** 2 * eps * trace + 1e-12 * float(a2.sum())
    return float((a2 * conj).sum()) + float(eigsum) + margin


def _max_subspace_objective_upper(W: Tensor, rank: int, alpha: float, max_iter: int, tol: float) -> float:
    r"""A certified upper bound on max over r-dim subspaces S of F(S), W float64 with no zero rows.

    Frank-Wolfe on max_{P in Fantope} sum_i a_i^2 phi_hat(t_i(P)), tracked through t alone (the objective
    depends on P only through t), from the SVD subspace's t (the oracle at beta = 1). At each iterate the
    envelope's slopes beta give the duality-gap bound D_hat(beta) = sum a_i^2 (phi_hat(t_i) - beta_i t_i) +
    eigsum; it stops when D_hat - primal <= tol ||W||_F^2 or after max_iter steps (bounded Brent line
    search on the step size). The slopes of the best D_hat and of the last iterate are then certified with
    :func:`_certified_value`, and the smaller value is returned.
    """
    a2 = W.square().sum(1)  # (m,)
    scale = float(a2.sum())
    G = W @ W.T if W.shape[0] <= W.shape[1] else None
    env = _Envelope(*(x.to(W.device) for x in _envelope(alpha)))
    _, t = _linear_oracle(W, G, torch.ones_like(a2), rank)

    def along(gamma: float, t: Tensor, step: Tensor) -> float:  # minus the primal at t + gamma step
        return -float((a2 * env.at(t + gamma * step)[0]).sum())

    best, best_seg = math.inf, env.at(t)[1]
    seg = best_seg
    for k in range(max_iter):
        value, seg = env.at(t)
        beta = env.slope[seg]
        eigsum, t_lin = _linear_oracle(W, G, beta, rank)
        f = float((a2 * value).sum())
        bound = float((a2 * (value - beta * t)).sum() + eigsum)
        if bound < best:
            best, best_seg = bound, seg
        if best - f <= tol * scale:
            break
        step = t_lin - t
        res = minimize_scalar(along, bounds=(0.0, 1.0), args=(t, step), method="bounded")
        # the envelope is only piecewise smooth: where the line search finds no ascent, take FW's 2/(k+2)
        gamma = float(res.x) if -float(res.fun) > f else 2.0 / (k + 2.0)
        t = t + gamma * step
    return min(_certified_value(W, G, env.slope[i], env.conj[i], rank) for i in (best_seg, seg))


def nlra_lower_bound(
    W: Tensor,
    rank: int,
    activation: str | Activation = "relu",
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> float:
    r"""A certified lower bound L <= R(Y) for every Y of rank <= r (leaky-ReLU family).

    .. math::
        L = \frac{1 + \alpha^2}{2}\Big(\lVert W \rVert_F^2 - D(\beta)\Big) \le
        \min_{\mathrm{rank}\,Y \le r} \mathbb{E}_x \lVert \sigma(Y x) - \sigma(W x) \rVert^2,

    with D(beta) >= max_S F(S) the dual bound of the module docstring at the slopes Frank-Wolfe picks
    (``max_iter`` steps, stopping at a duality gap of ``tol`` ||W||_F^2). Valid whatever the iteration count;
    more iterations make it tighter. Computed in float64; clamped at 0 (R >= 0). For rank = min(d_out, d_in)
    it is exactly 0, the optimum (Y = W). For the identity it equals the Eckart-Young optimum
    sum_{j > r} s_j^2 up to ~1e-9 ||W||_F^2.

    Args:
        W: (d_out, d_in) weight. rank: r in [1, min(d_out, d_in)]. activation: relu, leaky_relu(s), identity.
        max_iter: Frank-Wolfe steps. tol: duality gap (relative to ||W||_F^2) at which to stop.
    Returns:
        L as a float, in the units of R (compare with ``nlra_loss(W, Y, activation)``).
    Raises:
        ValueError: bad W, rank, max_iter or tol. NotImplementedError: an activation outside the family.

    Example:
        >>> W = torch.randn(64, 32, dtype=torch.float64)
        >>> nlra_lower_bound(W, 8) <= float(nlra_loss(W, W * 0, "relu"))
        True
    """
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    _, alpha = _check_leaky(activation)
    check_int("max_iter", max_iter, low=1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    W64 = W.detach().double()
    W64 = W64[W64.square().sum(1) > 0]  # zero rows add 0 to R and to F
    if rank >= min(W64.shape):
        return 0.0  # rank(W) <= min(#nonzero rows, d_in) <= r: Y = W is feasible, and R >= 0
    upper = _max_subspace_objective_upper(W64, rank, alpha, max_iter, tol)
    return max(0.0, 0.5 * (1 + alpha * alpha) * (float(W64.square().sum()) - upper))


def _numerical_rank(Y: Tensor) -> tuple[int, float, Tensor]:
    r"""(numerical rank, tolerance, singular values) of Y: those above max(d_out, d_in) eps s_1 count.

    eps is the machine epsilon of Y's dtype (the convention of LAPACK and ``torch.linalg.matrix_rank``). A
    rank-r product U V^T formed in that dtype has rounding singular values of order eps s_1 beyond the r-th
    (rounding errors of relative size eps in its entries), which the factor max(d_out, d_in) >= 1 leaves
    below the tolerance (``test_rank_tolerance_accepts_products_formed_in_float32`` measures them, at most
    0.52 eps s_1 for products from 12 x 8 to 128 x 288). Singular values by ``svdvals`` of the tall
    orientation, in float64 (backward stable: error ~ eps_64 s_1, far below the tolerance of every dtype).
    """
    Y64 = Y.detach().double()
    s = torch.linalg.svdvals(Y64 if Y64.shape[0] >= Y64.shape[1] else Y64.T)
    tol = max(Y.shape) * torch.finfo(Y.dtype).eps * float(s[0]) if s.numel() else 0.0
    return int((s > tol).sum()), tol, s


def certify(
    W: Tensor,
    Y: Tensor,
    rank: int,
    activation: str | Activation = "relu",
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> Certificate:
    r"""R(Y), the certified lower bound L of :func:`nlra_lower_bound` and the gap R(Y) - L >= R(Y) - R^*.

    Y must have rank <= r (numerically: no singular value above max(d_out, d_in) eps s_1, eps of Y's
    dtype), since the bound is for rank-r solutions; a Y of higher rank could beat every rank-r Y and give a
    negative "gap". Within that tolerance the gap is >= -rank_margin (see :class:`Certificate`).

    Args:
        W: (d_out, d_in). Y: (d_out, d_in), the approximation, of rank <= r. rank: r. activation:
            leaky-ReLU family. max_iter, tol: as in :func:`nlra_lower_bound`.
    Returns:
        :class:`Certificate` with objective, lower_bound, gap, relative_gap = gap / R(0), R(0) and the
        rank margin.
    Raises:
        ValueError: bad W, Y (shape), rank, max_iter or tol, or a Y whose numerical rank exceeds r (the
            message names both). NotImplementedError: an activation outside the leaky-ReLU family.

    Example:
        >>> W = torch.randn(64, 32, dtype=torch.float64)
        >>> U, V = nlinit.init_factors(W, 8, "nlra-opt")
        >>> certify(W, U @ V.T, 8).relative_gap < 0.05
        True
    """
    check_matrix("W", W)
    check_matrix("Y", Y)
    if Y.shape != W.shape:
        raise ValueError(f"Y must have W's shape {tuple(W.shape)}, got {tuple(Y.shape)}")
    act, alpha = _check_leaky(activation)
    check_rank(rank, *W.shape)
    numerical, cutoff, s = _numerical_rank(Y)
    if numerical > rank:
        raise ValueError(
            f"Y has numerical rank {numerical} > rank={rank} ({numerical} singular values above "
            f"{cutoff:.3g} = max(d_out, d_in) * eps({Y.dtype}) * s_1); certify needs a Y of rank <= {rank}"
        )
    lower = nlra_lower_bound(W, rank, act, max_iter=max_iter, tol=tol)
    W64 = W.detach().double()
    objective = float(exact_loss(W64, Y.detach().double(), act))
    r0 = float(exact_loss(W64, torch.zeros_like(W64), act))
    gap = objective - lower
    # W = 0: L = 0 and gap = R(Y) >= 0; 0 / 0 is taken as 0 (Y = 0 is optimal), x / 0 as inf
    relative = gap / r0 if r0 > 0 else (0.0 if gap == 0 else math.inf)
    delta = float(s[rank:].square().sum().sqrt())
    lip = max(1.0, abs(alpha))
    margin = 2 * lip * delta * math.sqrt(max(objective, 0.0)) + (lip * delta) ** 2
    return Certificate(objective, lower, gap, relative, r0, margin)
