"""Shared test inputs: hypothesis strategies and seeded random sources (one copy for every test file).

Tests that need one generator take the ``generator`` fixture of conftest.py (seeded 0); tests that need
several independent streams, or a seed drawn by hypothesis, call :func:`seeded`.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from nlinit.layer_function import LayerFunction

__all__ = ["layer_function_case", "problems", "seeded", "weight"]


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded ``seed``."""
    return torch.Generator().manual_seed(seed)


def layer_function_case(
    seed: int, d_out: int, d_in: int, *, bn: bool = True, out_cov: torch.Tensor | None = None
) -> LayerFunction:
    """Anisotropic inputs with a mean, a bias and (optionally) an eval-mode BatchNorm (scale s, shift t)."""
    g = seeded(seed)
    f64 = torch.float64
    A = torch.randn(d_in, d_in, dtype=f64, generator=g) * torch.logspace(0, -1.5, d_in, dtype=f64)
    return LayerFunction(
        mean=0.5 * torch.randn(d_in, dtype=f64, generator=g),
        cov=A @ A.T / d_in,
        bias=0.2 * torch.randn(d_out, dtype=f64, generator=g),
        scale=torch.rand(d_out, dtype=f64, generator=g) + 0.5 if bn else None,
        shift=0.3 * torch.randn(d_out, dtype=f64, generator=g) if bn else None,
        out_cov=out_cov,
    )


def weight(seed: int, d_out: int, d_in: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A (d_out, d_in) matrix of N(0, 1/d_in) entries: the scale of a freshly initialized layer."""
    return torch.randn(d_out, d_in, dtype=dtype, generator=seeded(seed)) / math.sqrt(d_in)


@st.composite
def problems(draw: st.DrawFn, max_dim: int = 8) -> tuple[int, int, int, int]:
    """(seed, d_out, d_in, rank) with 1 <= d_out, d_in <= max_dim and 1 <= rank <= min(d_out, d_in)."""
    d_out = draw(st.integers(1, max_dim))
    d_in = draw(st.integers(1, max_dim))
    rank = draw(st.integers(1, min(d_out, d_in)))
    return draw(st.integers(0, 2**31 - 1)), d_out, d_in, rank
