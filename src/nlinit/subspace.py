r"""Subspace math shared by the solvers and the bounds: SVD, balancing, the optimum on a subspace.

For the leaky-ReLU family sigma(z) = alpha z + (1 - alpha) relu(z) (:attr:`Activation.leaky_slope`), the
best rank-r Y whose rows lie in an r-dimensional subspace S has rows along the projections P_S w_i with
norms a_i k(rho_i), rho_i = ||P_S w_i|| / a_i (Theorem 2.1 of docs/theory.md; the paper's Theorem 3.3.8 for
ReLU), and

.. math::
    \min_{Y:\ \mathrm{rows} \subset S} R(Y) = \frac{1 + \alpha^2}{2}\Big(\lVert W \rVert_F^2 - F(S)\Big),
    \qquad F(S) = \sum_i a_i^2\, k(\rho_i(S))^2,

so every solver of the family is a choice of S: ``spectral`` / ``relu-svd`` take the top-r right singular
subspace, ``nlra-opt`` ascends F from it, ``provable`` searches a net, and the bounds bound max_S F.
Nothing here imports a solver; every solver imports this.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import scipy.linalg
import threadpoolctl
import torch
from torch import Tensor

from ._checks import check_choice, check_finite, check_int, check_matrix, check_number, check_rank
from .activations import Activation, parse_activation
from .objective import (
    EXACT_ACTIVATIONS,
    UnitMoments,
    _fit_scale_and_offset,
    _row_scale_loss,
    _standardize_rows,
    arccos_kernel,
    normalized_loss,
    unit_loss,
)

__all__ = [
    "SVD",
    "SVD_METHODS",
    "ascend_normalized",
    "best_normalized_subspace",
    "best_row_norms",
    "fit_rows_and_offsets",
    "normalized_subspace_loss",
    "descend_over_subspaces",
    "projection_factors",
    "balance",
    "canonical_signs",
    "factors_on_subspace",
    "leaky_norm_factor",
    "randomized_svd",
    "subspace_objective",
    "top_svd",
    "truncated_svd",
]


class SVD(NamedTuple):
    """Top-r singular triplets of W = P diag(s) Q^T + (the rest): P (d_out, r), s (r,), Q (d_in, r).

    A tuple, so ``P, s, Q = truncated_svd(W, r)`` works; computed once per layer and shared by every init
    that starts from it and by the report's spectral column.
    """

    P: Tensor
    s: Tensor
    Q: Tensor

    @property
    def rank(self) -> int:
        return self.s.numel()

    def factors(self) -> tuple[Tensor, Tensor]:
        """Spectral init's balanced factors U = P diag(s)^(1/2), V = Q diag(s)^(1/2)."""
        root = self.s.sqrt()
        return self.P * root, self.Q * root

    def product(self) -> Tensor:
        """The best rank-r approximation P diag(s) Q^T (d_out, d_in) (Eckart-Young), computed as U V^T from
        :meth:`factors`, so it is bit-identical to what a spectral-initialized layer computes."""
        U, V = self.factors()
        return U @ V.T


#: ways :func:`truncated_svd` can compute the top-r triplets.
SVD_METHODS = ("auto", "gram", "randomized")

#: ``method="auto"`` tries the randomized SVD only on matrices at least this large on both sides, and only
#: for ranks up to this fraction of the smaller side. Its power iterations cost about 4 (r + oversample) m n
#: flops each against m^2 n for the Gram matrix plus its eigh: on VGG-11's 4096 x 25088 (benchmarks/SVD.md)
#: rank 82 took 9 s against 20 s exact, rank 410 38 s against 21 s.
_RANDOMIZED_MIN_DIM = 1024
_RANDOMIZED_MAX_RANK_FRACTION = 1 / 32


def _check_basis(name: str, Q: object, d_in: int, *, batch: bool = False) -> Tensor:
    """Require Q (d_in, r), 1 <= r <= d_in (or a batch (B, d_in, r), B >= 1, when ``batch``): floating,
    finite, orthonormal columns (max |Q^T Q - I| <= max(1e-3, 10 eps of Q's dtype)). Cost O(d_in r^2)."""
    if not isinstance(Q, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(Q).__name__}")
    dims = (2, 3) if batch else (2,)
    if Q.dim() not in dims or Q.shape[-2] != d_in or not 1 <= Q.shape[-1] <= d_in or Q.numel() == 0:
        what = "(d_in, r) matrix or a (B, d_in, r) batch" if batch else "(d_in, r) matrix"
        raise ValueError(
            f"{name} must be a {what} with d_in = {d_in} and 1 <= r <= {d_in}, got shape {tuple(Q.shape)}"
        )
    if not Q.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {Q.dtype}")
    check_finite(name, Q)
    Q64 = Q.detach().double()
    err = float((Q64.mT @ Q64 - torch.eye(Q.shape[-1], dtype=torch.float64, device=Q.device)).abs().max())
    tol = max(1e-3, 10 * torch.finfo(Q.dtype).eps)
    if not err <= tol:
        raise ValueError(
            f"{name} must have orthonormal columns, got max |Q^T Q - I| = {err:.3g} (allowed {tol:g})"
        )
    return Q


