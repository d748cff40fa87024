r"""provable: NLRA to additive error eps ||W||_F^2 in polynomial time for fixed rank r (nlinit's own).

For the leaky-ReLU family sigma(z) = alpha z + (1 - alpha) relu(z) (relu: alpha = 0, identity: alpha = 1),
Theorem 2.1 of docs/theory.md reduces NLRA to a search over r-dimensional subspaces S of R^{d_in}:

.. math::
    \min_{\mathrm{rank}\,Y \le r} R(Y) = c\,\Big(\lVert W \rVert_F^2 - \max_S F(S)\Big), \qquad
    F(S) = \sum_i a_i^2\, k(\rho_i(S))^2, \qquad c = \frac{1 + \alpha^2}{2},

with rho_i(S) = ||P_S w_i|| / a_i and k the optimal norm factor (ReLU: k = g). The algorithm
(docs/theory.md section 8, Theorem P.6):

1. SVD of W; T = span of the top-k right singular vectors, k chosen from the spectrum. Every S is beaten,
   up to eta_red(k) = 2 ||W||_F (sigma_{k+1}^2 + ... + sigma_{k+r}^2)^{1/2}, by a subspace inside T.
2. A net of Gr(r, T): for each set J of r pivot rows, every basis [I; X] (rows permuted) with X on the grid
   {-1, -1 + 2/n, ..., 1}^{(k-r) x r}. Every r-dim subspace of T has such a basis with |X_ij| <= 1
   (maximal-volume pivots), and rounding X moves S by at most sqrt(r (k-r)) / n, which costs at most
   eta_net = 2 ||W||_F ||W P_T||_F sqrt(r (k-r)) / n in F. The top-r SVD subspace is evaluated too.
3. The best net point, then Riemannian gradient ascent on F (accepted only where F increases), then the
   closed-form rows of Theorem 2.1 and balanced factors.

k and n are the pair with the fewest net points subject to c (eta_red + eta_net) + 2 c mu <= eps ||W||_F^2,
mu the floating-point margin (:func:`_margin`). The result satisfies R(Y) <= min R + eps ||W||_F^2,
deterministically, and carries an a-posteriori certificate (``guarantee``, a valid upper bound on
R(Y) - min R that is at most eps ||W||_F^2, rounding included through mu). The net has
C(k, r) (n + 1)^{r (k - r)} points, bounded independently of d_out and d_in; with k = O(r c^2 / eps^2) this
is exp(O((r^2 c^2 / eps^2) log(2 + r c / eps))) for fixed r and eps, times O(d_out k r) per point, plus one
SVD (Theorem P.6, which assumes no cap on the net: the code refuses nets over ``max_points``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_matrix, check_rank
from ..activations import LEAKY_FAMILY, Activation, parse_activation
from ..subspace import _factors_on_subspace, _subspace_objective, leaky_norm_factor

__all__ = ["DEFAULT_MAX_POINTS", "ProvableSolution", "provable", "provable_net", "provable_solve"]

#: the largest net :func:`provable_solve` evaluates by default: about 20-40 s on one CPU core at d_out = 8
#: (measured 2-3 microseconds per point at r = 1, 2; about 10 at d_out = 64; it grows as d_out k r).
DEFAULT_MAX_POINTS = 10_000_000

#: net points per evaluated batch: bounds the (batch, d_out, r) temporaries at about 2^18 entries (measured
#: 1.3-1.5x faster than 2^22 on CPU: the temporaries stay in cache).
_BATCH_ENTRIES = 2**18


@dataclass(frozen=True)
class ProvableSolution:
    r"""The result of :func:`provable_solve`: factors, their objective and how far from optimal it can be.

    Attributes:
        U, V: (d_out, r), (d_in, r) balanced factors, W's dtype and device; Y = U V^T.
        objective: R(Y), the exact NLRA objective of Y (closed form, float64).
        lower_bound: a certified lower bound on R(Y') for every Y' of rank <= r.
        guarantee: objective - lower_bound + rounding_margin >= R(Y) - min R; at most eps ||W||_F^2.
        eps: the requested additive error, in units of ||W||_F^2.
        net_size: number of subspaces the net evaluated (the top-r SVD subspace included).
        k: dimension of the SVD subspace T the net covers. n: grid divisions per entry (0: no grid).
        rounding_margin: c mu, the floating-point margin in units of R (:func:`_margin`): lower_bound is
            lowered by it, and guarantee counts it once more for the rounding of the objective.

    The guarantee is for the float64 factors; for a float32 W they are then rounded to float32, which
    changes R by about 1e-7 ||W||_F^2.
    """

    U: Tensor
    V: Tensor
    objective: float
    lower_bound: float
    guarantee: float
    eps: float
    net_size: int
    k: int
    n: int
    rounding_margin: float


@dataclass(frozen=True)
class _Plan:
    """A net for rank r: dimension k of T, n grid divisions (0: T alone), log of its size, and its two
    error terms in units of F (eta_red: leaving T, eta_net: rounding to the grid)."""

    r: int
    k: int
    n: int
    log_size: float
    eta_red: float
    eta_net: float

    @property
    def dim(self) -> int:
        """r (k - r): the dimension of Gr(r, k), the number of grid coordinates."""
        return self.r * (self.k - self.r)


def _log_comb(k: int, r: int) -> float:
    return math.lgamma(k + 1) - math.lgamma(r + 1) - math.lgamma(k - r + 1)


def _plan(s2: list[float], r: int, budget: float, trivial: float) -> _Plan | None:
    r"""The net with the fewest points whose error eta_red + eta_net is at most ``budget`` (units of F).

    s2: all squared singular values sigma_j^2 of W, descending (length min(d_out, d_in)).
    trivial: an error every single subspace meets ((1 - k(0)^2) ||W||_F^2), used for the k = r net.
    eta_red(k) = 2 ||W||_F sqrt(sigma_{k+1}^2 + ... + sigma_{k+r}^2) (Lemma P.4 of docs/theory.md section 8),
    eta_net(k, n) = 2 ||W||_F ||W_k||_F sqrt(r (k - r)) / n (Lemmas P.3, P.5); n = 0 means the single
    subspace T (k = r). Returns None if no k meets the budget (only possible for budget <= 0).
    """
    fro2 = sum(s2)
    fro = math.sqrt(fro2)
    best: _Plan | None = None
    head = sum(s2[:r])  # ||W_k||_F^2 for k = r
    for k in range(r, len(s2) + 1):
        if k > r:
            head += s2[k - 1]
        eta_red = 2.0 * fro * math.sqrt(sum(s2[k : k + r]))
        if k == r:
            err = min(eta_red, trivial)
            if err <= budget:
                return _Plan(k=r, n=0, log_size=0.0, eta_red=err, eta_net=0.0, r=r)
            continue
        dim = r * (k - r)
        if best is not None and dim * math.log(2.0) >= best.log_size:
            break  # n >= 1, so every larger k has at least 2^dim points
        rem = budget - eta_red
        if rem <= 0:
            continue
        lip = 2.0 * fro * math.sqrt(head) * math.sqrt(dim)  # eta_net * n
        n = max(1, math.ceil(lip / rem))
        log_size = _log_comb(k, r) + dim * math.log(n + 1)
        if best is None or log_size < best.log_size:
            best = _Plan(k=k, n=n, log_size=log_size, eta_red=eta_red, eta_net=lip / n, r=r)
    return best


def _check_options(eps: object, alpha: object, max_points: object, polish: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number (additive error / ||W||_F^2), got {eps!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number (the leaky slope), got {alpha!r}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be a positive int, got {max_points!r}")
    if not isinstance(polish, bool):
        raise ValueError(f"polish must be True or False, got {polish!r}")


def _margin(m: int, d: int, rank: int, fro2: float) -> float:
    r"""mu = (5 sqrt(r) (m + d)^2 eps_64 + 10^-12) ||W||_F^2: the floating-point margin, in units of F.

    The proof of Theorem P.6 is for exact arithmetic; float64 perturbs the computed upper bound on max F
    (docs/theory.md P.6, "Floating point") by at most:

    * 2 sqrt(r) ||E||_2 ||W||_F in eta_red, where the computed SVD is exact for W + E with
      ||E||_2 <= (m + d)^2 eps_64 ||W||_2 (LAPACK's backward error, whose constant is O(m d), generously):
      each sigma_{k+j} of W (I - P_T) is within ||E||_2 of the computed one (Weyl);
    * 2 (m + d)^2 eps_64 ||W||_F^2 in F and the cell bound: the bases of T and of each net point are
      orthonormal only up to O((d + k) eps_64), which moves each rho_i by as much, and k^2 is 2-Lipschitz;
    * (m + d)^2 eps_64 ||W||_F^2 for the sums over units, and 10^-12 ||W||_F^2 for evaluating k^2: g's
      sqrt(1 - rho^2) is accurate to 2.3e-13 on all of [0, 1] (for a float rho = 1 - j 2^-53 the product
      rho^2 = 1 - j 2^-52 + j^2 2^-106 rounds by at most min(j^2 2^-106, 2^-54)), so |Delta k^2| <= 3e-13.

    The same margin covers the rounding of the returned objective and of U V^T.
    """
    return (5.0 * math.sqrt(rank) * (m + d) ** 2 * torch.finfo(torch.float64).eps + 1e-12) * fro2


def _spectrum(W64: Tensor) -> tuple[Tensor, list[float]]:
    """(Vh, squared singular values as floats): W = P diag(s) Vh, rows of Vh the right singular vectors."""
    _, s, Vh = torch.linalg.svd(W64, full_matrices=False)
    return Vh, [float(v) ** 2 for v in s.cpu()]


def _constants(W64: Tensor, alpha: float) -> tuple[float, float, float]:
    """(c, ||W||_F^2, trivial): R = c (||W||^2 - F) and the error (1 - k(0)^2) ||W||^2 of any subspace."""
    fro2 = float(W64.square().sum())
    k0 = float(leaky_norm_factor(torch.zeros((), dtype=torch.float64), alpha))
    return (1.0 + alpha * alpha) / 2.0, fro2, (1.0 - k0 * k0) * fro2


def provable_net(W: Tensor, rank: int, eps: float = 0.05, alpha: float = 0.0) -> tuple[float, int, int]:
    r"""(net_size, k, n) of the net :func:`provable_solve` would evaluate for eps, without evaluating it.

    One SVD of W. net_size = C(k, r) (n + 1)^{r (k - r)} + 1 (the top-r SVD subspace) as a float (inf past
    float range), or 1 when the top-r SVD subspace alone meets eps (k = r, n = 0). Use it to pick eps.

    Raises:
        ValueError / TypeError: bad W, rank, eps or alpha, or an eps below the floating-point margin
            (as :func:`provable_solve`).

    Example:
        >>> provable_net(torch.randn(8, 4, dtype=torch.float64), 1, eps=0.2)[1] <= 4
        True
    """
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    _check_options(eps, alpha, 1, True)
    plan = _make_plan(W.detach().double(), rank, float(eps), float(alpha))[0]
    if plan.log_size > 700.0:
        return math.inf, plan.k, plan.n
    return float(_plan_points(plan)), plan.k, plan.n


def _plan_points(plan: _Plan) -> int:
    """The exact number of subspaces the plan evaluates (call only for a moderate log_size)."""
    if plan.n == 0:
        return 1
    return math.comb(plan.k, plan.r) * (plan.n + 1) ** plan.dim + 1


def _fits(plan: _Plan | None, max_points: int) -> bool:
    """Whether the plan exists and evaluates at most max_points subspaces."""
    if plan is None:
        return False
    return plan.n == 0 or (plan.log_size <= math.log(max_points) + 1.0 and _plan_points(plan) <= max_points)


def _budget(eps: float, c: float, fro2: float, margin: float) -> float:
    """The error allowed to eta_red + eta_net, in units of F: eps ||W||_F^2 / c less twice the margin."""
    return eps * fro2 / c - 2.0 * margin


def _make_plan(W64: Tensor, rank: int, eps: float, alpha: float) -> tuple[_Plan, Tensor, list[float]]:
    """(plan, Vh, squared singular values) for eps; the identity (alpha = 1) needs no net (Eckart-Young).

    Raises ValueError when eps is below what the floating-point margin allows (2 c mu / ||W||_F^2).
    """
    Vh, s2 = _spectrum(W64)
    c, fro2, trivial = _constants(W64, alpha)
    if alpha == 1.0 or fro2 == 0.0:
        return _Plan(r=rank, k=rank, n=0, log_size=0.0, eta_red=0.0, eta_net=0.0), Vh, s2
    margin = _margin(W64.shape[0], W64.shape[1], rank, fro2)
    plan = _plan(s2, rank, _budget(eps, c, fro2, margin), trivial)
    if plan is None:  # only when the budget is <= 0: k = min(d_out, d_in) has eta_red = 0
        raise ValueError(
            f"eps={eps!r} is below the floating-point margin of the certificate for this W; "
            f"eps must exceed {2.0 * c * margin / fro2:.3g}"
        )
    return plan, Vh, s2


def _smallest_eps(
    s2: list[float], rank: int, c: float, fro2: float, trivial: float, margin: float, max_points: int
) -> float:
    """The smallest eps (3 significant digits, rounded up) whose net has at most max_points points."""

    def fits(e: float) -> bool:
        return _fits(_plan(s2, rank, _budget(e, c, fro2, margin), trivial), max_points)

    lo, hi = 1e-12, c  # at eps = c >= c (1 - k(0)^2) the single SVD subspace fits
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    digits = 10 ** (math.floor(math.log10(hi)) - 2)
    return math.ceil(hi / digits - 1e-9) * digits


def _grid_batch(index: Tensor, n: int, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Grid points number ``index`` of {-1, -1 + 2/n, ..., 1}^shape in base-(n + 1) order: (B, *shape)."""
    dim = shape[0] * shape[1]
    powers = (n + 1) ** torch.arange(dim, device=index.device, dtype=torch.int64)  # (dim,)
    digits = torch.div(index[:, None], powers, rounding_mode="floor") % (n + 1)  # (B, dim)
    return (digits.to(dtype) * (2.0 / n) - 1.0).reshape(-1, *shape)


def _net_bases(X: Tensor, pivots: tuple[int, ...], k: int) -> Tensor:
    """Orthonormal bases (B, k, r) of the spans of B = [I on the pivot rows; X on the others]."""
    batch, _, r = X.shape
    rest = [i for i in range(k) if i not in pivots]
    B = X.new_zeros(batch, k, r)
    B[:, list(pivots)] = torch.eye(r, dtype=X.dtype, device=X.device)
    B[:, rest] = X
    return torch.linalg.qr(B).Q


def _search_net(Z: Tensor, a2: Tensor, rank: int, n: int, alpha: float) -> tuple[float, float, Tensor]:
    r"""Search the net of Gr(r, T): (max F, certified max of F over T, the maximizing basis (k, r)).

    Z: (d_out, k), the coordinates of P_T w_i in an orthonormal basis of T; a2: (d_out,), a_i^2 = ||w_i||^2.
    Every r-dim S in T lies within delta = sqrt(r (k - r)) / n of a net point N (Lemma P.5), so
    rho_i(S) <= rho_i(N) + delta tau_i with tau_i = ||P_T w_i|| / a_i (Lemma P.3), and since k is
    non-decreasing, F(S) <= sum_i a_i^2 k(min(1, rho_i(N) + delta tau_i))^2: the second value is the max of
    this over the net, at most max F + eta_net.
    """
    k = Z.shape[1]
    shape = (k - rank, rank)
    count = (n + 1) ** (shape[0] * shape[1])
    delta = math.sqrt(shape[0] * shape[1]) / n
    pos = a2 > 0
    inv_a2 = torch.where(pos, 1.0 / torch.where(pos, a2, 1.0), 0.0)  # rows with a_i = 0 count 0
    slack = delta * (Z.square().sum(1) * inv_a2).sqrt()  # delta tau_i
    # The cell bound exceeds F(N) by at most eta = 2 sum_i a_i^2 delta tau_i (Lemma P.3(c)); a point with
    # F(N) + eta below the best F seen cannot hold the max of the cell bound, so it is skipped.
    eta = 2.0 * float((a2 * slack).sum())
    batch = max(256, _BATCH_ENTRIES // (Z.shape[0] * rank + k * rank))
    ZT = Z.T.contiguous()  # (k, d_out)
    best, upper, best_at = -math.inf, -math.inf, (tuple(range(rank)), 0)
    for pivots in itertools.combinations(range(k), rank):
        for start in range(0, count, batch):
            index = torch.arange(start, min(start + batch, count), device=Z.device, dtype=torch.int64)
            Q = _net_bases(_grid_batch(index, n, shape, Z.dtype), pivots, k)  # (B, k, r)
            coords = Q.transpose(1, 2) @ ZT  # (B, r, d_out): coordinates of P_N w_i in the basis Q
            rho = (coords.square().sum(1) * inv_a2).clamp(0.0, 1.0).sqrt()  # (B, d_out)
            values = (a2 * leaky_norm_factor(rho, alpha).square()).sum(-1)  # (B,): F(N)
            top, where = values.max(0)
            if float(top) > best:
                best, best_at = float(top), (pivots, start + int(where))
            near = rho[values + eta >= best]  # the points that may hold the max of the cell bound
            if len(near):
                cells = (a2 * leaky_norm_factor((near + slack).clamp(max=1.0), alpha).square()).sum(-1)
                upper = max(upper, float(cells.max()))
    pivots, at = best_at
    index = torch.tensor([at], device=Z.device, dtype=torch.int64)
    return best, upper, _net_bases(_grid_batch(index, n, shape, Z.dtype), pivots, k)[0]


def _polish(W64: Tensor, Q: Tensor, alpha: float, value: float, steps: int = 100) -> tuple[Tensor, float]:
    r"""Riemannian gradient ascent of F on the Grassmannian from Q (d_in, r); only increases of F are kept.

    Step Q <- qf(Q + t G), G = (I - Q Q^T) dF/dQ, with Armijo backtracking on t; stops when a step gains
    less than 1e-15 F. Rows with P_S w_i = 0 (F is not differentiable there) contribute no gradient (NaN
    set to 0); every step is still judged on F itself, so F(result) >= value.
    """
    t = 1.0 / max(float(W64.square().sum()), 1e-300)  # ||dF/dQ|| <= 2 ||W||_F^2, so t G is a small move
    for _ in range(steps):
        with torch.enable_grad():  # init_factors calls initializers under no_grad
            Qg = Q.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_subspace_objective(W64, Qg, alpha), Qg)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        G = grad - Q @ (Q.T @ grad)  # (d_in, r), tangent at span(Q)
        slope = float(G.square().sum())
        if slope == 0.0:
            break
        for _ in range(40):
            cand = torch.linalg.qr(Q + t * G).Q
            new = float(_subspace_objective(W64, cand, alpha))
            if new >= value + 1e-4 * t * slope:  # Armijo: a sufficient increase
                break
            t /= 2.0
        else:
            break  # no step of length >= 2^-40 t increases F enough: at a (numerical) stationary point
        gain = new - value
        Q, value, t = cand, new, 2.0 * t
        if gain <= 1e-15 * abs(value):
            break
    return Q, value


def provable_solve(
    W: Tensor,
    rank: int,
    eps: float = 0.05,
    alpha: float = 0.0,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    polish: bool = True,
) -> ProvableSolution:
    r"""Rank-r factors with R(U V^T) <= min_{rank Y <= r} R(Y) + eps ||W||_F^2, and their certificate.

    .. math::
        R(Y) = \mathbb{E}_{x \sim N(0, I)} \lVert \sigma(Y x) - \sigma(W x) \rVert^2, \qquad
        \sigma(z) = \alpha z + (1 - \alpha)\,\mathrm{relu}(z)

    Deterministic (no failure probability). One SVD, then a net of r-dim subspaces of the top-k right
    singular subspace (module docstring; proof in docs/theory.md section 8), then optional local ascent.
    For the identity (alpha = 1) the top-r SVD subspace is exactly optimal (Eckart-Young): no net, guarantee
    2 rounding_margin. Computed in float64 on W's device; the lower bound and the guarantee include a
    floating-point margin (:func:`_margin`, about 1e-12 ||W||_F^2 at small sizes), so they hold with
    rounding, not only in exact arithmetic.

    Args:
        W: (d_out, d_in), finite. rank: r, 1 <= r <= min(d_out, d_in).
        eps: additive error in units of ||W||_F^2, > 0. alpha: the leaky slope (relu 0, identity 1).
        max_points: refuse nets larger than this (see :func:`provable_net`).
        polish: run Riemannian ascent from the best net point (it only increases F).
    Returns:
        :class:`ProvableSolution` (U, V, objective, lower_bound, guarantee, eps, net_size, k, n).
    Raises:
        ValueError: bad W, rank, eps, alpha, max_points or polish, an eps below the floating-point margin,
            or a net with more than max_points points (the message gives the size and the smallest eps
            that fits).

    Example:
        >>> W = torch.randn(8, 4, dtype=torch.float64)
        >>> sol = provable_solve(W, 1, eps=0.1)
        >>> sol.guarantee <= 0.1 * float(W.square().sum())
        True
    """
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    _check_options(eps, alpha, max_points, polish)
    eps, alpha = float(eps), float(alpha)
    W64 = W.detach().double()
    c, fro2, trivial = _constants(W64, alpha)
    margin = _margin(W64.shape[0], W64.shape[1], rank, fro2)
    plan, Vh, s2 = _make_plan(W64, rank, eps, alpha)
    if not _fits(plan, max_points):
        fit = _smallest_eps(s2, rank, c, fro2, trivial, margin, max_points)
        size = f"{math.exp(plan.log_size) + 1:.3g}" if plan.log_size < 700 else "more than 1e300"
        raise ValueError(
            f"provable: the net for rank {rank} at eps={eps:g} has {size} points (k={plan.k} of "
            f"{min(W.shape)}), over max_points={max_points}; use eps >= {fit:.3g}, a lower rank, "
            "or a larger max_points"
        )
    points = _plan_points(plan)
    top = Vh[: plan.k].T  # (d_in, k): orthonormal basis of T, the top-k right singular vectors
    best_Q = top[:, :rank]  # the top-r SVD subspace (relu-svd's): always a candidate
    best = float(_subspace_objective(W64, best_Q, alpha))
    if alpha == 1.0:
        upper = best  # Ky Fan: ||W P_S||_F^2 is largest on the top-r SVD subspace
    elif plan.n == 0:
        upper = min(fro2, best + plan.eta_red)  # Lemma P.4 with T = the top-r SVD subspace
    else:
        value, net_upper, coords = _search_net(W64 @ top, W64.square().sum(1), rank, plan.n, alpha)
        upper = min(fro2, net_upper + plan.eta_red)
        if value > best:
            best, best_Q = value, top @ coords
    if polish and alpha != 1.0:
        best_Q, best = _polish(W64, best_Q, alpha, best)
    U, V = _factors_on_subspace(W64, best_Q, alpha)  # Theorem 2.1's rows in span(best_Q), balanced
    objective = c * (fro2 - best)
    lower = c * (fro2 - (upper + margin))  # upper + margin >= max F with rounding (_margin)
    return ProvableSolution(
        U=U.to(W.dtype),
        V=V.to(W.dtype),
        objective=objective,
        lower_bound=lower,
        guarantee=objective - lower + c * margin,  # + c margin: the computed objective's own rounding
        eps=eps,
        net_size=points,
        k=plan.k,
        n=plan.n,
        rounding_margin=c * margin,
    )


def provable(
    W: Tensor,
    rank: int,
    *,
    activation: str | Activation | None = None,
    generator: torch.Generator | None = None,
    eps: float = 0.05,
    max_points: int = DEFAULT_MAX_POINTS,
    polish: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Factors within eps ||W||_F^2 of the NLRA optimum at rank r, by :func:`provable_solve`.

    min over rank-r Y of E_x ||sigma(Y x) - sigma(W x)||^2, x ~ N(0, I), to additive error eps ||W||_F^2,
    for relu, leaky_relu and identity (the closed form of Theorem 1.4); docs/theory.md section 8.

    Args:
        W: (d_out, d_in). rank: r. activation: relu (default), leaky_relu or identity (a name or an
            :class:`~nlinit.activations.Activation`).
        generator: unused (deterministic). eps, max_points, polish: as in :func:`provable_solve`.
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), balanced, W's dtype and device.
    Raises:
        ValueError: another activation, or as :func:`provable_solve`.

    Example:
        >>> U, V = provable(torch.randn(8, 4), 1, eps=0.2)
    """
    alpha = parse_activation(activation).leaky_slope if activation is not None else 0.0
    if alpha is None:
        raise ValueError(
            f"init 'provable' needs the closed-form objective of the leaky-ReLU family, got activation "
            f"{str(activation)!r}; available: {', '.join(LEAKY_FAMILY)}"
        )
    sol = provable_solve(W, rank, eps, alpha, max_points=max_points, polish=polish)
    return sol.U, sol.V
