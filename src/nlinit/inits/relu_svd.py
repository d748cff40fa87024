"""ReLU-SVD: the closed-form optimum of the NLRA objective on the SVD subspace (Theorem 3.3.8)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..activations import Activation
from ..objective import arccos_kernel
from .spectral import balance, truncated_svd


def leaky_norm_factor(rho: Tensor, alpha: float) -> Tensor:
    r"""k(rho): the optimal norm of y_i over a_i when y_i points along the projection of w_i.

    For sigma(z) = alpha z + (1 - alpha) relu(z) the per-unit objective along a direction with cosine rho
    is (1 + alpha^2)/2 b^2 - a b (2 alpha rho + (1 - alpha)^2 g(rho)) + const, minimized at
    b = a k(rho), k(rho) = (2 alpha rho + (1 - alpha)^2 g(rho)) / (1 + alpha^2).
    ReLU: k = g (the paper's a_i g(rho_i)); identity: k = rho (the SVD's own norms).
    """
    return (2 * alpha * rho + (1 - alpha) ** 2 * arccos_kernel(rho)) / (1 + alpha * alpha)


def relu_svd(
    W: Tensor, rank: int, *, activation: Activation | None = None, generator: torch.Generator | None = None
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
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), balanced (U^T U = V^T V).

    Example:
        >>> U, V = relu_svd(torch.randn(64, 32), 8)
    """
    name = activation.name if activation is not None else "relu"
    if name == "leaky_relu":
        alpha = activation.kwargs["negative_slope"]  # type: ignore[union-attr]
    elif name == "identity":
        alpha = 1.0
    else:
        alpha = 0.0
        if name != "relu":
            warnings.warn(
                f"relu-svd uses ReLU's closed form as a surrogate for activation {name!r}; "
                "use init='lfai-ws' to fit that activation's own objective",
                stacklevel=3,
            )
    _, _, Q = truncated_svd(W, rank)
    return factors_on_subspace(W, Q, alpha)


def factors_on_subspace(W: Tensor, Q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r"""The NLRA optimum among all Y whose rows lie in span(Q), as balanced factors (Theorem 2.1).

    Row i of Y is y_i = a_i k(rho_i) P_S w_i / ||P_S w_i||, rho_i = ||Q^T w_i|| / a_i, k =
    :func:`leaky_norm_factor`; a row with P_S w_i = 0 gets norm a_i k(0) along Q's first column. So
    Y = A Q^T with A (d_out, r) computed in float64 and split by :func:`~nlinit.inits.spectral.balance`.
    ``relu-svd`` is this on the SVD subspace, ``nlra-opt`` on the best subspace it finds.

    Args:
        W: (d_out, d_in). Q: (d_in, r) with orthonormal columns. alpha: the leaky slope (relu 0, identity 1).
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), in W's dtype, balanced (U^T U = V^T V), U V^T = A Q^T.
    """
    W64, Q64 = W.double(), Q.double()
    A = W64 @ Q64  # (d_out, r): row i is the coordinates of P_S w_i in the basis Q
    a = W64.norm(dim=1)  # (d_out,)
    proj = A.norm(dim=1)  # ||P_S w_i||
    hit = proj > 0
    rho = torch.where(hit, proj / torch.where(a > 0, a, 1.0), 0.0).clamp(0.0, 1.0)
    target = a * leaky_norm_factor(rho, alpha)  # optimal row norms
    A = torch.where(hit[:, None], A * (target / torch.where(hit, proj, 1.0))[:, None], 0.0)
    if not bool(hit.all()) and alpha != 1.0:
        A[~hit, 0] = target[~hit]  # zero projection: any direction in S gives rho = 0; take the first
    U, V = balance(A, Q64)
    return U.to(W.dtype), V.to(W.dtype)
