"""Initializers of low-rank factors: one registry, one entry point.

Each initializer is a pure function ``fn(W, rank, *, activation, generator, **options) -> (U, V)`` with
W (d_out, d_in), U (d_out, r), V (d_in, r) and low-rank weight U @ V.T. Adding one is one function and
one ``register_init`` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_matrix, check_rank
from ..activations import Activation, parse_activation
from ..matrix_view import ConvGeometry
from .baseline import baseline
from .lfai import lfai
from .nlra_opt import nlra_opt
from .provable import provable
from .relu_svd import relu_svd
from .source import DISTRIBUTIONS, SOURCES, full_rank_weight, sample_weight
from .spectral import spectral

__all__ = [
    "DISTRIBUTIONS",
    "INITS",
    "SOURCES",
    "ConvGeometry",
    "full_rank_weight",
    "check_init_options",
    "init_factors",
    "init_options",
    "list_inits",
    "register_init",
    "sample_weight",
]

InitFn = Callable[..., tuple[Tensor, Tensor]]

#: name -> initializer. Keys are lowercase-hyphenated.
INITS: dict[str, InitFn] = {}


def register_init(name: str, fn: InitFn) -> InitFn:
    """Add ``fn`` to :data:`INITS` under ``name``; a duplicate name is an error."""
    if name in INITS:
        raise ValueError(f"init {name!r} is already registered")
    INITS[name] = fn
    return fn


register_init("baseline", baseline)
register_init("spectral", spectral)
register_init("lfai", partial(lfai, start="baseline"))
register_init("lfai-ws", partial(lfai, start="spectral"))
register_init("relu-svd", relu_svd)
register_init("nlra-opt", nlra_opt)
register_init("provable", provable)


def list_inits() -> list[str]:
    """Registered init names, sorted."""
    return sorted(INITS)


def init_options(method: str) -> list[str]:
    """Keyword options that ``method`` accepts beyond W, rank, activation and generator."""
    fn = INITS[check_choice("method", method, INITS, what="init")]
    fixed = fn.keywords if isinstance(fn, partial) else {}
    params = inspect.signature(fn).parameters
    return sorted(p for p in params if p not in ("W", "rank", "activation", "generator") and p not in fixed)


def check_init_options(method: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first option ``method`` does not take, and the ones it does."""
    allowed = init_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for init {method!r}; available: {', '.join(allowed) or 'none'}"
        )


def init_factors(
    W: Tensor,
    rank: int,
    method: str = "lfai-ws",
    activation: str | Activation = "relu",
    generator: torch.Generator | None = None,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Low-rank factors (U, V) for the weight W by a registered method.

    Args:
        W: (d_out, d_in), finite; for convs the matrix view (:mod:`nlinit.matrix_view`).
        rank: r, 1 <= r <= min(d_out, d_in).
        method: one of :func:`list_inits`: baseline, spectral, lfai, lfai-ws, relu-svd.
        activation: the nonlinearity after the layer, by name or :class:`Activation`.
        generator: the only source of randomness.
        **options: passed to the method (see its docstring), e.g. ``objective="exact"`` for lfai.
    Returns:
        (U, V) with shapes (d_out, r), (d_in, r), in W's dtype and on W's device; W is not modified.
    Raises:
        ValueError: non-2-D or non-finite W, rank out of range, unknown method, activation or option.

    Example:
        >>> U, V = init_factors(torch.randn(64, 32), 8, "relu-svd")
        >>> (U @ V.T).shape
        torch.Size([64, 32])
    """
    check_matrix("W", W)
    check_choice("method", method, INITS, what="init")
    check_rank(rank, *W.shape)
    act = parse_activation(activation)
    check_init_options(method, options)
    with torch.no_grad():
        U, V = INITS[method](W.detach(), rank, activation=act, generator=generator, **options)
    return U.detach(), V.detach()
