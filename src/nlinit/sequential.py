r"""Sequential compression: each layer fitted on the inputs the already-compressed model gives it.

Layer by layer in execution order, layer l's input in the original model, x, and in the model whose earlier
layers are already low-rank, x^, are streamed together on the calibration data, and the layer is solved for
the *asymmetric* problem: its low-rank output on x^ should match the original layer's output on x,

.. math::
    \min_{\mathrm{rank}\,Y \le r,\ b'} \mathbb{E}\,\lVert W x + b - (Y \hat x + b') \rVert^2 ,

(Zhang, Zou, He and Sun, "Accelerating Very Deep Convolutional Networks for Classification and Detection",
TPAMI 2016, arXiv 1505.06798: asymmetric reconstruction; for LLMs, e.g. AA-SVD, Sinha and Fleuret 2026,
arXiv 2604.02119). Up to a constant, it is the ordinary whitened problem on x^'s statistics for the dense
layer (W_eff, b_eff) of :func:`asymmetric_target`, the regression of W x + b on x^ (docs/theory.md, section
11.5), so every solver of :func:`nlinit.factorize` solves it unchanged: :func:`_factorize_sequential`
swaps that dense layer in and calls ``factorize`` on it. Used by :func:`nlinit.compress.compress`
(``sequential=True``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_finite, check_matrix
from .calibration import LayerStats, _Enough, collect_stats
from .factorize import _module_names, factorize, layer_generator, replace_modules
from .layer_function import whitener
from .report import FactorizeReport, LayerReport

__all__ = ["asymmetric_target"]


def asymmetric_target(
    W: Tensor, bias: Tensor | None, mean: Tensor, mean_hat: Tensor, cross: Tensor, cov_hat: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The dense layer on x^ whose low-rank fits solve the asymmetric problem: (W_eff, b_eff), float64.

    .. math::
        W_{\mathrm{eff}} = W C \hat\Sigma^{-1}, \qquad b_{\mathrm{eff}} = b + W\mu - W_{\mathrm{eff}}\hat\mu,

    the least-squares regression of W x + b on x^ (C = Cov(x, x^), Sigma^ = Cov(x^)). For every Y and b',
    E||W x + b - Y x^ - b'||^2 = E||W x + b - W_eff x^ - b_eff||^2 + E||W_eff x^ + b_eff - Y x^ - b'||^2
    (the residual is uncorrelated with x^), and the same with each unit weighted (a BatchNorm's scale), so
    the asymmetric problem is the ordinary one for (W_eff, b_eff) on x^'s statistics (docs/theory.md,
    section 11.5). Sigma^ is regularized by :func:`nlinit.layer_function.whitener`'s rule (a pivoted Cholesky
    factor; conditional variances at most 1e-6 of the largest variance replaced by that): exact unless a
    coordinate of x^ has a conditional variance in (0, 1e-6 max]; directions with none
    have C v = 0 and get W_eff v = 0. With x^ = x: W_eff = W, b_eff = b.

    Args:
        W: (d_out, d_in) the dense layer's matrix (a conv's "channel" view). bias: (d_out,) b, or None (0).
        mean, mean_hat: (d_in,) mu = E x and mu^ = E x^. cross: (d_in, d_in) C = E[(x - mu)(x^ - mu^)^T].
        cov_hat: (d_in, d_in) Sigma^, symmetric.
    Returns:
        (W_eff (d_out, d_in), b_eff (d_out,)), float64 on W's device.
    Raises:
        ValueError: a non-finite input, a shape that does not fit W, an asymmetric cov_hat (one line).

    Example:
        >>> X = torch.randn(100, 4, dtype=torch.float64); Xh = X + 0.1 * torch.randn_like(X)
        >>> stats = LayerStats.from_samples(torch.cat([X, Xh], 1))
        >>> W_eff, b_eff = asymmetric_target(torch.eye(3, 4), None, stats.mean[:4], stats.mean[4:],
        ...                                  stats.cov[:4, 4:], stats.cov[4:, 4:])
    """
    check_matrix("W", W)
    d_out, d_in = W.shape
    given = {"bias": bias, "mean": mean, "mean_hat": mean_hat, "cross": cross, "cov_hat": cov_hat}
    shapes = {"bias": (d_out,), "mean": (d_in,), "mean_hat": (d_in,), "cross": (d_in, d_in)}
    shapes["cov_hat"] = (d_in, d_in)
    for name, t in given.items():
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shapes[name]:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a floating-point {shapes[name]} tensor for a {d_out}x{d_in} W, got {got}"
            )
        check_finite(name, t)
    W64 = W.detach().double()
    white = whitener(cov_hat, d_in)  # L L^T = Sigma^ (regularized); checks that it is symmetric
    assert white.L_inv is not None
    L_inv = white.L_inv.to(W64.device)
    W_eff = (W64 @ cross.double().to(W64.device)) @ L_inv.T @ L_inv  # W C (L L^T)^{-1}, d_out d_in^2 flops
    b = bias.detach().double() if bias is not None else torch.zeros(d_out, dtype=torch.float64)
    b_eff = b.to(W64.device) + W64 @ mean.double().to(W64.device) - W_eff @ mean_hat.double().to(W64.device)
    return W_eff, b_eff


