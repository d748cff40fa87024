"""Argument checks: the one place where nlinit's error messages are built.

Every check raises before anything is mutated, with one line naming the argument, the value (``!r``)
and what is allowed, e.g. ``rank must be an int in [1, 32] for a 64x32 weight, got 40``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_finite",
    "check_int",
    "check_matrix",
    "check_module",
    "check_number",
    "check_rank",
    "check_shard",
    "check_rank_scale",
    "parse_shard",
    "rank_from_scale",
]


def check_choice(name: str, value: object, allowed: Iterable[str], *, what: str | None = None) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise ``ValueError`` listing the options."""
    options = sorted(allowed)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {what or name} {value!r}; available: {', '.join(options)}")
    return value


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]`` (``high=None``: no upper bound)."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and low <= value <= (value if high is None else high)
    ):
        return value
    allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_number(name: str, value: object, *, low: float | None = None, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool), ``> low`` (``strict``) or
    ``>= low``; otherwise raise ``ValueError``, e.g. ``tol must be a finite number >= 0, got nan``."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or (value > low if strict else value >= low))
    ):
        return float(value)
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")


def check_module(name: str, value: object) -> torch.nn.Module:
    """Require a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_matrix(name: str, W: Tensor) -> Tensor:
    """Require a 2-D floating-point tensor with finite entries."""
    if not isinstance(W, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (d_out, d_in) matrix, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {W.dtype}")
    return check_finite(name, W)


def check_finite(name: str, W: Tensor) -> Tensor:
    """Require that ``W`` has no NaN or Inf entries.

    A NaN or Inf entry makes the sum NaN or Inf, so a finite sum proves every entry finite without a
    boolean copy of W; only a non-finite sum (a bad entry, or an overflow of finite ones) looks closer."""
    if W.is_floating_point() and bool(torch.isfinite(W.sum())):
        return W
    if not bool(torch.isfinite(W).all()):
        bad = int((~torch.isfinite(W)).sum())
        raise ValueError(f"{name} has {bad} non-finite (NaN or Inf) entries; a finite tensor is required")
    return W


def check_rank(rank: object, rows: int, cols: int, *, where: str = "") -> int:
    """Require ``1 <= rank <= min(rows, cols)`` for a ``rows x cols`` matrix."""
    hi = min(rows, cols)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= hi:
        at = f" at {where}" if where else ""
        raise ValueError(f"rank must be an int in [1, {hi}] for a {rows}x{cols} weight{at}, got {rank!r}")
    return rank


def check_rank_scale(rank_scale: object) -> float:
    """Require a rank scale s in (0, 1]."""
    if (
        isinstance(rank_scale, bool)
        or not isinstance(rank_scale, (int, float))
        or not math.isfinite(rank_scale)
        or not 0.0 < rank_scale <= 1.0
    ):
        raise ValueError(f"rank_scale must be a number in (0, 1], got {rank_scale!r}")
    return float(rank_scale)


def rank_from_scale(rank_scale: float, rows: int, cols: int) -> int:
    """The paper's rank rule: r = max(1, round(s * min(rows, cols))), halves rounded up.

    Example:
        >>> rank_from_scale(0.1, 64, 576)
        6
    """
    s = check_rank_scale(rank_scale)
    return max(1, math.floor(s * min(rows, cols) + 0.5))


def check_shard(shard: object) -> tuple[int, int]:
    """Require a shard (i, n) of a grid: ints with 0 <= i < n (this process takes cells i, i + n, ...)."""
    if (
        not isinstance(shard, tuple)
        or len(shard) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {shard!r}")
    return shard


def parse_shard(text: str, *, name: str = "shard") -> tuple[int, int]:
    """The shard (i, n) a command line gives as ``"i/n"`` (e.g. ``"0/4"``), checked by :func:`check_shard`.

    Raises:
        ValueError: ``text`` not two decimal integers around a slash (naming ``name``), or not 0 <= i < n.
    """
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit()):
        raise ValueError(f"{name} must look like i/n (e.g. 0/4), got {text!r}")
    return check_shard((int(i), int(n)))
