"""The full-rank weight a low-rank layer starts from.

``source="fresh"`` draws it from a full-rank init distribution (the paper's default: a normal with variance
1/fan_in, truncated at 2 standard deviations, i.e. samples beyond 2 sigma redrawn, variance not corrected);
``source="existing"`` takes the layer's current weight (warm start from a trained or pretrained model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int

__all__ = ["DISTRIBUTIONS", "SOURCES", "draw_factors", "full_rank_weight", "sample_weight"]

SOURCES = ("existing", "fresh")


def _trunc_normal(t: Tensor, fan_in: int, generator: torch.Generator | None) -> Tensor:
    std = 1.0 / math.sqrt(fan_in)
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=generator)


def _kaiming_normal(t: Tensor, fan_in: int, generator: torch.Generator | None) -> Tensor:
    return nn.init.normal_(t, std=math.sqrt(2.0 / fan_in), generator=generator)  # He et al. 2015, ReLU gain


def _torch_default(t: Tensor, fan_in: int, generator: torch.Generator | None) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)  # = kaiming_uniform_(a=sqrt(5)), nn.Linear / nn.Conv2d reset_parameters
    return nn.init.uniform_(t, -bound, bound, generator=generator)


#: name -> fill_(tensor, fan_in, generator). Each draws i.i.d. entries whose scale depends on fan_in only.
DISTRIBUTIONS: dict[str, Callable[[Tensor, int, torch.Generator | None], Tensor]] = {
    "trunc-normal": _trunc_normal,
    "kaiming-normal": _kaiming_normal,
    "torch-default": _torch_default,
}


def sample_weight(
    shape: tuple[int, ...],
    distribution: str = "trunc-normal",
    *,
    fan_in: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw a tensor of ``shape`` from a full-rank init distribution.

    Args:
        shape: (d_out, d_in) or a conv kernel (c_out, c_in, kh, kw).
        distribution: ``"trunc-normal"`` (paper: N(0, 1/fan_in) cut at 2 sigma), ``"kaiming-normal"``
            (N(0, 2/fan_in)) or ``"torch-default"`` (U(+-1/sqrt(fan_in)), what nn.Conv2d uses).
        fan_in: defaults to prod(shape[1:]).
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) < 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise ValueError(f"shape must be a tuple of at least 2 ints >= 1, got {shape!r}")
    fan = check_int("fan_in", fan_in, low=1) if fan_in is not None else math.prod(shape[1:])
    t = torch.empty(shape, dtype=dtype, device=device)
    with torch.no_grad():
        return DISTRIBUTIONS[distribution](t, fan, generator)


def draw_factors(
    W: Tensor,
    rank: int,
    distribution: str = "trunc-normal",
    *,
    fan_in: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """U (d_out, r) and V (d_in, r) drawn as two separately initialized layers r -> d_out and d_in -> r.

    U has fan-in r and V^T fan-in d_in (or ``fan_in``: the full layer's, e.g. c_in kh kw for a conv in the
    "spatial" layout). Only W's shape, dtype and device are used. The paper's baseline init (init 1).
    """
    d_out, d_in = W.shape
    U = sample_weight(
        (d_out, rank), distribution, fan_in=rank, generator=generator, dtype=W.dtype, device=W.device
    )
    V = sample_weight(
        (rank, d_in), distribution, fan_in=fan_in or d_in, generator=generator, dtype=W.dtype, device=W.device
    ).T.contiguous()
    return U, V


def full_rank_weight(
    layer: nn.Linear | nn.Conv2d,
    source: str = "fresh",
    distribution: str = "trunc-normal",
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The full-rank weight to factorize: a fresh draw or a detached copy of ``layer.weight``.

    A fresh draw is made on ``generator``'s device and moved to the layer's.

    ``distribution="reset-parameters"`` runs the layer's own ``reset_parameters`` on a copy under a forked
    global RNG seeded from ``generator``: with a generator the global RNG state is untouched and the draw is
    reproducible (with ``generator=None`` the seed is drawn from the global RNG, like any torch draw).
    """
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"layer must be an nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    check_choice("source", source, SOURCES)
    check_choice("distribution", distribution, (*DISTRIBUTIONS, "reset-parameters"))
    weight = layer.weight.detach()
    if source == "existing":
        return weight.clone()
    if distribution == "reset-parameters":
        seed = int(torch.randint(2**62, (1,), generator=generator))
        copy = deepcopy(layer)
        devices = [weight.device.index or 0] if weight.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            copy.reset_parameters()  # type: ignore[operator]
        return copy.weight.detach().clone()
    # Drawn on the generator's device, then moved: a CPU generator gives the same W on every device.
    at = generator.device if generator is not None else weight.device
    shape = tuple(weight.shape)
    return sample_weight(shape, distribution, generator=generator, dtype=weight.dtype, device=at).to(
        weight.device
    )