# --------------------------------------------------------------------------------------------------------
# The pass: joint statistics of (x, x^), one layer at a time


class _Paired(nn.Module):
    """A model whose forward runs the reference and the working model on the same batch and feeds
    ``probe`` the two inputs of each call of layer ``name``, concatenated along the features (a conv's
    channels), so that :func:`nlinit.calibration.collect_stats` on ``probe`` streams the statistics of
    [x; x^] (a conv's patches in the "channel" layout: x's c_in kh kw entries, then x^'s).

    The first forward runs both models to the end and counts the layer's calls in each; later forwards
    stop each model at its last call, as :func:`nlinit.calibration.collect_stats` does (nothing after the
    layer can change its inputs)."""

    def __init__(self, reference: nn.Module, model: nn.Module, name: str, probe: nn.Linear | nn.Conv2d):
        super().__init__()
        self.probe = probe  # the only registered submodule: its device is where batches go
        self.models = [reference, model]  # a list, so not submodules
        self.name = name
        self.dim = -3 if isinstance(probe, nn.Conv2d) else -1
        self.calls: list[int] | None = None  # per model, from the first forward

    def forward(self, *args: Any, **kwargs: Any) -> None:
        inputs: list[list[Tensor]] = [[], []]
        calls = self.calls or [0, 0]  # 0: no limit (the counting forward)
        handles = []
        for model, seen, limit in zip(self.models, inputs, calls, strict=True):

            def grab(
                module: nn.Module,
                a: tuple[Any, ...],
                kw: dict[str, Any],
                seen: list[Tensor] = seen,
                limit: int = limit,
            ) -> None:
                seen.append(a[0] if a else kw["input"])
                if len(seen) == limit:
                    raise _Enough

            layer = model.get_submodule(self.name)
            handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
        try:
            for model in self.models:
                with contextlib.suppress(_Enough):
                    model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if self.calls is None:
            self.calls = [len(seen) for seen in inputs]
        for x, x_hat in zip(*inputs, strict=False):  # the k-th call in one model with the k-th in the other
            self.probe(torch.cat([x, x_hat], self.dim))


