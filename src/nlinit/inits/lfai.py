r"""LFAI: layerwise function approximation at initialization by Adam (the paper's Algorithms 2 and 3).

.. math::
    \min_{U, V} \; \frac{1}{N} \sum_{k=1}^{N} \lVert \sigma(U V^T x_k) - \sigma(W x_k) \rVert^2,
    \qquad x_k \sim N(0, I_{d_{in}})

from the baseline factors (``lfai``, Algorithm 2) or from the spectral factors (``lfai-ws``, Algorithm 3,
the paper's practical one). Defaults are the paper's: N = 1000 fixed Gaussian inputs, Adam with lr 5e-3,
batch 512, 128 steps per epoch, at most 6 epochs; it stops early when an epoch improves the objective by
less than ``tol`` (relative) and returns the best factors seen, judged on held-out inputs, so it is
never worse than its start on a fresh sample of the objective.

``objective="exact"`` replaces the sampled objective by the exact population objective
(:func:`nlinit.objective.exact_loss`), deterministic and full-batch.

Convolutions: by default the inputs are patch vectors x ~ N(0, I_{c_in kh kw}); each output pixel of the
conv on an image of i.i.d. N(0, 1) entries sees exactly such a patch, so this is the paper's objective per
pixel. The paper's 1000 images hold millions of patches, so steps draw fresh patches (see _patch_problem).
``inputs="images"`` runs the paper's literal N Gaussian images of ``image_size`` x ``image_size``
through the conv instead (memory N c_in image_size^2 floats; ``max_bytes`` guards it).

**On the layer's real function** (``function=``, nlinit's; docs/theory.md section 11): the same Adam, in
whitened coordinates (:func:`nlinit.layer_function.whitened_problem`: W~ = diag(s) W L, offsets d), on

.. math::
    \min_{U, V, d'} \frac{1}{N} \sum_k \lVert \sigma(U V^\top z_k + d') - \sigma(\tilde W z_k + d)\rVert^2,
    \qquad z_k \sim N(0, I),

the paper's objective plus each unit's offset, with d' trained too; lfai-ws starts from ``whiten``'s solution
(the whitened spectral factors, d' = d: its warm start, as spectral is on the paper's model), lfai from the
baseline factors mapped into whitened coordinates; mapped back with the refitted bias
(:func:`nlinit.layer_function.from_whitened`). A normalized unit (training-mode BatchNorm) or a conv in the
"spatial" layout keeps the paper's model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_choice
from ..activations import Activation
from ..layer_function import InitResult, LayerFunction, from_whitened, whitened_problem
from ..matrix_view import ConvGeometry, matrix_to_kernel
from ..objective import exact_loss, nlra_loss
from ..subspace import SVD, top_svd
from .source import draw_factors

LossFn = Callable[[Tensor, Tensor], Tensor]  # (U, V) -> 0-dim loss


def _product(conv: ConvGeometry | None) -> Callable[[Tensor, Tensor], Tensor]:
    """(U, V) -> the function-view matrix U V^T (re-laid out for a conv in the "spatial" layout)."""
    if conv is None or conv.layout == "channel":
        return lambda U, V: U @ V.T
    return lambda U, V: conv.function_view(U @ V.T)


def _exact_problem(Wf: Tensor, act: Activation, conv: ConvGeometry | None) -> tuple[LossFn, LossFn]:
    """Full-batch and deterministic: the step loss and the evaluation loss are both R(U V^T)."""
    product = _product(conv)

    def loss(U: Tensor, V: Tensor) -> Tensor:
        return exact_loss(Wf, product(U, V), act)

    return loss, loss


def _patch_problem(
    Wf: Tensor,
    act: Activation,
    conv: ConvGeometry | None,
    num_samples: int,
    batch_size: int,
    max_bytes: float,
    generator: torch.Generator | None,
) -> tuple[LossFn, LossFn]:
    """Sampled objective on input vectors: (1/B) sum_k ||act(U V^T x_k) - act(W x_k)||^2.

    A Linear layer trains on the paper's fixed pool of ``num_samples`` inputs. For a conv, the paper's
    ``num_samples`` images hold num_samples * H' * W' patches (about 4M for 1000 64x64 images), more than
    Adam ever visits (768 * 512), so each step draws fresh patches. A fixed pool of patches overfits: with
    1000 patches and d_in = c_in kh kw up to 4608 the sampled loss only sees Y on the samples' span, and
    even 16384 patches made lfai-ws worse than its spectral start on the exact objective (docs/theory.md).
    The per-epoch check (early stopping, best factors) uses a separate pool of ``num_samples`` held-out
    inputs, so an overfit epoch is never returned as the best (with the paper's 1000 training inputs a
    1024 x 1024 Linear layer otherwise ends far worse than its start).
    """
    d_in = Wf.shape[1]
    pools = 1 if conv is not None else 2
    need = pools * num_samples * (d_in + Wf.shape[0]) * Wf.element_size()
    if need > max_bytes:
        raise ValueError(
            f"the sampled objective needs {need / 2**30:.1f} GiB for {pools * num_samples} inputs of size "
            f"{d_in} (max_bytes={max_bytes / 2**30:.1f} GiB); lower num_samples or raise max_bytes"
        )

    def draw(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, d_in, dtype=Wf.dtype, device=Wf.device, generator=generator)  # (n, d_in)
        return x, act(x @ Wf.T)  # targets (n, d_out)

    X_eval, T_eval = draw(num_samples)
    X, T = draw(num_samples) if conv is None else (X_eval, T_eval)
    product = _product(conv)
    factored = conv is None or conv.layout == "channel"

    def batch_loss(U: Tensor, V: Tensor, x: Tensor, t: Tensor) -> Tensor:
        z = (x @ V) @ U.T if factored else x @ product(U, V).T  # (B, d_out), O(B r (d_in + d_out))
        return (act(z) - t).pow(2).sum(1).mean()

    def eval_loss(U: Tensor, V: Tensor) -> Tensor:
        parts = [
            batch_loss(U, V, x, t) * len(x)
            for x, t in zip(X_eval.split(batch_size), T_eval.split(batch_size))
        ]
        return torch.stack(parts).sum() / num_samples

    def step_loss(U: Tensor, V: Tensor) -> Tensor:
        if conv is None:
            idx = torch.randint(num_samples, (batch_size,), generator=generator, device=Wf.device)
            return batch_loss(U, V, X[idx], T[idx])
        return batch_loss(U, V, *draw(batch_size))  # fresh patches

    return step_loss, eval_loss


def _image_problem(
    Wf: Tensor,
    act: Activation,
    conv: ConvGeometry | None,
    num_samples: int,
    batch_size: int,
    image_size: int,
    max_bytes: float,
    generator: torch.Generator | None,
) -> tuple[LossFn, LossFn]:
    """The paper's literal form: ``num_samples`` fixed N(0, 1) images through the conv; the loss is summed
    over output channels and averaged over images and output pixels (so it estimates R per pixel)."""
    if conv is None:
        raise ValueError("inputs='images' needs a conv layer (conv=ConvGeometry(...)); got a plain matrix")
    c_in = conv.kernel_shape[1]
    need = num_samples * c_in * image_size**2 * Wf.element_size()
    if need > max_bytes:
        raise ValueError(
            f"inputs='images' needs {need / 2**30:.1f} GiB for {num_samples} images of {c_in}x{image_size}x"
            f"{image_size} (max_bytes={max_bytes / 2**30:.1f} GiB); lower num_samples or image_size"
        )
    shape = (num_samples, c_in, image_size, image_size)
    X = torch.randn(shape, dtype=Wf.dtype, device=Wf.device, generator=generator)  # (N, c_in, s, s)
    product = _product(conv)

    def conv_out(x: Tensor, Y: Tensor) -> Tensor:
        return conv.conv2d(x, matrix_to_kernel(Y, conv.kernel_shape, "channel"))  # (b, c_out, s', s')

    T = act(conv_out(X, Wf))

    def batch_loss(U: Tensor, V: Tensor, idx: Tensor) -> Tensor:
        out = act(conv_out(X[idx], product(U, V)))
        return (out - T[idx]).pow(2).sum(1).mean()

    def eval_loss(U: Tensor, V: Tensor) -> Tensor:
        chunks = torch.arange(num_samples, device=Wf.device).split(batch_size)
        return torch.stack([batch_loss(U, V, c) * len(c) for c in chunks]).sum() / num_samples

    def step_loss(U: Tensor, V: Tensor) -> Tensor:
        return batch_loss(
            U, V, torch.randint(num_samples, (batch_size,), generator=generator, device=Wf.device)
        )

    return step_loss, eval_loss


def lfai(
    W: Tensor,
    rank: int,
    *,
    activation: Activation,
    generator: torch.Generator | None = None,
    start: str = "baseline",
    objective: str = "sampled",
    num_samples: int = 1000,
    lr: float = 5e-3,
    batch_size: int = 512,
    steps_per_epoch: int = 128,
    max_epochs: int = 6,
    tol: float = 1e-3,
    inputs: str = "patches",
    image_size: int = 64,
    max_bytes: float = 4 * 2**30,
    conv: ConvGeometry | None = None,
    distribution: str = "trunc-normal",
    svd: SVD | None = None,
    function: LayerFunction | None = None,
) -> InitResult:
    """Adam on the NLRA objective from the baseline (``start="baseline"``) or spectral factors.

    Args:
        W: (d_out, d_in) in the layout being factorized. rank: r. activation: sigma.
        generator: the only source of randomness (inputs, batches, baseline start).
        start: ``"baseline"`` (Algorithm 2, init "lfai") or ``"spectral"`` (Algorithm 3, "lfai-ws").
        objective: ``"sampled"`` (the paper's) or ``"exact"`` (closed form; relu, leaky_relu, identity).
        num_samples, batch_size, steps_per_epoch, max_epochs, lr, tol: as in the module docstring.
        inputs: ``"patches"`` or ``"images"`` (convs only; ``image_size``, ``max_bytes``).
        conv: the conv's geometry; needed for the "spatial" layout and for images.
        distribution: the baseline start's distribution.
        svd: W's top-r SVD if the caller has it (the spectral start; :func:`nlinit.subspace.top_svd`).
        function: the layer's real function (module docstring); ignored when normalized or with a
            "spatial" conv.
    Returns:
        (U, V), shapes (d_out, r), (d_in, r): the best factors seen (start included); with ``function``
        (U, V, bias'), the bias refitted.

    Example:
        >>> U, V = lfai(torch.randn(64, 32) / 32**0.5, 8, activation=Activation("relu"), start="spectral")
    """
    check_choice("start", start, ("baseline", "spectral"))
    check_choice("objective", objective, ("exact", "sampled"))
    check_choice("inputs", inputs, ("images", "patches"))
    for name, value in (
        ("num_samples", num_samples),
        ("batch_size", batch_size),
        ("steps_per_epoch", steps_per_epoch),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 0:
        raise ValueError(f"max_epochs must be an int >= 0, got {max_epochs!r}")
    if objective == "exact" and inputs == "images":
        raise ValueError(
            "inputs='images' applies to objective='sampled' only; the exact objective has no inputs"
        )
    fan_in = math.prod(conv.kernel_shape[1:]) if conv is not None else None
    channel = conv is None or conv.layout == "channel"
    if function is not None and function.refits_offset and channel:
        return _lfai_on_function(
            W, rank, activation, function, generator, start, objective, distribution, fan_in,
            num_samples, lr, batch_size, steps_per_epoch, max_epochs, tol,
        )  # fmt: skip
    if start == "spectral":
        U0, V0 = top_svd(W, rank, svd).factors()
    else:
        U0, V0 = draw_factors(W, rank, distribution, fan_in=fan_in, generator=generator)
    Wf = conv.function_view(W) if conv is not None else W  # the layer's function matrix
    if objective == "exact":
        step_loss, eval_loss = _exact_problem(Wf, activation, conv)
    elif inputs == "patches":
        step_loss, eval_loss = _patch_problem(
            Wf, activation, conv, num_samples, batch_size, max_bytes, generator
        )
    else:
        step_loss, eval_loss = _image_problem(
            Wf, activation, conv, num_samples, batch_size, image_size, max_bytes, generator
        )

    U, V = _adam(lambda p: step_loss(p[0], p[1]), lambda p: eval_loss(p[0], p[1]), [U0, V0], lr,
                 steps_per_epoch, max_epochs, tol)  # fmt: skip
    return U, V


def _adam(
    step_loss: Callable[[list[Tensor]], Tensor],
    eval_loss: Callable[[list[Tensor]], Tensor],
    start: list[Tensor],
    lr: float,
    steps_per_epoch: int,
    max_epochs: int,
    tol: float,
) -> list[Tensor]:
    """The paper's loop: Adam on ``step_loss`` from ``start``, ``steps_per_epoch`` steps per epoch; after each
    epoch ``eval_loss`` (held-out); the best parameters seen (the start included) are returned, and it
    stops when an epoch improves it by less than ``tol`` (relative)."""
    params = [p.detach().clone().requires_grad_(True) for p in start]
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        best = float(eval_loss(params))
    best_params = [p.detach().clone() for p in start]
    for _ in range(max_epochs):
        for _ in range(steps_per_epoch):
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():  # init_factors calls solvers under no_grad
                step_loss(params).backward()
            opt.step()
        with torch.no_grad():
            current = float(eval_loss(params))
        gain = (best - current) / max(best, 1e-30)
        if current < best:
            best, best_params = current, [p.detach().clone() for p in params]
        if gain < tol:
            break
    return best_params


def _lfai_on_function(
    W: Tensor,
    rank: int,
    act: Activation,
    fn: LayerFunction,
    generator: torch.Generator | None,
    start: str,
    objective: str,
    distribution: str,
    fan_in: int | None,
    num_samples: int,
    lr: float,
    batch_size: int,
    steps_per_epoch: int,
    max_epochs: int,
    tol: float,
) -> InitResult:
    """LFAI on the layer's real function in whitened coordinates (module docstring), float64 inside."""
    Wt, d, white = whitened_problem(W, fn)
    if start == "spectral":
        U0, V0 = top_svd(Wt, rank).factors()
    else:  # the baseline factors, as the layer would compute them, in whitened coordinates
        U0, V0 = (t.double() for t in draw_factors(W, rank, distribution, fan_in=fan_in, generator=generator))
        U0 = U0 * fn.scale.double()[:, None] if fn.scale is not None else U0
        V0 = white.L.T @ V0 if white.L is not None else V0
    U0, V0 = U0.double(), V0.double()

    if objective == "exact":

        def exact(p: list[Tensor]) -> Tensor:
            return nlra_loss(Wt, p[0] @ p[1].T, act, "exact", offset=d, offset_y=p[2])

        step_loss, eval_loss = exact, exact
    else:
        k = Wt.shape[1]
        Z_eval = torch.randn(num_samples, k, dtype=torch.float64, device=Wt.device, generator=generator)
        Z = torch.randn(num_samples, k, dtype=torch.float64, device=Wt.device, generator=generator)
        T_eval, T = act(Z_eval @ Wt.T + d), act(Z @ Wt.T + d)

        def batch(p: list[Tensor], z: Tensor, t: Tensor) -> Tensor:
            return (act((z @ p[1]) @ p[0].T + p[2]) - t).square().sum(1).mean()

        def step_loss(p: list[Tensor]) -> Tensor:
            idx = torch.randint(num_samples, (batch_size,), generator=generator, device=Wt.device)
            return batch(p, Z[idx], T[idx])

        def eval_loss(p: list[Tensor]) -> Tensor:
            return batch(p, Z_eval, T_eval)

    U, V, d_new = _adam(step_loss, eval_loss, [U0, V0, d.clone()], lr, steps_per_epoch, max_epochs, tol)
    return from_whitened(U, V, d_new, fn, white, W)
