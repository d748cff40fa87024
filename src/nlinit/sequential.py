r"""Sequential compression: each layer fitted on the inputs the already-compressed model gives it.

Layer by layer in execution order, layer l's input in the original model, x, and in the model whose earlier
layers are already low-rank, x^, are streamed together on the calibration data, and the layer is solved for
the *asymmetric* problem: its low-rank output on x^ should match the original layer's output on x,

.. math::
    \min_{\mathrm{rank}\,Y \le r,\ b'} \mathbb{E}\,\lVert W x + b - (Y \hat x + b') \rVert^2 ,

(Zhang, Zou, He and Sun, "Accelerating Very Deep Convolutional Networks for Classification and Detection",
TPAMI 2016, arXiv 1505.06798: asymmetric reconstruction; for LLMs, e.g. AA-SVD, Sinha and Fleuret 2026,
arXiv 2604.02119). Up to a constant, it is the ordinary whitened problem on x^'s statistics for the dense
layer (W_eff, b_eff) of :func:`asymmetric_target`, the regression of W x + b on x^ (docs/theory.md, section
11.5), so every solver of :func:`nlinit.factorize` solves it unchanged: :func:`_factorize_sequential`
swaps that dense layer in and calls ``factorize`` on it. Used by :func:`nlinit.compress.compress`
(``sequential=True``). In a model whose layers sit in a chain of blocks (a transformer's layers, a ResNet's
residual blocks), each layer's pass runs only its block, on inputs kept from the previous block (as GPTQ and
SVD-LLM run a decoder layer at a time): O(L) block forwards instead of O(L^2).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_finite, check_matrix
from .calibration import (
    DEFAULT_BATCH_SIZE,
    LayerStats,
    _batches,
    _Enough,
    _forward,
    _model_input,
    _take_rows,
    collect_stats,
)
from .factorize import _module_names, factorize, layer_generator, replace_modules
from .layer_function import whitener
from .report import FactorizeReport, LayerReport

__all__ = ["asymmetric_target"]

_Call = tuple[tuple[Any, ...], dict[str, Any]]  # a module call's (args, kwargs)


def asymmetric_target(
    W: Tensor, bias: Tensor | None, mean: Tensor, mean_hat: Tensor, cross: Tensor, cov_hat: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The dense layer on x^ whose low-rank fits solve the asymmetric problem: (W_eff, b_eff), float64.

    .. math::
        W_{\mathrm{eff}} = W C \hat\Sigma^{-1}, \qquad b_{\mathrm{eff}} = b + W\mu - W_{\mathrm{eff}}\hat\mu,

    the least-squares regression of W x + b on x^ (C = Cov(x, x^), Sigma^ = Cov(x^)). For every Y and b',
    E||W x + b - Y x^ - b'||^2 = E||W x + b - W_eff x^ - b_eff||^2 + E||W_eff x^ + b_eff - Y x^ - b'||^2
    (the residual is uncorrelated with x^), and the same with each unit weighted (a BatchNorm's scale), so
    the asymmetric problem is the ordinary one for (W_eff, b_eff) on x^'s statistics (docs/theory.md,
    section 11.5). Sigma^ is regularized by :func:`nlinit.layer_function.whitener`'s rule (a pivoted Cholesky
    factor; conditional variances at most 1e-6 of the largest variance replaced by that): exact unless a
    coordinate of x^ has a conditional variance in (0, 1e-6 max]; directions with none
    have C v = 0 and get W_eff v = 0. With x^ = x: W_eff = W, b_eff = b.

    Args:
        W: (d_out, d_in) the dense layer's matrix (a conv's "channel" view). bias: (d_out,) b, or None (0).
        mean, mean_hat: (d_in,) mu = E x and mu^ = E x^. cross: (d_in, d_in) C = E[(x - mu)(x^ - mu^)^T].
        cov_hat: (d_in, d_in) Sigma^, symmetric.
    Returns:
        (W_eff (d_out, d_in), b_eff (d_out,)), float64 on W's device.
    Raises:
        ValueError: a non-finite input, a shape that does not fit W, an asymmetric cov_hat (one line).

    Example:
        >>> X = torch.randn(100, 4, dtype=torch.float64); Xh = X + 0.1 * torch.randn_like(X)
        >>> stats = LayerStats.from_samples(torch.cat([X, Xh], 1))
        >>> W_eff, b_eff = asymmetric_target(torch.eye(3, 4), None, stats.mean[:4], stats.mean[4:],
        ...                                  stats.cov[:4, 4:], stats.cov[4:, 4:])
    """
    check_matrix("W", W)
    d_out, d_in = W.shape
    given = {"bias": bias, "mean": mean, "mean_hat": mean_hat, "cross": cross, "cov_hat": cov_hat}
    shapes = {"bias": (d_out,), "mean": (d_in,), "mean_hat": (d_in,), "cross": (d_in, d_in)}
    shapes["cov_hat"] = (d_in, d_in)
    for name, t in given.items():
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shapes[name]:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a floating-point {shapes[name]} tensor for a {d_out}x{d_in} W, got {got}"
            )
        check_finite(name, t)
    W64 = W.detach().double()
    white = whitener(cov_hat, d_in)  # L L^T = Sigma^ (regularized); checks that it is symmetric
    assert white.L_inv is not None
    L_inv = white.L_inv.to(W64.device)
    W_eff = (W64 @ cross.double().to(W64.device)) @ L_inv.T @ L_inv  # W C (L L^T)^{-1}, d_out d_in^2 flops
    b = bias.detach().double() if bias is not None else torch.zeros(d_out, dtype=torch.float64)
    b_eff = b.to(W64.device) + W64 @ mean.double().to(W64.device) - W_eff @ mean_hat.double().to(W64.device)
    return W_eff, b_eff


