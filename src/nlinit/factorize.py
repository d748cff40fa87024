"""Model surgery: replace a model's Linear / Conv2d layers by low-rank ones, in place.

:func:`factorize` works in four steps, each a function below:

1. plan (:func:`_plan`): which layers, which rank, which activation and init, and why the others are skipped;
   every argument and every planned layer is checked here, before the model is touched;
2. build (:func:`_build`): each planned layer's low-rank copy, by ``from_dense`` from its full-rank W (the
   top-r SVD of W is computed once and shared by the init and the report);
3. measure (:func:`_measure`): the report's objectives (and certificates) of the init and of spectral;
4. swap (:func:`replace_modules`): every new layer in place of the old one, under every name it has.

An error in steps 1-3 leaves the model as it was.
"""

from __future__ import annotations

import fnmatch
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import bounds
from ._checks import check_choice, check_finite, check_int, check_rank, check_rank_scale, rank_from_scale
from ._compat import moved
from .activations import Activation, check_activation_spec, parse_activation
from .calibration import LayerStats, collect_stats
from .graph import LayerGraph, PostOp, trace_layers
from .inits import (
    DEFAULT_INIT,
    DISTRIBUTIONS,
    SOURCES,
    InitInfo,
    check_init_options,
    full_rank_weight,
    get_init,
    init_choices,
    resolve_init,
)
from .layer_function import LayerFunction, relative_objectives, row_space_coefficients
from .layers import LowRankConv2d, LowRankLinear
from .matrix_view import LAYOUTS, matrix_shape
from .objective import nlra_loss, normalized_loss, resolve_method
from .report import FactorizeReport, LayerReport
from .subspace import SVD, truncated_svd

__all__ = ["FITS", "factorize", "layer_generator", "replace_modules"]

__getattr__ = moved(
    __name__,
    {
        "apply_low_rank_structure": "nlinit.checkpoint",
        "frobenius_decay": "nlinit.layers",
        "low_rank_structure": "nlinit.checkpoint",
    },
)

ActivationArg = str | Activation | Mapping[str, str | Activation]

#: factorize(fit=...): what each layer's init fits
FITS = {
    "layer": "the layer's real function: bias, traced post-op (BatchNorm), calibration inputs when given",
    "paper": "the paper's objective: act(W x), x ~ N(0, I), no bias, no post-op",
}


@dataclass
class _Plan:
    """One Linear / Conv2d module of the model (once, however many names it has) and what to do with it."""

    name: str
    layer: nn.Linear | nn.Conv2d
    report: LayerReport
    aliases: list[str] = field(default_factory=list)  # other names of the same module object
    activation: Activation | None = None
    post: PostOp = field(default_factory=PostOp)
    init: InitInfo | None = None
    tied_to: str | None = None  # a planned layer with the same weight Parameter: share its factors


def layer_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The random source of layer ``name``: seeded from (seed, name), so one layer's draws do not depend on
    which other layers are factorized."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def _patterns(name: str, value: object) -> list[str]:
    """A list of module-name patterns; a bare string is refused (it would be read as characters)."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise TypeError(
            f"{name} must be a list of module-name patterns, got {type(value).__name__} {value!r}"
            + (f"; write {name}=[{value!r}]" if isinstance(value, str) else "")
        )
    bad = [p for p in value if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} patterns must be strings, got {bad[0]!r}")
    return list(value)


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


def _module_names(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> every name it is registered under, in registration order (shared: several)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _check_weight(name: str, layer: nn.Module, source: str) -> None:
    """A planned layer's weight must be a real floating-point tensor (finite, for ``source="existing"``)."""
    weight = layer.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"layer {name!r} has no weight tensor ({type(weight).__name__})")
    if weight.is_meta:
        raise ValueError(
            f"layer {name!r} is on the meta device (no values); materialize the model first, "
            "e.g. model.to_empty(device='cpu') and load or initialize its weights"
        )
    if not weight.is_floating_point():
        raise TypeError(f"layer {name!r} has a {weight.dtype} weight; a floating-point weight is required")
    if source == "existing":
        check_finite(f"weight of layer {name!r}", weight.detach())


