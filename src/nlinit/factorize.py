"""Model surgery: replace a model's Linear / Conv2d layers by low-rank ones, in place.

:func:`factorize` first plans (which layers, which rank, which activation, and why others are skipped),
checking every argument before touching the model; then it initializes and swaps the planned layers one by
one and returns a :class:`~nlinit.report.FactorizeReport`.
"""

from __future__ import annotations

import fnmatch
import time
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import bounds
from ._checks import check_choice, check_finite, check_rank, check_rank_scale, rank_from_scale
from ._compat import moved
from .activations import Activation, parse_activation
from .graph import LayerGraph, trace_layers
from .inits import (
    DISTRIBUTIONS,
    INITS,
    SOURCES,
    check_init_options,
    full_rank_weight,
    init_factors,
    init_options,
)
from .layers import LowRankConv2d, LowRankLinear, check_init_layout
from .matrix_view import LAYOUTS, matrix_shape
from .objective import nlra_loss, resolve_method
from .report import FactorizeReport, LayerReport

__all__ = ["factorize", "layer_generator", "replace_modules"]

__getattr__ = moved(
    __name__,
    {
        "apply_low_rank_structure": "nlinit.checkpoint",
        "frobenius_decay": "nlinit.layers",
        "low_rank_structure": "nlinit.checkpoint",
    },
)

ActivationArg = str | Activation | Mapping[str, str | Activation]


@dataclass
class _Plan:
    name: str
    layer: nn.Linear | nn.Conv2d
    report: LayerReport
    activation: Activation | None = None


def layer_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The random source of layer ``name``: seeded from (seed, name), so one layer's draws do not depend on
    which other layers are factorized."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def _matching(patterns: Sequence[str], names: Sequence[str], what: str) -> dict[str, set[str]]:
    out = {}
    for p in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, p)}
        if not hits:
            raise ValueError(f"{what} pattern {p!r} matches no module of the model")
        out[p] = hits
    return out


def _resolve_activation(
    name: str, spec: ActivationArg, graph: LayerGraph | None, default: Activation
) -> tuple[Activation, str]:
    if isinstance(spec, Mapping):
        for pattern, act in spec.items():
            if fnmatch.fnmatchcase(name, pattern):
                return parse_activation(act), f"given for {pattern!r}"
        spec = "auto"
    if spec != "auto":
        return parse_activation(spec), "given"
    if graph is None or name not in graph.activations:
        return default, "default (not traced)"
    return graph.activations[name][0], "auto: " + graph.activations[name][1]


