r"""lfai-data: the paper's LFAI on the layer's real inputs, from relu-svd on the layer's real function.

.. math::
    \min_{U, V, b'} \frac{1}{N} \sum_{k=1}^{N}
    \lVert f(s \odot (U V^\top x_k + b') + t) - f(s \odot (W x_k + b) + t) \rVert^2

over the calibration samples x_k of the layer (:class:`nlinit.layer_function.LayerFunction` ``samples``),
with the layer's bias b and eval-mode BatchNorm (s, t). Adam as in the paper's Algorithms 2 and 3 (lr 5e-3,
batch 512, 128 steps per epoch, at most 6 epochs), started from relu-svd on the fitted Gaussian
(:func:`nlinit.layer_function.svd_rows_and_offsets`: whitened SVD, each unit's norm and offset); the best
epoch is judged on held-out samples (``heldout``; else the last fifth of ``samples``), so it never returns
factors worse than its start on them. nlinit's extension of the paper (which fits N(0, I) inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from ..activations import Activation
from ..layer_function import InitResult, LayerFunction, svd_rows_and_offsets
from ..subspace import _balance


def lfai_data(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    function: LayerFunction | None = None,
    lr: float = 5e-3,
    batch_size: int = 512,
    steps_per_epoch: int = 128,
    max_epochs: int = 6,
    tol: float = 1e-3,
) -> InitResult:
    """Adam on the sampled layer objective over (U, V, b') from relu-svd's layer-function solution.

    Args:
        W: (d_out, d_in). rank: r. activation: default relu. generator: the batches' random source.
        function: the layer's real function with ``samples`` (K, d_in), and optionally ``heldout``.
        lr, batch_size, steps_per_epoch, max_epochs: Adam's, as in the paper. tol: stop when an epoch
            improves the held-out objective by less than this fraction.
    Returns:
        (U, V, bias'): the best factors and bias seen on the held-out samples (the start included).
    Raises:
        ValueError: no calibration samples (factorize(..., calibration=...) collects them), or bad options.
    """
    for name, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch)):
        check_int(name, value, low=1)
    check_int("max_epochs", max_epochs, low=0)
    if function is None or function.samples is None or len(function.samples) < 2:
        raise ValueError(
            "init 'lfai-data' needs calibration samples of the layer's inputs: pass "
            "function=LayerFunction(samples=X, ...) or factorize(..., calibration=...)"
        )
    act = activation if activation is not None else Activation("relu")
    X = function.samples.to(W.device, torch.float64)
    if function.heldout is not None and len(function.heldout):
        X_eval = function.heldout.to(W.device, torch.float64)
    else:
        cut = max(1, len(X) * 4 // 5)
        X, X_eval = X[:cut], X[cut:]
    W64 = W.double()
    d_out = W.shape[0]
    s = function.scale.double() if function.scale is not None else torch.ones(d_out, dtype=torch.float64)
    t = function.shift.double() if function.shift is not None else torch.zeros(d_out, dtype=torch.float64)
    b = function.bias.double() if function.bias is not None else torch.zeros(d_out, dtype=torch.float64)

    def out(x: Tensor, U: Tensor, V: Tensor, bias: Tensor) -> Tensor:
        return act(s * ((x @ V) @ U.T + bias) + t)  # (B, d_out), O(B r (d_in + d_out))

    T, T_eval = act(s * (X @ W64.T + b) + t), act(s * (X_eval @ W64.T + b) + t)

    def eval_loss(U: Tensor, V: Tensor, bias: Tensor) -> float:
        return float((out(X_eval, U, V, bias) - T_eval).square().sum(1).mean())

    U0, V0, bias0 = svd_rows_and_offsets(W64, rank, act, function)
    bias0 = bias0 if bias0 is not None else b
    params = [p.detach().clone().requires_grad_(True) for p in (U0, V0, bias0)]
    best = eval_loss(*params)
    best_params = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    gen_device = generator.device if generator is not None else W.device
    for _ in range(max_epochs):
        for _ in range(steps_per_epoch):
            idx = torch.randint(len(X), (min(batch_size, len(X)),), generator=generator, device=gen_device)
            idx = idx.to(W.device)
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():  # init_factors calls solvers under no_grad
                (out(X[idx], *params) - T[idx]).square().sum(1).mean().backward()
            opt.step()
        current = eval_loss(*params)
        gain = (best - current) / max(best, 1e-30)
        if current < best:
            best, best_params = current, [p.detach().clone() for p in params]
        if gain < tol:
            break
    U, V, bias = best_params
    Qv, Rv = torch.linalg.qr(V)
    U, V = _balance(U @ Rv.T, Qv)
    return U.to(W.dtype), V.to(W.dtype), bias.to(W.dtype)
