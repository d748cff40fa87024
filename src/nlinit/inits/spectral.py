"""Spectral init (Khodak et al. 2021): the truncated SVD, optimal for the identity activation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..activations import Activation


def truncated_svd(W: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Top-r singular triplets of W = P diag(s) Q^T: (P_r (d_out, r), s_r (r,), Q_r (d_in, r)).

    Computed from the eigendecomposition of the smaller Gram matrix in float64 (for d_out <= d_in:
    W W^T = P diag(s^2) P^T, then Q_r = W^T P_r / s_r), which is several times faster than a full SVD
    on CPU. Squaring costs accuracy: the relative error of s_i is about eps_64 (s_1 / s_i)^2, ~1e-13 at
    init-time conditioning (s_r / s_1 > 1e-2). When s_r <= 1e-6 s_1 (numerically rank-deficient W) the
    full SVD computes the same triplets instead. Returned in W's dtype.
    """
    W64 = W.double()
    wide = W.shape[0] <= W.shape[1]
    G = W64 @ W64.T if wide else W64.T @ W64  # (m, m), m = min(d_out, d_in)
    evals, evecs = torch.linalg.eigh(G)  # ascending
    s = evals.flip(0)[:rank].clamp_min(0).sqrt()
    if s.numel() and float(s[-1]) <= 1e-6 * float(s[0]):
        P, s_all, Qh = torch.linalg.svd(W64, full_matrices=False)
        return P[:, :rank].to(W.dtype), s_all[:rank].to(W.dtype), Qh[:rank].T.to(W.dtype)
    E = evecs.flip(1)[:, :rank]
    if wide:
        P, Q = E, (W64.T @ E) / s
    else:
        P, Q = (W64 @ E) / s, E
    return P.to(W.dtype), s.to(W.dtype), Q.to(W.dtype)


def spectral(
    W: Tensor, rank: int, *, activation: Activation | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""Best rank-r approximation of W in Frobenius norm, singular values split evenly.

    .. math::
        W = P S Q^T, \quad U = P_r S_r^{1/2}, \quad V = Q_r S_r^{1/2}, \quad
        U V^T = \arg\min_{\mathrm{rank}\,Y \le r} \lVert Y - W \rVert_F

    (Eckart-Young). Since E||Y x - W x||^2 = ||Y - W||_F^2 for x ~ N(0, I), this is the exact NLRA optimum
    for the identity activation. Deterministic: ``generator`` and ``activation`` are unused.

    Example:
        >>> U, V = spectral(torch.randn(64, 32), 8)
    """
    P, s, Q = truncated_svd(W, rank)
    root = s.sqrt()
    return P * root, Q * root


def balance(A: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """Rewrite Y = A Q^T (Q with orthonormal columns) as U V^T with U^T U = V^T V (balanced factors).

    With the r x r eigendecomposition A^T A = R diag(s^2) R^T (so A = P' diag(s) R^T):
    U = A R diag(s)^(-1/2) = P' diag(s)^(1/2) and V = Q R diag(s)^(1/2); then U V^T = A Q^T and
    U^T U = V^T V = diag(s). Cost O(d_out r^2 + d_in r^2), no SVD of a tall matrix (slow on GPUs).
    Directions with s = 0 get zero columns in both factors.
    """
    A64, Q64 = A.double(), Q.double()
    evals, R = torch.linalg.eigh(A64.T @ A64)  # (r,), (r, r)
    s = evals.clamp_min(0).sqrt()
    inv_root = torch.where(s > 0, s.clamp_min(1e-300).rsqrt(), torch.zeros_like(s))
    return (A64 @ R * inv_root).to(A.dtype), (Q64 @ R * s.sqrt()).to(A.dtype)