def _plan(
    model: nn.Module,
    *,
    rank: int | None,
    rank_scale: float | None,
    layout: str,
    activation: ActivationArg,
    default_activation: Activation,
    include: Sequence[str] | None,
    exclude: Sequence[str],
    factorize_stem: bool,
    factorize_classifier: bool,
    allow_growth: bool,
    source: str,
) -> list[_Plan]:
    modules = dict(model.named_modules())
    graph: LayerGraph | None = None
    try:
        graph = trace_layers(model)
    except Exception as e:  # torch.fx raises many types for untraceable code
        warnings.warn(
            f"could not trace the model with torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"activation 'auto' uses the default {default_activation} and stem/classifier follow module "
            "registration order",
            stacklevel=3,
        )
    candidates = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    order = graph.order if graph is not None else candidates
    included = _matching(include, list(modules), "include") if include else {}
    excluded = set().union(*_matching(exclude, list(modules), "exclude").values()) if exclude else set()
    named = {p for p in (include or []) if p in modules}  # exact names override the stem/classifier rule
    stem, classifier = (order[0], order[-1]) if order else (None, None)

    plans: list[_Plan] = []
    for name in order + [n for n in candidates if n not in order]:
        layer = modules[name]
        assert isinstance(layer, (nn.Linear, nn.Conv2d))
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        before = layer.weight.numel()
        rows, cols = matrix_shape(tuple(layer.weight.shape), layout if kind == "conv" else "channel")
        rep = LayerReport(name, kind, (rows, cols), "skipped", before, before)
        plans.append(_Plan(name, layer, rep))
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            rep.reason = f"grouped conv (groups={layer.groups}) is not factorized"
        elif graph is not None and name not in graph.order:
            rep.reason = "not called as a module in forward (its parent uses the weight directly)"
        elif graph is None and isinstance(
            model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention
        ):
            rep.reason = "inside nn.MultiheadAttention, which uses the weight directly"
        elif include and not any(name in hits for hits in included.values()):
            rep.reason = "not matched by include"
        elif name in excluded:
            rep.reason = "matched by exclude"
        elif name == stem and not factorize_stem and name not in named:
            rep.reason = "stem kept full-rank (factorize_stem=False)"
        elif name == classifier and not factorize_classifier and name not in named:
            rep.reason = "classifier kept full-rank (factorize_classifier=False)"
        else:
            r = rank if rank is not None else rank_from_scale(rank_scale, rows, cols)  # type: ignore[arg-type]
            check_rank(r, rows, cols, where=f"layer {name!r}")
            after = r * (rows + cols)
            if after >= rows * cols and not allow_growth:
                rep.reason = f"rank {r} would not reduce parameters ({after:,} >= {rows * cols:,})"
            else:
                if source == "existing":
                    check_finite(f"weight of layer {name!r}", layer.weight.detach())
                rep.rank, rep.params_after, rep.status = r, after, "factorized"
                plans[-1].activation, rep.activation_note = _resolve_activation(
                    name, activation, graph, default_activation
                )
                rep.activation = str(plans[-1].activation)
    for pattern, hits in included.items():
        if not any(p.name in hits and p.report.factorized for p in plans):
            reasons = "; ".join(f"{p.name}: {p.report.reason}" for p in plans if p.name in hits) or (
                "matches no Linear or Conv2d: "
                + ", ".join(sorted(f"{h} ({type(modules[h]).__name__})" for h in hits)[:5])
            )
            raise ValueError(f"include pattern {pattern!r} names nothing that can be factorized ({reasons})")
    return plans