def _plan(
    model: nn.Module,
    *,
    rank: int | Mapping[str, int] | None,
    rank_scale: float | None,
    init: str,
    layout: str,
    activation: ActivationArg,
    default_activation: Activation,
    include: Sequence[str],
    exclude: Sequence[str],
    factorize_stem: bool,
    factorize_classifier: bool,
    allow_growth: bool,
    source: str,
    use_post_ops: bool,
) -> list[_Plan]:
    modules = dict(model.named_modules())
    all_names = _module_names(model)
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
    unsupported = [
        n
        for n, m in modules.items()
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.Conv2d)
    ]
    order = graph.order if graph is not None else candidates
    aliased = [alias for n in modules for alias in all_names[id(modules[n])]]
    included = _matching(include, aliased, "include") if include else {}
    excluded = set().union(*_matching(exclude, aliased, "exclude").values()) if exclude else set()
    named = {p for p in include if p in aliased}  # exact names override the stem/classifier rule
    ranked = set(rank) if isinstance(rank, Mapping) else set()  # so do the names of a rank mapping
    named |= ranked
    stem, classifier = (order[0], order[-1]) if order else (None, None)

    plans: list[_Plan] = []
    for name in order + [n for n in candidates if n not in order]:
        layer = modules[name]
        assert isinstance(layer, (nn.Linear, nn.Conv2d))
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        before = layer.weight.numel()
        rows, cols = matrix_shape(tuple(layer.weight.shape), layout if kind == "conv" else "channel")
        rep = LayerReport(name, kind, (rows, cols), "skipped", before, before)
        names = all_names[id(layer)]
        plan = _Plan(name, layer, rep, aliases=[n for n in names if n != name])
        plans.append(plan)
        hits = set(names)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            rep.reason = f"grouped conv (groups={layer.groups}) is not factorized"
        elif graph is not None and name not in graph.order:
            rep.reason = "not called as a module in forward (its parent uses the weight directly)"
        elif graph is None and isinstance(
            model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention
        ):
            rep.reason = "inside nn.MultiheadAttention, which uses the weight directly"
        elif include and not any(hits & h for h in included.values()):
            rep.reason = "not matched by include"
        elif hits & excluded:
            rep.reason = "matched by exclude"
        elif isinstance(rank, Mapping) and not hits & ranked:
            rep.reason = "not named in the rank mapping"
        elif name == stem and not factorize_stem and not hits & named:
            rep.reason = "stem kept full-rank (factorize_stem=False)"
        elif name == classifier and not factorize_classifier and not hits & named:
            rep.reason = "classifier kept full-rank (factorize_classifier=False)"
        else:
            if isinstance(rank, Mapping):
                r = rank[next(n for n in names if n in ranked)]
            else:
                r = rank if rank is not None else rank_from_scale(rank_scale, rows, cols)  # type: ignore[arg-type]
            check_rank(r, rows, cols, where=f"layer {name!r}")
            after = r * (rows + cols)
            if after >= rows * cols and not allow_growth:
                rep.reason = f"rank {r} would not reduce parameters ({after:,} >= {rows * cols:,})"
            else:
                _check_weight(name, layer, source)
                rep.rank, rep.params_after, rep.status = r, after, "factorized"
                plan.activation, rep.activation_note = _resolve_activation(
                    name, activation, graph, default_activation
                )
                if graph is not None and use_post_ops:
                    plan.post = graph.post_ops.get(name, PostOp())
                bias = "bias" if layer.bias is not None else ""
                rep.post_op = "; ".join(x for x in (bias, plan.post.describe()) if x)
                view = layout if kind == "conv" else "channel"
                plan.init = resolve_init(init, plan.activation, view)
                plan.init.check_layout(view)
                rep.activation, rep.init = str(plan.activation), plan.init.name
                if plan.aliases:
                    rep.activation_note += f"; also called as {', '.join(plan.aliases)}"
    _resolve_ties(plans, modules)
    for key in ranked:
        p = next((p for p in plans if key in (p.name, *p.aliases)), None)
        if p is not None and not p.report.factorized:
            raise ValueError(f"rank names layer {key!r}, which would not be factorized: {p.report.reason}")
    for pattern, hits in included.items():
        if not any(({p.name, *p.aliases} & hits) and p.report.factorized for p in plans):
            reasons = "; ".join(f"{p.name}: {p.report.reason}" for p in plans if {p.name, *p.aliases} & hits)
            reasons = reasons or (
                "matches no Linear or Conv2d: "
                + ", ".join(sorted(f"{h} ({type(modules[h]).__name__})" for h in hits if h in modules)[:5])
            )
            raise ValueError(f"include pattern {pattern!r} names nothing that can be factorized ({reasons})")
    for name in unsupported:
        kind = type(modules[name]).__name__
        plans.append(
            _Plan(
                name,
                modules[name],  # type: ignore[arg-type]
                LayerReport(
                    name,
                    "unsupported",
                    (0, 0),
                    "skipped",
                    modules[name].weight.numel(),
                    modules[name].weight.numel(),
                    reason=f"{kind} is not supported (nlinit factorizes Linear and Conv2d)",
                ),
            )
        )
    return plans


