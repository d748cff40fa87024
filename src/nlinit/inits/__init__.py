"""Initializers of low-rank factors: one registry that holds each init's facts, one entry point.

Each initializer is a pure function ``fn(W, rank, *, activation, generator, **options) -> (U, V)`` with
W (d_out, d_in), U (d_out, r), V (d_in, r) and low-rank weight U @ V.T. Adding one is one function and
one :func:`register_init` line that states its facts (:class:`InitInfo`): what it costs, whether it works
per output unit, and what it needs beyond W (a conv's geometry, a distribution to draw from, the top-r SVD).
Callers ask the registry (:func:`get_init`, :func:`resolve_init`) instead of inspecting functions.

``init="auto"`` (:data:`DEFAULT_INIT`) picks per layer, from the activation that follows it, the best init
whose cost is that of spectral init (:func:`auto_init`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_matrix, check_rank
from ..activations import Activation, parse_activation
from ..calibration import LayerStats
from ..graph import PostOp
from ..layer_function import InitResult, LayerFunction
from ..matrix_view import LAYOUTS, ConvGeometry
from ..objective import EXACT_ACTIVATIONS
from ..subspace import SVD
from .asvd import asvd
from .baseline import baseline
from .lfai import lfai
from .lfai_data import lfai_data
from .nlra_opt import nlra_opt
from .provable import provable
from .relu_svd import relu_svd
from .source import DISTRIBUTIONS, SOURCES, full_rank_weight, sample_weight
from .spectral import spectral
from .whiten import whiten

__all__ = [
    "DEFAULT_INIT",
    "DISTRIBUTIONS",
    "INITS",
    "Factors",
    "SOURCES",
    "ConvGeometry",
    "InitInfo",
    "auto_init",
    "check_init_options",
    "full_rank_weight",
    "get_init",
    "init_choices",
    "init_factors",
    "init_options",
    "list_inits",
    "register_init",
    "resolve_init",
    "sample_weight",
]

InitFn = Callable[..., InitResult]

#: the init every public entry point uses by default: chosen per layer by :func:`auto_init`.
DEFAULT_INIT = "auto"

#: arguments every init takes, or is given by the caller's context (the layer's SVD, post-op, function);
#: the others are options a user may pass.
_STANDARD = ("W", "rank", "activation", "generator", "svd", "post", "function")


class Factors(tuple):
    """(U, V): unpacks as ``U, V = init_factors(...)``; ``bias`` is the refitted bias of the low-rank layer
    when the init fitted the units' offsets on the layer's real function, else None."""

    bias: Tensor | None

    def __new__(cls, U: Tensor, V: Tensor, bias: Tensor | None = None) -> Factors:
        out = super().__new__(cls, (U, V))
        out.bias = bias
        return out

    @property
    def U(self) -> Tensor:
        return self[0]

    @property
    def V(self) -> Tensor:
        return self[1]


@dataclass(frozen=True)
class InitInfo:
    """One registered init and its facts. Calling it calls ``fn``.

    Attributes:
        name: registry key, lowercase-hyphenated. fn: the pure initializer.
        summary: what it computes, one line. cost: its cost, in words (``nlinit list inits`` prints both).
        per_unit: works per output unit (a closed form per row of W), so the rows must be the units: for a
            conv only the "channel" layout qualifies.
        needs_conv: takes the conv's :class:`~nlinit.matrix_view.ConvGeometry` (``conv=``).
        draws_factors: draws U, V from a full-rank init distribution (``distribution=``).
        uses_svd: accepts the top-r SVD of W (``svd=``), so a caller that has it computes it once per layer.
        uses_post: accepts the layer's post-op (``post=``, :class:`nlinit.graph.PostOp`) and fits the real
            layer function with it (e.g. the scale-free objective under a training-mode BatchNorm).
        uses_function: accepts the layer's real function (``function=``,
            :class:`nlinit.layer_function.LayerFunction`: input statistics, bias, BatchNorm) and then
            returns a refitted bias too.
        needs_stats: cannot work without calibration statistics of the layer's inputs (samples).
        needs_cov: reads the input covariance Sigma itself, not only the outputs' covariance W Sigma W^T
            (which is all the whitened solvers read where d_out < d_in:
            :func:`nlinit.layer_function.whitened_problem`); a caller collecting statistics for this init
            must keep Sigma (``collect_stats(input_cov=True)``).
        options: keyword options a caller may pass (read once from ``fn``'s signature), ``conv`` and
            ``distribution`` included.
    """

    name: str
    fn: InitFn
    summary: str = ""
    cost: str = ""
    per_unit: bool = False
    needs_conv: bool = False
    draws_factors: bool = False
    uses_svd: bool = False
    uses_post: bool = False
    uses_function: bool = False
    needs_stats: bool = False
    needs_cov: bool = False
    options: tuple[str, ...] = field(default=())

    def __call__(self, W: Tensor, rank: int, **kwargs: Any) -> InitResult:
        return self.fn(W, rank, **kwargs)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise ValueError naming the first option this init does not take, and the ones it does."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} for init {self.name!r}; "
                f"available: {', '.join(self.options) or 'none'}"
            )

    def check_layout(self, layout: str) -> None:
        """Refuse a per-unit init in the "spatial" layout: its rows (channel, kernel row) are not units."""
        if layout == "spatial" and self.per_unit:
            raise NotImplementedError(
                f"init {self.name!r} works per output unit and needs layout='channel', got 'spatial'"
            )

    def takes_svd(self, function: LayerFunction | None) -> bool:
        """Whether :meth:`solve` hands this init W's top-r SVD for ``function``: only inits with
        ``uses_svd``, and only without a real layer function (then they solve a whitened W~ instead)."""
        return self.uses_svd and (function is None or function.is_plain)

    def solve(
        self,
        W: Tensor,
        rank: int,
        activation: Activation,
        generator: torch.Generator | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        conv: ConvGeometry | None = None,
        svd: SVD | None = None,
        post: PostOp | None = None,
        function: LayerFunction | None = None,
    ) -> Factors:
        """(U, V) for W with no input checks (the caller validated): the one place an init is called.

        ``conv``, ``svd``, ``post`` and ``function`` are passed only to inits that take them (a plain
        ``function`` to none); ``svd`` only when there is no ``function`` (it is W's, not the whitened W's).
        """
        kwargs = dict(options or {})
        if self.needs_conv and conv is not None:
            kwargs.setdefault("conv", conv)
        real = function is not None and not function.is_plain
        if svd is not None and self.takes_svd(function):
            kwargs["svd"] = svd
        if self.uses_post and post is not None:
            kwargs["post"] = post
        if self.uses_function and real:
            kwargs["function"] = function
        with torch.no_grad():
            out = self.fn(W.detach(), rank, activation=activation, generator=generator, **kwargs)
        bias = out[2] if len(out) == 3 else None
        return Factors(out[0].detach(), out[1].detach(), None if bias is None else bias.detach())


#: name -> :class:`InitInfo`. Keys are lowercase-hyphenated.
INITS: dict[str, InitInfo] = {}


def register_init(
    name: str,
    fn: InitFn,
    *,
    summary: str = "",
    cost: str = "",
    per_unit: bool = False,
    uses_svd: bool = False,
    needs_stats: bool = False,
    needs_cov: bool = False,
) -> InitInfo:
    """Add ``fn`` to :data:`INITS` under ``name`` with its facts; a duplicate name is an error.

    ``needs_conv`` / ``draws_factors`` / ``options`` are read from the signature: a ``conv`` or
    ``distribution`` parameter, and every keyword not fixed by a ``functools.partial``.
    """
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"init name must be a non-empty string without whitespace, got {name!r}")
    if name in INITS or name == DEFAULT_INIT:
        raise ValueError(f"init {name!r} is already registered")
    if not callable(fn):
        raise TypeError(f"fn of init {name!r} must be callable, got {type(fn).__name__}")
    fixed = fn.keywords if isinstance(fn, partial) else {}
    params = [p for p in inspect.signature(fn).parameters if p not in fixed]
    info = InitInfo(
        name,
        fn,
        summary,
        cost,
        per_unit=per_unit,
        needs_conv="conv" in params,
        draws_factors="distribution" in params,
        uses_svd=uses_svd and "svd" in params,
        uses_post="post" in params,
        uses_function="function" in params,
        needs_stats=needs_stats,
        needs_cov=needs_cov,
        options=tuple(sorted(p for p in params if p not in _STANDARD)),
    )
    INITS[name] = info
    return info


register_init(
    "baseline",
    baseline,
    summary="U, V each drawn from the full-rank init distribution (paper, init 1)",
    cost="a draw",
)
register_init(
    "spectral",
    spectral,
    summary="truncated SVD, singular values split evenly (Khodak et al. 2021); optimal for identity",
    cost="one SVD",
    uses_svd=True,
)
register_init(
    "whiten",
    whiten,
    summary="truncated SVD of W L (L L^T = the inputs' covariance), bias corrected; linear optimum on data",
    cost="one SVD + W Sigma W^T (an eigh of Sigma when d_in <= d_out)",
    per_unit=True,  # its statistics and bias are per unit of the "channel" view
)
register_init(
    "asvd",
    asvd,
    summary="truncated SVD of W diag(E|x|)^alpha mapped back (ASVD, Yuan et al. 2023), bias keeps the means",
    cost="one SVD",
    per_unit=True,  # its statistics are per column of the "channel" view
    needs_stats=True,
)
register_init(
    "relu-svd",
    relu_svd,
    summary="closed-form optimum on the SVD subspace (paper, Theorem 3.3.8); never worse than spectral",
    cost="one SVD + O((d_out + d_in) r^2)",
    per_unit=True,
    uses_svd=True,
)
register_init(
    "lfai",
    partial(lfai, start="baseline"),
    summary="Adam on the sampled objective from the baseline factors (paper, Algorithm 2)",
    cost="up to 768 Adam steps",
    needs_cov=True,  # the baseline factors map into whitened coordinates through L itself
)
register_init(
    "lfai-ws",
    partial(lfai, start="spectral"),
    summary="Adam on the sampled objective from the spectral factors (paper, Algorithm 3)",
    cost="up to 768 Adam steps",
    uses_svd=True,
)
register_init(
    "lfai-data",
    lfai_data,
    summary="Adam on the layer's calibration samples from relu-svd on its real function (nlinit's)",
    cost="up to 768 Adam steps on the samples",
    per_unit=True,
    needs_stats=True,
)
register_init(
    "nlra-opt",
    nlra_opt,
    summary="monotone subspace ascent then the closed-form rows; L-BFGS on the exact objective otherwise",
    cost="seconds to minutes per layer",
    per_unit=True,
    uses_svd=True,
)
register_init(
    "provable",
    provable,
    summary="within eps ||W||_F^2 of the optimum, deterministically (nlinit's fixed-rank algorithm)",
    cost="exp(r^2 / eps^2); small layers only",
    per_unit=True,
)


def list_inits() -> list[str]:
    """Registered init names, sorted (``"auto"`` is not one: it picks one of these per layer)."""
    return sorted(INITS)


def init_choices() -> list[str]:
    """What an ``init`` argument accepts: ``"auto"`` and every registered name."""
    return [DEFAULT_INIT, *list_inits()]


def get_init(name: str) -> InitInfo:
    """The registry entry of ``name``; ValueError listing the registered names if there is none."""
    return INITS[check_choice("init", name, INITS)]


def auto_init(activation: Activation, layout: str = "channel") -> str:
    """The init ``"auto"`` picks for a layer followed by ``activation``: the best at spectral's cost.

    ``relu-svd`` for every activation with an exact objective: the optimum on the SVD subspace, never worse
    than spectral (closed form for the leaky-ReLU family, where the whole factorize call costs at most 1.2x
    spectral's: benchmarks/SVD.md; each row's best norm by a short vectorized search for the smooth ones:
    benchmarks/SMOOTH.md), and under a training-mode BatchNorm spectral's product, its optimum there.
    ``spectral`` for activations without one, and for a conv in the "spatial" layout, whose rows are not
    units, so no per-unit init applies.
    """
    check_choice("layout", layout, LAYOUTS)
    if layout == "spatial" or activation.name not in EXACT_ACTIVATIONS:
        return "spectral"
    return "relu-svd"


def resolve_init(init: str | InitInfo, activation: Activation, layout: str = "channel") -> InitInfo:
    """The registry entry ``init`` names for a layer followed by ``activation`` (``"auto"`` resolved)."""
    if isinstance(init, InitInfo):
        return init
    if init == DEFAULT_INIT:
        return INITS[auto_init(activation, layout)]
    return INITS[check_choice("init", init, init_choices())]


def init_options(init: str) -> list[str]:
    """Keyword options that ``init`` accepts beyond W, rank, activation and generator (none for "auto")."""
    if check_choice("init", init, init_choices()) == DEFAULT_INIT:
        return []
    return list(get_init(init).options)


def check_init_options(init: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first option ``init`` does not take, and the ones it does."""
    if check_choice("init", init, init_choices()) == DEFAULT_INIT:
        if options:
            raise ValueError(
                f"init 'auto' takes no options (it picks an init per layer), got {sorted(options)[0]!r}; "
                "name an init to pass it options"
            )
        return
    get_init(init).check_options(options)


def init_factors(
    W: Tensor,
    rank: int,
    init: str = DEFAULT_INIT,
    activation: str | Activation = "relu",
    generator: torch.Generator | None = None,
    *,
    post: PostOp | None = None,
    function: LayerFunction | None = None,
    stats: LayerStats | None = None,
    method: str | None = None,
    **options: Any,
) -> Factors:
    """Low-rank factors (U, V) for the weight W by a registered init.

    Args:
        W: (d_out, d_in), finite; for convs the matrix view (:mod:`nlinit.matrix_view`).
        rank: r, 1 <= r <= min(d_out, d_in).
        init: ``"auto"`` (:func:`auto_init` for ``activation``) or one of :func:`list_inits`.
        activation: the nonlinearity after the layer, by name or :class:`Activation`.
        generator: the only source of randomness.
        post: what lies between the layer and its activation (:class:`nlinit.graph.PostOp`, as
            :func:`nlinit.graph.trace_layers` finds it); inits with ``uses_post`` fit the layer function it
            makes (e.g. the scale-free objective under a training-mode BatchNorm), others ignore it.
        function: the layer's real function (:class:`nlinit.layer_function.LayerFunction`, e.g.
            ``LayerFunction(mean=..., cov=..., bias=...)`` from calibration statistics); inits with
            ``uses_function`` fit it in whitened coordinates and refit the units' offsets (``.bias`` of the
            result), others ignore it.
        stats: calibration statistics of the layer's inputs (:class:`nlinit.calibration.LayerStats`, e.g.
            from :func:`nlinit.calibration.collect_stats`), short for
            ``function=LayerFunction.from_stats(stats)`` (no bias, no BatchNorm); not with ``function``.
        method: deprecated name of ``init``.
        **options: passed to the init (see its docstring), e.g. ``objective="exact"`` for lfai.
    Returns:
        :class:`Factors` (U, V) with shapes (d_out, r), (d_in, r), in W's dtype and on W's device, and
        ``.bias`` (d_out,) or None; W is not modified.
    Raises:
        ValueError: non-2-D or non-finite W, rank out of range, unknown init, activation or option.

    Example:
        >>> U, V = init_factors(torch.randn(64, 32), 8, "relu-svd")
        >>> (U @ V.T).shape
        torch.Size([64, 32])
    """
    if method is not None:
        warnings.warn(
            "init_factors(method=...) is deprecated; use init=...", DeprecationWarning, stacklevel=2
        )
        init = method
    check_matrix("W", W)
    check_rank(rank, *W.shape)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    act = parse_activation(activation)
    check_init_options(init, options)
    if post is not None and not isinstance(post, PostOp):
        raise TypeError(f"post must be a PostOp (from nlinit.graph.trace_layers) or None, got {post!r}")
    if stats is not None:
        if function is not None:
            raise ValueError("pass stats or function, not both (LayerFunction.from_stats(stats, bias=...))")
        if not isinstance(stats, LayerStats):
            raise TypeError(
                f"stats must be a LayerStats (nlinit.calibration) or None, got {type(stats).__name__}"
            )
        function = LayerFunction.from_stats(stats.check(W.shape[1]))
    if function is not None:
        if not isinstance(function, LayerFunction):
            raise TypeError(f"function must be a LayerFunction or None, got {type(function).__name__}")
        function.check(*W.shape)
    return resolve_init(init, act).solve(W, rank, act, generator, options, post=post, function=function)