def factorize(
    model: nn.Module,
    *,
    rank_scale: float | None = None,
    rank: int | None = None,
    init: str = "lfai-ws",
    activation: ActivationArg = "auto",
    default_activation: str | Activation = "relu",
    layout: str = "channel",
    source: str = "existing",
    distribution: str = "trunc-normal",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    factorize_stem: bool = False,
    factorize_classifier: bool = False,
    allow_growth: bool = False,
    seed: int = 0,
    objective_method: str = "auto",
    progress: bool = False,
    certify: bool = False,
    **init_kwargs: Any,
) -> FactorizeReport:
    """Replace ``model``'s Linear and Conv2d layers by low-rank ones, in place, and report what was done.

    Each chosen layer's full-rank weight W (``source``: the layer's own, or a fresh draw from
    ``distribution``) is factorized as U V^T of rank r by ``init`` against the activation that follows it.

    Args:
        model: any nn.Module (not DDP-wrapped); every torchvision classification model works.
        rank_scale: s in (0, 1]: r = max(1, round(s * min(rows, cols))) per layer. Exactly one of
            rank_scale and rank must be given.
        rank: one int rank for every layer (must fit each).
        init: a registered init (:func:`nlinit.inits.list_inits`).
        activation: ``"auto"`` (found with torch.fx: the nonlinearity after the layer through BatchNorm,
            dropout, reshapes; identity when the output reaches an addition or another layer first), a
            name for every layer, or a dict {module-name pattern: name} (unmatched layers use "auto").
        default_activation: used where tracing fails.
        layout: conv matrix view, ``"channel"`` or ``"spatial"``.
        source: ``"existing"`` (the layer's weights: warm start) or ``"fresh"`` (a new draw, as in the paper).
        distribution: for fresh W and the baseline init: trunc-normal (paper), kaiming-normal,
            torch-default, or reset-parameters (fresh W only).
        include, exclude: fnmatch patterns of module names. Each pattern must match a module; an include
            pattern must name something that can be factorized. Naming the stem or the classifier exactly
            in ``include`` factorizes it.
        factorize_stem, factorize_classifier: also factorize the first / last layer executed.
        allow_growth: factorize even where r (rows + cols) >= rows cols.
        seed: every random draw comes from a per-layer generator seeded by (seed, layer name). A fresh W
            is drawn on the CPU, so it is the same on every device; lfai's samples use the layer's device.
        objective_method: how the report's objectives are computed: "auto" (exact where a closed form
            exists, else Monte Carlo), "exact" or "mc".
        progress: show a tqdm bar.
        certify: also certify each layer's distance to the optimal rank-r NLRA solution
            (:func:`nlinit.bounds.certify`): LayerReport.objective_lower_bound and certified_gap. Only for
            leaky-ReLU-family activations (relu, leaky_relu, identity) in the "channel" layout (or Linear);
            other activations have no certified bound, and a "spatial" factor's function view is not a
            rank-r matrix, so those layers keep None. Costs a few eigendecompositions per layer.
        **init_kwargs: options for the init (e.g. ``objective="exact"``, ``max_epochs=3``).
    Returns:
        FactorizeReport, one LayerReport per Linear / Conv2d in execution order.
    Raises:
        TypeError: a DistributedDataParallel / DataParallel model (factorize the module inside, then wrap).
        ValueError: bad rank, rank_scale, names, patterns or non-finite weights; the model is unchanged.

    Example:
        >>> model = torchvision.models.resnet18()
        >>> report = factorize(model, rank_scale=0.1, init="relu-svd")
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(
            f"factorize got a {type(model).__name__}; factorize model.module first, then wrap it again"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if (rank is None) == (rank_scale is None):
        raise ValueError(
            f"give exactly one of rank and rank_scale, got rank={rank!r}, rank_scale={rank_scale!r}"
        )
    if rank_scale is not None:
        check_rank_scale(rank_scale)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    check_choice("init", init, INITS)
    check_choice("layout", layout, LAYOUTS)
    check_choice("source", source, SOURCES)
    check_choice("distribution", distribution, (*DISTRIBUTIONS, "reset-parameters"))
    check_choice("objective_method", objective_method, ("auto", "exact", "mc"))
    if not isinstance(certify, bool):
        raise ValueError(f"certify must be True or False, got {certify!r}")
    check_init_layout(init, layout)
    if distribution == "reset-parameters" and "distribution" in init_options(init):
        raise ValueError(
            f"distribution 'reset-parameters' draws a full-rank W only; init {init!r} draws factors from one "
            f"of: {', '.join(sorted(DISTRIBUTIONS))}"
        )
    check_init_options(init, init_kwargs)
    default_act = parse_activation(default_activation)
    if isinstance(activation, Mapping):
        for act in activation.values():
            parse_activation(act)
    elif activation != "auto":
        parse_activation(activation)

    start = time.perf_counter()
    plans = _plan(
        model,
        rank=rank,
        rank_scale=rank_scale,
        layout=layout,
        activation=activation,
        default_activation=default_act,
        include=include,
        exclude=exclude,
        factorize_stem=factorize_stem,
        factorize_classifier=factorize_classifier,
        allow_growth=allow_growth,
        source=source,
    )
    grouped = [p.name for p in plans if "grouped conv" in p.report.reason]
    if grouped:
        warnings.warn(
            f"skipped {len(grouped)} grouped/depthwise conv(s), which are not factorized: "
            f"{', '.join(grouped[:3])}{', ...' if len(grouped) > 3 else ''} (see the report)",
            stacklevel=2,
        )
    if "distribution" in init_options(init):
        init_kwargs.setdefault("distribution", distribution)
    todo = [p for p in plans if p.report.factorized]
    # Build every new layer first and swap them in at the end, so an error leaves the model unchanged.
    new_layers = {}
    for p in tqdm(todo, desc=f"factorize {init}", disable=not progress, unit="layer"):
        new_layers[p.name] = _build(
            p,
            init=init,
            layout=layout if p.report.kind == "conv" else "channel",
            source=source,
            distribution=distribution,
            seed=seed,
            objective_method=objective_method,
            init_kwargs=init_kwargs,
            certify=certify,
        )
    replace_modules(model, new_layers)
    config = {
        "rank_scale": rank_scale,
        "rank": rank,
        "init": init,
        "layout": layout,
        "source": source,
        "distribution": distribution,
        "seed": seed,
        "allow_growth": allow_growth,
        "certify": certify,
        "factorize_stem": factorize_stem,
        "factorize_classifier": factorize_classifier,
        "init_options": {k: v for k, v in init_kwargs.items() if isinstance(v, (int, float, str, bool))},
    }
    return FactorizeReport([p.report for p in plans], config, time.perf_counter() - start)


def _build(
    p: _Plan,
    *,
    init: str,
    layout: str,
    source: str,
    distribution: str,
    seed: int,
    objective_method: str,
    init_kwargs: dict[str, Any],
    certify: bool = False,
) -> LowRankConv2d | LowRankLinear:
    """The planned layer's low-rank replacement; fills in its report (objectives of init and spectral)."""
    layer, rep, act = p.layer, p.report, p.activation
    assert act is not None and rep.rank is not None
    gen = layer_generator(seed, p.name, layer.weight.device)  # the init's draws, on the layer's device
    new: LowRankConv2d | LowRankLinear
    if isinstance(layer, nn.Conv2d):
        new = LowRankConv2d.like(layer, rep.rank, layout)
    else:
        new = LowRankLinear.like(layer, rep.rank)
    # A fresh W is drawn from a CPU generator, so it is the same whatever the layer's device.
    weight = full_rank_weight(layer, source, distribution, generator=layer_generator(seed, p.name))
    t0 = time.perf_counter()
    new.init_from_(weight, init, activation=act, generator=gen, **init_kwargs)
    if weight.is_cuda:
        torch.cuda.synchronize(weight.device)  # kernels run asynchronously: wait before reading the clock
    rep.seconds = time.perf_counter() - t0
    if layer.bias is not None:
        with torch.no_grad():
            new.bias.copy_(layer.bias)  # type: ignore[union-attr]

    W = new.to_matrix(weight)
    W_fn = new.function_view(W)
    method = resolve_method(act, objective_method)
    rep.init, rep.objective_method = init, method
    rep.objective_init = _objective(W_fn, new.function_view(new.matrix()), act, method, seed, p.name)
    if init == "spectral":
        rep.objective_spectral = rep.objective_init
    else:
        U, V = init_factors(W, rep.rank, "spectral")
        rep.objective_spectral = _objective(W_fn, new.function_view(U @ V.T), act, method, seed, p.name)
    if certify and layout == "channel" and act.leaky_slope is not None:
        cert = bounds.certify(W_fn, new.matrix().detach(), rep.rank, act)
        rep.objective_lower_bound = cert.lower_bound / cert.zero_objective if cert.zero_objective else 0.0
        rep.certified_gap = cert.relative_gap
    return new


def _objective(W: Tensor, Y: Tensor, act: Activation, method: str, seed: int, name: str) -> float:
    """Relative objective R(Y)/R(0); Monte Carlo draws are seeded per layer, the same for every init."""
    gen = layer_generator(seed + 1, name, W.device)
    with torch.no_grad():
        return float(nlra_loss(W, Y.detach(), act, method, relative=True, generator=gen, num_samples=4096))


def replace_modules(model: nn.Module, new_layers: Mapping[str, nn.Module]) -> None:
    """Put each new module in place of the submodule of the same name (``"layer1.0.conv1"``), in place."""
    for name, new in new_layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
