"""ReLU-SVD: the closed-form optimum of the NLRA objective on the SVD subspace (Theorem 3.3.8)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .. import subspace
from .._compat import moved
from ..activations import Activation

__getattr__ = moved(
    __name__, {"factors_on_subspace": "nlinit.subspace", "leaky_norm_factor": "nlinit.subspace"}
)


def relu_svd(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    svd: subspace.SVD | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The NLRA optimum among all Y whose rows lie in the top-r right singular subspace S of W.

    min over Y with rows in S of E_x ||relu(Y x) - relu(W x)||^2, x ~ N(0, I). Theorem 3.3.8: each row y_i
    points along P_S w_i and has norm a_i g(rho_i), rho_i = ||P_S w_i|| / a_i, whereas the SVD gives it the
    norm a_i rho_i <= a_i g(rho_i). So this scales the rows of the spectral Y = P_r S_r Q_r^T by
    g(rho_i) / rho_i, then rebalances the factors: one SVD plus O((d_out + d_in) r^2), and never worse
    than ``spectral`` on the exact objective (it is the optimum over a set that contains spectral's Y).
    A row with zero projection gets norm a_i g(0) = a_i / pi along the first singular direction, since
    an independent unit still has E relu(u) relu(v) > 0. docs/theory.md, section 2.

    Leaky ReLU and the identity have the same structure with norm factor :func:`leaky_norm_factor`
    (identity: exactly ``spectral``). Other activations use ReLU's closed form as a surrogate, with a warning.

    Args:
        W: (d_out, d_in). rank: r. activation: default relu. generator: unused (deterministic).
        svd: W's top-r SVD if the caller has it (:func:`nlinit.subspace.top_svd`).
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), balanced (U^T U = V^T V).

    Example:
        >>> U, V = relu_svd(torch.randn(64, 32), 8)
    """
    alpha = activation.leaky_slope if activation is not None else 0.0
    if alpha is None:
        alpha = 0.0
        warnings.warn(
            f"relu-svd uses ReLU's closed form as a surrogate for activation {str(activation)!r}; "
            "use init='lfai-ws' to fit that activation's own objective",
            stacklevel=3,
        )
    Q = subspace.top_svd(W, rank, svd).Q
    return subspace.factors_on_subspace(W, Q, alpha)