# --------------------------------------------------------------------------------------------------------
# The pass: joint statistics of (x, x^), one layer at a time


class _Paired(nn.Module):
    """A model whose forward runs the reference and the working model on the same batch and feeds
    ``probe`` the two inputs of each call of layer ``name``, concatenated along the features (a conv's
    channels), so that :func:`nlinit.calibration.collect_stats` on ``probe`` streams the statistics of
    [x; x^] (a conv's patches in the "channel" layout: x's c_in kh kw entries, then x^'s).

    The first forward runs both models to the end and counts the layer's calls in each; later forwards
    stop each model at its last call, as :func:`nlinit.calibration.collect_stats` does (nothing after the
    layer can change its inputs)."""

    def __init__(
        self,
        reference: nn.Module,
        model: nn.Module,
        name: str,
        probe: nn.Linear | nn.Conv2d,
        route: Callable[[tuple[Any, ...], dict[str, Any]], list[_Call]] | None = None,
    ):
        super().__init__()
        self.probe = probe  # the only registered submodule: its device is where batches go
        self.models = [reference, model]  # a list, so not submodules
        self.name = name
        self.dim = -3 if isinstance(probe, nn.Conv2d) else -1
        self.calls: list[int] | None = None  # per model, from the first forward
        self.route = route  # None: both models get the call's inputs; else [reference's, model's]

    def forward(self, *args: Any, **kwargs: Any) -> None:
        inputs: list[list[Tensor]] = [[], []]
        calls = self.calls or [0, 0]  # 0: no limit (the counting forward)
        routed = self.route(args, kwargs) if self.route is not None else [(args, kwargs)] * 2
        handles = []
        for model, seen, limit in zip(self.models, inputs, calls, strict=True):

            def grab(
                module: nn.Module,
                a: tuple[Any, ...],
                kw: dict[str, Any],
                seen: list[Tensor] = seen,
                limit: int = limit,
            ) -> None:
                seen.append(a[0] if a else kw["input"])
                if len(seen) == limit:
                    raise _Enough

            layer = model.get_submodule(self.name)
            handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
        try:
            for model, (a, kw) in zip(self.models, routed, strict=True):
                with contextlib.suppress(_Enough):
                    model(*a, **kw)
        finally:
            for handle in handles:
                handle.remove()
        if self.calls is None:
            self.calls = [len(seen) for seen in inputs]
        for x, x_hat in zip(*inputs, strict=False):  # the k-th call in one model with the k-th in the other
            self.probe(torch.cat([x, x_hat], self.dim))


# --------------------------------------------------------------------------------------------------------
# Block inputs kept between layers: O(L) block forwards per pass instead of O(L^2)


def _blocks(model: nn.Module, names: Sequence[str]) -> list[str] | None:
    """The blocks that may chain the layers ``names``, in registration order: ``model``'s children with every
    nn.Sequential / nn.ModuleList among them replaced by its children (recursively), from the first that holds
    a name (the layer itself or a module containing it) to the last; when only one holds them all, the same
    inside that one. A transformer's encoder layers, a ResNet's residual blocks across its stages, a
    Sequential's modules. None if fewer than two blocks would hold the layers. Whether they do chain is
    checked on the data (:meth:`_Chain.capture`)."""
    where = ""
    while True:
        flat = _flatten(model.get_submodule(where), where)
        holding = [k for k, b in enumerate(flat) if any(_block_of(n, [b]) == 0 for n in names)]
        if not holding or any(_block_of(n, flat) is None for n in names):
            return None
        if len(holding) >= 2:
            return flat[holding[0] : holding[-1] + 1]
        where = flat[holding[0]]
        if where in names:  # one layer, no block around it
            return None


