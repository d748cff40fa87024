"""Elementwise activations by name: the registry shared by objectives, solvers and model surgery.

An :class:`Activation` is a name plus keyword parameters (only ``leaky_relu`` has one, ``negative_slope``).
It is callable on tensors and hashable, so it can travel in reports and configs. ``parse_activation``
accepts a name (``"silu"``), a name with a parameter (``"leaky_relu(0.2)"``) or an :class:`Activation`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ACTIVATIONS", "LEAKY_FAMILY", "Activation", "check_activation_spec", "parse_activation"]

#: name -> function(x, **params). Keys are what users type; ``identity`` stands for "no activation".
ACTIVATIONS: dict[str, Callable[..., Tensor]] = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}

_DEFAULT_PARAMS: dict[str, dict[str, float]] = {"leaky_relu": {"negative_slope": 0.01}}

#: the leaky-ReLU family sigma(z) = alpha z + (1 - alpha) relu(z): the activations with closed-form NLRA
#: objectives, subspace reductions and certificates (docs/theory.md, sections 1-2).
LEAKY_FAMILY = ("identity", "leaky_relu", "relu")


@dataclass(frozen=True)
class Activation:
    """A named elementwise activation, e.g. ``Activation("leaky_relu", negative_slope=0.2)``."""

    name: str
    params: tuple[tuple[str, float], ...] = field(default=())

    def __init__(self, name: str, **params: float) -> None:
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; available: {', '.join(sorted(ACTIVATIONS))}")
        allowed = _DEFAULT_PARAMS.get(name, {})
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"activation {name!r} takes parameters {sorted(allowed) or 'none'}, got {', '.join(unknown)}"
            )
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"activation {name!r} parameter {key} must be a finite number, got {value!r}"
                )
        merged = {**allowed, **{k: float(v) for k, v in params.items()}}
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", tuple(sorted(merged.items())))

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def leaky_slope(self) -> float | None:
        """alpha with sigma(z) = alpha z + (1 - alpha) relu(z) for the leaky-ReLU family, else None.

        relu: 0, leaky_relu: its ``negative_slope``, identity: 1; None for every other activation. The one
        place this fact lives: solvers, objectives and bounds ask it.

        Example:
            >>> Activation("leaky_relu", negative_slope=0.2).leaky_slope
            0.2
        """
        if self.name == "relu":
            return 0.0
        if self.name == "identity":
            return 1.0
        if self.name == "leaky_relu":
            return self.kwargs["negative_slope"]
        return None

    def __call__(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.name](x, **self.kwargs)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{v:g}' for _, v in self.params)})"


_SPEC = re.compile(r"^\s*([a-z_0-9]+)\s*(?:\(\s*([-+0-9.eE]+)\s*\))?\s*$")


def parse_activation(spec: str | Activation) -> Activation:
    """Turn ``"relu"``, ``"leaky_relu(0.2)"`` or an :class:`Activation` into an :class:`Activation`.

    Raises:
        ValueError: for an unknown name or a malformed spec; the message lists the known names.
    """
    if isinstance(spec, Activation):
        return spec
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None or m.group(1) not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; available: {', '.join(sorted(ACTIVATIONS))}")
    name, arg = m.group(1), m.group(2)
    if arg is None:
        return Activation(name)
    params = list(_DEFAULT_PARAMS.get(name, {}))
    if len(params) != 1:
        raise ValueError(f"activation {name!r} takes no parameter, got {spec!r}")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(
            f"malformed activation {spec!r}: {arg!r} is not a number; write e.g. 'leaky_relu(0.2)'; "
            f"available: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
    return Activation(name, **{params[0]: value})


def check_activation_spec(activation: object) -> None:
    """Validate a model-level ``activation=`` argument before any work: ``"auto"``, one activation (a name or
    :class:`Activation`), or a mapping {module-name pattern: activation}; raises ValueError for a bad name."""
    if isinstance(activation, Mapping):
        for act in activation.values():
            parse_activation(act)
    elif activation != "auto":
        parse_activation(activation)  # type: ignore[arg-type]