def _resolve_ties(plans: list[_Plan], modules: Mapping[str, nn.Module]) -> None:
    """Layers whose weight Parameter is shared (tied) with other modules.

    When every holder of the weight is a planned layer of the same type and rank, the first one (in
    execution order) is factorized and the others reuse its factors (one factorization per shared weight;
    the report counts the parameters once, at the first). Otherwise (a holder is an Embedding, a skipped
    layer, another shape) every holder stays dense: factorizing some of them would untie the weight.
    """
    by_module = {id(p.layer): p for p in plans}
    holders: dict[int, list[str]] = {}
    for name, module in modules.items():
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor):
            holders.setdefault(id(weight), []).append(name)
    for p in plans:
        group = holders.get(id(p.layer.weight), [])
        if not p.report.factorized or len(group) < 2:
            continue
        members = [by_module.get(id(modules[n])) for n in group]
        first = next(m for m in plans if m in members)
        shareable = all(
            m is not None
            and m.report.factorized
            and type(m.layer) is type(p.layer)
            and m.report.rank == p.report.rank
            for m in members
        )
        if shareable and p is not first:
            p.tied_to = first.name
            p.report.params_before = p.report.params_after = 0
            p.report.activation_note += f"; weight tied to {first.name}: shares its factors (counted there)"
        elif not shareable:
            others = ", ".join(
                f"{n} ({type(modules[n]).__name__})" for n in group if modules[n] is not p.layer
            )
            p.report.status, p.report.rank, p.report.params_after = "skipped", None, p.report.params_before
            p.report.reason = f"weight tied to {others}: factorizing only some holders would untie it"


def _layer_function(
    p: _Plan, layout: str, use_post_ops: bool, stats: LayerStats | None = None
) -> LayerFunction:
    """What layer ``p`` really computes up to its activation (:class:`LayerFunction`).

    With input statistics (``stats`` from calibration data): the inputs' mean, covariance and samples, the
    layer's bias and, with ``use_post_ops``, its traced post-op (an eval-mode BatchNorm folded into s, t, or
    a training-mode one: normalized). Without statistics only a training-mode BatchNorm counts (the
    scale-free objective does not depend on the inputs' mean): the bias and an eval-mode BatchNorm's shift
    move each unit's threshold relative to the inputs' real mean, and fitting them under x ~ N(0, I) made a
    3-layer MLP's output error at init 1.11 instead of 0.40 (docs/theory.md, section 11). A conv in the
    "spatial" layout (whose rows are not units) gets the paper's model.
    """
    normalized = use_post_ops and p.post.kind == "normalized"
    if layout == "spatial":
        return LayerFunction()
    if stats is None:
        return LayerFunction(normalized=normalized)
    scale, shift = p.post.affine() if use_post_ops and p.post.kind == "affine" else (None, None)
    return LayerFunction.from_stats(stats, bias=p.layer.bias, scale=scale, shift=shift, normalized=normalized)


def _build(
    p: _Plan,
    *,
    layout: str,
    source: str,
    distribution: str,
    seed: int,
    init_kwargs: dict[str, Any],
    function: LayerFunction,
) -> tuple[LowRankConv2d | LowRankLinear, Tensor, SVD]:
    """The planned layer's low-rank replacement, its full-rank W (the layer's matrix view) and W's top-r SVD.

    Sets ``p.report.seconds``: the init's time, including W's SVD for inits that start from it (not for
    those that solve the whitened problem of a real layer function, which do not use it).
    """
    layer, rep, act, info = p.layer, p.report, p.activation, p.init
    assert act is not None and info is not None and rep.rank is not None
    cls = LowRankConv2d if isinstance(layer, nn.Conv2d) else LowRankLinear
    layout = layout if cls is LowRankConv2d else "channel"
    # A fresh W is drawn from a CPU generator, so it is the same whatever the layer's device.
    weight = full_rank_weight(layer, source, distribution, generator=layer_generator(seed, p.name))
    W = cls.like(layer, rep.rank, layout).to_matrix(weight)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    svd = truncated_svd(W, rep.rank)
    t_svd = time.perf_counter() - t0
    options = dict(init_kwargs)
    if info.draws_factors:
        options.setdefault("distribution", distribution)
    t0 = time.perf_counter()
    new = cls.from_dense(
        layer,
        rep.rank,
        info,
        activation=act,
        weight=weight,
        generator=layer_generator(seed, p.name, layer.weight.device),  # the init's draws, on its device
        layout=layout,
        svd=svd,
        post=p.post,
        function=function,
        **options,
    )
    if weight.is_cuda:
        torch.cuda.synchronize(weight.device)  # kernels run asynchronously: wait before reading the clock
    rep.seconds = time.perf_counter() - t0 + (t_svd if info.takes_svd(function) else 0.0)
    return new, W, svd