def _check_exact(activation: object) -> Activation:
    """An activation (name or :class:`Activation`) with an exact objective, before any work is done."""
    act = parse_activation(activation)  # type: ignore[arg-type]
    if act.name not in EXACT_ACTIVATIONS:
        raise NotImplementedError(
            f"exact objective for activation {str(act)!r} is not implemented; "
            f"available: {', '.join(EXACT_ACTIVATIONS)}"
        )
    return act


def _check_vector(name: str, x: object, n: int) -> Tensor:
    """Require a finite floating-point tensor of shape (n,)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({n},), got {type(x).__name__}")
    if tuple(x.shape) != (n,) or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor of shape ({n},), "
            f"got shape {tuple(x.shape)}, dtype {x.dtype}"
        )
    return check_finite(name, x)


def truncated_svd(W: Tensor, rank: int, *, method: str = "auto") -> SVD:
    r"""Top-r singular triplets W ~ P diag(s) Q^T as an :class:`SVD`: P (d_out, r), s (r,), Q (d_in, r).

    ``"gram"`` (exact): the eigendecomposition of the smaller Gram matrix in float64 (for d_out <= d_in:
    W W^T = P diag(s^2) P^T, then Q_r = W^T P_r / s_r; on the CPU only the top r eigenpairs, by LAPACK's
    MRRR driver through scipy), several times faster than a full SVD. Squaring costs accuracy: the
    relative error of s_i is about eps_64 (s_1 / s_i)^2, ~1e-13 at init-time conditioning
    (s_r / s_1 > 1e-2). When s_r <= 1e-6 s_1 (numerically rank-deficient W) the full SVD computes the
    same triplets instead.

    ``"randomized"``: the randomized range finder with power iterations (Halko, Martinsson and Tropp 2011,
    Algorithms 4.4 and 5.1) and a convergence guard (:func:`randomized_svd`); where the guard does not
    accept the result, the Gram path computes it. ``"auto"`` (default): randomized for matrices with both
    sides >= 1024 and r <= 1/32 of the smaller side, else Gram. The guard rejects matrices with a flat
    spectrum, e.g. every freshly initialized layer (there no sketch of size ~r captures the top-r subspace
    to the accuracy nlinit needs; benchmarks/SVD.md), at the cost of one sketch; it pays off for trained
    weights with decaying spectra (on VGG-11's classifier about twice as fast as the Gram path at rank 82).
    Returned in W's dtype; deterministic (the sketch is drawn from a fixed seed).
    """
    check_choice("method", method, SVD_METHODS)
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    m = min(W.shape)
    if method == "randomized" or (
        method == "auto" and m >= _RANDOMIZED_MIN_DIM and rank <= _RANDOMIZED_MAX_RANK_FRACTION * m
    ):
        svd = randomized_svd(W, rank)
        if svd is not None:
            return svd
    return _gram_svd(W, rank)


#: Gram matrices at least this large use scipy's top-r MRRR eigensolver on the CPU (below: torch's eigh).
#: Measured on this project's 2-core machine (benchmarks/SVD.md): alone, dsyevr for the top 10% is 2x
#: faster than a full eigh at m = 2048-4096 and 1.5x at m = 512; inside factorize, after torch ops, torch's
#: OpenMP threads still spin-wait while scipy's BLAS threads start, which made the small case 1.7x slower
#: than torch's eigh over ResNet-50's layers (m <= 512), and is negligible next to a large eigh.
_EVR_MIN_DIM = 1024


@functools.lru_cache(maxsize=1)
def _blas_controller() -> threadpoolctl.ThreadpoolController:
    return threadpoolctl.ThreadpoolController()  # the BLAS libraries loaded now: scipy's among them


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """A context in which scipy's BLAS / LAPACK (OpenBLAS) runs on one thread.

    For scipy's LAPACK calls between torch's ops: torch's OpenMP threads spin-wait for a while after each
    op, so on a machine with as many cores as torch threads scipy's own BLAS threads compete with them.
    Measured on this project's 2-core machine, relu-svd with statistics over ResNet-50's layers (torch on 2
    threads): the whitened problems took 1.2 s and the top-r SVDs 1.0 s with scipy's default 2 BLAS threads,
    0.8 s and 0.7 s with 1 (OPENBLAS_NUM_THREADS=1).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def _top_eigh(G: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The top-r eigenpairs of the symmetric G (m, m), descending: (evals (r,), evecs (m, r)), float64.

    On the CPU with m >= :data:`_EVR_MIN_DIM` and r <= m / 2, LAPACK's MRRR driver (dsyevr) for the top r
    only, which skips most of the back-transformation a full ``torch.linalg.eigh`` does; otherwise torch's
    full eigh.
    """
    m = G.shape[0]
    if G.device.type == "cpu" and m >= _EVR_MIN_DIM and 0 < rank <= m // 2:
        with one_blas_thread():
            evals, evecs = scipy.linalg.eigh(
                G.numpy(), subset_by_index=[m - rank, m - 1], driver="evr", check_finite=False
            )
        return torch.from_numpy(evals[::-1].copy()), torch.from_numpy(evecs[:, ::-1].copy())
    evals, evecs = torch.linalg.eigh(G)  # ascending
    return evals.flip(0)[:rank], evecs.flip(1)[:, :rank]


def _gram_svd(W: Tensor, rank: int) -> SVD:
    """The exact top-r triplets from the smaller Gram matrix (see :func:`truncated_svd`)."""
    W64 = W.double()
    wide = W.shape[0] <= W.shape[1]
    G = W64 @ W64.T if wide else W64.T @ W64  # (m, m), m = min(d_out, d_in)
    evals, E = _top_eigh(G, rank)
    s = evals.clamp_min(0).sqrt()
    if s.numel() and float(s[-1]) <= 1e-6 * float(s[0]):
        P, s_all, Qh = torch.linalg.svd(W64, full_matrices=False)
        P, Q = canonical_signs(P[:, :rank], Qh[:rank].T)
        return SVD(P.to(W.dtype), s_all[:rank].to(W.dtype), Q.to(W.dtype))
    if wide:
        P, Q = E, (W64.T @ E) / s
    else:
        P, Q = (W64 @ E) / s, E
    P, Q = canonical_signs(P, Q)
    return SVD(P.to(W.dtype), s.to(W.dtype), Q.to(W.dtype))


def randomized_svd(
    W: Tensor,
    rank: int,
    *,
    oversample: int | None = None,
    max_iter: int = 8,
    tol: float = 1e-5,
    max_stable_rank: float = 3.0,
) -> SVD | None:
    r"""Top-r triplets by a randomized range finder with power iterations, or None if it does not converge.

    With A = W (or W^T, so that A is m x n with m <= n) and k = r + ``oversample`` (default max(10, r): the
    slowly decaying spectra of trained layers need a sketch well beyond r to converge in a few iterations;
    with 10 a 1/j spectrum at r = 82 did not converge in 8): Y = A Omega for a
    Gaussian Omega (n, k) drawn from a fixed seed, Q = orth(Y), then power iterations
    Q <- orth(A orth(A^T Q)) (Halko, Martinsson and Tropp 2011, Algorithm 4.4). After each, the top-r Ritz
    values of B = Q^T A come from the k x k matrix B B^T = Z^T Z, Z = A^T Q, and their energy
    E = sum_{j <= r} s_j^2 can only grow towards E* = sum_{j <= r} sigma_j^2.

    What nlinit needs is the objective of the inits built on the result, which is proportional to the energy
    left out, ||W||_F^2 - E (spectral's R is exactly that): so the guard compares each iteration's gain in E
    with the tail T = ||W||_F^2 - E. The result is accepted once an iteration gains less than ``tol`` T
    (then, with the gains shrinking geometrically at a rate <= 1/2, E* - E <~ tol T too). This is a
    convergence test, not a certificate. None is returned, and the caller computes the exact SVD, when the
    first sketch shows a flat spectrum (stable rank ||W||_F^2 / s_1^2 above ``max_stable_rank`` r, e.g. every
    freshly initialized layer), when the gains do not shrink fast enough to reach ``tol`` T within
    ``max_iter`` iterations (extrapolated from the last two), or when W is numerically rank-deficient.
    Cost per iteration: two products of A with an (n or m) x k matrix, in float64.

    Returns:
        :class:`SVD` in W's dtype (P (d_out, r), s (r,), Q (d_in, r)), or None.
    """
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    oversample = max(10, rank) if oversample is None else check_int("oversample", oversample, low=0)
    check_int("max_iter", max_iter, low=0)
    for name, value in (("tol", tol), ("max_stable_rank", max_stable_rank)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    W64 = W.double()
    wide = W.shape[0] <= W.shape[1]
    A = W64 if wide else W64.T  # (m, n), m <= n
    m, n = A.shape
    k = min(m, rank + oversample)
    gen = torch.Generator().manual_seed(0)
    omega = torch.randn(n, k, dtype=torch.float64, generator=gen).to(A.device)
    Q = torch.linalg.qr(A @ omega).Q  # (m, k)
    fro2 = float(torch.linalg.vector_norm(A)) ** 2
    energy, gain = 0.0, math.inf
    for it in range(max_iter + 1):
        Z = (Q.T @ A).T  # (n, k) = B^T, B = Q^T A; 5x faster than A.T @ Q on a row-major A
        evals, Ub = torch.linalg.eigh(Z.T @ Z)  # B B^T = Ub diag(evals) Ub^T, ascending
        top = evals.flip(0)[:rank].clamp_min(0)
        e, tail = float(top.sum()), max(fro2 - float(top.sum()), 0.0)
        if it == 0:
            if float(top[0]) <= 0 or fro2 / float(top[0]) > max_stable_rank * rank:
                return None  # a flat spectrum (or W = 0): the sketch cannot isolate the top r quickly
        else:
            new_gain = e - energy
            if new_gain <= tol * tail:
                break
            rate = new_gain / gain if gain > 0 else 1.0
            if it == max_iter or rate >= 1.0 or new_gain * rate ** (max_iter - it) > tol * tail:
                return None  # will not converge within max_iter at this rate
            gain = new_gain
        energy = e
        Q = torch.linalg.qr(A @ torch.linalg.qr(Z).Q).Q
    s = top.sqrt()
    if float(s[-1]) <= 1e-6 * float(s[0]):
        return None  # numerically rank-deficient: leave it to the exact path
    Ub = Ub.flip(1)[:, :rank]
    left, right = Q @ Ub, (Z @ Ub) / s  # A ~ left diag(s) right^T on the top r
    P, Qr = canonical_signs(*((left, right) if wide else (right, left)))
    return SVD(P.to(W.dtype), s.to(W.dtype), Qr.to(W.dtype))


def top_svd(W: Tensor, rank: int, svd: SVD | None = None) -> SVD:
    """``svd`` if given (the caller computed W's top-r SVD once for several uses), else :func:`truncated_svd`.

    Raises:
        TypeError: ``svd`` not an :class:`SVD`.
        ValueError: a given ``svd`` whose shapes do not fit W and rank.
    """
    if svd is None:
        return truncated_svd(W, rank)
    if not isinstance(svd, SVD):
        raise TypeError(f"svd must be an SVD (P, s, Q) from truncated_svd or None, got {type(svd).__name__}")
    shapes = (tuple(svd.P.shape), tuple(svd.s.shape), tuple(svd.Q.shape))
    if shapes != ((W.shape[0], rank), (rank,), (W.shape[1], rank)):
        raise ValueError(
            f"svd has shapes P {shapes[0]}, s {shapes[1]}, Q {shapes[2]}; a rank-{rank} SVD of a "
            f"{W.shape[0]}x{W.shape[1]} W needs {(W.shape[0], rank)}, {(rank,)}, {(W.shape[1], rank)}"
        )
    return svd


def balance(A: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """Rewrite Y = A Q^T (Q with orthonormal columns) as U V^T with U^T U = V^T V (balanced factors).

    With the r x r eigendecomposition A^T A = R diag(s^2) R^T (so A = P' diag(s) R^T):
    U = A R diag(s)^(-1/2) = P' diag(s)^(1/2) and V = Q R diag(s)^(1/2); then U V^T = A Q^T and
    U^T U = V^T V = diag(s). Cost O(d_out r^2 + d_in r^2), no SVD of a tall matrix (slow on GPUs).
    Directions with s = 0 get zero columns in both factors. Columns in descending order of s, signs by
    :func:`canonical_signs`.

    Raises:
        ValueError / TypeError: A not a finite (d_out, r) matrix, Q not (d_in, r) with orthonormal columns.
    """
    check_matrix("A", A)
    check_matrix("Q", Q)
    if Q.shape[1] != A.shape[1]:
        raise ValueError(
            "A (d_out, r) and Q (d_in, r) must have the same r, "
            f"got shapes {tuple(A.shape)}, {tuple(Q.shape)}"
        )
    return _balance(A, _check_basis("Q", Q, Q.shape[0]))


def _balance(A: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`balance` without checks."""
    A64, Q64 = A.double(), Q.double()
    evals, R = torch.linalg.eigh(A64.T @ A64)  # (r,), (r, r), ascending
    evals, R = evals.flip(0), R.flip(1)  # descending, like an SVD's
    s = evals.clamp_min(0).sqrt()
    inv_root = torch.where(s > 0, s.clamp_min(1e-300).rsqrt(), torch.zeros_like(s))
    U, V = canonical_signs(A64 @ R * inv_root, Q64 @ R * s.sqrt())
    return U.to(A.dtype), V.to(A.dtype)


def canonical_signs(U: Tensor, V: Tensor) -> tuple[Tensor, Tensor]:
    """Flip column pairs (U_j, V_j) to (-U_j, -V_j) so that the largest-magnitude entry of each V_j is > 0.

    U V^T is unchanged; the factors no longer depend on the sign an eigensolver happened to return (which can
    change with the thread count), so equal products give equal factors up to rounding.
    """
    if U.dim() != 2 or V.dim() != 2 or U.shape[1] != V.shape[1]:
        raise ValueError(
            f"U and V must be (m, r) and (n, r) matrices, got shapes {tuple(U.shape)}, {tuple(V.shape)}"
        )
    idx = V.abs().argmax(0, keepdim=True)  # (1, r)
    sign = torch.where(V.gather(0, idx) < 0, -1.0, 1.0).to(V.dtype)  # (1, r)
    return U * sign, V * sign


def leaky_norm_factor(rho: Tensor, alpha: float) -> Tensor:
    r"""k(rho): the optimal norm of y_i over a_i when y_i points along the projection of w_i.

    For sigma(z) = alpha z + (1 - alpha) relu(z) the per-unit objective along a direction with cosine rho
    is (1 + alpha^2)/2 b^2 - a b (2 alpha rho + (1 - alpha)^2 g(rho)) + const, minimized at
    b = a k(rho), k(rho) = (2 alpha rho + (1 - alpha)^2 g(rho)) / (1 + alpha^2).
    ReLU: k = g (the paper's a_i g(rho_i)); identity: k = rho (the SVD's own norms).
    """
    if not isinstance(rho, Tensor) or not rho.is_floating_point():
        got = f"dtype {rho.dtype}" if isinstance(rho, Tensor) else type(rho).__name__
        raise TypeError(f"rho must be a floating-point torch.Tensor, got {got}")
    check_number("alpha", alpha)
    return (2 * alpha * rho + (1 - alpha) ** 2 * arccos_kernel(rho)) / (1 + alpha * alpha)


def factors_on_subspace(W: Tensor, Q: Tensor, alpha: float | Activation) -> tuple[Tensor, Tensor]:
    r"""The NLRA optimum among all Y whose rows lie in span(Q), as balanced factors (Theorem 2.1).

    Row i of Y points along P_S w_i (the direction in S with the largest cosine rho_i = ||Q^T w_i|| / a_i)
    with the best norm b_i for that cosine: for the leaky-ReLU family b_i = a_i k(rho_i), k =
    :func:`leaky_norm_factor` (closed form); for any other activation with an exact objective b_i minimizes
    the unit's exact objective, numerically (:func:`best_row_norms`). A row with P_S w_i = 0 gets its best
    norm along Q's first column. So Y = A Q^T with A (d_out, r) computed in float64 and split by
    :func:`balance`. ``relu-svd`` is this on the SVD subspace, ``nlra-opt`` on the best subspace it finds.

    Args:
        W: (d_out, d_in). Q: (d_in, r) with orthonormal columns. alpha: the leaky slope (relu 0, identity 1),
            or the activation.
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), in W's dtype, balanced (U^T U = V^T V), U V^T = A Q^T.
    Raises:
        ValueError / TypeError: W not a finite matrix, Q not (d_in, r) orthonormal, alpha neither a finite
            number nor an Activation. NotImplementedError: an activation without an exact objective.
    """
    check_matrix("W", W)
    _check_basis("Q", Q, W.shape[1])
    if isinstance(alpha, Activation):
        if alpha.leaky_slope is None:
            _check_exact(alpha)
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number (the leaky slope) or an Activation, got {alpha!r}")
    return _factors_on_subspace(W, Q, alpha)


def _factors_on_subspace(
    W: Tensor, Q: Tensor, alpha: float | Activation, coords: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`factors_on_subspace` without checks. ``coords``: W Q if the caller has it (for the top-r right
    singular vectors, W Q_r = P_r diag(s_r): no product with W)."""
    Q64 = Q.double()
    A = W.double() @ Q64 if coords is None else coords.double()  # (d_out, r): P_S w_i in the basis Q
    a = torch.linalg.vector_norm(W, dim=1, dtype=torch.float64)  # (d_out,)
    proj = A.norm(dim=1)  # ||P_S w_i||
    hit = proj > 0
    rho = torch.where(hit, proj / torch.where(a > 0, a, 1.0), 0.0).clamp(0.0, 1.0)
    slope = alpha.leaky_slope if isinstance(alpha, Activation) else alpha
    if slope is not None:
        target = a * leaky_norm_factor(rho, slope)  # optimal row norms, closed form
    else:
        assert isinstance(alpha, Activation)
        resid = (W.double() - A @ Q64.T).norm(dim=1)  # ||w_i - P_S w_i||: sin rho_i a_i, no cancellation
        target = _best_row_norms(a, proj, resid, alpha)
    A = torch.where(hit[:, None], A * (target / torch.where(hit, proj, 1.0))[:, None], 0.0)
    if not bool(hit.all()):
        A[~hit, 0] = target[~hit]  # zero projection: any direction in S gives rho = 0; take the first
    U, V = _balance(A, Q64)
    return U.to(W.dtype), V.to(W.dtype)


#: golden-section steps of :func:`best_row_norms`: the bracket [0, 3 a] shrinks to 3 a 0.618^24 ~ 3e-5 a;
#: near its minimum a unit's objective is quadratic in b, so the loss is within ~1e-9 a^2 of the rule's
#: minimum (a secant polish on the exact objective changed efficientnet_b0's mean R/R0 by < 1e-4 relative
#: at 2.3x the time, measured, and was removed).
_GOLDEN_STEPS = 24
#: Gauss-Hermite nodes per dimension for the search (the result is compared on the exact objective).
_SEARCH_NODES = 20


def best_row_norms(a: Tensor, proj: Tensor, resid: Tensor, activation: Activation) -> Tensor:
    r"""Per unit, the norm b_i >= 0 of y_i = b_i e_i (e_i = P_S w_i / ||P_S w_i||) minimizing its objective.

    .. math::
        b_i = \arg\min_{0 \le b \le 3 a_i} \mathbb{E}\,(f(b\, e_i^\top x) - f(w_i^\top x))^2,
        \quad x \sim N(0, I),

    where (e_i . x, w_i . x) has variances 1 and a_i^2 and covariance ||P_S w_i||, minimized by
    golden-section search on all units at once on a 20 x 20 Gauss-Hermite rule, tabulated once so that each
    step costs 20 activations per unit (``nlinit.objective._row_scale_loss``; each unit's objective is
    smooth in b). The result is compared on the exact objective (:func:`nlinit.objective.unit_loss`) with
    spectral's norm ||P_S w_i||, the better kept, so a row is never worse than spectral's. a, proj, resid:
    (d_out,) float64, with resid = ||w_i - P_S w_i|| (passed, not derived from a and proj, for accuracy near
    rho = 1).
    """
    act = _check_exact(activation)
    if not isinstance(a, Tensor) or a.dim() != 1:
        got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise ValueError(f"a must be a 1-D (d_out,) tensor of row norms, got {got}")
    for name, x in (("a", a), ("proj", proj), ("resid", resid)):
        _check_vector(name, x, a.shape[0])
        if bool((x < 0).any()):
            raise ValueError(f"{name} must be >= 0 (a norm), got min {float(x.min()):.3g}")
    return _best_row_norms(a, proj, resid, act)


def _best_row_norms(a: Tensor, proj: Tensor, resid: Tensor, activation: Activation) -> Tensor:
    """:func:`best_row_norms` without checks."""
    safe = torch.where(a > 0, a, 1.0)
    rho, sin = proj / safe, resid / safe
    search = _row_scale_loss(activation, a, rho, sin, _SEARCH_NODES)
    lo, hi = torch.zeros_like(a), 3.0 * a
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = search(x1), search(x2)
    for _ in range(_GOLDEN_STEPS):
        left = f1 <= f2  # the minimum is in [lo, x2]: x1 becomes the new x2; else in [x1, hi]
        lo, hi = torch.where(left, lo, x1), torch.where(left, x2, hi)
        new = torch.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))  # one new point per unit
        f_new = search(new)
        x1, x2 = torch.where(left, new, x2), torch.where(left, x1, new)
        f1, f2 = torch.where(left, f_new, f2), torch.where(left, f1, f_new)
    b = (lo + hi) / 2
    zero = torch.zeros_like(a)

    def exact(norm: Tensor) -> Tensor:
        moments = UnitMoments(zero, zero, norm * norm, a * a, norm * proj, (norm * sin) ** 2)
        return unit_loss(moments, activation)

    return torch.where(exact(b) <= exact(proj), b, proj)


def subspace_objective(W: Tensor, Q: Tensor, alpha: float) -> Tensor:
    r"""F(S) = sum_i a_i^2 k(rho_i)^2 for the subspace S spanned by the orthonormal columns of Q.

    .. math::
        F(S) = \sum_i a_i^2\, k(\rho_i)^2, \qquad a_i = \lVert w_i \rVert, \qquad
        \rho_i = \lVert Q^\top w_i \rVert / a_i \in [0, 1]

    The best Y with rows in S has R(Y) = (1 + alpha^2)/2 (||W||_F^2 - F(S)) (Theorem 2.1 of docs/theory.md),
    so larger is better; F(S) <= ||W||_F^2, with equality when every w_i lies in S. Rows with a_i = 0
    contribute 0. Q is assumed to have orthonormal columns (not checked).

    Args:
        W: (d_out, d_in). Q: (d_in, r) or a batch (B, d_in, r). alpha: the leaky slope (relu 0, identity 1).
    Returns:
        0-dim tensor, or (B,) for a batch of bases; in the promoted dtype of W and Q.

    Example:
        >>> W = torch.randn(16, 8)
        >>> Q = torch.linalg.qr(torch.randn(8, 3)).Q
        >>> float(subspace_objective(W, Q, 0.0)) <= float(W.square().sum())
        True
    """
    check_matrix("W", W)
    _check_basis("Q", Q, W.shape[1], batch=True)
    if Q.dtype != W.dtype:
        raise ValueError(f"W and Q must have one dtype, got {W.dtype} and {Q.dtype}")
    check_number("alpha", alpha)
    return _subspace_objective(W, Q, alpha)


def _subspace_objective(W: Tensor, Q: Tensor, alpha: float) -> Tensor:
    """:func:`subspace_objective` without checks (for the solvers' loops)."""
    a2 = W.square().sum(-1)  # (d_out,)
    proj2 = (W @ Q).square().sum(-1)  # (d_out,) or (B, d_out): ||Q^T w_i||^2
    pos = a2 > 0
    t = torch.where(pos, proj2 / torch.where(pos, a2, 1.0), 0.0)
    rho = t.clamp(torch.finfo(t.dtype).tiny, 1.0).sqrt()  # > 0 keeps the gradient finite where P_S w_i = 0
    return (a2 * leaky_norm_factor(rho, alpha).square() * pos).sum(-1)


def projection_factors(W: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """Balanced factors of Y = W P_S = (W Q) Q^T, every row projected on S = span(Q) (orthonormal Q).

    The rows keep the directions that maximize each cosine rho_i within S, at spectral's norms ||P_S w_i||:
    on the SVD subspace this is exactly spectral's product. In W's dtype.

    Raises:
        ValueError / TypeError: W not a finite matrix, Q not (d_in, r) with orthonormal columns.
    """
    check_matrix("W", W)
    _check_basis("Q", Q, W.shape[1])
    return _projection_factors(W, Q)


def _projection_factors(W: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`projection_factors` without checks (for the inits, whose Q comes from an SVD or a QR)."""
    W64, Q64 = W.double(), Q.double()
    U, V = _balance(W64 @ Q64, Q64)
    return U.to(W.dtype), V.to(W.dtype)


def normalized_subspace_loss(W: Tensor, Q: Tensor, activation: Activation) -> Tensor:
    r"""The scale-free objective (:func:`nlinit.objective.normalized_loss`) of Y = W P_S, S = span(Q).

    For units followed by a per-unit normalization the best Y with rows in S is W P_S (any positive row
    norms compute the same function), so this is the objective of the subspace itself; lower is better.
    Computed per unit from the cosines alone: the normalized pair (u_i, v_i) is standard bivariate normal
    with correlation rho_i = ||Q^T w_i|| / ||w_i|| (u_i = 0 where Q^T w_i = 0, v_i = 0 where w_i = 0), so

    .. math::
        R_{norm} = \sum_i \mathbb{E}\big(f(u_i) - f(v_i)\big)^2, \qquad
        (u_i, v_i) \sim N\Big(0, \begin{pmatrix} 1 & \rho_i \\ \rho_i & 1 \end{pmatrix}\Big)

    by :func:`nlinit.objective.unit_loss`: O(d_out d_in r) for W Q, no d_out x d_in product, no input
    checks (W, Q from a solver: float64, finite, Q orthonormal). Differentiable in Q. Equals
    normalized_loss(W, W Q Q^T) (tested).
    """
    check_matrix("W", W)
    _check_basis("Q", Q, W.shape[1])
    if Q.dtype != W.dtype:
        raise ValueError(f"W and Q must have one dtype, got {W.dtype} and {Q.dtype}")
    return _normalized_subspace_loss(W, Q, _check_exact(activation))


def _normalized_subspace_loss(W: Tensor, Q: Tensor, activation: Activation) -> Tensor:
    """:func:`normalized_subspace_loss` without checks (for the solvers' loops)."""
    a2 = W.square().sum(1)
    p2 = (W @ Q).square().sum(1)
    live_v, live_u = a2 > 0, p2 > 0
    both = live_v & live_u
    rho = torch.where(both, torch.sqrt(torch.where(both, p2, 1.0) / torch.where(both, a2, 1.0)), 0.0)
    rho = rho.clamp(max=1.0)
    zeros = torch.zeros_like(rho)
    var_u, var_v = live_u.to(rho.dtype), live_v.to(rho.dtype)
    moments = UnitMoments(zeros, zeros, var_u, var_v, rho, var_u * (1 - rho) * (1 + rho))
    return unit_loss(moments, activation).sum()


def best_normalized_subspace(W: Tensor, rank: int, activation: Activation, svd: SVD | None = None) -> Tensor:
    """Q (d_in, r), float64: the better, on the scale-free objective, of the top-r right singular subspaces
    of W (what spectral uses: units weighted by a_i^2) and of W with unit rows (every unit weighed the same,
    as a normalization weighs them). Never worse than spectral on that objective: it is one of the two."""
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    act = _check_exact(activation)
    W64 = W.double()
    candidates = [top_svd(W64, rank, svd).Q.double(), truncated_svd(_standardize_rows(W64), rank).Q]
    return min(candidates, key=lambda Q: float(_normalized_subspace_loss(W64, Q, act)))


def ascend_normalized(
    W: Tensor, Q: Tensor, activation: Activation, *, max_iter: int = 500, tol: float = 1e-8
) -> Tensor:
    """Lower the scale-free objective over r-dim subspaces from span(Q) by L-BFGS on Q = qr(Z); the result
    is kept only where it is lower, so the returned basis is never worse than Q. W, Q float64.

    Raises:
        ValueError / TypeError: W not a finite float64 matrix, Q not a float64 (d_in, r) orthonormal basis,
            max_iter not an int >= 0, tol not a finite number >= 0. NotImplementedError: an activation
            without an exact objective.
    """
    check_matrix("W", W)
    _check_basis("Q", Q, W.shape[1])
    if W.dtype != torch.float64 or Q.dtype != torch.float64:
        raise ValueError(f"W and Q must be float64, got {W.dtype} and {Q.dtype}")
    act = _check_exact(activation)
    check_int("max_iter", max_iter, low=0)
    check_number("tol", tol, low=0)
    scale = float(normalized_loss(W, torch.zeros_like(W), act))
    if max_iter == 0 or scale <= 0:
        return Q
    return _descend_over_subspaces(
        lambda Qz: _normalized_subspace_loss(W, Qz, act) / scale, Q, max_iter=max_iter, tol=tol
    )


def descend_over_subspaces(
    loss: Callable[[Tensor], Tensor], Q: Tensor, *, max_iter: int, tol: float
) -> Tensor:
    """Lower ``loss`` (a differentiable function of an orthonormal basis, scaled to about 1) over r-dim
    subspaces from span(Q): L-BFGS (strong Wolfe line search, history 20) on Z with Q = qr(Z). Returns the
    new basis only where it is finite and its loss is lower, else Q: never worse than Q."""
    if not callable(loss):
        raise TypeError(f"loss must be callable (a function of the basis), got {type(loss).__name__}")
    check_matrix("Q", Q)
    _check_basis("Q", Q, Q.shape[0])
    check_int("max_iter", max_iter, low=0)
    check_number("tol", tol, low=0)
    return _descend_over_subspaces(loss, Q, max_iter=max_iter, tol=tol)


def _descend_over_subspaces(
    loss: Callable[[Tensor], Tensor], Q: Tensor, *, max_iter: int, tol: float
) -> Tensor:
    """:func:`descend_over_subspaces` without checks."""
    best = float(loss(Q))
    Z = Q.detach().contiguous().clone().requires_grad_(True)  # L-BFGS flattens .grad with view()
    opt = torch.optim.LBFGS(
        [Z],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=0.0,
        tolerance_change=tol,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        value = loss(torch.linalg.qr(Z).Q)
        value.backward()
        return value

    with torch.enable_grad():  # init_factors calls solvers under no_grad
        opt.step(closure)
    if not bool(torch.isfinite(Z).all()):
        return Q
    Qn = torch.linalg.qr(Z.detach()).Q
    return Qn if float(loss(Qn)) < best else Q


#: :func:`_residual_norms` recomputes a row's ||w - P_S w|| directly where ||w||^2 - ||P_S w||^2 is below this
#: fraction of ||w||^2: there the difference of squares would keep fewer than ~12 digits (eps / 1e-4).
RESIDUAL_RECOMPUTE = 1e-4


def _residual_norms(W: Tensor, A0: Tensor, Q: Tensor, a: Tensor, proj: Tensor) -> Tensor:
    """||w_i - P_S w_i|| (d_out,) for the rows of W (d_out, d_in), with A0 = W Q and Q orthonormal: by
    Pythagoras sqrt(||w_i||^2 - ||A0_i||^2) (O(d_out r)), and for the rows where that difference is below
    :data:`RESIDUAL_RECOMPUTE` ||w_i||^2 (cancellation) directly as ||w_i - A0_i Q^T|| (O(d_in r) per row):
    relative error ~1e-12 or better on every row, without the d_out d_in r product for all of them."""
    resid2 = (a * a - proj * proj).clamp_min(0.0)
    close = torch.nonzero(resid2 < RESIDUAL_RECOMPUTE * a * a).flatten()
    resid = resid2.sqrt()
    if close.numel():
        resid[close] = (W[close] - A0[close] @ Q.T).norm(dim=1)
    return resid


def fit_rows_and_offsets(
    W: Tensor, d: Tensor, Q: Tensor, activation: Activation, *, max_iter: int = 30
) -> tuple[Tensor, Tensor]:
    r"""Rows of Y in span(Q) and offsets d', each unit's best: the offset-aware closed-form step.

    Unit i: y_i = b_i e_i with e_i = P_S w_i / ||P_S w_i|| (the direction in S with the largest cosine),
    and (b_i, d'_i) minimizing E (f(b_i e_i . z + d'_i) - f(w_i . z + d_i))^2, z ~ N(0, I): conditioned on
    e_i . z the unit's target is tabulated once on a 20 x 20 Gauss-Hermite rule
    (:func:`nlinit.objective._conditional_target`), and Levenberg-Marquardt minimizes the resulting
    two-parameter least-squares problem on all units at once (``max_iter`` steps,
    :func:`nlinit.objective._fit_scale_and_offset`) from the linear optimum (b_i, d'_i) = (||P_S w_i||, d_i)
    and from (||P_S w_i||, 0), the better on the rule;
    each unit keeps the start where the result is not lower on the exact objective
    (:func:`nlinit.objective.unit_loss`): never worse than ``whiten`` on the same subspace.

    Args:
        W: (d_out, d_in) whitened weight, float64. d: (d_out,) target offsets. Q: (d_in, r) orthonormal.
    Returns:
        (A, d'): A (d_out, r), the rows' coordinates in Q (Y = A Q^T), and d' (d_out,), float64.
    Raises:
        ValueError / TypeError: W not a finite matrix, d not a finite (d_out,) tensor, Q not (d_in, r)
            orthonormal, max_iter not an int >= 0. NotImplementedError: an activation without an exact
            objective.
    """
    check_matrix("W", W)
    _check_vector("d", d, W.shape[0])
    _check_basis("Q", Q, W.shape[1])
    act = _check_exact(activation)
    check_int("max_iter", max_iter, low=0)
    return _fit_rows_and_offsets(W, d, Q, act, max_iter=max_iter)


def _fit_rows_and_offsets(
    W: Tensor,
    d: Tensor,
    Q: Tensor,
    activation: Activation,
    *,
    max_iter: int = 30,
    coords: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`fit_rows_and_offsets` without checks; ``coords``: W Q (d_out, r) if the caller has it (from
    an SVD of W: P diag(s)), which spares the d_out d_in r product."""
    W64, Q64, d64 = W.double(), Q.double(), d.double()
    A0 = W64 @ Q64 if coords is None else coords.double()
    a = W64.norm(dim=1)
    proj = A0.norm(dim=1)
    resid = _residual_norms(W64, A0, Q64, a, proj)
    positive = torch.where(a > 0, a, 1.0)
    sin2 = (resid / positive) ** 2

    def losses(b: Tensor, dn: Tensor) -> Tensor:  # b, dn: one or more (d_out,) blocks, concatenated
        k = b.numel() // max(a.numel(), 1)
        aa, p, s2, d0 = (t.repeat(k) for t in (a, proj, sin2, d64))
        return unit_loss(UnitMoments(dn, d0, b * b, aa * aa, b * p, b * b * s2), activation)

    b, dn = proj, d64
    if max_iter > 0:  # the search runs on a rule; the result is judged exactly below
        rho, sin = proj / positive, resid / positive
        starts = [(proj, d64), (proj, torch.zeros_like(d64))]  # the linear optimum, and no offset
        b, dn = _fit_scale_and_offset(activation, a, rho, sin, d64, starts, _SEARCH_NODES, max_iter)
    ok = torch.isfinite(b) & torch.isfinite(dn)
    b, dn = torch.where(ok, b, proj), torch.where(ok, dn, d64)
    start, found = losses(torch.cat([proj, b]), torch.cat([d64, dn])).view(2, -1)  # one exact call
    better = found < start
    b, dn = torch.where(better, b, proj), torch.where(better, dn, d64)
    hit = proj > 0
    A = torch.where(hit[:, None], A0 * (b / torch.where(hit, proj, 1.0))[:, None], 0.0)
    return A, dn
