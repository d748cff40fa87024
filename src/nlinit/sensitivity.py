r"""Gradients of a loss at a model's Linear / Conv2d outputs on calibration data: how sensitive the loss is to
each layer's output, for the ``sensitivity`` rank allocation (:func:`nlinit.allocate.sensitivity_weight`).

For each layer, :func:`output_gradients` runs the model on calibration batches with a forward hook that
keeps the layer's output y, takes the gradient g = dloss/dy of one scalar loss per batch with
``torch.autograd.grad`` (so no parameter's ``.grad`` is touched) and accumulates, per output unit i,

.. math::
    G_i = \frac{1}{N} \sum_{n=1}^{N} \sum_p g_{n,p,i}^2,

N the model inputs (samples), p the layer's output positions per input (a conv's pixels, a transformer's
tokens; one for a plain Linear). The loss is a sum over the batch's samples, so with samples processed
independently (eval mode) g at sample n is the gradient of that sample's own loss. The losses
(``SENSITIVITY_LOSSES``) are chosen so that E[g] = 0 and E[(g . dy)^2] is a Fisher quadratic form:

* ``"fisher"``: cross-entropy of (batch, classes) logits against labels drawn from the model's own softmax
  (the true Fisher information; its expectation over the labels is the KL divergence's Hessian);
* ``"output"``: <r, f(x)> with a fresh r ~ N(0, I) per batch: E_r[(r^T J dy)^2] = ||J dy||^2, the squared
  change of the model's output (an embedding, a hidden state);
* ``"auto"``: ``"fisher"`` for a 2-D output, else ``"output"``; or a callable output -> scalar loss.

Weighting a layer's error by the Fisher information follows Fisher-weighted SVD (Hsu et al. 2022, "Language
Model Compression with Weighted Low-Rank Factorization"), which weighs rows within a layer; here one weight
per layer compares layers, E[(g . dy)^2] as in the squared first-order Taylor importance of Molchanov et
al. 2019 ("Importance Estimation for Neural Network Pruning").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int
from .calibration import (
    DEFAULT_BATCH_SIZE,
    _batches,
    _forward,
    _model_input,
    _names,
    _resolve_layers,
)
from .calibration import _output_tensor as _tensor_of

__all__ = ["SENSITIVITY_LOSSES", "OutputGradients", "check_sensitivity_loss", "output_gradients"]

#: the named losses of :func:`output_gradients` (or a callable output -> scalar)
SENSITIVITY_LOSSES = ("auto", "fisher", "output")

LossArg = str | Callable[[Any], Tensor]


@dataclass(frozen=True)
class OutputGradients:
    """What :func:`output_gradients` measured.

    Attributes:
        energy: {layer: (m,) float64} G_i = E_x[sum_p g_{p,i}^2] per output unit i (module docstring).
        loss: the loss used: "fisher", "output", "auto: fisher", "auto: output" or "callable <name>".
        count: N, the model inputs behind the mean.
    """

    energy: dict[str, Tensor]
    loss: str
    count: int


def check_sensitivity_loss(loss: object) -> LossArg:
    """Return ``loss`` if it is one of :data:`SENSITIVITY_LOSSES` or a callable; else raise ValueError."""
    if callable(loss) or (isinstance(loss, str) and loss in SENSITIVITY_LOSSES):
        return loss  # type: ignore[return-value]
    raise ValueError(
        f"sensitivity_loss must be one of {', '.join(SENSITIVITY_LOSSES)} or a callable output -> scalar "
        f"loss, got {loss!r}"
    )


def output_gradients(
    model: nn.Module,
    layers: Mapping[str, nn.Module] | Sequence[str],
    calibration: Iterable[Any] | Tensor,
    *,
    loss: LossArg = "auto",
    batches: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
) -> OutputGradients:
    """The mean squared gradient of a loss at each layer's output units, per model input (module docstring).

    Runs ``model`` in eval mode (its mode restored after) with gradients enabled, one forward and one
    ``torch.autograd.grad`` per calibration batch; the parameters, their ``.grad`` and the buffers are left
    as they were, and every hook is removed, also on error. A layer called several times per forward adds
    every call; an output the loss does not depend on adds 0. Each hook hands the rest of the model a copy
    of the layer's output, so an in-place op after the layer (``ReLU(inplace=True)``) does not change the
    tensor differentiated at.

    Args:
        model: any nn.Module whose samples are independent in eval mode; called as in
            :func:`nlinit.calibration.collect_stats`.
        layers: names of nn.Linear / nn.Conv2d (groups=1) modules of ``model``, or a {name: module} mapping.
        calibration: model inputs, as in :func:`nlinit.calibration.collect_stats`.
        loss: "auto", "fisher", "output" (module docstring), or a callable taking the model's output and
            returning a 0-dim tensor, summed (not averaged) over the batch's samples so that each sample's
            gradient is its own. "fisher" and "output" read the output tensor: the output itself, a Hugging
            Face output's ``last_hidden_state``, or the first floating-point tensor of a tuple / dict.
        batches: use at most this many batches (None: all). batch_size: rows per batch for a tensor.
        generator: the only source of randomness (the Fisher's labels, the output probe), CPU.
    Returns:
        :class:`OutputGradients`: {name: (m,) float64} for every name of ``layers``, in its order.
    Raises:
        ValueError: a bad argument, an empty calibration, a failed forward, an output with no tensor, a
            non-2-D output for "fisher", a callable that returns no finite scalar, non-finite gradients, a
            layer that never ran, or a loss whose gradient is 0 at every layer (one line each).
        TypeError: a layer that is not an nn.Linear / nn.Conv2d, or a batch of an unknown kind.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> grads = output_gradients(model, ["0"], torch.randn(64, 8), generator=torch.Generator())
        >>> grads.energy["0"].shape, grads.loss
        (torch.Size([16]), 'auto: fisher')
    """
    named = _resolve_layers(model, layers)
    check_sensitivity_loss(loss)
    if batches is not None:
        check_int("batches", batches, low=1)
    check_int("batch_size", batch_size, low=1)
    modules = {id(m): m for m in named.values()}
    outputs: dict[int, list[Tensor]] = {k: [] for k in modules}
    weights = {k: m.weight for k, m in modules.items() if isinstance(m.weight, Tensor)}  # Linear / Conv2d
    energy = {k: torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) for k, w in weights.items()}
    ran: set[int] = set()

    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        if not isinstance(out, Tensor) or not out.is_floating_point():
            return None
        y = out if out.requires_grad else out.detach().requires_grad_()
        outputs[id(module)].append(y)
        return y.clone()  # the rest of the model (and any in-place op in it) works on a copy

    device = next((p.device for p in model.parameters()), None)
    was_training, count, used = model.training, 0, ""
    handles = [m.register_forward_hook(hook) for m in modules.values()]
    model.eval()
    try:
        with torch.enable_grad():
            for b, batch in enumerate(_batches(calibration, batches, batch_size)):
                args, kwargs = _model_input(batch, b, device)
                for kept in outputs.values():
                    kept.clear()
                value, used = _loss(_forward(model, args, kwargs, b), loss, generator, b)
                kept_outputs = [(k, y) for k, ys in outputs.items() for y in ys]
                ran.update(k for k, _ in kept_outputs)
                if not value.requires_grad or not kept_outputs:
                    raise ValueError(
                        f"calibration batch {b}: the sensitivity loss ({used}) does not depend on the "
                        f"outputs of the layers {_names(named)}"
                    )
                grads = torch.autograd.grad(value, [y for _, y in kept_outputs], allow_unused=True)
                for (k, _), g in zip(kept_outputs, grads):
                    if g is not None:
                        energy[k] += _unit_energy(g, modules[k], b, named)
                count += _rows(args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for kept in outputs.values():
            kept.clear()
        model.train(was_training)
    if not count:
        raise ValueError(
            f"calibration is empty: no batch reached the {len(named)} layer(s) {_names(named)}; "
            "give at least one batch of model inputs"
        )
    missing = [name for name, m in named.items() if id(m) not in ran]
    if missing:
        raise ValueError(f"layer {missing[0]!r} never ran in the model's forward on the calibration data")
    if all(not bool(e.any()) for e in energy.values()):
        raise ValueError(
            f"the sensitivity loss ({used}) has a zero gradient at the outputs of every layer {_names(named)}"
        )
    return OutputGradients(
        energy={name: energy[id(m)] / count for name, m in named.items()}, loss=used, count=count
    )


def _output_tensor(output: Any) -> Tensor:
    """The model output's tensor (:func:`nlinit.calibration._output_tensor`)."""
    return _tensor_of(output, hint="; give sensitivity_loss a callable output -> scalar loss")


def _loss(output: Any, loss: LossArg, generator: torch.Generator | None, b: int) -> tuple[Tensor, str]:
    """(the batch's scalar loss, the name of the loss used)."""
    if callable(loss):
        name = f"callable {getattr(loss, '__qualname__', type(loss).__name__)}"
        value = loss(output)
        if not isinstance(value, Tensor) or value.dim() != 0 or not value.is_floating_point():
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"sensitivity_loss must return a floating-point 0-dim tensor, got {got}")
        if not bool(torch.isfinite(value)):
            raise ValueError(f"calibration batch {b}: sensitivity_loss returned {float(value.detach())!r}")
        return value, name
    out = _output_tensor(output)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"calibration batch {b}: the model's output has non-finite (NaN or Inf) entries")
    kind = ("fisher" if out.dim() == 2 else "output") if loss == "auto" else loss
    name = f"auto: {kind}" if loss == "auto" else kind
    if kind == "fisher":
        if out.dim() != 2:
            raise ValueError(
                "sensitivity_loss='fisher' needs (batch, classes) logits, got a model output of shape "
                f"{tuple(out.shape)}; use 'output' or a callable"
            )
        probs = torch.softmax(out.detach().double(), dim=1).cpu()
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(out.device)
        return F.cross_entropy(out, labels, reduction="sum"), name
    probe = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device, out.dtype)
    return (probe * out).sum(), name


def _unit_energy(g: Tensor, module: nn.Module, b: int, named: Mapping[str, nn.Module]) -> Tensor:
    """sum of g^2 over everything but the unit axis (a conv's channels, a Linear's last dim): (m,) float64."""
    unit = (1 if g.dim() == 4 else 0) if isinstance(module, nn.Conv2d) else g.dim() - 1
    m = g.shape[unit]
    e = g.detach().double().square().movedim(unit, -1).reshape(-1, m).sum(0)
    if not bool(torch.isfinite(e).all()):
        name = next(n for n, mod in named.items() if mod is module)
        raise ValueError(
            f"calibration batch {b}: the loss's gradient at layer {name!r}'s output is not finite"
        )
    return e


def _rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The batch's samples: the first dimension of its first tensor input with one (else 1)."""
    for v in [*args, *kwargs.values()]:
        if isinstance(v, Tensor) and v.dim():
            return int(v.shape[0])
    return 1
