"""asvd: activation-aware SVD (ASVD), the truncated SVD of W with columns scaled by the inputs' mean |x|."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import subspace
from ..activations import Activation
from ..layer_function import InitResult, LayerFunction

#: input dimensions whose mean |x| is below this fraction of the largest are raised to it before scaling
#: (ASVD4LLM adds 1e-6 to avoid a division by zero; a relative floor does the same at any input scale).
ABS_MEAN_FLOOR = 1e-6


def asvd_scale(abs_mean: Tensor, alpha: float, *, floor: float = ABS_MEAN_FLOOR) -> Tensor:
    r"""ASVD's column scale S = diag(m)^alpha, m_j = max(E|x_j|, floor max_k E|x_k|), (d_in,) float64.

    All of m = 0 (an input that is always 0): S = 1. alpha = 0 gives S = 1 exactly.
    """
    m = abs_mean.double()
    top = float(m.max()) if m.numel() else 0.0
    if top <= 0:
        return torch.ones_like(m)
    return m.clamp_min(floor * top) ** alpha


def asvd(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    function: LayerFunction | None = None,
    alpha: float = 0.5,
) -> InitResult:
    r"""The truncated SVD of W S mapped back, with S scaling each input column by its typical magnitude.

    .. math::
        S = \mathrm{diag}\big(\tfrac{1}{N}\textstyle\sum_n |x_{n,j}|\big)^{\alpha}, \qquad
        Y = (W S)_r\, S^{-1}, \qquad
        b' = b + (W - Y)\,\mu,

    with (W S)_r the best rank-r approximation of W S (Eckart-Young), so Y minimizes ||(Y - W) S||_F over
    rank-r matrices: columns that meet large inputs are kept more accurately. Yuan et al. 2023, "ASVD:
    Activation-aware Singular Value Decomposition for Compressing Large Language Models" (arXiv 2312.05821,
    section 3.2, the "abs_mean" scaling of github.com/hahnyuan/ASVD4LLM, alpha = 0.5 there). Factors as in
    ASVD4LLM: U = P_r Sigma_r^{1/2}, V = S^{-1} Q_r Sigma_r^{1/2} from W S = P Sigma Q^T. Small entries of
    mean |x| are floored (:func:`asvd_scale`). Ignores the activation and a BatchNorm after the layer
    (ASVD is a weight-space method); the bias is refitted so each unit keeps its mean pre-activation on the
    calibration inputs (b' above, mu = E[x]; as ``whiten`` does), or kept when the mean is unknown.
    alpha = 0 is the plain truncated SVD (``spectral``'s factors).

    Args:
        W: (d_out, d_in). rank: r. activation, generator: unused.
        function: the layer's function with ``abs_mean`` (d_in,) (:class:`LayerFunction`, from
            calibration statistics); required.
        alpha: the exponent, a finite float >= 0 (0: plain SVD; ASVD's default 0.5).
    Returns:
        (U, V, bias'): shapes (d_out, r), (d_in, r), (d_out,) or None (no bias and no mean), W's dtype.
    Raises:
        ValueError: no ``function.abs_mean`` (calibration statistics are needed), or a bad alpha.

    Example:
        >>> from nlinit.calibration import LayerStats
        >>> fn = LayerFunction.from_stats(LayerStats.from_samples(torch.randn(256, 8)))
        >>> U, V, b = asvd(torch.randn(16, 8), 4, function=fn)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < float("inf"):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if function is None or function.abs_mean is None:
        raise ValueError(
            "init 'asvd' needs the inputs' mean |x| per dimension: pass calibration data "
            "(factorize(..., calibration=...)) or function=LayerFunction.from_stats(stats)"
        )
    S = asvd_scale(function.abs_mean.to(W.device), float(alpha)).to(W.dtype)
    U, V = subspace.truncated_svd(W * S, rank).factors()
    V = V / S[:, None]
    bias = function.bias.double() if function.bias is not None else None
    if function.mean is not None:
        shift = (W.double() - U.double() @ V.double().T) @ function.mean.double().to(W.device)
        bias = shift if bias is None else bias.to(W.device) + shift
    return U, V, None if bias is None else bias.to(W.dtype)
