"""Baseline low-rank init: each factor drawn as if it were a full-rank layer of its own."""

from __future__ import annotations

import torch
from torch import Tensor

from ..activations import Activation
from .source import draw_factors


def baseline(
    W: Tensor,
    rank: int,
    *,
    activation: Activation | None = None,
    generator: torch.Generator | None = None,
    distribution: str = "trunc-normal",
    fan_in: int | None = None,
) -> tuple[Tensor, Tensor]:
    """U and V drawn i.i.d. from the full-rank init distribution (paper, section 3, init 1).

    U (d_out x r) is the weight of an r -> d_out layer (fan-in r) and V^T that of a d_in -> r layer
    (fan-in d_in), as two separately initialized layers would be. For a distribution with entry variance
    c / fan_in, an entry of U V^T has variance r (c / r)(c / d_in) = c^2 / d_in against the full-rank
    layer's c / d_in (c = 1 for an untruncated N(0, 1/fan_in); the paper's truncated normal has
    c ~= 0.774). Only W's shape, dtype and device are used.

    Args:
        W: (d_out, d_in). rank: r. generator: the only source of randomness.
        distribution: a name from :data:`nlinit.inits.source.DISTRIBUTIONS`.
        fan_in: the full layer's fan-in, if it differs from d_in (conv "spatial" layout: c_in kh kw).
    Returns:
        (U, V) of shapes (d_out, r), (d_in, r).

    Example:
        >>> U, V = baseline(torch.zeros(64, 32), 8)
    """
    return draw_factors(W, rank, distribution, fan_in=fan_in, generator=generator)
