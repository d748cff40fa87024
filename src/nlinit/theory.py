r"""The gap theory's formulas (the paper's section 3.3, docs/theory.md section 6): pure, typed functions.

Torch orientation throughout: W is (m, d) with the m units as rows w_i in R^d (the paper's W is d x m with
units as columns), a_i = ||w_i||, S an r-dimensional subspace of R^d, and for the SVD subspace (the top-r
right singular vectors of W, which is what ``spectral`` and ``relu-svd`` use)

.. math::
    \rho_i = \lVert P_S w_i \rVert / a_i, \qquad
    g(\rho) - \rho = \frac{\sqrt{1 - \rho^2} - \rho \arccos \rho}{\pi}, \qquad
    L(x) = \big(\sqrt{1 - x^2} - x \arccos x\big)^2 = \pi^2 (g(x) - x)^2 .

* :func:`g_minus_rho`: the per-unit norm deficit g(rho) - rho of the truncated SVD (section 2).
* :func:`svd_rho`: rho_i of the SVD subspace; :func:`fig32_value`: the paper's Fig 3.2 quantity.
* :func:`theorem_339_bound`: Theorem 3.3.9, (1/2) sum_i (a_i (g(rho_i) - rho_i))^2 <= R(spectral) - R(opt),
  which equals R(spectral) - R(relu-svd) exactly.
* :func:`corollary_L`, :func:`corollary_bound`: Corollary 3.3.11's L and its m/d -> infinity value
  L(sqrt(r/d)) / (2 pi^2); :func:`energy_bound`: nlinit's finite form for every W (Theorem G.2).
* :func:`log_hyp1f1`, :func:`remark_union_term`, :func:`remark_bound`: Remark 3.3.12's bound on the mean rho.
* :func:`unit_rows`: the random W of Fig 3.2 and Corollary 3.3.11 (unit rows uniform on the sphere).

ReLU throughout; ``nlinit gap`` (:mod:`nlinit.experiments.gap`) evaluates them on grids.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import gammaln, logsumexp
from torch import Tensor

from ._checks import check_choice, check_int, check_matrix, check_rank
from .objective import arccos_kernel
from .subspace import truncated_svd

__all__ = [
    "REMARK_READINGS",
    "corollary_L",
    "corollary_bound",
    "energy_bound",
    "fig32_value",
    "g_minus_rho",
    "log_hyp1f1",
    "remark_bound",
    "remark_union_term",
    "svd_rho",
    "theorem_339_bound",
    "unit_rows",
]

#: the two readings of Remark 3.3.12's union-bound term (:func:`remark_union_term`)
REMARK_READINGS = ("net", "per-unit")


def unit_rows(
    m: int, d: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""(m, d) matrix of i.i.d. N(0, 1) entries with each row then scaled to unit norm.

    The rows are i.i.d. uniform on the unit sphere S^{d-1} (the Gaussian is rotation invariant), which is
    both the paper's Fig 3.2 construction ("N(0, 1) entries then unit columns") and Corollary 3.3.11's.

    Args:
        m: rows (units), an int >= 1. d: columns (inputs), an int >= 1. generator: the only source of
            randomness. dtype: a floating-point dtype.
    Raises:
        ValueError: m or d not an int >= 1. TypeError: a dtype that is not floating point.

    Example:
        >>> W = unit_rows(5, 3, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(W.norm(dim=1), torch.ones(5, dtype=torch.float64)))
        True
    """
    check_int("m", m, low=1)
    check_int("d", d, low=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    W = torch.randn(m, d, generator=generator, dtype=dtype)
    return W / W.norm(dim=1, keepdim=True)


def g_minus_rho(rho: Tensor) -> Tensor:
    r"""g(rho) - rho = (sqrt(1 - rho^2) - rho arccos rho) / pi, elementwise, for rho in [-1, 1].

    For a unit at cosine rho to the SVD subspace, the truncated SVD gives row norm a rho while the optimum
    on that subspace has a g(rho) (Theorem 2.1), so (a (g(rho) - rho))^2 / 2 is the unit's share of
    R(spectral) - R(relu-svd). Decreasing on [0, 1] from 1/pi to 0 (docs/theory.md G.1).

    Args:
        rho: a floating-point tensor with finite values in [-1, 1].
    Returns:
        a tensor of rho's shape and dtype.
    Raises:
        TypeError: not a floating-point tensor. ValueError: a value outside [-1, 1] or not finite.

    Example:
        >>> float(g_minus_rho(torch.tensor(0.0, dtype=torch.float64))) == 1 / math.pi
        True
    """
    if not isinstance(rho, Tensor) or not rho.is_floating_point():
        raise TypeError(f"rho must be a floating-point torch.Tensor, got {type(rho).__name__}")
    bad = ~(rho.abs() <= 1.0)  # NaN compares False: caught too
    if bool(bad.any()):
        raise ValueError(
            f"rho must lie in [-1, 1], got {int(bad.sum())} values outside (e.g. {float(rho[bad][0])!r})"
        )
    return arccos_kernel(rho) - rho


def svd_rho(W: Tensor, rank: int | list[int] | tuple[int, ...]) -> Tensor:
    r"""rho_i = ||P_S w_i|| / ||w_i|| for S the top-r right singular subspace of W (relu-svd's rho).

    With the truncated SVD W ~ P_r diag(s_r) Q_r^T (:func:`nlinit.subspace.truncated_svd`), row i of
    A = P_r diag(s_r) holds the coordinates of P_S w_i in the basis Q_r, so rho_i = ||A_i|| / a_i; rows with
    a_i = 0 get 0. For a sequence of ranks one SVD of the largest serves all (the top-r singular vectors
    of the largest rank's SVD are the top-r ones).

    Args:
        W: (m, d), floating point, finite. rank: r, or a non-empty list or tuple of ranks, each in
            [1, min(m, d)].
    Returns:
        (m,) in W's dtype, or (len(rank), m) for a sequence of ranks; values in [0, 1].
    Raises:
        TypeError / ValueError: a bad W (:func:`nlinit._checks.check_matrix`) or rank.

    Example:
        >>> svd_rho(torch.eye(3, dtype=torch.float64), 3).tolist()
        [1.0, 1.0, 1.0]
    """
    check_matrix("W", W)
    if isinstance(rank, (list, tuple)):
        ranks = list(rank)
        if not ranks:
            raise ValueError(f"rank must be an int or a non-empty sequence of ints, got {rank!r}")
    else:
        ranks = [check_rank(rank, *W.shape)]
    for r in ranks:
        check_rank(r, *W.shape)
    P, s, _ = truncated_svd(W, max(ranks))
    cum = (P * s).square().cumsum(dim=1)  # (m, r_max): ||P_{S_k} w_i||^2 for k = 1..r_max
    a2 = W.square().sum(1)
    pos = a2 > 0
    out = torch.stack(
        [torch.where(pos, cum[:, r - 1] / torch.where(pos, a2, 1.0), 0.0).clamp(0, 1).sqrt() for r in ranks]
    )
    return out if isinstance(rank, (list, tuple)) else out[0]


def fig32_value(W: Tensor, rank: int) -> float:
    r"""The paper's Fig 3.2 quantity (1/(2d)) ||g(rho) - rho||^2 = (1/(2d)) sum_i (g(rho_i) - rho_i)^2.

    rho from :func:`svd_rho`; d = W.shape[1] is the input dimension (the paper's d for W in R^(d x m)). For
    unit rows this is Theorem 3.3.9's lower bound on R(spectral) - R(opt) divided by d. Every row counts
    alike (the paper's rows have unit norm), so a zero row, whose rho is undefined, is refused.

    Args / Raises: as :func:`svd_rho` with one rank; ValueError for a W with a zero row.
    """
    rho = svd_rho(W, rank)
    zero = W.square().sum(1) == 0
    if bool(zero.any()):
        raise ValueError(
            f"fig32_value needs rows of nonzero norm (rho is undefined for a zero row); "
            f"W has {int(zero.sum())} zero rows (the first is row {int(zero.nonzero()[0])})"
        )
    return float(g_minus_rho(rho).square().sum()) / (2 * W.shape[1])


def theorem_339_bound(W: Tensor, rank: int) -> float:
    r"""Theorem 3.3.9's lower bound (1/2) sum_i (a_i (g(rho_i) - rho_i))^2 on R(spectral) - R(opt).

    It equals R(spectral) - R(relu-svd) exactly (docs/theory.md, section 2), so R(spectral) - R(Y) is at
    least this bound exactly when R(Y) <= R(relu-svd). 0 for W = 0.

    Args / Raises: as :func:`svd_rho` with one rank.

    Example:
        >>> theorem_339_bound(torch.eye(3, dtype=torch.float64), 3)
        0.0
    """
    rho = svd_rho(W, rank)
    return 0.5 * float((W.norm(dim=1) * g_minus_rho(rho)).square().sum())


def corollary_L(x: float | np.ndarray) -> float | np.ndarray:
    r"""L(x) = (sqrt(1 - x^2) - x arccos x)^2 on [0, 1] = pi^2 (g(x) - x)^2; L(0) = 1, L(1) = 0.

    Decreasing and convex on [0, 1] (docs/theory.md G.1: h(x) = sqrt(1 - x^2) - x arccos x has
    h' = -arccos x <= 0 and h'' = 1 / sqrt(1 - x^2) > 0, h >= 0, so L = h^2 has L' = 2 h h' <= 0 and
    L'' = 2 h'^2 + 2 h h'' >= 0).

    Args:
        x: a number or array with finite values in [0, 1].
    Returns:
        a float for a scalar x, else an array of x's shape (float64).
    Raises:
        ValueError: a value outside [0, 1] or not finite.

    Example:
        >>> corollary_L(0.0), corollary_L(1.0)
        (1.0, 0.0)
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"x must be a number or an array of numbers in [0, 1], got {x!r:.60}") from None
    bad = ~((arr >= 0.0) & (arr <= 1.0))
    if bad.any():
        raise ValueError(
            f"x must lie in [0, 1], got {int(bad.sum())} values outside (e.g. {float(arr[bad][0])!r})"
        )
    out = (np.sqrt(1.0 - arr * arr) - arr * np.arccos(arr)) ** 2
    return float(out) if out.ndim == 0 else out


def corollary_bound(rank: int, d: int) -> float:
    r"""Corollary 3.3.11's per-unit gap bound L(sqrt(r/d)) / (2 pi^2) (unit rows uniform, m/d -> infinity).

    Args:
        rank: r, an int in [1, d]. d: the input dimension, an int >= 1.
    Raises:
        ValueError: d or rank out of range.

    Example:
        >>> round(corollary_bound(1, 10), 6)
        0.015532
    """
    check_int("d", d, low=1)
    check_rank(rank, d, d)
    return float(corollary_L(math.sqrt(rank / d))) / (2 * math.pi**2)


def energy_bound(W: Tensor, rank: int) -> float:
    r"""nlinit's finite form of Corollary 3.3.11: ||W||_F^2 L(||W_r||_F / ||W||_F) / (2 pi^2).

    A lower bound on Theorem 3.3.9's bound for every W (Theorem G.2: weighted Jensen, L is convex and
    decreasing, and sum_i a_i^2 rho_i^2 = ||W_r||_F^2), hence on R(spectral) - R(opt). For unit rows uniform
    on the sphere ||W_r||_F^2 / ||W||_F^2 -> r/d as m/d -> infinity, which gives the corollary; at finite m it
    is larger than r/d, so this bound is below the corollary's m/d -> infinity value. 0 for W = 0.

    Args / Raises: as :func:`svd_rho` with one rank.

    Example:
        >>> energy_bound(torch.eye(4, dtype=torch.float64), 4)
        0.0
    """
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    total = float(W.double().square().sum())
    if total == 0.0:
        return 0.0
    _, s, _ = truncated_svd(W.double(), rank)
    q = min(1.0, float(s.square().sum()) / total)  # rounding can push the ratio a few ulps past 1
    return total * float(corollary_L(math.sqrt(q))) / (2 * math.pi**2)


def log_hyp1f1(a: float, b: float, lam: float) -> float:
    r"""log 1F1(a; b; lambda) for 0 < a <= b and lambda >= 0, by the power series summed in log space.

    .. math::
        {}_1F_1(a; b; \lambda) = \sum_{k \ge 0} \frac{(a)_k}{(b)_k} \frac{\lambda^k}{k!}

    Every term is positive, so logsumexp of the log terms (gammaln) has no cancellation and no overflow
    (``scipy.special.hyp1f1`` overflows to inf near lambda ~ 700). The term ratio is
    (a + k) / (b + k) * lambda / (k + 1) <= lambda / (k + 1), so beyond k = lambda the terms fall at least
    as fast as a Poisson(lambda) tail; the sum stops at K = lambda + 40 sqrt(lambda) + 100 and the last
    term is checked to be below e^-40 of the total. For X ~ Beta(a, b - a) this is log E e^{lambda X}.

    Raises:
        ValueError: a, b or lam not finite numbers with 0 < a <= b and lam >= 0.

    Example:
        >>> log_hyp1f1(1.0, 1.0, 2.0)  # 1F1(a; a; x) = e^x
        2.0
    """
    for name, value in (("a", a), ("b", b), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"log_hyp1f1: {name} must be a finite number, got {value!r}")
    if not (a > 0 and b >= a and lam >= 0):
        raise ValueError(f"log_hyp1f1 needs 0 < a <= b and lambda >= 0, got a={a!r}, b={b!r}, lam={lam!r}")
    if lam == 0.0:
        return 0.0
    k = np.arange(int(lam + 40 * math.sqrt(lam) + 100), dtype=np.float64)
    terms = gammaln(a + k) - gammaln(a) - gammaln(b + k) + gammaln(b) + k * math.log(lam) - gammaln(k + 1)
    total = float(logsumexp(terms))
    if terms[-1] - total > -40:  # cannot happen by the Poisson-tail argument; guards the truncation
        raise ArithmeticError(f"log_hyp1f1({a}, {b}, {lam}): series truncated too early")
    return total


def remark_union_term(d: int, rank: int, m: int, reading: str = "net") -> float:
    r"""The union-bound term c of Remark 3.3.12's bound, per unit, under two readings of the paper.

    Derivation (docs/theory.md G.3): for a fixed r-dim S and w uniform on S^{d-1}, ||P_S w||^2 ~
    Beta(r/2, (d - r)/2) with moment generating function 1F1(r/2; d/2; lambda). For a finite family N of
    subspaces and i.i.d. rows, E max_{S in N} (1/m) sum_i ||P_S w_i||^2 <= (1/lambda) (log|N| / m +
    log 1F1(r/2; d/2; lambda)), so c = log|N| / m.

    * ``"net"`` (used for the figure): log|N| = d r log(d/r), i.e. c = (d/m) r log(d/r): the paper's printed
      r log(d/r) divided by the ratio m/d. d r log(d/r) is of the order r (d - r) log(1/eps) of an eps-net of
      the Grassmannian, which the SVD subspace (random, data dependent) needs; this reading depends on d and m
      only through r/d and m/d, as the figure's axes do, and tends to sqrt(r/d) as m/d grows.
    * ``"per-unit"``: log|N| = r log(d/r) (about log C(d, r), the coordinate subspaces), c = r log(d/r) / m.
      Too few subspaces to cover the SVD subspace: its values fall below the measured mean rho at small m/d,
      so it is not a bound.

    Args:
        d: input dimension, an int >= 1. rank: r in [1, d]. m: rows, an int >= 1. reading: "net" or
            "per-unit".
    Raises:
        ValueError: a bad d, rank, m or reading.
    """
    check_int("d", d, low=1)
    check_rank(rank, d, d)
    check_int("m", m, low=1)
    check_choice("reading", reading, REMARK_READINGS)
    if rank == d:
        return 0.0
    base = rank * math.log(d / rank)
    return base * d / m if reading == "net" else base / m


def remark_bound(d: int, rank: int, m: int, reading: str = "net") -> float:
    r"""Remark 3.3.12's bound on the mean rho of the SVD subspace, for m unit rows uniform on S^{d-1}.

    .. math::
        \sqrt{\inf_{\lambda > 0} \frac{c + \log {}_1F_1(r/2; d/2; \lambda)}{\lambda}}, \qquad
        c = \text{:func:`remark_union_term`}

    The objective (c + K(lambda)) / lambda, K the log-MGF (convex, K(0) = 0, K'(0) = r/d), has derivative
    sign of h(lambda) = lambda K' - K - c with h' = lambda K'' >= 0 and h(0) = -c, so it is unimodal; a
    bounded scalar search on log lambda in [1e-8, 100 d + 100] finds it (a minimum on the upper edge raises).
    The value is >= sqrt(r/d) (convexity: K(lambda) >= lambda r/d), equals 1 at r = d, and is clipped to 1.

    Args / Raises: as :func:`remark_union_term`.

    Example:
        >>> remark_bound(10, 10, 10)
        1.0
    """
    c = remark_union_term(d, rank, m, reading)  # validates every argument
    if rank == d:
        return 1.0
    a, b = rank / 2, d / 2
    lo, hi = math.log(1e-8), math.log(100.0 * d + 100.0)

    def objective(t: float) -> float:
        lam = math.exp(t)
        return (c + log_hyp1f1(a, b, lam)) / lam

    res = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9})
    if res.x > hi - 1e-3 and res.fun < 1.0:
        raise ArithmeticError(f"remark_bound(d={d}, r={rank}, m={m}): infimum at the search edge")
    return math.sqrt(min(1.0, float(res.fun)))