def _flatten(module: nn.Module, prefix: str) -> list[str]:
    """The names of ``module``'s children in order, each nn.Sequential / nn.ModuleList replaced by its own."""
    out = []
    for child, sub in module.named_children():
        name = f"{prefix}.{child}" if prefix else child
        out += _flatten(sub, name) if isinstance(sub, (nn.Sequential, nn.ModuleList)) else [name]
    return out


def _block_of(name: str, blocks: Sequence[str]) -> int | None:
    """The index of the block holding layer ``name`` (the block itself or a submodule of it), or None."""
    return next((k for k, b in enumerate(blocks) if name == b or name.startswith(b + ".")), None)


_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _shareable(a: object) -> bool:
    """Whether blocks may share ``a`` and replays reuse it: a tensor (an in-place change shows in its version
    counter, :func:`_unmodified`), a plain value, or a tuple of those; not an object that may hold state
    a block changes (a key-value cache, a list)."""
    return isinstance(a, (Tensor, *_PLAIN)) or (isinstance(a, tuple) and all(_shareable(v) for v in a))


def _same(a: object, b: object) -> bool:
    """The same shareable object, or equal plain values: what a chain's blocks share."""
    if a is b:
        return _shareable(a)
    return isinstance(a, _PLAIN) and type(a) is type(b) and a == b