def _probe(layer: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    """A one-output layer like ``layer`` on twice its input features (its patch geometry for a conv)."""
    kw: dict[str, Any] = {"bias": False, "device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            2 * layer.in_channels,
            1,
            layer.kernel_size,  # type: ignore[arg-type]
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
            layer.dilation,  # type: ignore[arg-type]
            padding_mode=layer.padding_mode,
            **kw,
        )
    return nn.Linear(2 * layer.in_features, 1, **kw)


def _split(joint: LayerStats, d: int) -> tuple[Tensor, Tensor, LayerStats]:
    """(mu (d,), C = Cov(x, x^) (d, d), x^'s LayerStats) from the statistics of [x; x^] (2d): copies, so
    the joint statistics can be freed."""

    def hat(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[..., d:].clone()

    m = joint.mean
    assert joint.second is not None  # collected with input_cov=True (the default)
    cross = joint.second[:d, d:] - torch.outer(m[:d], m[d:])
    stats = LayerStats(
        count=joint.count,
        mean=m[d:].clone(),
        second=joint.second[d:, d:].clone(),
        samples=hat(joint.samples),
        heldout=hat(joint.heldout),
        abs_mean=hat(joint.abs_mean),
    )
    return m[:d].clone(), cross, stats


def _target_layer(layer: nn.Linear | nn.Conv2d, W_eff: Tensor, b_eff: Tensor) -> nn.Linear | nn.Conv2d:
    """A copy of the dense ``layer`` (its settings, dtype and device) computing W_eff x^ + b_eff."""
    weight = layer.weight
    target = copy.deepcopy(layer, {id(t): t for t in layer.parameters()})  # no copy of the old weights
    target.weight = nn.Parameter(W_eff.reshape(weight.shape).to(weight), requires_grad=weight.requires_grad)
    target.bias = nn.Parameter(b_eff.to(weight), requires_grad=weight.requires_grad)
    return target


def _factorize_sequential(
    model: nn.Module,
    rank: Mapping[str, int],
    calibration: Iterable[Any] | Tensor,
    *,
    seed: int,
    calibration_batches: int | None,
    calibration_samples: int,
    calibration_heldout: int,
    progress: bool | None,
    **options: Any,
) -> FactorizeReport:
    """Factorize the layers of ``rank`` ({name: r}, in execution order) one at a time, each on its inputs
    in the partly compressed model against the original layer's output (:func:`asymmetric_target`).

    For each layer: one pass over ``calibration`` through a copy of the original model (x) and ``model``
    (x^) streams the statistics of [x; x^] (:func:`nlinit.calibration.collect_stats` on a probe; the first
    layer, whose inputs nothing has changed yet, gets ``collect_stats`` of ``model`` itself, with the
    seeds of :func:`nlinit.compress.compress`'s non-sequential pass), then the dense layer (W_eff, b_eff)
    replaces it and :func:`nlinit.factorize` (``options``: init, activation, ...) solves that one layer
    with x^'s statistics. Only one layer's statistics are alive at a time; the original model is a copy
    of ``model``'s modules sharing its parameters and buffers (no tensor is copied; nothing here writes to
    them). On any error every layer replaced so far is put back (the original module objects), so
    ``model`` is as it was. The caller (``compress``) checks the arguments.

    Returns:
        One :class:`nlinit.report.FactorizeReport`: the first call's, with each layer's row from its own
        call; ``seconds_stats`` the statistics passes' time.
    """
    start = time.perf_counter()
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    reference = copy.deepcopy(model, shared)  # the original function (gives x): new modules, same tensors
    aliases = _module_names(model)
    collect = {"batches": calibration_batches, "samples": calibration_samples, "heldout": calibration_heldout}
    originals: dict[str, nn.Module] = {}  # every name replaced so far -> its dense module, to undo
    rows: dict[str, LayerReport] = {}
    first: FactorizeReport | None = None
    seconds_stats = 0.0
    bar = tqdm(
        rank.items(), desc="sequential", disable=None if progress is None else not progress, unit="layer"
    )
    try:
        for name, r in bar:
            layer = model.get_submodule(name)
            names = aliases[id(layer)]
            t0 = time.perf_counter()
            stats, target = _layer_problem(
                reference, model, name, calibration, bool(originals), seed, collect
            )
            seconds_stats += time.perf_counter() - t0
            originals.update(dict.fromkeys(names, layer))
            replace_modules(model, dict.fromkeys(names, target))
            report = factorize(
                model, rank={name: r}, stats={name: stats}, seed=seed, progress=False, **options
            )
            del stats, target  # freed before the next layer's pass
            first = report if first is None else first
            rows[name] = next(x for x in report.layers if x.name == name)
    except BaseException:
        replace_modules(model, originals)
        raise
    assert first is not None
    layers = [rows.get(x.name, x) for x in first.layers]
    config = {**first.config, "rank": dict(rank), "sequential": True}
    return FactorizeReport(layers, config, time.perf_counter() - start, seconds_stats)


def _layer_problem(
    reference: nn.Module,
    model: nn.Module,
    name: str,
    calibration: Iterable[Any] | Tensor,
    changed: bool,
    seed: int,
    collect: dict[str, Any],
) -> tuple[LayerStats, nn.Linear | nn.Conv2d]:
    """(x^'s statistics, the dense layer to fit) for layer ``name`` of ``model``: with nothing ``changed``
    yet, its own statistics and the layer itself; else those of the asymmetric problem."""
    layer = model.get_submodule(name)
    assert isinstance(layer, (nn.Linear, nn.Conv2d))
    if not changed:  # x^ = x: W_eff = W
        generator = torch.Generator().manual_seed(seed)  # compress's seeds: the non-sequential statistics
        return collect_stats(model, {name: layer}, calibration, generator=generator, **collect)[name], layer
    probe = _probe(layer)
    pair = _Paired(reference, model, name, probe)
    generator = layer_generator(seed, name)
    probed = {"probe": probe}  # its one output is not the layer's: no out_cov
    joint = collect_stats(pair, probed, calibration, generator=generator, outputs=False, **collect)["probe"]
    W = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # the "channel" view
    mean, cross, stats = _split(joint, W.shape[1])
    del joint
    assert stats.cov is not None
    W_eff, b_eff = asymmetric_target(W, layer.bias, mean, stats.mean, cross, stats.cov)
    return stats, _target_layer(layer, W_eff, b_eff)
