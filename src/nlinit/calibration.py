"""Input statistics of a model's Linear / Conv2d layers on calibration data, streamed by forward pre-hooks.

For each layer, over the input vectors x in R^{d_in} it meets on real data: the count N, the mean
mu = (1/N) sum x, the uncentered second moment E[x x^T] = (1/N) sum x x^T and the mean absolute value
E|x| = (1/N) sum |x| (entrywise), in float64 (where d_out < d_in, also or instead of the second moment
the covariance of the layer's outputs W x, which is all the whitened solvers need), and optionally a
uniform sample of K vectors (a reservoir) and one of K_h vectors from held-out model inputs. An input vector
is what a row of the layer's function matrix W meets: the last dimension of a Linear's input (any leading
dims: (N, d), (N, T, d) tokens, ...), and for a Conv2d each patch of the padded input in the "channel"
layout of :mod:`nlinit.matrix_view`, index c * kh * kw + i * kw + j for channel c and kernel offset (i, j),
so that W x is the conv's output (without bias) at one position.

Nothing here solves anything: :class:`LayerStats` is the data an init takes, and :func:`collect_stats`
fills it from a model and an iterable of model inputs.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._checks import check_choice, check_finite, check_int, check_matrix
from .matrix_view import ConvGeometry

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_ELEMENTS",
    "GEMM_BLOCK",
    "PRECISIONS",
    "LayerStats",
    "collect_stats",
]

#: numbers in the largest transient buffer a hook builds at a time: 2**22 (32 MiB of float64)
DEFAULT_MAX_ELEMENTS = 1 << 22
#: rows per batch when ``calibration`` is one tensor
DEFAULT_BATCH_SIZE = 256
#: the dtypes of the chunk products (see :func:`collect_stats`)
PRECISIONS = ("float32", "float64")
#: with precision="float32", the most products summed in float32 before a float64 sum takes over
GEMM_BLOCK = 4096
_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Statistics of one layer's input vectors x in R^{d_in}: what a data-aware init needs of its inputs.

    Attributes:
        count: N >= 1, the number of input vectors behind ``mean``, ``second`` and ``out_cov`` (a Conv2d
            gives one per output position of every calibration image it keeps).
        mean: (d_in,) float64, mu = (1/N) sum_n x_n (with ``second`` None: over every input vector, also
            those ``collect_stats(positions=p < 1)`` leaves out of the N).
        second: (d_in, d_in) float64, symmetric: the uncentered second moment E[x x^T] =
            (1/N) sum_n x_n x_n^T; or None where only the outputs' covariance was measured
            (``collect_stats(input_cov=False)``; then ``out_cov`` is required).
        samples: (K, d_in) float64, K of the N vectors drawn uniformly without replacement (for sample-based
            objectives), or None.
        heldout: (K_h, d_in) float64, vectors drawn uniformly from held-out model inputs, which are in none
            of count, mean, second and samples (to evaluate objectives on data a solver did not see), or None.
        abs_mean: (d_in,) float64, the per-dimension mean absolute value (1/N) sum_n |x_{n,j}| over the same
            N vectors (ASVD's activation scale, :func:`nlinit.inits.asvd.asvd`), or None; with
            ``collect_stats(positions=p < 1)`` over every patch (it is cheap), not only the N kept.
        out_cov: (d_out, d_out) float64, the covariance of the layer's outputs over the same N vectors (the
            conv's output pixels at the positions kept), which is W Sigma W^T for the layer's own W (its
            bias cancels), or None (``collect_stats`` measures it where d_out < d_in). It spares a data-aware
            solver the d_out d_in^2 product W Sigma W^T (:func:`nlinit.layer_function.whitened_problem`) and
            costs N d_out^2 to collect.

    Build one with :func:`collect_stats` (from a model and calibration data) or :meth:`from_samples` (from
    a matrix of input vectors). The fields are checked on construction; the object is immutable.

    Example:
        >>> stats = LayerStats.from_samples(torch.randn(1000, 16))
        >>> stats.cov.shape
        torch.Size([16, 16])
    """

    count: int
    mean: Tensor
    second: Tensor | None
    samples: Tensor | None = None
    heldout: Tensor | None = None
    abs_mean: Tensor | None = None
    out_cov: Tensor | None = None

    def __post_init__(self) -> None:
        check_int("LayerStats.count", self.count, low=1)
        if self.second is None and self.out_cov is None:
            raise ValueError(
                "LayerStats.second may be None only with out_cov given (statistics of the outputs instead)"
            )
        for name, moment in (("mean", self.mean), ("second", self.second)):
            if name == "second" and moment is None:
                continue
            if not isinstance(moment, Tensor) or moment.dtype != _F64:
                kind = moment.dtype if isinstance(moment, Tensor) else type(moment).__name__
                raise TypeError(f"LayerStats.{name} must be a float64 tensor, got {kind}")
        if self.mean.dim() != 1:
            raise ValueError(f"LayerStats.mean must be 1-D (d_in,), got shape {tuple(self.mean.shape)}")
        d = self.mean.numel()
        if self.second is not None and self.second.shape != (d, d):
            raise ValueError(
                f"LayerStats.second must have shape ({d}, {d}) to match mean, got {tuple(self.second.shape)}"
            )
        check_finite("LayerStats.mean", self.mean)
        if self.second is not None:
            check_finite("LayerStats.second", self.second)
        for name, kept in (("samples", self.samples), ("heldout", self.heldout)):
            if kept is None:
                continue
            if not (isinstance(kept, Tensor) and kept.dtype == _F64 and kept.shape[1:] == (d,)):
                got = tuple(kept.shape) if isinstance(kept, Tensor) else type(kept).__name__
                raise ValueError(f"LayerStats.{name} must be a float64 (K, {d}) tensor or None, got {got}")
            check_finite(f"LayerStats.{name}", kept)
        if self.abs_mean is not None:
            a = self.abs_mean
            if not (isinstance(a, Tensor) and a.dtype == _F64 and tuple(a.shape) == (d,)):
                what = f"{a.dtype} {tuple(a.shape)}" if isinstance(a, Tensor) else type(a).__name__
                raise ValueError(f"LayerStats.abs_mean must be a float64 ({d},) tensor or None, got {what}")
            check_finite("LayerStats.abs_mean", a)
            if bool((a < 0).any()):
                raise ValueError(f"LayerStats.abs_mean must be >= 0, got min {float(a.min())!r}")
        if self.out_cov is not None:
            o = self.out_cov
            if not (isinstance(o, Tensor) and o.dtype == _F64 and o.dim() == 2 and o.shape[0] == o.shape[1]):
                what = f"{o.dtype} {tuple(o.shape)}" if isinstance(o, Tensor) else type(o).__name__
                raise ValueError(f"LayerStats.out_cov must be a square float64 tensor or None, got {what}")
            check_finite("LayerStats.out_cov", o)

    @property
    def d_in(self) -> int:
        """The input dimension d_in (columns of the layer's function matrix)."""
        return self.mean.numel()

    @property
    def cov(self) -> Tensor | None:
        """The covariance Sigma = E[x x^T] - mu mu^T (population form, 1/N), (d_in, d_in) float64; None
        where ``second`` was not measured."""
        return None if self.second is None else self.second - torch.outer(self.mean, self.mean)

    @classmethod
    def from_samples(
        cls,
        X: Tensor,
        *,
        samples: int | None = None,
        heldout: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LayerStats:
        """Statistics of the rows of X (N, d_in): mean, second moment and mean |x| over all N rows, float64.

        Args:
            X: (N, d_in) floating-point, finite, N >= 1.
            samples: how many rows to keep as ``samples``: None keeps all N (in order), 0 none, K a uniform
                K-subset drawn with ``generator``.
            heldout: (M, d_in) held-out vectors, kept as ``heldout`` (float64 copy) and not used otherwise.
            generator: the only source of randomness (used when 0 < samples < N).
        Raises:
            ValueError / TypeError: a bad X, samples or heldout (one line).
        """
        check_matrix("X", X)
        n, d = X.shape
        if n == 0:
            raise ValueError(f"X must have at least one row, got shape {tuple(X.shape)}")
        if samples is not None:
            check_int("samples", samples, low=0, high=n)
        if heldout is not None:
            check_matrix("heldout", heldout)
            if heldout.shape[1] != d:
                raise ValueError(f"heldout must have {d} columns like X, got shape {tuple(heldout.shape)}")
        X64 = X.to(_F64)
        if samples is None:
            kept: Tensor | None = X64.clone()
        elif samples == 0:
            kept = None
        else:
            kept = X64[torch.randperm(n, generator=generator, device=X.device)[:samples]]
        return cls(
            count=n,
            mean=X64.mean(0),
            second=_symmetric(X64.T @ X64) / n,
            samples=kept,
            heldout=None if heldout is None else heldout.to(_F64).clone(),
            abs_mean=X64.abs().mean(0),
        )

    def check(self, d_in: int, where: str = "") -> LayerStats:
        """Return self if its vectors have ``d_in`` entries (the weight's columns), else raise ValueError.

        ``where`` names the layer in the message. A Conv2d's statistics are over patches in the "channel"
        layout, so they fit its channel matrix view (c_in * kh * kw columns), not the "spatial" one.
        """
        if self.d_in != d_in:
            at = f" for {where}" if where else ""
            raise ValueError(
                f"stats{at} are over {self.d_in}-dim input vectors, but the weight has d_in={d_in} columns"
                " (a Conv2d's stats fit its 'channel' matrix view, c_in*kh*kw)"
            )
        return self


def collect_stats(
    model: nn.Module,
    layers: Mapping[str, nn.Module] | Sequence[str],
    calibration: Iterable[Any] | Tensor,
    *,
    batches: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int = 0,
    heldout: int = 0,
    heldout_every: int = 5,
    generator: torch.Generator | None = None,
    precision: str = "float64",
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    positions: float = 1.0,
    outputs: bool = True,
    input_cov: bool = True,
    _paired: bool = False,
) -> dict[str, LayerStats]:
    """Input statistics of ``layers`` on ``calibration``: one :class:`LayerStats` per name, in float64.

    Runs ``model`` on every calibration batch under ``torch.no_grad()`` with a forward pre-hook on each
    layer that streams, over the layer's input vectors x (see the module docstring; a Conv2d's patches with
    its padding, padding_mode, stride and dilation reproduced exactly), the count N, sum_n x_n,
    sum_n x_n x_n^T and sum_n |x_n| (entrywise; a Conv2d's from its padded input's |pixels|, one strided sum
    per kernel offset), and keeps a reservoir: the K vectors with the smallest i.i.d. uniform keys, a uniform
    K-subset without replacement. A module called several times per forward (a shared layer) accumulates
    every call. The first forward runs to the end and counts the layers' calls; every later one stops at
    the last of them (what follows cannot change their inputs or outputs), so collecting early layers
    costs a part of a forward. A model whose calls of the layers differ from batch to batch (control flow
    on the data) is outside this: its later forwards are cut at the first one's count. The model runs in
    the mode it is in: in train mode BatchNorm normalizes by batch statistics and updates its running
    statistics (those after the last layer only on the first forward), dropout is random; call
    ``model.eval()`` first for a trained model's function. Every hook is removed at the end, also on
    error; nothing else is changed or restored.

    Held-out data (``heldout > 0``): model-input sample s (counted over the whole stream from 0) is held out
    when s % heldout_every == heldout_every - 1; each batch runs as two forwards, its fit rows and its
    held-out rows, and the layers' inputs in the held-out forward only feed the held-out reservoir.

    Memory per layer, held until its dict entry is dropped (``stats.pop(name)`` frees it when nothing else
    refers to it): while collecting, (d_in + kh)^2 + d_in + (K + K_h)(d_in + 1) float64 numbers (the sum of
    [x; 1][x; 1]^T, per pair of kernel rows for a Conv2d, kh = 1 for a Linear; sum |x|; the reservoirs and
    their keys), plus (d_out + 1)^2 for the outputs' sum where d_out < d_in (``outputs``); in the result,
    d_in^2 + 2 d_in + (K + K_h) d_in, plus d_out^2. With ``input_cov=False`` a layer with d_out < d_in
    holds no d_in^2 part (2 d_in + (K + K_h)(d_in + 1) + (d_out + 1)^2 while collecting). Transient, per
    hook call: about 4 buffers of at most ``max_elements`` numbers (the padded chunk and its |x|, its row
    strips, partial GEMM results; a conv's chunk is at least one image, a Linear's one row), plus
    O(kh (c_in kw + 1)^2) per chunk. Patches are never unfolded: no buffer holds kh * kw copies of a pixel.

    A Conv2d's patch Gram comes from "strips", the c_in x kw pixels one kernel row meets: block (i, i')
    (kernel rows i <= i') is sum_h sum_w strip(r_i(h), w) strip(r_i'(h), w)^T with r_i(h) = s h + delta i,
    a GEMM of a window of strip rows against the rows a fixed shift below. Pairs of kernel rows with the same
    shift (and stride phases) share all rows but the window ends, so a chunk costs about 2 kh - 1 GEMMs of
    (c_in kw + 1)^2 outputs over the strips, (2 kh - 1) / kh^2 of unfolding's flops and kw / (kh kw) of its
    copies. ``precision`` is the dtype of these products: "float64" (default) multiplies exactly (float32
    inputs) and sums in float64, ~1e-15 relative; "float32" is about 2x faster on a CPU, sums blocks of
    GEMM_BLOCK products in float32 and the blocks in float64: each entry within gamma_B (|X|^T |X|) of the
    exact sum, gamma_B = B u / (1 - B u) ~ 2.4e-4, u = 2^-24 (the worst case; benchmarks/CALIBRATION.md
    measures ~7e-6 relative on Fashion-MNIST ResNet-20 layers, and ~1e-7 needs blocks of 64, as slow as
    float64). Inputs in float64 always use float64 products.

    Args:
        model: any nn.Module; its calibration forwards are ``model(x)`` for a tensor batch x and
            ``model(**batch)`` for a dict batch.
        layers: module names of nn.Linear / nn.Conv2d (groups=1) layers of ``model``, or a {name: module}
            mapping whose modules must be ``model.get_submodule(name)``. Two names of one module share one
            LayerStats.
        calibration: model inputs: an iterable of batches (a DataLoader or a list), each a tensor, a tuple /
            list whose first element is the input (``(x, y)``) or a dict of keyword inputs; or one tensor,
            split into batches of ``batch_size`` rows. Tensors are moved to the device of the model's first
            parameter.
        batches: use at most this many batches (None: all).
        batch_size: rows per batch when ``calibration`` is one tensor.
        samples: K >= 0, the size of each layer's reservoir of fit vectors (0: ``samples`` is None).
        heldout: K_h >= 0, the size of each layer's held-out reservoir (0: no held-out split).
        heldout_every: with heldout > 0, one model-input sample in this many is held out (>= 2).
        generator: the only source of randomness (the reservoirs' keys): one draw, combined with each layer's
            name into that layer's seeds, so a layer's samples do not depend on which other layers are
            collected (nor, on the CPU, on ``max_elements``).
        precision: "float64" or "float32", the products' dtype (above).
        max_elements: the transient buffer bound above (>= 1).
        positions: p in (0, 1], for a Conv2d the fraction of its output columns whose patches enter the
            moments: 1 (default) uses every patch (exact); p < 1 keeps each (image, output column w), all
            its output rows, independently with probability p, decided by a hash of the layer's seed, the
            image's index in the stream and w (so independent of batching and chunking), and divides by the
            patches kept: an estimate of the moments that costs about p of the exact one (neighbouring
            patches of an image are strongly correlated, so little is lost; benchmarks/CALIBRATION.md).
            Linear layers and the reservoirs always see every input vector.
        outputs: for each layer with d_out < d_in, also stream its outputs y (a forward hook) into
            ``out_cov``, their covariance over the same N vectors: (d_out + 1)^2 more numbers per layer and
            N d_out^2 multiply-adds (a 3 x 3 conv's input moments cost N (9 c_in)^2), in ``precision``.
            Layers with d_out >= d_in get ``out_cov=None``: their whitened problem does not use it.
        input_cov: False skips the input second moment of every layer whose ``out_cov`` is measured
            (``outputs`` and d_out < d_in): its ``second`` is None and its ``mean`` is over every input
            vector (a Conv2d's from one strided sum per kernel offset, like ``abs_mean``). Those layers'
            statistics then cost N d_out^2 instead of N d_in^2 / 2 (a 3 x 3 conv: 2 / 81 of it), and
            suffice for every solver that only needs K = W Sigma W^T (whiten, relu-svd, nlra-opt, lfai-ws,
            lfai-data: :func:`nlinit.layer_function.whitened_problem`); one that needs Sigma itself raises.
        _paired: internal (sequential compression's probe, :mod:`nlinit.sequential`, which uses the
            cross moment E[x x^^T] and x^'s own, never x's): every Linear layer's input is a pair [x; x^]
            of two halves of d_in / 2; the block of ``second`` among the first half is not accumulated
            and is returned as zeros (so ``second`` and ``cov`` are not moments: no solver may read them),
            every other entry as without ``_paired`` (up to float rounding: the products' blocking
            differs); one GEMM of (d_in + 1) x (d_in / 2 + 1) outputs per chunk instead of (d_in + 1)^2,
            about half the multiply-adds. Conv2d layers measure everything (a two-product variant was
            slower: benchmarks/COMPRESS.md).
    Returns:
        {name: LayerStats} for every name of ``layers``, in its order; stats on the layer's weight device.
    Raises:
        ValueError: a bad argument, an empty calibration, a batch whose forward fails (its index and the
            error's first line; the original is chained), non-finite inputs reaching a layer, a layer that
            never ran, or no held-out input reaching a layer; each one line naming the layer where there is
            one. The hooks are gone in every case.
        TypeError: a layer that is not an nn.Linear / nn.Conv2d, or a batch of an unknown kind.
        NotImplementedError: a grouped Conv2d.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> stats = collect_stats(model, ["0", "2"], torch.randn(512, 8), samples=64)
        >>> stats["2"].second.shape, stats["2"].samples.shape
        (torch.Size([16, 16]), torch.Size([64, 16]))
    """
    named = _resolve_layers(model, layers)
    if batches is not None:
        check_int("batches", batches, low=1)
    check_int("batch_size", batch_size, low=1)
    check_int("samples", samples, low=0)
    check_int("heldout", heldout, low=0)
    check_int("heldout_every", heldout_every, low=2)
    check_choice("precision", precision, PRECISIONS)
    check_int("max_elements", max_elements, low=1)
    if isinstance(positions, bool) or not isinstance(positions, (int, float)) or not 0 < positions <= 1:
        raise ValueError(f"positions must be a number in (0, 1], got {positions!r}")
    if not isinstance(outputs, bool):
        raise ValueError(f"outputs must be a bool, got {outputs!r}")
    if not isinstance(input_cov, bool):
        raise ValueError(f"input_cov must be a bool, got {input_cov!r}")
    if not (input_cov or outputs):
        raise ValueError("input_cov=False needs outputs=True: the outputs' covariance replaces Sigma")
    if not isinstance(_paired, bool):
        raise ValueError(f"_paired must be a bool, got {_paired!r}")
    odd = [n for n, m in named.items() if _paired and isinstance(m, nn.Linear) and m.in_features % 2]
    if odd:
        d = named[odd[0]].in_features  # type: ignore[union-attr]
        raise ValueError(f"_paired=True needs an even d_in (two halves [x; x^]); layer {odd[0]!r} has {d}")

    state = _State(every=heldout_every)
    base = int(
        torch.randint(0, 2**62, (1,), generator=generator)
    )  # one draw; each layer's seeds from its name
    streams: dict[int, _LayerStream] = {}
    for name, module in named.items():
        if id(module) not in streams:
            seeds = _layer_seeds(base, name)
            streams[id(module)] = _LayerStream(
                name,
                module,
                state,
                samples,
                heldout,
                seeds,
                precision,
                max_elements,
                float(positions),
                outputs,
                input_cov,
                _paired,
            )
    device = next((p.device for p in model.parameters()), None)
    handles = []
    try:
        for module in {id(m): m for m in named.values()}.values():
            handles.append(module.register_forward_pre_hook(streams[id(module)].hook, with_kwargs=True))
            if outputs:
                handles.append(module.register_forward_hook(streams[id(module)].output_hook))
            handles.append(module.register_forward_hook(state.count_call))  # after the output hook
        with torch.no_grad():
            for b, batch in enumerate(_batches(calibration, batches, batch_size)):
                state.batch = b
                args, kwargs = _model_input(batch, b, device)
                parts = [(False, args, kwargs)]
                if heldout:
                    parts = _split(args, kwargs, state)
                for state.heldout, part_args, part_kwargs in parts:
                    state.calls = 0
                    with contextlib.suppress(_Enough):
                        _forward(model, part_args, part_kwargs, b)
                    if state.per_forward is None:  # the first forward runs to the end and counts
                        state.per_forward = state.calls
    finally:
        for handle in handles:
            handle.remove()
    if state.batch < 0:
        raise ValueError(
            f"calibration is empty: no batch reached the {len(named)} layer(s) {_names(named)}; "
            "give at least one batch of model inputs"
        )
    done = {id(m): streams[id(m)].finish() for m in named.values()}
    return {name: done[id(module)] for name, module in named.items()}


# --------------------------------------------------------------------------------------------------------
# Calibration batches -> model calls


class _CalibrationError(ValueError):
    """Raised inside a hook: passes through the forward-failure wrapper unchanged."""


class _Enough(Exception):
    """Raised by a hook to end a forward once the layers it collects have had all their calls."""


@dataclass
class _State:
    """What the hooks need to know about the stream: the current batch index and which part is running,
    and the hooked layers' calls in this forward against those of the first (None until it has run)."""

    batch: int = -1
    heldout: bool = False
    seen: int = 0  # model-input samples before the current batch (for the held-out split)
    every: int = 0  # heldout_every
    calls: int = 0
    per_forward: int | None = None

    def count_call(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """A forward hook (the last on each layer): ends the forward at the layers' last call."""
        self.calls += 1
        if self.calls == self.per_forward:
            raise _Enough


def _names(named: Mapping[str, Any], shown: int = 3) -> str:
    names = [repr(n) for n in named]
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _resolve_layers(model: nn.Module, layers: object) -> dict[str, nn.Module]:
    """{name: module} for ``layers``, each an nn.Linear / nn.Conv2d (groups=1) of ``model``; else raise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(layers, Mapping):
        items: list[tuple[object, object]] = list(layers.items())
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        items = [(name, None) for name in layers]
    else:
        hint = f"; write layers=[{layers!r}]" if isinstance(layers, str) else ""
        raise TypeError(
            f"layers must be a list of module names or a {{name: module}} mapping, got "
            f"{type(layers).__name__} {layers!r}{hint}"
        )
    if not items:
        raise ValueError("layers is empty; name at least one nn.Linear or nn.Conv2d of the model")
    named: dict[str, nn.Module] = {}
    for name, given in items:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be strings, got {type(name).__name__} {name!r}")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layer {name!r} is not a module of the model") from None
        if given is not None and given is not module:
            raise ValueError(f"layers[{name!r}] is not the model's module {name!r} (model.get_submodule)")
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(
                f"layer {name!r} is a {type(module).__name__}; calibration statistics are for nn.Linear and"
                " nn.Conv2d layers"
            )
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise NotImplementedError(f"layer {name!r} is a grouped conv (groups={module.groups})")
        named[name] = module
    return named


def _batches(calibration: object, batches: int | None, batch_size: int) -> Iterator[Any]:
    """The calibration batches, at most ``batches`` of them (a tensor is split into ``batch_size`` rows)."""
    if isinstance(calibration, Tensor):
        source: Iterable[Any] = calibration.split(batch_size) if calibration.dim() else [calibration]
    elif isinstance(calibration, Iterable) and not isinstance(calibration, (str, bytes, Mapping)):
        source = calibration
    else:
        hint = "; wrap one dict batch in a list" if isinstance(calibration, Mapping) else ""
        raise TypeError(
            "calibration must be an iterable of batches (a DataLoader, a list) or a tensor, got "
            f"{type(calibration).__name__}{hint}"
        )
    for b, batch in enumerate(source):
        if batches is not None and b >= batches:
            return
        yield batch


def _model_input(
    batch: object, b: int, device: torch.device | None, what: str = "calibration"
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) of the model call for one batch: x -> (x,); (x, y, ...) -> (x,); dict -> kwargs.
    ``what`` names the data in the error (``"calibration"``, ``"finetune"``)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, Tensor):
        return (_to(batch, device),), {}
    if isinstance(batch, Mapping) and all(isinstance(k, str) for k in batch):
        return (), {k: _to(v, device) for k, v in batch.items()}
    raise TypeError(
        f"{what} batch {b} is a {type(batch).__name__}; expected a tensor, an (inputs, targets) pair or"
        " a dict of keyword inputs"
    )


def _output_tensor(output: Any, who: str = "model", hint: str = "") -> Tensor:
    """The tensor of a model's output that a loss reads: the output itself, a Hugging Face output's
    ``last_hidden_state``, or else the first floating-point tensor of a tuple / dict / ModelOutput (e.g.
    ``logits``). ValueError (one line, ending in ``hint``) when there is none."""
    if isinstance(output, Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    values = (
        output.values()
        if isinstance(output, Mapping)
        else output
        if isinstance(output, (tuple, list))
        else ()
    )
    for value in values:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value
    raise ValueError(f"the {who}'s output (a {type(output).__name__}) holds no floating-point tensor{hint}")


def _to(value: Any, device: torch.device | None) -> Any:
    return value.to(device) if isinstance(value, Tensor) and device is not None else value


def _split(
    args: tuple[Any, ...], kwargs: dict[str, Any], state: _State
) -> list[tuple[bool, tuple[Any, ...], dict[str, Any]]]:
    """[(False, fit rows), (True, held-out rows)] of one batch, leaving out an empty part.

    Sample s of the stream (``state.seen`` + row) is held out when s % every == every - 1 (every =
    ``state.every``); every tensor
    with at least one dimension is split along its first, which must be the same size for all of them.
    """
    inputs: list[tuple[object, Any]] = [*enumerate(args), *kwargs.items()]
    sizes = {k: v.shape[0] for k, v in inputs if isinstance(v, Tensor) and v.dim()}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"calibration batch {state.batch}: the held-out split needs one batch size, got input sizes "
            f"{sizes or 'none (no tensor input)'}"
        )
    n = next(iter(sizes.values()))
    index = torch.arange(state.seen, state.seen + n)
    state.seen += n
    held = index % state.every == state.every - 1
    parts = []
    for is_held, mask in ((False, ~held), (True, held)):
        if bool(mask.any()):
            parts.append((is_held, *_take_rows(args, kwargs, mask.nonzero().squeeze(1))))
    return parts


def _take_rows(
    args: tuple[Any, ...], kwargs: dict[str, Any], rows: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's arguments and keywords with every tensor of at least one dimension cut to ``rows`` (indices)
    along its first dimension, the rest as they are: the held-out split's cut."""

    def take(v: Any) -> Any:
        return v[rows.to(v.device)] if isinstance(v, Tensor) and v.dim() else v

    return tuple(take(v) for v in args), {k: take(v) for k, v in kwargs.items()}


def _forward(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], b: int) -> Any:
    """model(*args, **kwargs), returned; a failure becomes one line naming the batch (a hook's own error
    passes)."""
    try:
        return model(*args, **kwargs)
    except (_CalibrationError, _Enough):
        raise
    except Exception as err:
        first = next(iter(str(err).strip().splitlines()), "")
        raise ValueError(
            f"calibration batch {b} failed in the model's forward: {type(err).__name__}: {first}"
        ) from err


# --------------------------------------------------------------------------------------------------------
# One layer's stream: moments and reservoirs


class _Reservoir:
    """The ``size`` vectors of a stream with the smallest i.i.d. U(0, 1) keys: a uniform subset.

    Keys come from the reservoir's own generator in stream order, so the subset depends only on the seed and
    the stream (on the CPU, torch.rand's sequence does not depend on how it is cut into calls).
    """

    def __init__(self, size: int, d: int, seed: int, device: torch.device) -> None:
        self.size = size
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.keys = torch.empty(0, dtype=_F64, device=device)
        self.vectors = torch.empty(0, d, dtype=_F64, device=device)

    def offer(self, m: int, gather: Callable[[Tensor], Tensor]) -> None:
        """Draw keys for the next ``m`` vectors of the stream; ``gather(idx)`` returns those rows (., d)."""
        keys = torch.rand(m, generator=self.generator, dtype=_F64, device=self.keys.device)
        best = torch.topk(keys, min(self.size, m), largest=False)
        keys = torch.cat([self.keys, best.values])
        vectors = torch.cat([self.vectors, gather(best.indices).to(_F64)])
        if keys.numel() > self.size:
            keep = torch.topk(keys, self.size, largest=False).indices
            keys, vectors = keys[keep], vectors[keep]
        self.keys, self.vectors = keys, vectors

    def result(self) -> Tensor:
        """The kept vectors in key order (so the result does not depend on how the stream was chunked)."""
        return self.vectors[torch.argsort(self.keys)]


class _LayerStream:
    """Accumulates one module's input statistics: the hook, the chunked moments, the reservoirs."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        state: _State,
        samples: int,
        heldout: int,
        seeds: list[int],
        precision: str,
        max_elements: int,
        positions: float = 1.0,
        outputs: bool = False,
        input_cov: bool = True,
        paired: bool = False,
    ) -> None:
        self.name, self.state, self.max_elements = name, state, max_elements
        self.positions, self.position_seed, self.images = positions, seeds[2], 0
        self.exact = precision == "float64"
        assert isinstance(module, (nn.Linear, nn.Conv2d))  # _resolve_layers checked it
        device = module.weight.device
        self.conv = _ConvStream(module) if isinstance(module, nn.Conv2d) else None
        self.d: int = self.conv.d if self.conv is not None else module.weight.shape[1]
        self.count = 0
        d_out = module.weight.shape[0]
        # sum of [y; 1][y; 1]^T over the outputs at the kept positions, and how many; only where d_out < d_in
        # (elsewhere the whitened problem is solved in input coordinates, and K would cost more than Sigma)
        wanted = outputs and d_out < self.d
        self.out_gram = torch.zeros(d_out + 1, d_out + 1, dtype=_F64, device=device) if wanted else None
        self.out_count = 0
        # sum of [x; 1][x; 1]^T: the second moment, and the first in its last row (a conv: per block); or,
        # where only the outputs' covariance is wanted (input_cov=False), sum_n x_n alone in ``total``
        shape = self.conv.accumulator_shape if self.conv is not None else (self.d + 1, self.d + 1)
        second = input_cov or self.out_gram is None
        self.gram = torch.zeros(shape if second else (0,), dtype=_F64, device=device)
        self.total = None if second else torch.zeros(self.d, dtype=_F64, device=device)
        # paired (a Linear's [x; x^]): only the columns from x^ on are accumulated, the rest filled at finish
        self.half = self.d // 2 if paired and self.conv is None else 0
        self.abs_sum = torch.zeros(self.d, dtype=_F64, device=device)  # sum_n |x_n|, channel layout
        self.abs_count = 0  # the vectors behind abs_sum: every one, also with positions < 1
        self.fit = _Reservoir(samples, self.d, seeds[0], device) if samples else None
        self.held = _Reservoir(heldout, self.d, seeds[1], device) if heldout else None
        self.heldout_size = heldout
        self.call_first = 0  # the stream's image count when the current call began (a conv's kept columns)

    def hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return  # not a float input: the layer's own forward reports it
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):  # sum: a fast first look
            bad = int((~torch.isfinite(x)).sum())
            raise _CalibrationError(
                f"calibration batch {self.state.batch} gives layer {self.name!r} an input with {bad} "
                "non-finite (NaN or Inf) entries; calibration data must be finite"
            )
        reservoir = self.held if self.state.heldout else self.fit
        self.call_first = self.images
        if self.conv is not None:
            self.conv.add(self, x, reservoir, moments=not self.state.heldout)
        elif x.dim() >= 1 and x.shape[-1] == self.d:  # else the Linear's own forward raises
            self._add_linear(x.reshape(-1, self.d), reservoir, moments=not self.state.heldout)

    def output_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Add the layer's outputs at the positions whose inputs entered the moments (fit data only): a
        Linear's rows, a Conv2d's output pixels (n, c_out, H_o, W_o) at the kept columns."""
        if self.out_gram is None or self.state.heldout or not isinstance(output, Tensor):
            return
        y = output
        dtype = self.gemm_dtype(y)
        if self.conv is None:
            self._add_outputs(y.reshape(-1, y.shape[-1]))
            return
        y = y.unsqueeze(0) if y.dim() == 3 else y
        n, c, ho, wo = y.shape
        if self.positions < 1.0:
            mask = position_mask(self.position_seed, self.call_first, n, wo, self.positions, y.device)
            self._add_outputs(y.permute(0, 3, 2, 1)[mask].reshape(-1, c))  # (kept columns * H_o, c_out)
            return
        assert self.out_gram is not None
        for part in y.split(max(1, self.max_elements // (c * ho * wo))):  # whole images
            # one copy, channels as rows (c_out, pixels), in the products' dtype: a copy that keeps each
            # image's pixels contiguous, and the GEMM Z Z^T, are ~2x faster than with pixels as rows
            Z = torch.empty(c, part.shape[0], ho * wo, dtype=dtype, device=y.device)
            Z = Z.copy_(part.reshape(part.shape[0], c, ho * wo).transpose(0, 1)).view(c, -1)
            self.out_count += Z.shape[1]
            self.out_gram[:c, :c] += (Z @ Z.T) if dtype == _F64 else _gram(Z.T, Z.T, self.max_elements)
            self.out_gram[c, :c] += Z.to(_F64) @ torch.ones(Z.shape[1], dtype=_F64, device=Z.device)

    def _add_outputs(self, Y: Tensor) -> None:
        """Add output rows Y (m, d_out) to the outputs' sums: sum y y^T and sum y, in the products' dtype."""
        assert self.out_gram is not None
        self.out_count += Y.shape[0]
        d = Y.shape[1]
        for chunk in Y.split(max(1, self.max_elements // d)):
            chunk = chunk.to(self.gemm_dtype(chunk))
            self.out_gram[:d, :d] += _gram(chunk, chunk, self.max_elements)
            self.out_gram[d, :d] += chunk.sum(0, dtype=_F64)

    def kept_columns(self, n: int, wo: int, device: torch.device) -> Tensor | None:
        """With ``positions`` < 1, the kept columns among the next n images' n * wo output columns (indices
        into image-major order), each kept iff a hash of (seed, image index in the stream, w) maps below
        ``positions``; None keeps all. Advances the stream's image count either way."""
        first, self.images = self.images, self.images + n
        if self.positions >= 1.0:
            return None
        mask = position_mask(self.position_seed, first, n, wo, self.positions, device)
        return torch.nonzero(mask.flatten()).flatten()

    def gemm_dtype(self, x: Tensor) -> torch.dtype:
        """float64 for precision="float64" or a float64 input, else float32 (which holds x exactly)."""
        return _F64 if self.exact or x.dtype == _F64 else torch.float32

    def _add_linear(self, X: Tensor, reservoir: _Reservoir | None, moments: bool) -> None:
        rows = max(1, self.max_elements // self.d)
        for chunk in X.split(rows):
            if moments:
                if self.total is None:
                    c = _with_ones(chunk, self.gemm_dtype(chunk))
                    h = self.half
                    if h:  # sum [x; x^; 1][x^; 1]^T: the columns from x^ on
                        self.gram[:, h:] += _gram(c, c[:, h:].contiguous(), self.max_elements)
                    else:
                        self.gram += _gram(c, c, self.max_elements)
                else:
                    self.total += chunk.sum(0, dtype=_F64)
                self.abs_sum += chunk.abs().sum(0, dtype=_F64)
                self.abs_count += chunk.shape[0]
                self.count += chunk.shape[0]
            if reservoir is not None:
                reservoir.offer(chunk.shape[0], chunk.__getitem__)

    def finish(self) -> LayerStats:
        if self.count == 0:
            raise ValueError(
                f"layer {self.name!r} never ran during calibration ({self.state.batch + 1} batch(es)); only "
                "layers the model calls as modules on these inputs have statistics"
            )
        if self.held is not None and self.held.keys.numel() == 0:
            raise ValueError(
                f"layer {self.name!r} got no held-out input: heldout={self.heldout_size} holds out one model-"
                f"input sample in {self.state.every} (heldout_every), and the stream had {self.state.seen}"
            )
        if self.total is not None:  # outputs only: the mean over every input vector, no second moment
            mean, second = self.total / self.abs_count, None
        else:
            if self.conv is not None:
                total, gram = self.conv.channel_layout(self.gram)
            else:
                if self.half:  # the rows from x^ on are the columns' transpose; x's own block stays 0
                    self.gram[self.half :, : self.half] = self.gram[: self.half, self.half :].T
                total, gram = self.gram[-1, :-1], self.gram[:-1, :-1]
            mean, second = total / self.count, _symmetric(gram) / self.count
        out_cov = None
        if self.out_gram is not None:
            if self.out_count != self.count:  # cannot happen while the layer's forward is the usual one
                raise ValueError(
                    f"layer {self.name!r} gave {self.out_count} output vectors for {self.count} inputs in "
                    "calibration; its forward is not one output per input vector (use outputs=False)"
                )
            out_mean = self.out_gram[-1, :-1] / self.count
            out_cov = _symmetric(self.out_gram[:-1, :-1]) / self.count - torch.outer(out_mean, out_mean)
        return LayerStats(
            count=self.count,
            mean=mean,
            second=second,
            samples=None if self.fit is None else self.fit.result(),
            heldout=None if self.held is None else self.held.result(),
            abs_mean=self.abs_sum / self.abs_count,
            out_cov=out_cov,
        )


def _layer_seeds(base: int, name: str) -> list[int]:
    """A layer's seeds (fit reservoir, held-out reservoir, position subset) from the one draw and its name."""
    return [(base * 1_000_003 + zlib.crc32(f"{name}#{part}".encode())) % 2**63 for part in _SEED_PARTS]


_SEED_PARTS = ("fit", "heldout", "positions")


def position_mask(
    seed: int, first: int, n: int, wo: int, p: float, device: torch.device | None = None
) -> Tensor:
    """(n, wo) bool: which output columns w of stream images first .. first + n - 1 a conv keeps at
    ``positions`` = p: hash(seed, image, w) / 2^64 < p, a keyed SplitMix64 hash (:func:`collect_stats`)."""
    golden = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
    image = torch.arange(first, first + n, dtype=torch.int64, device=device)[:, None]
    w = torch.arange(wo, dtype=torch.int64, device=device)[None, :]
    key = _mix(_mix(image * golden + seed) ^ w)
    return ((key >> 11) & ((1 << 53) - 1)).double() / float(1 << 53) < p  # top 53 bits: U[0, 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64's finalizer on int64 tensors (wrapping arithmetic; logical shifts done on the masked
    value): a bijection of 64-bit words whose outputs pass as independent uniforms (Steele et al. 2014)."""

    def shr(x: Tensor, k: int) -> Tensor:
        return (x >> k) & ((1 << (64 - k)) - 1)

    z = (z ^ shr(z, 30)) * -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64
    z = (z ^ shr(z, 27)) * -7723592293110705685  # 0x94D049BB133111EB
    return z ^ shr(z, 31)


def _symmetric(S: Tensor) -> Tensor:
    return (S + S.T) / 2


def _with_ones(X: Tensor, dtype: torch.dtype) -> Tensor:
    """[X, 1]: X (m, d) with a column of ones appended, in ``dtype``."""
    out = torch.empty(X.shape[0], X.shape[1] + 1, dtype=dtype, device=X.device)
    out[:, :-1] = X
    out[:, -1] = 1
    return out


# --------------------------------------------------------------------------------------------------------
# Conv2d: patch moments from row strips, without unfolding whole patches


@dataclass(frozen=True)
class _Axis:
    """The rows of a conv: kernel row i meets padded row ``stride * h + dilation * i`` at output row h; in
    the grid of the rows with phase p = (dilation * i) % stride, subsampled by the stride, that is row
    h + base, base = (dilation * i) // stride. ``out`` is the number of output rows."""

    phase: tuple[int, ...]
    base: tuple[int, ...]
    out: int


def _axis(kernel: int, stride: int, dilation: int, padded: int) -> _Axis:
    out = (padded - dilation * (kernel - 1) - 1) // stride + 1
    offsets = [dilation * i for i in range(kernel)]
    return _Axis(tuple(o % stride for o in offsets), tuple(o // stride for o in offsets), out)


def _pieces(starts: list[int], length: int) -> tuple[list[tuple[int, int]], list[list[float]]]:
    """The cuts of the union of windows [s, s + length): its pieces, and which pieces each window covers."""
    cuts = sorted({*starts, *(s + length for s in starts)})
    pieces = [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if any(s <= lo and hi <= s + length for s in starts)]
    return pieces, [[float(s <= lo and hi <= s + length) for lo, hi in pieces] for s in starts]


@dataclass(frozen=True)
class _Group:
    """Row-offset pairs (i, i') whose strips come from the same two row phases at the same relative shift:
    their blocks differ only in the window of grid rows summed over."""

    a: int  # row phase of the first operand
    b: int  # row phase of the second
    shift: int  # the second operand's grid row minus the first's
    pieces: list[tuple[int, int]]  # row pieces of the union of the pairs' windows (first operand's grid)
    cover: Tensor  # (pairs, len(pieces)): 1 where the pair's window holds the piece
    index: tuple[Tensor, Tensor]  # (i, i') of each pair


class _ConvStream:
    """A Conv2d's patch geometry and the Gram of its patches.

    A patch is the kh rows of a "strip": the c_in x kw pixels a kernel row meets, s_w w + delta_w j for
    j < kw. Block (i, i') of sum_p x_p x_p^T, over kernel rows i <= i', is sum_h sum_w
    strip(r_i(h), w) strip(r_i'(h), w)^T with r_i(h) = s_h h + delta_h i: a GEMM of the strips of a window
    of rows against those of the rows a fixed shift below. Pairs with the same shift (and stride phases)
    share their rows up to the window's ends, so each group is one GEMM per piece of the union of its
    windows, and a block is a sum of pieces: about 2 kh - 1 GEMMs of (c_in kw + 1)^2 outputs per chunk
    instead of one of (c_in kh kw)^2, and kw (not kh kw) copies of each pixel. Each strip has a 1 appended,
    so the ones row of block (i, i) sums the patches' row-i strips (the first moment). Accumulated in the
    layout (kh, kh, c_in kw + 1, c_in kw + 1) with only i <= i' filled.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        self.geometry = ConvGeometry(
            tuple(conv.weight.shape),  # type: ignore[arg-type]
            "channel",
            _pair(conv.stride),
            conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
            _pair(conv.dilation),
            conv.padding_mode,
        )
        _, self.c, self.kh, self.kw = conv.weight.shape
        self.d = self.c * self.kh * self.kw
        self.strip = self.c * self.kw
        self.accumulator_shape = (self.kh, self.kh, self.strip + 1, self.strip + 1)
        self.plans: dict[int, tuple[_Axis, list[_Group]]] = {}

    def pad(self, x: Tensor) -> Tensor:
        """The padded input exactly as the conv sees it (``ConvGeometry.pad``, then its zero padding)."""
        x, (ph, pw) = self.geometry.pad(x)
        return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x

    def out_width(self, wp: int) -> int:
        (_, sw), (_, dw) = self.geometry.stride, self.geometry.dilation
        return (wp - dw * (self.kw - 1) - 1) // sw + 1

    def plan(self, hp: int, device: torch.device) -> tuple[_Axis, list[_Group]]:
        """The row axis and the groups of row pairs for hp padded rows (cached)."""
        if hp not in self.plans:
            (sh, _), (dh, _) = self.geometry.stride, self.geometry.dilation
            rows = _axis(self.kh, sh, dh, hp)
            grouped: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
            for i in range(self.kh):
                for i2 in range(i, self.kh):
                    key = (rows.phase[i], rows.phase[i2], rows.base[i2] - rows.base[i])
                    grouped[key].append((i, i2))
            groups = []
            for (a, b, shift), pairs in grouped.items():
                pieces, cover = _pieces([rows.base[i] for i, _ in pairs], rows.out)
                index = torch.tensor(pairs, device=device).T
                cover_t = torch.tensor(cover, dtype=_F64, device=device)
                groups.append(_Group(a, b, shift, pieces, cover_t, (index[0], index[1])))
            self.plans[hp] = (rows, groups)
        return self.plans[hp]

    def add(self, stream: _LayerStream, x: Tensor, reservoir: _Reservoir | None, moments: bool) -> None:
        """Add the patches of input x (N, c_in, H, W) or (c_in, H, W), in chunks of whole images."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.c:
            return  # the conv's own forward reports it
        left, right, top, bottom = self.geometry.explicit_padding
        hp, wp = x.shape[2] + top + bottom, x.shape[3] + left + right
        rows, groups = self.plan(hp, x.device)
        wo = self.out_width(wp)
        if rows.out < 1 or wo < 1:
            return  # input smaller than the kernel: the conv's own forward reports it
        per_image = hp * max(self.c * wp, wo * (self.strip + 1))  # the padded image, or its strips
        for chunk in x.split(max(1, stream.max_elements // per_image)):
            keep = None
            if moments:  # every patch: cheap, and exact; from the images' sums, padded (padding is linear)
                n = chunk.shape[0]
                flat = chunk.reshape(n, -1).to(_F64)  # one float64 copy; sums over images as products with
                ones = torch.ones(n, dtype=_F64, device=x.device)  # ones (a GEMV: ~3x torch's sum(0) here)
                if stream.total is not None:
                    stream.total += self._patch_sum((ones @ flat).view(chunk.shape[1:]), rows.out, wo)
                stream.abs_sum += self._patch_sum((ones @ flat.abs_()).view(chunk.shape[1:]), rows.out, wo)
                stream.abs_count += n * rows.out * wo
                keep = stream.kept_columns(n, wo, x.device)
                if stream.total is not None:  # no second moment: only the count behind out_cov
                    stream.count += rows.out * (n * wo if keep is None else keep.numel())
                    if reservoir is None:
                        continue  # no padded copy needed
            xp = self.pad(chunk)  # (n, c_in, H_p, W_p)
            if moments and stream.total is None and (keep is None or keep.numel()):
                self._moments(stream, xp, rows, groups, wo, keep)
            if reservoir is not None:
                gather = partial(self._patches, xp, out=(rows.out, wo))
                reservoir.offer(xp.shape[0] * rows.out * wo, gather)

    def _moments(
        self,
        stream: _LayerStream,
        xp: Tensor,
        rows: _Axis,
        groups: list[_Group],
        wo: int,
        keep: Tensor | None,
    ) -> None:
        """Add the second moments of the padded chunk xp's patches at the kept columns (None: all)."""
        (sh, sw), (_, dw) = self.geometry.stride, self.geometry.dilation
        n, k = xp.shape[0], self.strip
        cols = n * wo if keep is None else keep.numel()
        strips = xp.unfold(3, dw * (self.kw - 1) + 1, sw)[..., ::dw]  # (n, c_in, H_p, W_o, kw), a view
        grids = {}  # per row phase: (grid rows, columns, c_in kw + 1), [strip, 1]: one copy of the strips
        for a in set(rows.phase):
            part = strips[:, :, a::sh]
            grid = torch.empty((part.shape[2], cols, k + 1), dtype=stream.gemm_dtype(xp), device=xp.device)
            if keep is None:
                grid[..., :k].view(part.shape[2], n, wo, self.c, self.kw).copy_(part.permute(2, 0, 3, 1, 4))
            else:  # gather only the kept columns (image, w): (cols, c_in, grid rows, kw)
                picked = part[keep // wo, :, :, keep % wo]
                grid[..., :k].view(part.shape[2], cols, self.c, self.kw).copy_(picked.permute(2, 0, 1, 3))
            grid[..., k] = 1
            grids[a] = grid
        stream.count += rows.out * cols
        for g in groups:
            A, B = grids[g.a], grids[g.b]
            pieces = torch.stack(
                [
                    _gram(
                        A[r0:r1].flatten(0, 1),
                        B[r0 + g.shift : r1 + g.shift].flatten(0, 1),
                        stream.max_elements,
                    )
                    for r0, r1 in g.pieces
                ]
            )  # (pieces, c_in kw + 1, c_in kw + 1)
            blocks = torch.einsum("ap,pcd->acd", g.cover, pieces)
            stream.gram.index_put_(g.index, blocks, accumulate=True)

    def _patch_sum(self, image_sum: Tensor, ho: int, wo: int) -> Tensor:
        """sum_p x_p (d,) over the patches of a chunk of images from their sum (c, H, W) (float64, unpadded),
        channel layout (c, i, j): entry (c, i, j) sums xp[:, c, s_h h + d_h i, s_w w + d_w j] over the images
        and output positions (h, w), xp the padded images. Padding copies entries or adds zeros, so the sum
        of the padded images is the padded sum (and of |x|, the padded sum of |x|); then per kernel row a
        strided sum of rows and per kernel column one of columns."""
        (sh, sw), (dh, dw) = self.geometry.stride, self.geometry.dilation
        a = self.pad(image_sum[None])[0]  # (c, H_p, W_p)
        rows = torch.stack([a[:, dh * i : dh * i + sh * (ho - 1) + 1 : sh].sum(1) for i in range(self.kh)], 1)
        cols = [rows[..., dw * j : dw * j + sw * (wo - 1) + 1 : sw].sum(-1) for j in range(self.kw)]
        return torch.stack(cols, -1).reshape(self.d)  # (c, kh, kw) flattened

    def _patches(self, xp: Tensor, q: Tensor, *, out: tuple[int, int]) -> Tensor:
        """Patch vectors (len(q), d), channel layout, at stream positions q (image, h, w row-major)."""
        (sh, sw), (dh, dw) = self.geometry.stride, self.geometry.dilation
        ho, wo = out
        image, h, w = q // (ho * wo), (q // wo) % ho, q % wo
        r = sh * h[:, None] + dh * torch.arange(self.kh, device=q.device)  # (K, kh)
        s = sw * w[:, None] + dw * torch.arange(self.kw, device=q.device)  # (K, kw)
        patches = xp[image[:, None, None], :, r[:, :, None], s[:, None, :]]  # (K, kh, kw, c_in)
        return patches.permute(0, 3, 1, 2).reshape(q.numel(), self.d)

    def channel_layout(self, blocks: Tensor) -> tuple[Tensor, Tensor]:
        """(sum_p x_p (d,), sum_p x_p x_p^T (d, d)) in the channel layout (c, i, j) from the upper blocks
        (kh, kh, c kw + 1, c kw + 1) of sum [strip; 1][strip'; 1]^T (lower = upper^T); the sum of the
        patches' row-i strips is the ones row of diagonal block (i, i)."""
        c, kh, kw, k = self.c, self.kh, self.kw, self.strip
        strips = blocks[:, :, :k, :k]
        full = strips + strips.permute(1, 0, 3, 2)
        full[range(kh), range(kh)] /= 2  # the diagonal blocks were counted twice
        second = full.reshape(kh, kh, c, kw, c, kw).permute(2, 0, 3, 4, 1, 5).reshape(self.d, self.d)
        total = blocks[range(kh), range(kh), k, :k]  # (kh, c kw)
        return total.view(kh, c, kw).permute(1, 0, 2).reshape(self.d), second


def _gram(A: Tensor, B: Tensor, max_elements: int) -> Tensor:
    """A^T B in float64 for (K, k) and (K, k2) tensors of one dtype, row-contiguous.

    float64: one GEMM (float64 products of float32 inputs are exact). float32: GEMMs over blocks of
    GEMM_BLOCK rows, each block's sum rounded in float32, the blocks' results summed in float64, so each
    entry's error is at most gamma_B (|A|^T |B|) with gamma_B = B u / (1 - B u), u = 2^-24 and
    B = GEMM_BLOCK (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, eq. 3.5) plus float64
    rounding; batched so that at most max(max_elements, k k2) partial results exist at once.
    """
    if A.dtype == _F64:
        return A.T @ B
    K, k = A.shape
    k2 = B.shape[1]
    full = K // GEMM_BLOCK
    tail = full * GEMM_BLOCK
    total = (A[tail:].T @ B[tail:]).to(_F64)
    step = max(1, max_elements // (k * k2))
    for lo in range(0, full, step):
        hi = min(full, lo + step)
        a = A[lo * GEMM_BLOCK : hi * GEMM_BLOCK].unflatten(0, (hi - lo, GEMM_BLOCK))
        b = B[lo * GEMM_BLOCK : hi * GEMM_BLOCK].unflatten(0, (hi - lo, GEMM_BLOCK))
        total += torch.bmm(a.transpose(1, 2), b).sum(0, dtype=_F64)
    return total
