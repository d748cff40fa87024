"""ReLU-SVD: the closed-form optimum of the NLRA objective on the SVD subspace (Theorem 3.3.8)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .. import subspace
from .._compat import moved
from ..activations import Activation
from ..graph import PostOp
from ..layer_function import InitResult, LayerFunction, svd_rows_and_offsets

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
    post: PostOp | None = None,
    function: LayerFunction | None = None,
) -> InitResult:
    r"""The NLRA optimum among all Y whose rows lie in the top-r right singular subspace S of W.

    min over Y with rows in S of E_x ||f(Y x) - f(W x)||^2, x ~ N(0, I). Theorem 3.3.8 (ReLU): each row y_i
    points along P_S w_i and has norm a_i g(rho_i), rho_i = ||P_S w_i|| / a_i, whereas the SVD gives it the
    norm a_i rho_i <= a_i g(rho_i). So this scales the rows of the spectral Y = P_r S_r Q_r^T by
    g(rho_i) / rho_i, then rebalances the factors: one SVD plus O((d_out + d_in) r^2), and never worse
    than ``spectral`` on the exact objective (it is the optimum over a set that contains spectral's Y).
    A row with zero projection gets norm a_i g(0) = a_i / pi along the first singular direction, since
    an independent unit still has E relu(u) relu(v) > 0. docs/theory.md, section 2.

    Leaky ReLU and the identity have the same structure with norm factor
    :func:`~nlinit.subspace.leaky_norm_factor` (identity: exactly ``spectral``). Every other activation
    with an exact objective (silu, gelu, relu6, hardswish, tanh, sigmoid) gets each row's best norm along
    P_S w_i numerically (:func:`~nlinit.subspace.best_row_norms`, nlinit's generalization), again never
    worse than spectral.

    With ``post`` a per-unit normalization (BatchNorm in training mode), the rows' norms do not change the
    function, so on the SVD subspace the optimum is Y = W P_S: spectral's product, returned as spectral's
    very factors (docs/theory.md section 11), as for the identity. A better *subspace* is ``nlra-opt``'s
    search.

    Args:
        W: (d_out, d_in). rank: r. activation: default relu. generator: unused (deterministic).
        svd: W's top-r SVD if the caller has it (:func:`nlinit.subspace.top_svd`).
        post: the layer's post-op (:class:`nlinit.graph.PostOp`); only "normalized" changes the result.
        function: what the layer really computes (:class:`nlinit.layer_function.LayerFunction`: input
            mean and covariance, bias, eval-mode BatchNorm): then the same in whitened coordinates, the
            subspace from the SVD of diag(s) W L, and each unit's best norm *and* offset
            (:func:`~nlinit.subspace.fit_rows_and_offsets`), never worse than ``whiten``; the refitted
            offsets come back as the layer's new bias (docs/theory.md, section 11).
    Returns:
        (U, V), shapes (d_out, r), (d_in, r), balanced (U^T U = V^T V); with ``function``, (U, V, bias).

    Example:
        >>> U, V = relu_svd(torch.randn(64, 32), 8)
    """
    act = activation if activation is not None else Activation("relu")
    normalized = (post is not None and post.kind == "normalized") or (
        function is not None and function.normalized
    )
    # with a covariance (Sigma, or the outputs' W Sigma W^T alone) the problem is whitened; else a normalized
    # unit ignores offsets
    whitened = function is not None and (function.cov is not None or function.out_cov is not None)
    if function is not None and not function.is_plain and (whitened or not normalized):
        if normalized:
            function = dataclasses.replace(function, normalized=True)
        return svd_rows_and_offsets(W, rank, act, function)
    top = subspace.top_svd(W, rank, svd)
    if normalized or act.leaky_slope == 1.0:
        return top.factors()  # row norms drop out / the identity's k(rho) = rho: spectral's own factors
    return subspace._factors_on_subspace(W, top.Q, act, coords=top.P * top.s)  # W Q_r = P_r diag(s_r)