def _measure(
    p: _Plan,
    new: LowRankConv2d | LowRankLinear,
    W: Tensor,
    svd: SVD,
    function: LayerFunction,
    *,
    objective_method: str,
    seed: int,
    certify: bool,
) -> None:
    """The report's objectives R/R(0) of the init and of spectral (from the same SVD, with the dense
    layer's bias), each on the layer's function (:func:`_objective`), and the certificate."""
    rep, act = p.report, p.activation
    assert act is not None
    W_fn = new.function_view(W)
    if function.normalized:
        method = "exact, normalized"
    elif function.is_plain:
        method = resolve_method(act, objective_method)
    else:
        method = "exact, layer function"
    rep.objective_method = method
    dense_bias = p.layer.bias.detach() if p.layer.bias is not None else None
    new_bias = new.bias.detach() if new.bias is not None else None
    Y: Tensor | None = None  # the init's function matrix, formed only where an objective needs it dense
    with torch.no_grad():
        same = _is_spectral(new, new_bias, svd, dense_bias)
        if method == "exact, layer function":  # from the factors, W Sigma once (channel layout: Y = U V^T)
            candidates = [(new.U, new.V, new_bias)] + ([] if same else [(*svd.factors(), dense_bias)])
            values = relative_objectives(W, candidates, act, function)
            rep.objective_init, rep.objective_spectral = values[0], values[-1]
        else:
            Y = new.function_view(new.matrix())
            rep.objective_init = _objective(W_fn, Y, act, method, seed, p.name, function)
            rep.objective_spectral = (
                rep.objective_init
                if same
                else _objective(W_fn, new.function_view(svd.product()), act, method, seed, p.name, function)
            )
    layout = getattr(new, "layout", "channel")
    if function.heldout is not None and not function.normalized and layout == "channel":
        held = function.heldout.to(W.device)
        chosen = (new.U.detach(), new.V.detach(), new_bias)  # the channel view: Y = U V^T
        if p.init is not None and p.init.name == "whiten":
            whiten_factors = chosen
        else:
            whiten = get_init("whiten").solve(W, rep.rank, act, function=function)  # type: ignore[arg-type]
            whiten_factors = (whiten.U, whiten.V, whiten.bias)
        candidates = [(*svd.factors(), dense_bias), whiten_factors, chosen]
        values = relative_objectives(W, candidates, act, function, samples=held)  # W x once for all three
        rep.heldout_spectral, rep.heldout_whiten, rep.heldout_init = values
    if not certify:
        return
    why = (
        "the spatial layout's function view is not rank r"
        if layout != "channel"
        else f"{act} is outside the leaky-ReLU family"
        if act.leaky_slope is None
        else "the objective has offsets (bias, BatchNorm) or is normalized; fit='paper' certifies "
        "the paper's objective"
        if method != "exact"
        else ""
    )
    if why:
        rep.activation_note += f"; not certified: {why}"
        return
    assert Y is not None  # certified only on the paper's objective, computed from Y above
    cert = bounds.certify(W_fn, Y, rep.rank, act)  # type: ignore[arg-type]
    rep.objective_lower_bound = cert.lower_bound / cert.zero_objective if cert.zero_objective else 0.0
    rep.certified_gap = cert.relative_gap