@dataclass
class _Chain:
    """A model's forward as a chain of blocks, each calibration batch's input to the current block kept for
    the reference model (x) and the working model (x^): a layer's pass runs its block alone on them, and
    moving on runs each block once, so a sequential pass costs O(L) block forwards, not O(L^2).

    Built by :meth:`capture`, which checks on every batch that the model is such a chain: each block runs
    once per forward, in order; block k+1's first positional input is block k's output (or its first
    element) itself, unmodified (no in-place operation between the blocks; none on the input of a block
    holding a layer, by the block or anything after it, since such a block runs again on its kept input;
    none on a kept input of block 0 until the capture ends), and its other inputs (an attention mask, ...)
    are block 0's own tensors or plain values (not a cache or another object a block may change). Then
    running the blocks one after another on the kept inputs is the model's own computation up to the
    current block, as far as tensors' version counters see: writes through ``.data``, numpy views or
    custom kernels that bypass them are not seen (as they are not by autograd), nor are tensors without a
    counter (inference tensors: the chain is declined)."""

    blocks: list[str]
    first_element: bool  # block k+1's input is block k's output[0] (a tuple output), not the output
    reference: list[_Call]  # per batch: the current block's inputs in the reference model
    model: list[_Call]  # the same in the working model (the same list until one of its layers changes)
    at: int = 0  # the current block

    @classmethod
    def capture(
        cls, model: nn.Module, blocks: list[str], layers: Sequence[str], calibration: Iterable[Any] | Tensor,
        batches: int | None, split: bool,
    ) -> _Chain | None:  # fmt: skip
        """The chain with block 0's inputs on every calibration batch (at most ``batches``), from forwards
        of ``model`` stopped after the last block; None when some batch breaks the chain's rules, one of
        ``layers`` runs outside its block (a module shared between blocks), or (``split``: the held-out
        split, which whole forwards make on the model input's rows, is made on block 0's inputs) the
        samples are not block 0's rows: a tensor input of block 0 has another first dimension than the
        model input's, a tuple input holds a per-sample tensor (the split cuts only tensors), or every
        other row of the largest batch gives block 0 and the last block other inputs and outputs than
        those rows of the whole batch's (:func:`_rows_align`: a sequence-first layout, rows mixed)."""
        modules = [model.get_submodule(b) for b in blocks]
        calls: list[tuple[int, _Call]] = []
        outputs: dict[int, Any] = {}
        versions_in: dict[int, int | None] = {}  # block k's first input's version when k began
        versions_out: dict[int, dict[int, int | None]] = {}  # {id: version} of k's output (or output[0])
        holding = {_block_of(n, blocks) for n in layers}  # the blocks run again on their kept inputs
        active: list[int] = []  # the block running now (blocks do not nest: siblings)
        strays: list[str] = []  # layers called outside their block
        shared: list[tuple[Tensor, int | None]] = []  # block 0's tensors (the kept ones) when it began

        def before(k: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                calls.append((k, (args, kwargs)))
                active.append(k)
                versions_in[k] = _version(args[0] if args else None)
                if k == 0:
                    shared[:] = [(t, _version(t)) for t in _tensors((args, kwargs))]

            return hook

        def after(k: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                outputs[k] = output
                heads = (output, _head(output))
                versions_out[k] = {id(t): _version(t) for t in heads if isinstance(t, Tensor)}
                active.pop()
                if k == len(modules) - 1:
                    raise _Enough

            return hook

        def inside(name: str, k: int | None) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                if active[-1:] != [k]:
                    strays.append(name)

            return hook

        device = next((p.device for p in model.parameters()), None)
        handles = [m.register_forward_pre_hook(before(k), with_kwargs=True) for k, m in enumerate(modules)]
        handles += [m.register_forward_hook(after(k)) for k, m in enumerate(modules)]
        handles += [
            model.get_submodule(n).register_forward_pre_hook(inside(n, _block_of(n, blocks)))
            for n in layers
            if n not in blocks  # a block that is the layer runs inside itself
        ]
        kept: list[_Call] = []
        kept_versions: list[tuple[Tensor, int | None]] = []  # every tensor of the kept calls, when kept
        first_element: set[bool] = set()
        # the largest batch's model input, block 0's call and the last block's output (the rows' check)
        probe: tuple[_Call, _Call, Any] | None = None
        try:
            with torch.no_grad():
                for b, batch in enumerate(_batches(calibration, batches, DEFAULT_BATCH_SIZE)):
                    calls.clear()
                    outputs.clear()
                    active.clear()
                    args, kwargs = _model_input(batch, b, device)
                    with contextlib.suppress(_Enough):
                        _forward(model, args, kwargs, b)
                    in_order = [k for k, _ in calls] == list(range(len(modules)))
                    if strays or not in_order or not _chained(calls, outputs, first_element):
                        return None
                    if not _unmodified(calls, versions_in, versions_out, holding):
                        return None
                    if _written(shared):  # in the forward
                        return None
                    if split and _rows(*calls[0][1]) != _rows(args, kwargs):  # rows: the samples
                        return None
                    if split and any(t.dim() and t.shape[0] != 1 for t in _tensors(calls[0][1], nested=True)):
                        return None
                    kept.append(calls[0][1])
                    kept_versions += shared
                    if split and (probe is None or _size((args, kwargs)) > _size(probe[0])):
                        probe = ((args, kwargs), calls[0][1], outputs[len(modules) - 1])
        finally:
            for handle in handles:
                handle.remove()
        if len(first_element) > 1 or not kept or any(not a or not isinstance(a[0], Tensor) for a, _ in kept):
            return None
        if split and (probe is None or not _rows_align(model, modules[0], modules[-1], *probe)):
            return None
        if _written(kept_versions):  # reused or written after its batch
            return None
        return cls(blocks, first_element == {True}, kept, kept)

    def advance(self, reference: nn.Module, model: nn.Module, block: int, replaced: Iterable[str]) -> None:
        """Run the blocks before ``block`` on the kept inputs, the reference's and the working model's (the
        working model's are the reference's while no block run has a ``replaced`` layer)."""
        while self.at < block:
            name = self.blocks[self.at]
            changed = self.model is not self.reference or any(_block_of(n, [name]) == 0 for n in replaced)
            self.reference = self._run(reference.get_submodule(name), self.reference)
            self.model = self._run(model.get_submodule(name), self.model) if changed else self.reference
            self.at += 1

    def _run(self, block: nn.Module, inputs: list[_Call]) -> list[_Call]:
        out = []
        with torch.no_grad():
            for args, kwargs in inputs:
                y = block(*args, **kwargs)
                out.append(((y[0] if self.first_element else y, *args[1:]), kwargs))
        return out

    def batches(self, hat: bool = True) -> list[dict[str, Any]]:
        """The kept inputs as keyword batches for :func:`nlinit.calibration.collect_stats` (so that its
        held-out split cuts every tensor by rows): x, x^ (unless not ``hat``), the other arguments and
        keywords."""
        flat = []
        for (args, kwargs), (args_hat, _) in zip(self.reference, self.model, strict=True):
            rest = {f"arg{i}": a for i, a in enumerate(args[1:], 1)}
            first = {"x": args[0], "x_hat": args_hat[0]} if hat else {"x": args[0]}
            flat.append({**first, **rest, **{f"kw_{k}": v for k, v in kwargs.items()}})
        return flat

    @staticmethod
    def route(args: tuple[Any, ...], flat: dict[str, Any]) -> list[_Call]:
        """[reference block's call, working block's call] from one of :meth:`batches`' batches (without
        x^: both the reference's)."""
        rest = [flat[f"arg{i}"] for i in range(1, len(flat)) if f"arg{i}" in flat]
        kwargs = {k[3:]: v for k, v in flat.items() if k.startswith("kw_")}
        return [((flat["x"], *rest), kwargs), ((flat.get("x_hat", flat["x"]), *rest), kwargs)]


def _block_runner(block: nn.Module, path: str) -> nn.Module:
    """A module that runs ``block`` on one of :meth:`_Chain.batches`' batches (its reference call), so that
    :func:`nlinit.calibration.collect_stats` on it streams the inputs of the block's layers. The block sits
    at its path in the model (``path``; empty containers above it), so its layers keep their names, and with
    them the reservoirs' seeds (:func:`nlinit.calibration.collect_stats` derives each layer's from its
    name). The runner has no attribute of its own (the block is the forward's closure), so no child name
    of the model can collide with one."""

    class Runner(nn.Module):
        def forward(self, **flat: Any) -> Any:
            args, kwargs = _Chain.route((), flat)[0]
            return block(*args, **kwargs)

    runner = Runner()
    parent: nn.Module = runner
    *above, last = path.split(".")
    for part in above:
        parent.add_module(part, nn.Module())
        parent = parent.get_submodule(part)
    parent.add_module(last, block)
    return runner


def _version(x: object) -> int | None:
    """A tensor's version counter (bumped by every in-place operation on it through torch), -1 for an
    inference tensor (which has none), None for anything else."""
    if not isinstance(x, Tensor):
        return None
    return -1 if x.is_inference() else x._version


def _written(versions: Iterable[tuple[Tensor, int | None]]) -> bool:
    """Whether some tensor of ``(tensor, version when recorded)`` has no version counter (None, or an
    inference tensor's -1) or has been written since."""
    return any(v is None or v < 0 or _version(t) != v for t, v in versions)


def _head(output: Any) -> Any:
    """A block's output as the next block takes it when it takes the first element: ``output[0]`` for a
    non-empty tuple or list, else ``output`` itself."""
    return output[0] if isinstance(output, (tuple, list)) and output else output


def _tensors(call: _Call, nested: bool = False) -> list[Tensor]:
    """The tensors among a call's arguments and keywords, also inside tuples (``nested``: only those)."""

    def flat(v: Any, inside: bool) -> list[Tensor]:
        if isinstance(v, Tensor):
            return [v] if inside or not nested else []
        return [t for item in v for t in flat(item, True)] if isinstance(v, tuple) else []

    args, kwargs = call
    return [t for v in (*args, *kwargs.values()) for t in flat(v, False)]


def _unmodified(
    calls: list[tuple[int, _Call]],
    versions_in: Mapping[int, int | None],
    versions_out: Mapping[int, dict[int, int | None]],
    holding: set[int | None],
) -> bool:
    """Whether no in-place operation touched block k's output before block k+1 began, nor the first input
    of a block in ``holding`` (which runs again on its kept input) after the block began, by the block or
    anything later in the forward; False for an inference tensor (no version counter to check)."""
    for k, (args, _) in calls:
        x = args[0] if args else None
        if versions_in[k] == -1:
            return False
        if k in holding and _version(x) != versions_in[k]:
            return False
        if k and versions_out.get(k - 1, {}).get(id(x), versions_in[k]) != versions_in[k]:
            return False
    return True


def _rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> set[int | None]:
    """The first dimensions of a call's tensor inputs (of at least one dimension); {None} if it has none."""
    return {v.shape[0] for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim()} or {None}


def _size(call: _Call) -> int:
    """The largest first dimension of a call's tensor inputs (0 if none): the batch's rows."""
    return max((r for r in _rows(*call) if r is not None), default=0)


def _rows_align(
    model: nn.Module, first: nn.Module, last: nn.Module, model_input: _Call, kept: _Call, out: Any
) -> bool:
    """Whether ``model`` on every other row of a batch (``model_input``; each tensor cut along its first
    dimension, as the held-out split cuts it) gives block ``first`` those rows of its inputs on the whole
    batch (``kept``), and block ``last`` those rows of its output (``out``, or its first element), up to
    float rounding (:func:`_rounding` of the largest entry): then cutting block 0's inputs by rows is
    cutting the model's, and the blocks treat each row alone. False where the samples are not the blocks'
    rows: a sequence-first layout (S, N, d) (even with S = N), rows mixed before or in the blocks; and
    where the model fails on the part (whole forwards, which cut each batch the same way, report it)."""
    args, kwargs = model_input
    sizes = _rows(args, kwargs)
    n = sizes.pop() if len(sizes) == 1 else None
    if n is None:
        return False
    rows = torch.arange(0, n, 2)
    seen: list[Any] = []

    def grab(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        seen.append((a, kw))

    def stop(module: nn.Module, a: tuple[Any, ...], output: Any) -> None:
        seen.append(output)
        raise _Enough

    handles = [first.register_forward_pre_hook(grab, with_kwargs=True), last.register_forward_hook(stop)]
    try:
        with torch.no_grad(), contextlib.suppress(_Enough):
            _forward(model, *_take_rows(args, kwargs, rows), 0)
        if len(seen) != 2:
            return False
        (a_part, kw_part), out_part = seen
        a_all, kw_all = kept
        if len(a_part) != len(a_all) or kw_part.keys() != kw_all.keys():
            return False
        pairs = [*zip(a_part, a_all), *((kw_part[k], v) for k, v in kw_all.items())]
        return all(_rows_match(p, w, rows) for p, w in [*pairs, (_head(out_part), _head(out))])
    except Exception:  # the model cannot run on part of a batch: whole forwards (which cut it) decide
        return False
    finally:
        for handle in handles:
            handle.remove()


def _rows_match(part: Any, whole: Any, rows: Tensor) -> bool:
    """Whether ``part`` is ``whole``'s ``rows`` (a tensor of at least one dimension; anything else
    passes): equal for integers and booleans, within :func:`_rounding` of the largest entry for floats."""
    if not (isinstance(whole, Tensor) and whole.dim()):
        return True
    if not isinstance(part, Tensor) or part.dtype != whole.dtype:
        return False
    cut = whole[rows.to(whole.device)]
    if part.shape != cut.shape:
        return False
    if not whole.is_floating_point() or not whole.numel():
        return torch.equal(part, cut)
    return torch.allclose(part, cut, rtol=0.0, atol=_rounding(whole) * float(whole.abs().max()))


def _rounding(t: Tensor) -> float:
    """How far, relative to its largest entry, a float tensor computed on a batch may differ from the same
    computed on part of it: 1e-5 in float32 (GEMMs blocked otherwise for another row count), 4 eps in a
    coarser dtype (bfloat16: 0.031) and in float32 on a GPU allowed TF32 products (eps = 2^-10)."""
    eps = torch.finfo(t.dtype).eps
    if t.is_cuda and t.dtype == torch.float32:
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        eps = 2.0**-10 if tf32 else eps
    return max(1e-5, 4 * eps)


def _chained(calls: list[tuple[int, _Call]], outputs: Mapping[int, Any], first_element: set[bool]) -> bool:
    """Whether each block's call takes the previous block's output (``first_element``: or its first element,
    recorded) as its first input and shares the other inputs with the first block's call."""
    (args0, kwargs0) = calls[0][1]
    for k in range(1, len(calls)):
        args, kwargs = calls[k][1]
        out = outputs.get(k - 1)
        if not args or len(args) != len(args0) or kwargs.keys() != kwargs0.keys():
            return False
        if args[0] is out:
            first_element.add(False)
        elif args[0] is _head(out):  # (not out itself: then it is out's first element)
            first_element.add(True)
        else:
            return False
        if not all(_same(a, b) for a, b in zip(args[1:], args0[1:], strict=True)):
            return False
        if not all(_same(kwargs[key], kwargs0[key]) for key in kwargs):
            return False
    return True


def _chain_blocks(model: nn.Module, names: Sequence[str]) -> tuple[list[str] | None, list[str]]:
    """(:func:`_blocks` of the layers ``names``, given in execution order, or None unless those blocks hold
    them in that order; every name of those layers, a shared module's aliases included)."""
    aliases = _module_names(model)
    every = [n for name in names for n in aliases[id(model.get_submodule(name))]]
    blocks = _blocks(model, every)
    if blocks is not None:
        order = [_block_of(name, blocks) for name in names]
        blocks = blocks if order == sorted(order) else None  # type: ignore[type-var]
    return blocks, every


def _streamed_stats(
    model: nn.Module,
    names: Sequence[str],
    calibration: Iterable[Any] | Tensor,
    collect: Callable[[dict[str, nn.Module], nn.Module, Any], dict[str, LayerStats]],
    *,
    batches: int | None,
    split: bool,
) -> Generator[LayerStats, None, None]:
    """The statistics of ``model``'s layers ``names`` (in execution order), one layer's at a time:
    ``collect({name: layer}, module, data)`` (:func:`nlinit.calibration.collect_stats` with the caller's
    settings) on whole forwards of ``model`` over ``calibration``, each stopped at the layer (O(L^2) block
    forwards for L layers), or, when the layers lie in the blocks of a chain (:func:`_blocks`, checked on
    every batch by :meth:`_Chain.capture`; ``batches``, ``split``: its arguments), on the layer's block run
    alone on the block's kept inputs (one activation of the block's input size per calibration vector):
    O(L) block forwards. The statistics are those of whole forwards as :func:`_factorize_sequential`
    describes (bit for bit without a held-out split). Nothing in ``model`` changes in eval mode (as
    :func:`nlinit.compress.compress` runs it; in train mode BatchNorm's running statistics would be
    updated a different number of times); close the iterator to free the kept inputs early."""
    blocks, every = _chain_blocks(model, names)
    chain = None if blocks is None else _Chain.capture(model, blocks, every, calibration, batches, split)
    for name in names:
        layer = model.get_submodule(name)
        if chain is None:
            yield collect({name: layer}, model, calibration)[name]
            continue
        k = _block_of(name, chain.blocks)
        assert k is not None
        chain.advance(model, model, k, ())  # nothing replaced: one list of inputs
        runner = _block_runner(model.get_submodule(chain.blocks[k]), chain.blocks[k])  # names kept
        yield collect({name: layer}, runner, chain.batches(hat=False))[name]


def _probe(layer: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    """A one-output layer like ``layer`` on twice its input features (its patch geometry for a conv)."""
    kw: dict[str, Any] = {"bias": False, "device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            2 * layer.in_channels,
            1,
            layer.kernel_size,  # type: ignore[arg-type]
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
            layer.dilation,  # type: ignore[arg-type]
            padding_mode=layer.padding_mode,
            **kw,
        )
    return nn.Linear(2 * layer.in_features, 1, **kw)


def _split(joint: LayerStats, d: int) -> tuple[Tensor, Tensor, LayerStats]:
    """(mu (d,), C = Cov(x, x^) (d, d), x^'s LayerStats) from the statistics of [x; x^] (2d): copies, so
    the joint statistics can be freed. x's own block of ``joint.second`` is not read (a Linear's is not
    measured: ``collect_stats(_paired=True)``)."""

    def hat(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[..., d:].clone()

    m = joint.mean
    assert joint.second is not None  # collected with input_cov=True (the default)
    cross = joint.second[:d, d:] - torch.outer(m[:d], m[d:])
    stats = LayerStats(
        count=joint.count,
        mean=m[d:].clone(),
        second=joint.second[d:, d:].clone(),
        samples=hat(joint.samples),
        heldout=hat(joint.heldout),
        abs_mean=hat(joint.abs_mean),
    )
    return m[:d].clone(), cross, stats


def _target_layer(layer: nn.Linear | nn.Conv2d, W_eff: Tensor, b_eff: Tensor) -> nn.Linear | nn.Conv2d:
    """A copy of the dense ``layer`` (its settings, dtype and device) computing W_eff x^ + b_eff."""
    weight = layer.weight
    target = copy.deepcopy(layer, {id(t): t for t in layer.parameters()})  # no copy of the old weights
    target.weight = nn.Parameter(W_eff.reshape(weight.shape).to(weight), requires_grad=weight.requires_grad)
    target.bias = nn.Parameter(b_eff.to(weight), requires_grad=weight.requires_grad)
    return target


def _factorize_sequential(
    model: nn.Module,
    rank: Mapping[str, int],
    calibration: Iterable[Any] | Tensor,
    *,
    seed: int,
    calibration_batches: int | None,
    calibration_samples: int,
    calibration_heldout: int,
    progress: bool | None,
    **options: Any,
) -> FactorizeReport:
    """Factorize the layers of ``rank`` ({name: r}, in execution order) one at a time, each on its inputs
    in the partly compressed model against the original layer's output (:func:`asymmetric_target`).

    For each layer: one pass over ``calibration`` through a copy of the original model (x) and ``model``
    (x^) streams the statistics of [x; x^] (:func:`nlinit.calibration.collect_stats` on a probe; the first
    layer, whose inputs nothing has changed yet, gets ``collect_stats`` of ``model`` itself, with the
    seeds of :func:`nlinit.compress.compress`'s non-sequential pass), then the dense layer (W_eff, b_eff)
    replaces it and :func:`nlinit.factorize` (``options``: init, activation, ...) solves that one layer
    with x^'s statistics. Only one layer's statistics are alive at a time; the original model is a copy
    of ``model``'s modules sharing its parameters and buffers (no tensor is copied; nothing here writes to
    them).

    Cost: from whole forwards (each stopped at the layer), the passes run O(L^2) block forwards for L
    layers. When the layers lie in the blocks of a chain (:func:`_blocks`; a transformer's encoder
    layers, a ResNet's residual blocks; each one's output the next one's input, checked on every batch by
    :meth:`_Chain.capture`), each batch's input to the current block is kept for both models (2
    activations of the block's input size per calibration vector) and a layer's pass runs its block
    alone: O(L) block forwards. Without a held-out split the statistics are those of whole forwards bit
    for bit (the same operations on the same tensors). With it, whole forwards cut each batch into its
    fit and held-out rows before the model, the chain cuts the inputs of the layer's block (the blocks
    before it ran on whole batches): bit for bit where the operations before the layer's block give each
    sample the same numbers in a batch and in a part of it (measured on a BERT and ResNet-20, tested),
    else up to float rounding; a model whose samples are not the blocks' rows (checked on the largest
    batch at block 0's input and the last block's output, :func:`_rows_align`) gets whole forwards.
    On any error every layer replaced so far is put back (the original module objects), so
    ``model`` is as it was. The caller (``compress``) checks the arguments.

    Returns:
        One :class:`nlinit.report.FactorizeReport`: the first call's, with each layer's row from its own
        call; ``seconds_stats`` the statistics passes' time.
    """
    start = time.perf_counter()
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    reference = copy.deepcopy(model, shared)  # the original function (gives x): new modules, same tensors
    aliases = _module_names(model)
    collect = {"batches": calibration_batches, "samples": calibration_samples, "heldout": calibration_heldout}
    originals: dict[str, nn.Module] = {}  # every name replaced so far -> its dense module, to undo
    rows: dict[str, LayerReport] = {}
    first: FactorizeReport | None = None
    seconds_stats = 0.0
    blocks, every = _chain_blocks(model, list(rank))
    chain: _Chain | None = None
    bar = tqdm(
        rank.items(), desc="sequential", disable=None if progress is None else not progress, unit="layer"
    )
    try:
        for name, r in bar:
            layer = model.get_submodule(name)
            names = aliases[id(layer)]
            t0 = time.perf_counter()
            if originals and blocks is not None and chain is None:  # block 0's inputs: x = x^ there
                chain = _Chain.capture(
                    reference, blocks, every, calibration, calibration_batches, calibration_heldout > 0
                )
                blocks = blocks if chain is not None else None  # not a chain: whole forwards
            stats, target = _layer_problem(
                reference, model, name, calibration, bool(originals), seed, collect, chain, originals
            )
            seconds_stats += time.perf_counter() - t0
            originals.update(dict.fromkeys(names, layer))
            replace_modules(model, dict.fromkeys(names, target))
            report = factorize(
                model, rank={name: r}, stats={name: stats}, seed=seed, progress=False, **options
            )
            del stats, target  # freed before the next layer's pass
            first = report if first is None else first
            rows[name] = next(x for x in report.layers if x.name == name)
    except BaseException:
        replace_modules(model, originals)
        raise
    assert first is not None
    layers = [rows.get(x.name, x) for x in first.layers]
    config = {**first.config, "rank": dict(rank), "sequential": True}
    return FactorizeReport(layers, config, time.perf_counter() - start, seconds_stats)


def _layer_problem(
    reference: nn.Module,
    model: nn.Module,
    name: str,
    calibration: Iterable[Any] | Tensor,
    changed: bool,
    seed: int,
    collect: dict[str, Any],
    chain: _Chain | None = None,
    replaced: Iterable[str] = (),
) -> tuple[LayerStats, nn.Linear | nn.Conv2d]:
    """(x^'s statistics, the dense layer to fit) for layer ``name`` of ``model``: with nothing ``changed``
    yet, its own statistics and the layer itself; else those of the asymmetric problem, from forwards of
    the two models, or with a ``chain`` of their block holding the layer on its kept inputs (the chain
    first moved on to that block; ``replaced``: the layers of ``model`` already replaced)."""
    layer = model.get_submodule(name)
    assert isinstance(layer, (nn.Linear, nn.Conv2d))
    if not changed:  # x^ = x: W_eff = W
        generator = torch.Generator().manual_seed(seed)  # compress's seeds: the non-sequential statistics
        return collect_stats(model, {name: layer}, calibration, generator=generator, **collect)[name], layer
    probe = _probe(layer)
    if chain is None:
        pair, data = _Paired(reference, model, name, probe), calibration
    else:
        k = _block_of(name, chain.blocks)
        assert k is not None
        chain.advance(reference, model, k, replaced)
        block = chain.blocks[k]
        inner = name[len(block) + 1 :]  # "" when the block is the layer
        pair = _Paired(reference.get_submodule(block), model.get_submodule(block), inner, probe, _Chain.route)
        data = chain.batches()
    generator = layer_generator(seed, name)
    probed = {"probe": probe}  # its one output is not the layer's: no out_cov
    joint = collect_stats(  # paired: x's own second moment, which _split does not use, is not measured
        pair, probed, data, generator=generator, outputs=False, _paired=True, **collect
    )["probe"]
    W = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # the "channel" view
    mean, cross, stats = _split(joint, W.shape[1])
    del joint
    assert stats.cov is not None
    W_eff, b_eff = asymmetric_target(W, layer.bias, mean, stats.mean, cross, stats.cov)
    return stats, _target_layer(layer, W_eff, b_eff)
