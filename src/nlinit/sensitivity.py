r"""The loss's gradients at a model's Linear / Conv2d outputs on calibration data, paired with each layer's
inputs along its whitened singular directions: the exact per-rank loss curve of the ``sensitivity`` rank
allocation (:func:`nlinit.allocate.sensitivity_curve`).

:func:`projected_gradients` runs the model on calibration batches with a forward hook per layer that
projects the layer's input onto the rows of A = V_R^T L^{-1} and keeps its output y, takes the gradient
g = dloss/dy of one scalar loss per batch with ``torch.autograd.grad`` (so no parameter's ``.grad`` is
touched), and returns per model input n and direction j

.. math::
    c_{n,j} = \sum_p (u_j \cdot \tilde g_{n,p}) (v_j \cdot z_{n,p}),

p the layer's output positions in input n (a conv's pixels, a transformer's tokens; one for a plain Linear).
The loss is a sum over the batch's samples, so with samples processed independently (eval mode) g at sample
n is the gradient of that sample's own loss. The losses (``SENSITIVITY_LOSSES``) are chosen so that
E[g] = 0 and E[(g . dy)^2] is a Fisher quadratic form:

* ``"fisher"``: cross-entropy of (batch, classes) logits against labels drawn from the model's own softmax
  (the true Fisher information; its expectation over the labels is the KL divergence's Hessian);
* ``"output"``: <r, f(x)> with a fresh r ~ N(0, I) per batch: E_r[(r^T J dy)^2] = ||J dy||^2, the squared
  change of the model's output (an embedding, a hidden state);
* ``"auto"``: ``"fisher"`` for a 2-D output, else ``"output"``; or a callable output -> scalar loss.

Weighting a layer's error by the Fisher information follows Fisher-weighted SVD (Hsu et al. 2022, "Language
Model Compression with Weighted Low-Rank Factorization"); E[(g . dy)^2] is the squared first-order Taylor
importance of Molchanov et al. 2019 ("Importance Estimation for Neural Network Pruning"). The curve
replaced a per-layer weight that assumed errors uncorrelated across positions and isotropic. Measured on a
trained ResNet-20 (Fashion-MNIST, whiten, 2,048 calibration images, top-1 on the first 2,000 test images,
91.50% dense), budget 0.3 / 0.5: energy 74.85 / 89.75, that weight 60.50 / 89.20, greedy on the exact
curves 22.20 / 29.35 (they are not convex: the first block stayed at rank 1), on their convex envelopes
(what compress uses) 76.65 / 89.75.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_finite, check_int
from .calibration import DEFAULT_BATCH_SIZE, _batches, _forward, _model_input, _names, _resolve_layers
from .calibration import _output_tensor as _tensor_of
from .layer_function import LayerFunction, Whitened

__all__ = [
    "SENSITIVITY_LOSSES",
    "ProjectedGradients",
    "Projection",
    "check_sensitivity_loss",
    "projected_gradients",
]

#: the named losses of :func:`projected_gradients` (or a callable output -> scalar)
SENSITIVITY_LOSSES = ("auto", "fisher", "output")

LossArg = str | Callable[[Any], Tensor]


def check_sensitivity_loss(loss: object) -> LossArg:
    """Return ``loss`` if it is one of :data:`SENSITIVITY_LOSSES` or a callable; else raise ValueError."""
    if callable(loss) or (isinstance(loss, str) and loss in SENSITIVITY_LOSSES):
        return loss  # type: ignore[return-value]
    raise ValueError(
        f"sensitivity_loss must be one of {', '.join(SENSITIVITY_LOSSES)} or a callable output -> scalar "
        f"loss, got {loss!r}"
    )


@dataclass(frozen=True)
class Projection:
    """Where :func:`projected_gradients` projects one layer's inputs and output gradients (float64 or the
    layer's dtype; cast to the layer input's dtype when used).

    Attributes:
        inputs: (R, d_in) A = V_R^T L^{-1}: row j maps a centered input x - mu to v_j . z (a conv's d_in in
            the channel layout (c, i, j) of its weight).
        outputs: (R, m) B = U_R^T diag(1/s) (columns with s = 0 are 0): row j maps the gradient g at the
            layer's output to u_j . g~.
        mean: (d_in,) mu, the calibration inputs' mean, or None (0).
        center: (m,) W mu + b, the layer's output at the mean input, or None (0);
            t_n = sum_p g . (y - center).
    """

    inputs: Tensor
    outputs: Tensor
    mean: Tensor | None = None
    center: Tensor | None = None

    @classmethod
    def of_whitened(
        cls, W: Tensor, fn: LayerFunction, Wt: Tensor, white: Whitened, rank: int
    ) -> tuple[Projection, Tensor]:
        """(the projection onto W~'s top ``rank`` singular directions, their singular values (rank,)).

        W (m, d_in) the layer's matrix, fn its :class:`nlinit.layer_function.LayerFunction` and (W~, white)
        from :func:`nlinit.layer_function.whitened_problem` (either path: z = L_inv (x - mu)); one SVD of W~.
        A = V_R^T L_inv, B = U_R^T diag(1/s), mean = mu, center = W mu + b; float64.
        """
        U, sigma, Vh = torch.linalg.svd(Wt.double(), full_matrices=False)
        A = white.times_inv(Vh[:rank])  # V_R^T L_inv, without forming L_inv on the reduced path
        B = U[:, :rank].T
        if fn.scale is not None:
            s = fn.scale.double().to(B.device)
            B = B * torch.where(s != 0, 1.0 / torch.where(s != 0, s, 1.0), 0.0)
        W64 = W.detach().double()
        mean = fn.mean.double().to(W64.device) if fn.mean is not None else None
        center = W64 @ mean if mean is not None else None
        if fn.bias is not None:
            bias = fn.bias.double().to(W64.device)
            center = bias if center is None else center + bias
        return cls(A, B, mean, center), sigma[:rank]


@dataclass(frozen=True)
class ProjectedGradients:
    """What :func:`projected_gradients` measured.

    Attributes:
        c: {layer: (N, R) float64} c_{n,j} = sum_p (B g_{n,p})_j (A (x_{n,p} - mu))_j.
        total: {layer: (N,) float64} t_n = sum_p g_{n,p} . (y_{n,p} - center).
        loss: the loss used ("fisher", "output", "auto: fisher", "auto: output" or "callable <name>").
        count: N.
    """

    c: dict[str, Tensor]
    total: dict[str, Tensor]
    loss: str
    count: int


def projected_gradients(
    model: nn.Module,
    projections: Mapping[str, Projection],
    calibration: Iterable[Any] | Tensor,
    *,
    loss: LossArg = "auto",
    batches: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
) -> ProjectedGradients:
    r"""Per model input n, the loss's gradient at each layer's output paired with the layer's input along
    its top R singular directions: the (N, R) matrix c of :func:`nlinit.allocate.sensitivity_curve`.

    .. math::
        c_{n,j} = \sum_p (B g_{n,p})_j \, (A (x_{n,p} - \mu))_j, \qquad
        t_n = \sum_p g_{n,p} \cdot (y_{n,p} - \text{center}),

    p over the layer's output positions in input n (a conv's pixels, a Linear's vectors per input, every
    call of a layer called several times), x_{n,p} its input vector there (a conv's patch, zero padding
    included), y_{n,p} its output and g_{n,p} = dloss/dy_{n,p}. With A = V_R^T L^{-1}, B = U_R^T diag(1/s)
    and center = W mu + b (compress builds them from W~ = diag(s) W L = U diag(sigma) V^T), c_{n,j} =
    sum_p (u_j . g~_{n,p}) (v_j . z_{n,p}) and t_n = sum_j sigma_j c_{n,j} over every j.

    Runs ``model`` in eval mode (its mode restored after) with gradients enabled, one forward and one
    ``torch.autograd.grad`` per calibration batch; the parameters, their ``.grad`` and the buffers are left
    as they were, and every hook is removed, also on error. Each hook hands the rest of the model a copy of
    the layer's output, so an in-place op after the layer (``ReLU(inplace=True)``) does not change the
    tensor differentiated at. Per batch about one run of each layer at rank R: a conv's inputs go through a
    conv with A as its (R, c_in, kh, kw) weight (no unfolding), a Linear's through A^T. Memory: c and t take
    N (R + 1) float64 per layer (2,048 inputs at R = 57: 0.9 MiB), the projections R (d_in + m) numbers per
    layer (all layers at once), plus the batch's projected inputs (R values per output position and layer)
    while its gradient is taken.

    Args:
        model: any nn.Module whose samples are independent in eval mode, called as in
            :func:`nlinit.calibration.collect_stats`; each layer's input and output have the model inputs on
            their first dimension (a conv may also take one unbatched (c, h, w) input per model input).
        projections: {name of an nn.Linear / nn.Conv2d (groups=1) of model: :class:`Projection`} with A
            (R, d_in), B (R, m), mean (d_in,), center (m,) for the layer's m x d_in matrix, finite.
        calibration: model inputs, as in :func:`nlinit.calibration.collect_stats`.
        loss: "auto", "fisher", "output" (module docstring), or a callable taking the model's output and
            returning a 0-dim tensor, summed (not averaged) over the batch's samples so that each sample's
            gradient is its own. "fisher" and "output" read the output tensor: the output itself, a Hugging
            Face output's ``last_hidden_state``, or the first floating-point tensor of a tuple / dict.
        batches: use at most this many batches (None: all). batch_size: rows per batch for a tensor.
        generator: the only source of randomness (the Fisher's labels, the output probe), CPU.
    Returns:
        :class:`ProjectedGradients`, in ``projections``' order.
    Raises:
        ValueError: a bad argument, an empty calibration, a failed forward, an output with no tensor, a
            non-2-D output for "fisher", a callable that returns no finite scalar, non-finite gradients, a
            layer that never ran, a loss whose gradient is 0 at every layer, a projection of the wrong shape
            or not finite, or a layer whose input's first dimension is not the batch's model inputs (one
            line each).
        TypeError: a layer that is not an nn.Linear / nn.Conv2d, a batch of an unknown kind, or a
            projection that is not a :class:`Projection`.
    """
    if not isinstance(projections, Mapping):
        raise TypeError(
            f"projections must be a {{layer: Projection}} mapping, got {type(projections).__name__}"
        )
    named = _resolve_layers(model, list(projections))
    check_sensitivity_loss(loss)
    if batches is not None:
        check_int("batches", batches, low=1)
    check_int("batch_size", batch_size, low=1)
    proj = {id(m): _check_projection(name, projections[name], m) for name, m in named.items()}
    modules = {id(m): m for m in named.values()}
    c: dict[int, list[Tensor]] = {k: [] for k in modules}
    total: dict[int, list[Tensor]] = {k: [] for k in modules}
    batch_c: dict[int, Tensor] = {}
    batch_t: dict[int, Tensor] = {}

    def keep(module: nn.Module, args: Any, y: Tensor) -> Tensor:
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if x is None:
            raise ValueError(f"layer {_name(module, named)!r} got no tensor input")
        return _project_inputs(module, x.detach(), proj[id(module)])

    def add(k: int, y: Tensor, kept: Tensor, g: Tensor, b: int, rows: int) -> None:
        module, p = modules[k], proj[k]
        conv = isinstance(module, nn.Conv2d)
        if conv and g.dim() == 3:
            g, y = g.unsqueeze(0), y.unsqueeze(0)
        if g.shape[0] != rows or kept.shape[0] != rows:
            raise ValueError(
                f"calibration batch {b}: layer {_name(module, named)!r}'s output has {g.shape[0]} rows on "
                f"its first dimension, the batch {rows} model inputs; give each layer the model inputs first"
            )
        G = (g.movedim(1, -1) if conv else g).reshape(rows, -1, g.shape[1] if conv else g.shape[-1])
        Bt = p.outputs.to(G.device, G.dtype).T
        cn = torch.einsum("npr,npr->nr", (G @ Bt).double(), kept.double())
        Y = (y.movedim(1, -1) if conv else y).reshape(G.shape).double()
        if p.center is not None:
            Y = Y - p.center.to(Y.device, torch.float64)
        tn = torch.einsum("npm,npm->n", G.double(), Y)
        if not bool(torch.isfinite(cn).all() and torch.isfinite(tn).all()):
            raise ValueError(
                f"calibration batch {b}: the loss's gradient at layer {_name(module, named)!r}'s output is "
                "not finite"
            )
        cn, tn = cn.cpu(), tn.cpu()
        batch_c[k] = batch_c[k] + cn if k in batch_c else cn
        batch_t[k] = batch_t[k] + tn if k in batch_t else tn

    def done(b: int, rows: int) -> None:  # layers whose output the loss did not use add 0
        for k in modules:
            zeros = torch.zeros(rows, proj[k].inputs.shape[0], dtype=torch.float64)
            c[k].append(batch_c.pop(k, zeros))
            total[k].append(batch_t.pop(k, zeros[:, 0]))

    count, used = _gradient_pass(
        model, named, calibration, loss, batches, batch_size, generator, keep, add, done
    )
    _check_nonzero([torch.cat(t) for t in total.values()], used, named)
    return ProjectedGradients(
        c={name: torch.cat(c[id(m)]) for name, m in named.items()},
        total={name: torch.cat(total[id(m)]) for name, m in named.items()},
        loss=used,
        count=count,
    )


def _gradient_pass(
    model: nn.Module,
    named: Mapping[str, nn.Module],
    calibration: Iterable[Any] | Tensor,
    loss: LossArg,
    batches: int | None,
    batch_size: int,
    generator: torch.Generator | None,
    keep: Callable[[nn.Module, Any, Tensor], Any],
    add: Callable[[int, Tensor, Any, Tensor, int, int], None],
    done: Callable[[int, int], None],
) -> tuple[int, str]:
    """The gradient pass of :func:`projected_gradients`: (N, loss name).

    Per batch b: one forward with a hook on every layer that calls ``keep(module, args, y)`` (what to keep
    of the call besides y, under no_grad) and hands the model a copy of y; one ``torch.autograd.grad`` of
    the loss at every kept y; ``add(id(module), y, kept, g, b, rows)`` per call whose g exists (``rows``:
    the batch's model inputs); then ``done(b, rows)``. Eval mode, the model's mode restored, hooks
    removed, also on error.
    """
    modules = {id(m): m for m in named.values()}
    outputs: dict[int, list[tuple[Tensor, Any]]] = {k: [] for k in modules}
    ran: set[int] = set()

    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        if not isinstance(out, Tensor) or not out.is_floating_point():
            return None
        y = out if out.requires_grad else out.detach().requires_grad_()
        with torch.no_grad():
            outputs[id(module)].append((y, keep(module, args, y)))
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
                kept_outputs = [(k, y, extra) for k, ys in outputs.items() for y, extra in ys]
                ran.update(k for k, _, _ in kept_outputs)
                if not value.requires_grad or not kept_outputs:
                    raise ValueError(
                        f"calibration batch {b}: the sensitivity loss ({used}) does not depend on the "
                        f"outputs of the layers {_names(named)}"
                    )
                grads = torch.autograd.grad(value, [y for _, y, _ in kept_outputs], allow_unused=True)
                rows = _rows(args, kwargs)
                for (k, y, extra), g in zip(kept_outputs, grads):
                    if g is not None:
                        add(k, y.detach(), extra, g.detach(), b, rows)
                done(b, rows)
                count += rows
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
    return count, used


def _name(module: nn.Module, named: Mapping[str, nn.Module]) -> str:
    return next(n for n, m in named.items() if m is module)


def _check_projection(name: str, p: object, module: nn.Module) -> Projection:
    """``p`` a :class:`Projection` whose shapes fit ``module``'s m x d_in matrix, finite."""
    if not isinstance(p, Projection):
        raise TypeError(f"projections[{name!r}] must be a Projection, got {type(p).__name__}")
    weight = module.weight
    assert isinstance(weight, Tensor)
    m, d_in = weight.shape[0], weight[0].numel()
    R = p.inputs.shape[0] if isinstance(p.inputs, Tensor) and p.inputs.dim() == 2 else -1
    want = {"inputs": (R, d_in), "outputs": (R, m), "mean": (d_in,), "center": (m,)}
    for field, shape in want.items():
        t = getattr(p, field)
        if t is None and field in ("mean", "center"):
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != shape or not t.is_floating_point() or R < 0:
            got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"projections[{name!r}].{field} must be a floating-point tensor of shape {shape} for the "
                f"layer's {m}x{d_in} matrix (R rows of inputs), got {got}"
            )
        check_finite(f"projections[{name!r}].{field}", t)
    return p


def _project_inputs(module: nn.Module, x: Tensor, p: Projection) -> Tensor:
    """A (x_p - mu) at every output position of the call: (rows, positions, R) in x's dtype."""
    A = p.inputs.to(x.device, x.dtype)
    shift = (p.inputs.double() @ p.mean.double()).to(x.device, x.dtype) if p.mean is not None else None
    if isinstance(module, nn.Conv2d):
        x = x.unsqueeze(0) if x.dim() == 3 else x
        P = module._conv_forward(x, A.view(A.shape[0], *module.weight.shape[1:]), None)  # (n, R, ho, wo)
        P = P.movedim(1, -1).reshape(x.shape[0], -1, A.shape[0])
    else:
        P = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1, x.shape[-1]) @ A.T
    return P - shift if shift is not None else P


def _check_nonzero(values: Iterable[Tensor], used: str, named: Mapping[str, nn.Module]) -> None:
    """A ValueError when every tensor of ``values`` is all zeros (the loss never depends on a layer)."""
    if all(not bool(v.any()) for v in values):
        raise ValueError(
            f"the sensitivity loss ({used}) has a zero gradient at the outputs of every layer {_names(named)}"
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


def _rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The batch's samples: the first dimension of its first tensor input with one (else 1)."""
    for v in [*args, *kwargs.values()]:
        if isinstance(v, Tensor) and v.dim():
            return int(v.shape[0])
    return 1