def _is_spectral(
    new: LowRankConv2d | LowRankLinear, bias: Tensor | None, svd: SVD, bias_s: Tensor | None
) -> bool:
    """Whether the new layer is spectral's, factor for factor (spectral itself; relu-svd under a
    normalization or for the identity, which return spectral's factors): then the report takes spectral's
    objective from the init's instead of computing it again."""
    if bias is None or bias_s is None:
        if bias is not bias_s:
            return False
    elif not torch.equal(bias, bias_s):
        return False
    Us, Vs = svd.factors()
    return torch.equal(new.U.detach(), Us) and torch.equal(new.V.detach(), Vs)


def _objective(
    W: Tensor,
    Y: Tensor,
    act: Activation,
    method: str,
    seed: int,
    name: str,
    function: LayerFunction,
) -> float | None:
    """Relative objective R(Y)/R(0) in float64 on the layer's function: the paper's (method "exact" or
    "mc"; Monte Carlo draws seeded per layer, the same for every init) or the scale-free one ("exact,
    normalized"; "exact, layer function" and the held-out objectives are :func:`relative_objectives`). None
    where it is undefined (R(0) = 0 < R(Y))."""
    gen = layer_generator(seed + 1, name, W.device)
    W64, Y64 = W.double(), Y.detach().double()
    try:
        if method == "exact, normalized" and function.cov_unmeasured:  # on the outputs y = W x
            B = row_space_coefficients(W64, Y64.T)  # Y = B^T W, or None when Y leaves W's row space
            out_cov = function.out_cov.double().to(W64.device)  # type: ignore[union-attr]
            eye = torch.eye(W64.shape[0], dtype=torch.float64, device=W64.device)
            value = None if B is None else normalized_loss(eye, B.T, act, relative=True, cov=out_cov)
        elif method == "exact, normalized":
            value = normalized_loss(W64, Y64, act, relative=True, cov=function.cov)
        else:
            value = nlra_loss(W64, Y64, act, method, relative=True, generator=gen, num_samples=4096)
    except ValueError as err:
        if "R(0) = 0" not in str(err):
            raise
        return None
    return None if value is None else float(value)


def _share_factors(p: _Plan, first: LowRankConv2d | LowRankLinear) -> LowRankConv2d | LowRankLinear:
    """A low-rank copy of ``p.layer`` whose U and V are ``first``'s very Parameters (a tied weight)."""
    cls = LowRankConv2d if isinstance(p.layer, nn.Conv2d) else LowRankLinear
    new = cls.like(p.layer, first.rank, getattr(first, "layout", "channel"))  # type: ignore[arg-type]
    new.U, new.V = first.U, first.V
    if p.layer.bias is not None:
        with torch.no_grad():
            new.bias.copy_(p.layer.bias)  # type: ignore[union-attr]
    return new


