"""Shared test inputs: hypothesis strategies and seeded random sources (one copy for every test file).

Tests that need one generator take the ``generator`` fixture of conftest.py (seeded 0); tests that need
several independent streams, or a seed drawn by hypothesis, call :func:`seeded`.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

__all__ = ["problems", "seeded", "weight"]


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded ``seed``."""
    return torch.Generator().manual_seed(seed)


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
