"""whiten: the truncated SVD in whitened coordinates, the linear data-aware optimum (SVD-LLM's whitening)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..activations import Activation
from ..layer_function import InitResult, LayerFunction, from_whitened, whitened_problem, whitened_svd


def whiten(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    function: LayerFunction | None = None,
) -> InitResult:
    r"""The best rank-r approximation of a layer's *linear* output on its real inputs.

    .. math::
        \min_{\mathrm{rank}\,Y \le r,\ c'} \mathbb{E}_{x \sim N(\mu, \Sigma)}
        \lVert s \odot (Y x) + c' - s \odot (W x) - c \rVert^2
        = \min \lVert \mathrm{diag}(s) (Y - W) L \rVert_F^2 \ \text{at}\ c' = c + s \odot ((W - Y) \mu),

    solved by the truncated SVD of W~ = diag(s) W L (Eckart-Young) mapped back, Y = diag(1/s) Y~ L^{-1}
    (:mod:`nlinit.layer_function`), with the bias corrected so the units' means are kept. With Sigma the
    uncentered second moment and no bias this is SVD-LLM's truncation-aware whitening (Wang et al. 2024,
    arXiv 2403.07378: SVD of W S with S S^T = X X^T, then W' = U_r Sigma_r V_r^T S^{-1}); nlinit uses the
    centered covariance because the bias absorbs the mean. Optimal for the identity activation; the
    linear baseline of the data-aware inits. Without ``function`` (x ~ N(0, I), no bias) it is spectral.

    Args:
        W: (d_out, d_in). rank: r. activation, generator: unused. function: the layer's real function.
    Returns:
        (U, V) without ``function``, else (U, V, bias'): shapes (d_out, r), (d_in, r), (d_out,).

    Example:
        >>> U, V = whiten(torch.randn(16, 8), 4)
    """
    fn = function if function is not None else LayerFunction()
    Wt, d, white = whitened_problem(W, fn)
    svd = whitened_svd(Wt, white, rank)
    U, V, bias = from_whitened(*svd.factors(), d if function is not None else None, fn, white, W)
    return (U, V) if function is None else (U, V, bias)