def factorize(
    model: nn.Module,
    *,
    rank_scale: float | None = None,
    rank: int | Mapping[str, int] | None = None,
    init: str = DEFAULT_INIT,
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
    progress: bool | None = None,
    certify: bool = False,
    fit: str = "layer",
    calibration: Iterable[Any] | Tensor | None = None,
    calibration_batches: int | None = None,
    calibration_samples: int = 512,
    calibration_heldout: int = 512,
    calibration_positions: float = 1.0,
    stats: Mapping[str, LayerStats] | None = None,
    **init_kwargs: Any,
) -> FactorizeReport:
    """Replace ``model``'s Linear and Conv2d layers by low-rank ones, in place, and report what was done.

    Each chosen layer's full-rank weight W (``source``: the layer's own, or a fresh draw from
    ``distribution``) is factorized as U V^T of rank r by ``init`` against the activation that follows it.

    Args:
        model: any nn.Module (not DDP-wrapped); every torchvision classification model works.
        rank_scale: s in (0, 1]: r = max(1, round(s * min(rows, cols))) per layer. Exactly one of
            rank_scale and rank must be given.
        rank: one int rank for every layer (must fit each), or a {module name: rank} mapping: exactly the
            named layers are factorized, each at its rank (naming the stem or classifier factorizes it; a
            named layer that would be skipped, e.g. excluded or not saving parameters, is an error).
        init: ``"auto"`` (default: per layer, the best init at spectral's cost for its activation,
            :func:`nlinit.inits.auto_init`) or a registered init (:func:`nlinit.inits.list_inits`).
        activation: ``"auto"`` (found with torch.fx: the nonlinearity after the layer through BatchNorm,
            dropout, reshapes; identity when the output reaches an addition or another layer first), a
            name for every layer, or a dict {module-name pattern: name} (unmatched layers use "auto").
        default_activation: used where tracing fails.
        layout: conv matrix view, ``"channel"`` or ``"spatial"``.
        source: ``"existing"`` (the layer's weights: warm start) or ``"fresh"`` (a new draw, as in the paper).
        distribution: for fresh W and the baseline init: trunc-normal (paper), kaiming-normal,
            torch-default, or reset-parameters (fresh W only).
        include, exclude: lists of fnmatch patterns of module names. Each pattern must match a module; an
            include pattern must name something that can be factorized. Naming the stem or the classifier
            exactly in ``include`` factorizes it.
        factorize_stem, factorize_classifier: also factorize the first / last layer executed.
        allow_growth: factorize even where r (rows + cols) >= rows cols.
        seed: an int; every random draw comes from a per-layer generator seeded by (seed, layer name). A
            fresh W is drawn on the CPU, so it is the same on every device; lfai's samples use the layer's
            device.
        objective_method: how the report's objectives are computed: "auto" (exact where a closed form
            exists, else Monte Carlo), "exact" or "mc".
        progress: a tqdm bar over the layers; None (default): shown when stderr is a terminal.
        certify: also certify each layer's distance to the optimal rank-r NLRA solution
            (:func:`nlinit.bounds.certify`): LayerReport.objective_lower_bound and certified_gap. Only for
            leaky-ReLU-family activations (relu, leaky_relu, identity) in the "channel" layout (or Linear);
            other activations have no certified bound, and a "spatial" factor's function view is not a
            rank-r matrix, so those layers keep None. Costs a few eigendecompositions per layer.
        fit: what each layer's init fits, one of :data:`FITS`. ``"layer"`` (default): the function the layer
            really computes up to its activation (:class:`nlinit.layer_function.LayerFunction`): its bias and
            the post-op found by tracing (:class:`nlinit.graph.PostOp`: an eval-mode BatchNorm folded into a
            per-unit affine map; a training-mode BatchNorm makes relu-svd and nlra-opt fit the scale-free
            objective) and, with ``calibration`` / ``stats``, its real inputs' mean and covariance; the report
            measures the same objective (``objective_method``). ``"paper"``: the paper's objective
            E||act(W x) - act(Y x)||^2, x ~ N(0, I), no bias, no post-op, for every layer (what
            :func:`nlinit.bounds.certify` certifies; no calibration data). (Named ``fit`` because
            ``objective`` is an init option: lfai's sampled / exact objective.)
        calibration: model inputs (a DataLoader, a list of batches, dict batches for HF-style models, or one
            tensor) whose statistics make every data-aware init fit each layer's real function
            (:func:`nlinit.calibration.collect_stats`: each layer's input mean and covariance, where
            d_out < d_in the covariance of its outputs W Sigma W^T instead unless the init reads Sigma
            itself (:attr:`nlinit.inits.InitInfo.needs_cov`; the same solution, far cheaper), a reservoir
            of ``calibration_samples`` input vectors, and ``calibration_heldout`` vectors from held-out
            inputs, every 5th; docs/theory.md section 11). The report then also gives each layer's objective
            on the held-out vectors for spectral, whiten and the init. Needs ``source="existing"``; collected
            with the model in its current mode; each layer's statistics are freed once it is solved.
        calibration_batches: use at most this many calibration batches.
        calibration_samples, calibration_heldout: reservoir sizes per layer (for sample-based inits such as
            ``lfai-data``, and for the held-out objectives).
        calibration_positions: p in (0, 1]: a conv's moments from a random fraction p of its output columns
            (``collect_stats(positions=)``: about p of the cost; 1, the default, is exact).
        stats: instead of ``calibration``, statistics already collected (:func:`nlinit.calibration.
            collect_stats` on this model, {module name: LayerStats}) for every layer to factorize (every
            Linear, and every Conv2d in the "channel" layout); e.g. shared with a rank allocation
            (:func:`nlinit.compress.compress`). Not modified.
        **init_kwargs: options for the init (e.g. ``objective="exact"``, ``max_epochs=3``); not with "auto".
    Returns:
        FactorizeReport, one LayerReport per Linear / Conv2d module in execution order (a module registered
        under several names is factorized once and swapped in under every name; layers of unsupported
        kinds, e.g. Conv1d, are listed as skipped).
    Raises:
        TypeError: a DistributedDataParallel / DataParallel model (factorize the module inside, then wrap),
            a string for include / exclude, a non-int seed, a non-float weight.
        ValueError: bad rank, rank_scale, names, patterns, non-finite weights or a module on the meta
            device; the model is unchanged.

    Example:
        >>> model = torchvision.models.resnet18()
        >>> report = factorize(model, rank_scale=0.1)
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
    if isinstance(rank, Mapping):
        _check_rank_mapping(model, rank)
    elif rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    check_choice("init", init, init_choices())
    check_choice("layout", layout, LAYOUTS)
    check_choice("source", source, SOURCES)
    check_choice("distribution", distribution, (*DISTRIBUTIONS, "reset-parameters"))
    check_choice("objective_method", objective_method, ("auto", "exact", "mc"))
    check_choice("fit", fit, FITS)
    for flag, value in (
        ("certify", certify),
        ("allow_growth", allow_growth),
        ("factorize_stem", factorize_stem),
        ("factorize_classifier", factorize_classifier),
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")
    include_patterns, exclude_patterns = _patterns("include", include), _patterns("exclude", exclude)
    if calibration is not None and stats is not None:
        raise ValueError("pass calibration (model inputs) or stats (collected statistics), not both")
    if stats is not None and not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a {{layer name: LayerStats}} mapping, got {type(stats).__name__}")
    if stats is not None and source != "existing":
        raise ValueError(f"stats describe the existing model's layers; got source={source!r}, use 'existing'")
    if calibration is not None and source != "existing":
        raise ValueError(
            f"calibration statistics describe the existing model's layers; got source={source!r}, "
            "use source='existing' (or drop calibration)"
        )
    if fit == "paper" and (calibration is not None or stats is not None):
        raise ValueError(
            "fit='paper' fits x ~ N(0, I), so calibration data would go unused; drop calibration / stats or "
            "use fit='layer'"
        )
    if fit == "paper" and init != DEFAULT_INIT and get_init(init).needs_stats:
        raise ValueError(
            f"init {init!r} fits calibration data, which fit='paper' has none of; use fit='layer'"
        )
    if calibration is None and stats is None and init != DEFAULT_INIT and get_init(init).needs_stats:
        raise ValueError(f"init {init!r} needs calibration data: pass calibration=... (model inputs)")
    if calibration_batches is not None:
        check_int("calibration_batches", calibration_batches, low=1)
    check_int("calibration_samples", calibration_samples, low=0)
    check_int("calibration_heldout", calibration_heldout, low=0)
    p_ok = isinstance(calibration_positions, (int, float)) and not isinstance(calibration_positions, bool)
    if not (p_ok and 0 < calibration_positions <= 1):
        raise ValueError(f"calibration_positions must be a number in (0, 1], got {calibration_positions!r}")
    check_init_options(init, init_kwargs)
    if distribution == "reset-parameters" and init != DEFAULT_INIT and get_init(init).draws_factors:
        raise ValueError(
            f"distribution 'reset-parameters' draws a full-rank W only; init {init!r} draws factors from one "
            f"of: {', '.join(sorted(DISTRIBUTIONS))}"
        )
    default_act = parse_activation(default_activation)
    check_activation_spec(activation)

    use_post_ops = fit == "layer"
    start = time.perf_counter()
    plans = _plan(
        model,
        rank=rank,
        rank_scale=rank_scale,
        init=init,
        layout=layout,
        activation=activation,
        default_activation=default_act,
        include=include_patterns,
        exclude=exclude_patterns,
        factorize_stem=factorize_stem,
        factorize_classifier=factorize_classifier,
        allow_growth=allow_growth,
        source=source,
        use_post_ops=use_post_ops,
    )
    _warn_skipped(plans)
    todo = [p for p in plans if p.report.factorized]
    wanted = {
        p.name: p.layer
        for p in todo
        if p.tied_to is None and (p.report.kind == "linear" or layout == "channel")
    }
    stats = {} if stats is None else _layer_stats(stats, wanted)
    t_stats = time.perf_counter()
    if calibration is not None:
        stats = collect_stats(
            model,
            wanted,
            calibration,
            batches=calibration_batches,
            samples=calibration_samples,
            heldout=calibration_heldout,
            generator=torch.Generator().manual_seed(seed),
            positions=calibration_positions,
            input_cov=any(p.init is not None and p.init.needs_cov for p in todo),  # else K from outputs
        )
    t_stats = time.perf_counter() - t_stats if calibration is not None else 0.0
    # Build every new layer first and swap them in at the end, so an error leaves the model unchanged.
    new_layers: dict[str, nn.Module] = {}
    built: dict[str, LowRankConv2d | LowRankLinear] = {}
    bar = tqdm(
        todo, desc=f"factorize ({init})", disable=None if progress is None else not progress, unit="layer"
    )
    for p in bar:
        if p.tied_to is not None:
            new = _share_factors(p, built[p.tied_to])
        else:
            view = layout if p.report.kind == "conv" else "channel"
            function = _layer_function(p, view, use_post_ops, stats.pop(p.name, None))  # freed once solved
            new, W, svd = _build(
                p,
                layout=layout,
                source=source,
                distribution=distribution,
                seed=seed,
                init_kwargs=init_kwargs,
                function=function,
            )
            _measure(p, new, W, svd, function, objective_method=objective_method, seed=seed, certify=certify)
            built[p.name] = new
        for name in (p.name, *p.aliases):
            new_layers[name] = new
    replace_modules(model, new_layers)
    config = {
        "rank_scale": rank_scale,
        "rank": dict(rank) if isinstance(rank, Mapping) else rank,
        "init": init,
        "layout": layout,
        "source": source,
        "distribution": distribution,
        "seed": seed,
        "allow_growth": allow_growth,
        "certify": certify,
        "factorize_stem": factorize_stem,
        "factorize_classifier": factorize_classifier,
        "fit": fit,
        "init_options": {k: v for k, v in init_kwargs.items() if isinstance(v, (int, float, str, bool))},
    }
    config["calibration"] = calibration is not None or stats is not None
    return FactorizeReport([p.report for p in plans], config, time.perf_counter() - start, t_stats)


def _layer_stats(given: Mapping[str, Any], layers: Mapping[str, nn.Module]) -> dict[str, LayerStats]:
    """{name: LayerStats} of ``given`` for exactly ``layers``, each checked against its layer's input size;
    a one-line ValueError naming the first layer without one (extra entries of ``given`` are ignored)."""
    out = {}
    for name, layer in layers.items():
        got = given.get(name)
        if not isinstance(got, LayerStats):
            kind = "none" if got is None else type(got).__name__
            raise ValueError(f"stats has no LayerStats for layer {name!r} (got {kind}); collect_stats it")
        out[name] = got.check(layer.weight[0].numel(), where=f"layer {name!r}")  # type: ignore[index]
    return out


def _check_rank_mapping(model: nn.Module, rank: Mapping[str, int]) -> None:
    """Every key names a Linear / Conv2d module of ``model`` and every value is a positive int."""
    if not rank:
        raise ValueError("rank is an empty mapping; name at least one layer, e.g. rank={'fc1': 8}")
    modules = dict(model.named_modules(remove_duplicate=False))
    for name, r in rank.items():
        if not isinstance(name, str) or not isinstance(modules.get(name), (nn.Linear, nn.Conv2d)):
            kind = type(modules[name]).__name__ if isinstance(name, str) and name in modules else "nothing"
            raise ValueError(f"rank names {name!r}, which is {kind}, not a Linear or Conv2d of the model")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"rank for layer {name!r} must be a positive int, got {r!r}")


def _warn_skipped(plans: Sequence[_Plan]) -> None:
    """One warning per kind of layer skipped for what it is (grouped convs, unsupported types, tied weights),
    and one when nothing at all could be factorized."""
    for what, test in (
        ("grouped/depthwise conv(s), which are not factorized", lambda r: "grouped conv" in r),
        ("layer(s) of unsupported kinds", lambda r: "is not supported" in r),
        ("layer(s) with tied weights", lambda r: "weight tied to" in r),
    ):
        names = [p.name for p in plans if test(p.report.reason)]
        if names:
            warnings.warn(
                f"skipped {len(names)} {what}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''} "
                "(see the report)",
                stacklevel=3,
            )
    if not any(p.report.factorized for p in plans):
        warnings.warn(
            "factorize changed nothing: no Linear or Conv2d layer qualified "
            f"({len(plans)} listed in the report with the reason each was skipped)",
            stacklevel=3,
        )


def replace_modules(model: nn.Module, new_layers: Mapping[str, nn.Module]) -> None:
    """Put each new module in place of the submodule of the same name (``"layer1.0.conv1"``), in place."""
    for name, new in new_layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
