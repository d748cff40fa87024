"""Spectral init (Khodak et al. 2021): the truncated SVD, optimal for the identity activation."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import subspace
from .._compat import moved
from ..activations import Activation

__getattr__ = moved(__name__, {"balance": "nlinit.subspace", "truncated_svd": "nlinit.subspace"})


def spectral(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    svd: subspace.SVD | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Best rank-r approximation of W in Frobenius norm, singular values split evenly.

    .. math::
        W = P S Q^T, \quad U = P_r S_r^{1/2}, \quad V = Q_r S_r^{1/2}, \quad
        U V^T = \arg\min_{\mathrm{rank}\,Y \le r} \lVert Y - W \rVert_F

    (Eckart-Young). Since E||Y x - W x||^2 = ||Y - W||_F^2 for x ~ N(0, I), this is the exact NLRA optimum
    for the identity activation. Deterministic: ``generator`` and ``activation`` are unused; ``svd``, W's
    top-r SVD if the caller has it (:func:`nlinit.subspace.top_svd`).

    Example:
        >>> U, V = spectral(torch.randn(64, 32), 8)
    """
    return subspace.top_svd(W, rank, svd).factors()
