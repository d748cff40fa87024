"""Post-training low-rank compression: calibration statistics -> error curves -> rank allocation -> solve.

:func:`compress` replaces a trained model's Linear / Conv2d layers by low-rank ones in place, under a
parameter budget, and reports what that cost:

1. statistics: each candidate layer's input statistics on calibration data (:func:`nlinit.calibration.
   collect_stats`, once), and its output positions per model input (for MACs), with the model in eval mode;
2. allocation: each layer's whitened error curve E_l(r) (:func:`nlinit.allocate.tail_energy` of
   W~ = diag(s) W L, one SVD per layer) and its ranks (:mod:`nlinit.allocate`: ``uniform``, ``energy``,
   ``stable-rank``, ``sensitivity``: the last predicts each layer's loss increase at every rank, from one
   gradient pass over the same calibration batches after the SVDs, :mod:`nlinit.sensitivity`);
3. solve: :func:`nlinit.factorize` with those ranks, the method's init and the same statistics, so methods
   differ only in the solver (``svd`` = spectral, weights only; ``asvd``, ``whiten``, ``relu-svd``,
   ``nlra-opt``, ``lfai-data`` fit the layer's real inputs); with ``sequential=True``, one layer at a time
   on its inputs in the partly compressed model, against the original output (:mod:`nlinit.sequential`);
4. evaluation: an optional metric of the model before and after;
5. optionally, a recovery fine-tune (:func:`nlinit.finetune.finetune`, ``finetune=steps``) and the metric
   again, reported apart from the training-free result.

An error before step 3 finishes leaves the model as it was (factorize swaps the layers in at its end; the
sequential pass puts back the layers it replaced).

Example:
    >>> model = nlinit.checkpoint.load_model("runs/r20/checkpoint.safetensors")  # doctest: +SKIP
    >>> report = compress(model, images[:2048], budget=0.5, method="relu-svd", allocate="energy")
    >>> print(report.summary())  # doctest: +SKIP
    >>> report.save("results/r20-compressed")  # report.md/.json/.csv and model.safetensors
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import allocate as alloc
from ._checks import check_choice, check_int, check_number, check_rank_scale
from ._paths import atomic_write_csv, atomic_write_text, check_output
from .activations import Activation, check_activation_spec, parse_activation
from .calibration import DEFAULT_BATCH_SIZE, LayerStats, _batches, _forward, _model_input, collect_stats
from .checkpoint import save_checkpoint
from .factorize import ActivationArg, _layer_function, _layer_stats, _patterns, _plan, factorize
from .finetune import DEFAULT_LR, LOSSES, check_data
from .finetune import finetune as run_finetune
from .inits import get_init
from .layer_function import whitened_problem
from .layers import LowRankConv2d, LowRankLinear
from .report import FactorizeReport, markdown_table
from .sensitivity import LossArg, Projection, check_sensitivity_loss, projected_gradients
from .sequential import _factorize_sequential, _streamed_stats

__all__ = ["ALLOCATIONS", "METHODS", "CompressReport", "CompressedLayer", "compress"]

#: compress method -> the init that solves each layer
METHODS = {
    "svd": "spectral",
    "asvd": "asvd",
    "whiten": "whiten",
    "relu-svd": "relu-svd",
    "nlra-opt": "nlra-opt",
    "lfai-data": "lfai-data",
}
#: how ranks are shared out (:mod:`nlinit.allocate`)
ALLOCATIONS = ("uniform", "energy", "stable-rank", "sensitivity")


@dataclass
class CompressedLayer:
    """One compressed layer. MACs are per model input (one image): params times output positions.

    predicted_error: E_l(r), the relative whitened tail energy at its rank (``whiten``'s relative linear
    output error on the calibration inputs). heldout_method / heldout_svd: the layer's objective on
    held-out calibration inputs (:attr:`nlinit.report.LayerReport.heldout_init` / ``heldout_spectral``)
    for the chosen method and for plain SVD.
    """

    name: str
    kind: str  # "linear" | "conv"
    shape: tuple[int, int]  # matrix view (rows, cols)
    rank: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    predicted_error: float
    stable_rank: float
    heldout_method: float | None = None
    heldout_svd: float | None = None
    activation: str | None = None  # the activation fitted after the layer (see the factorize report's note)


@dataclass
class CompressReport:
    """What :func:`compress` did: per layer, totals, settings, per-phase seconds and the metric."""

    layers: list[CompressedLayer]
    config: dict[str, Any]
    seconds: dict[str, float]  # statistics, allocation, solve, evaluation (, finetune)
    model_params_before: int
    model_params_after: int
    metric_before: float | None = None
    metric_after: float | None = None  # training-free
    metric_finetuned: float | None = None  # after the recovery fine-tune (finetune > 0)
    factorize: FactorizeReport | None = field(default=None, repr=False)
    finetune: dict[str, Any] | None = field(default=None, repr=False)  # nlinit.finetune.finetune's result
    model: nn.Module | None = field(default=None, repr=False)  # the compressed model, for save()
    model_info: dict[str, Any] | None = field(default=None, repr=False)  # {"name", ...} for load_model

    @property
    def params_before(self) -> int:
        return sum(x.params_before for x in self.layers)

    @property
    def params_after(self) -> int:
        return sum(x.params_after for x in self.layers)

    @property
    def macs_before(self) -> int:
        return sum(x.macs_before for x in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(x.macs_after for x in self.layers)

    def mean(self, attr: str) -> float:
        values = [getattr(x, attr) for x in self.layers if getattr(x, attr) is not None]
        return sum(values) / len(values) if values else math.nan

    def summary(self) -> str:
        c = self.config
        metric = (
            f"; metric {self.metric_before:.4g} -> {self.metric_after:.4g}"
            if self.metric_before is not None and self.metric_after is not None
            else ""
        )
        if self.finetune is not None:
            tuned = "" if self.metric_finetuned is None else f"; fine-tuned {self.metric_finetuned:.4g}"
            metric += (
                f"{tuned} ({self.finetune['steps']} steps, {self.finetune['loss']} loss "
                f"{self.finetune['loss_first']:.4g} -> {self.finetune['loss_last']:.4g})"
            )
        return (
            f"compressed {len(self.layers)} layers with {c['method']} ({c['allocate']} allocation"
            f"{', sequential' if c.get('sequential') else ''}): "
            f"layer params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / self.params_before:.1%}), model {self.model_params_before:,} -> "
            f"{self.model_params_after:,}; MACs/input {self.macs_before:,} -> {self.macs_after:,}; "
            f"mean held-out objective {self.mean('heldout_method'):.4f} "
            f"(svd {self.mean('heldout_svd'):.4f}), "
            f"predicted whitened error {self.mean('predicted_error'):.4f}{metric}; "
            + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        )

    def to_markdown(self) -> str:
        def fmt(x: float | None) -> str:
            return "" if x is None else f"{x:.4f}"

        head = [
            "layer",
            "matrix",
            "rank",
            "activation",
            "params before",
            "params after",
            "MACs before",
            "MACs after",
        ]
        head += ["predicted error", "stable rank", "held-out method", "held-out svd"]
        rows = []
        for x in self.layers:
            cells = [x.name, f"{x.shape[0]}x{x.shape[1]}", str(x.rank), x.activation or ""]
            cells += [f"{x.params_before:,}"]
            cells += [
                f"{x.params_after:,}",
                f"{x.macs_before:,}",
                f"{x.macs_after:,}",
                fmt(x.predicted_error),
            ]
            cells += [f"{x.stable_rank:.2f}", fmt(x.heldout_method), fmt(x.heldout_svd)]
            rows.append(cells)
        return markdown_table(head, rows, self.summary())

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "seconds": self.seconds,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "metric_finetuned": self.metric_finetuned,
            "finetune": self.finetune,
            "layers": [asdict(x) for x in self.layers],
            "factorize": None if self.factorize is None else self.factorize.to_dict(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write report.md, report.json, report.csv and model.safetensors (+ its model.json) into
        ``directory``, each atomically. The checkpoint holds the compressed model (:func:`nlinit.checkpoint.
        save_checkpoint`); :func:`nlinit.checkpoint.load_model` rebuilds it when the report knows the model's
        name (``model_info``), else :func:`nlinit.checkpoint.load_model_state` loads it into a fresh copy."""
        out = check_output(directory, name="directory", kind="dir")
        if self.model is None:
            raise ValueError("this report holds no model to save (it was rebuilt from a dict)")
        out.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"config": {"compress": self.config}}
        if self.model_info is not None:
            meta["model"] = dict(self.model_info)
        save_checkpoint(out / "model.safetensors", self.model, None, meta)
        atomic_write_text(out / "report.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n")

        atomic_write_csv(out / "report.csv", [asdict(x) for x in self.layers])
        atomic_write_text(out / "report.md", self.to_markdown())
        return out


def _positions(model: nn.Module, layers: Mapping[str, nn.Module]) -> tuple[dict[str, int], list[Any]]:
    """Forward hooks recording each layer's output positions per model input (conv: H_o W_o; Linear: the
    vectors per input, e.g. tokens), from the first call."""
    seen: dict[str, int] = {}
    handles = []
    for name, layer in layers.items():

        def hook(module: nn.Module, args: Any, out: Tensor, name: str = name) -> None:
            if name not in seen and isinstance(out, Tensor) and out.dim() >= 2:
                per_input = out[0].numel()
                units = out.shape[1] if isinstance(module, nn.Conv2d) else out.shape[-1]
                seen[name] = per_input // units

        handles.append(layer.register_forward_hook(hook))
    return seen, handles


def _given_stats(stats: object, candidates: Sequence[Any]) -> dict[str, LayerStats]:
    """compress's ``stats`` argument restricted to the layers to compress, each a LayerStats that fits."""
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a {{layer name: LayerStats}} mapping, got {type(stats).__name__}")
    return _layer_stats(stats, {p.name: p.layer for p in candidates})


def _run_first_batch(model: nn.Module, calibration: Iterable[Any] | Tensor) -> None:
    """One forward pass of the first calibration batch (for the positions hooks), under no_grad."""
    batch = next(_batches(calibration, 1, DEFAULT_BATCH_SIZE), None)
    if batch is None:
        raise ValueError("calibration is empty: give at least one batch of model inputs")
    device = next((q.device for q in model.parameters()), None)
    args, kwargs = _model_input(batch, 0, device)
    with torch.no_grad():
        _forward(model, args, kwargs, 0)


@torch.no_grad()
def _error_curves(
    p: Any, stats: LayerStats, sensitivity: bool
) -> tuple[Tensor, float, tuple[Projection, Tensor] | None]:
    """Layer ``p``'s (tail energies of its whitened matrix at every rank up to the largest that saves,
    its weight's stable rank, its sensitivity projection and singular values when ``sensitivity``)."""
    view = (LowRankConv2d if isinstance(p.layer, nn.Conv2d) else LowRankLinear).like(p.layer, 1)
    W = view.to_matrix(p.layer.weight.detach())
    fn = _layer_function(p, "channel", True, stats)
    Wt, _, white = whitened_problem(W, fn)  # the singular values of diag(s) W L, on the cheaper side
    top = alloc.max_saving_rank(*W.shape)
    projection = Projection.of_whitened(W, fn, Wt, white, top) if sensitivity else None
    return alloc.tail_energy(Wt, top), alloc.stable_rank(W), projection


def compress(
    model: nn.Module,
    calibration: Iterable[Any] | Tensor,
    *,
    rank_scale: float | None = None,
    budget: float | None = None,
    macs: float | None = None,
    method: str = "relu-svd",
    allocate: str = "uniform",
    sensitivity_loss: LossArg = "auto",
    activation: ActivationArg = "auto",
    default_activation: str = "relu",
    calibration_batches: int | None = None,
    calibration_samples: int = 512,
    calibration_heldout: int = 512,
    stats: Mapping[str, LayerStats] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    factorize_stem: bool = False,
    factorize_classifier: bool = False,
    evaluate: Callable[[nn.Module], float] | None = None,
    finetune: int = 0,
    finetune_data: Iterable[Any] | Tensor | None = None,
    finetune_loss: str = "kl",
    finetune_lr: float = DEFAULT_LR,
    progress: bool | None = None,
    seed: int = 0,
    model_info: Mapping[str, Any] | None = None,
    sequential: bool = False,
    **method_options: Any,
) -> CompressReport:
    """Compress ``model``'s Linear / Conv2d layers to low rank in place, under a budget; report the cost.

    Args:
        model: a trained nn.Module; its calibration and evaluation run in eval mode (restored after).
        calibration: model inputs (:func:`nlinit.calibration.collect_stats`: a tensor, a DataLoader, a list
            of batches); one in ``heldout_every`` = 5 samples is held out for the held-out objectives.
        rank_scale: s in (0, 1]: the parameters of uniform rank scale s (r = round(s min(m, n)) per layer);
            ``energy``, ``stable-rank`` and ``sensitivity`` share out that many parameters their way.
        budget: b in (0, 1): the fraction of the compressed layers' parameters kept, sum r (m + n) <=
            b sum m n.
        macs: b in (0, 1): the fraction of the compressed layers' multiply-accumulates per model input kept,
            sum r (m + n) p <= b sum m n p, with p a layer's output positions per input (a conv's pixels, a
            transformer's tokens, from the first calibration batch): layers applied at many positions
            count more (:func:`nlinit.allocate.rank_costs`). Exactly one of rank_scale, budget and macs.
        method: the solver, one of :data:`METHODS` (``svd`` is the weights-only truncated SVD).
        allocate: ``uniform``, ``energy`` (greedy on the relative whitened error per parameter,
            :func:`nlinit.allocate.greedy_allocate`), ``stable-rank`` (Cuttlefish) or ``sensitivity`` (greedy
            on the convex envelope of each layer's second-order loss increase at every rank,
            :func:`nlinit.allocate.sensitivity_curve` and :func:`nlinit.allocate.convex_envelope`, from one
            gradient pass over the calibration batches after the whitened SVDs,
            :func:`nlinit.sensitivity.projected_gradients`, timed with the allocation; the report's config
            ``predicted_loss`` holds each layer's prediction at its rank).
        sensitivity_loss: the loss of ``sensitivity``: ``"auto"`` (``"fisher"`` for (batch, classes) logits,
            cross-entropy against labels drawn from the model's softmax; else ``"output"``, a Gaussian
            probe <r, f(x)> of the output or a Hugging Face output's last_hidden_state), or a callable
            output -> scalar loss summed over the batch. The report's config names the one used.
        activation, default_activation: the activation after each layer, as in :func:`nlinit.factorize`:
            ``"auto"`` traces the model with torch.fx and uses ``default_activation`` (with a warning) where
            tracing fails, as it does for Hugging Face models: give those a name or a dict of name patterns
            (:data:`nlinit.hf.BERT_ACTIVATIONS`). The report's activation notes say where each came from.
        calibration_batches, calibration_samples, calibration_heldout: as in :func:`nlinit.factorize`.
        stats: statistics already collected on this model ({module name: LayerStats} from
            :func:`nlinit.calibration.collect_stats`, for at least every layer to compress; extra layers are
            ignored), e.g. once for a grid of budgets and methods: then ``calibration`` only gives the
            layers' output positions (one batch), the sensitivity pass and the default fine-tune data. With
            the same calibration, ``samples=calibration_samples``, ``heldout=calibration_heldout`` and
            ``generator=torch.Generator().manual_seed(seed)`` the result is the same as collecting here
            (each layer's reservoirs are seeded by its name).
        include, exclude, factorize_stem, factorize_classifier: which layers, as in :func:`nlinit.factorize`.
            Every rank is at most R = max{r : r (m + n) < m n}; layers with R = 0 are left dense.
        evaluate: a metric of the model (e.g. test top-1), run before and after (and after the fine-tune).
        finetune: steps of a recovery fine-tune after the training-free evaluation (0, the default: none;
            :func:`nlinit.finetune.finetune`, AdamW with warm-up and cosine decay). The report keeps the
            training-free ``metric_after`` and adds ``metric_finetuned`` and ``seconds["finetune"]``.
        finetune_data: its batches (re-iterable, as :func:`nlinit.finetune.finetune` takes them); None: the
            calibration data.
        finetune_loss: ``"kl"`` (distill the original model's logits: a deep copy of the model is kept as
            the teacher, taken before the layers are swapped), ``"mse"`` (distill its output tensor, e.g.
            hidden states) or ``"ce"`` (cross-entropy; ``finetune_data`` must yield (inputs, labels)).
        finetune_lr: the fine-tune's peak learning rate, > 0.
        progress: a progress bar over the layers while solving (None: when stderr is a terminal).
        seed: every random draw (reservoirs, solvers) derives from it.
        model_info: {"name", "num_classes", "in_channels"} of a registry model, so the saved checkpoint
            rebuilds with :func:`nlinit.checkpoint.load_model`.
        sequential: solve the layers one at a time in execution order, each on its inputs x^ in the model
            whose earlier layers are already compressed, against the original layer's output on the
            original inputs x (asymmetric reconstruction, :mod:`nlinit.sequential`; docs/theory.md section
            11.5): each layer's method fits the regression of the original output on x^, (W_eff, b_eff) of
            :func:`nlinit.sequential.asymmetric_target`, under x^'s statistics. Exact for ``whiten`` (the
            rank-r minimizer of E||W x + b - Y x^ - b'||^2 on the calibration inputs); for the nonlinear
            methods it fits act(W_eff x^ + b_eff), an approximation whose linear part is exact. Costs two
            more passes over ``calibration`` per layer: its statistics alone on the original model (for the
            allocation, unless ``stats`` are given), then the pass through the model and a copy of the
            original (new modules sharing its tensors); where the layers lie in a chain of blocks (a
            transformer's layers, a ResNet's residual blocks) both run each layer's block alone on kept
            inputs (``nlinit.sequential._streamed_stats`` and ``_factorize_sequential``): O(L) block
            forwards, not O(L^2). ``calibration`` must be re-iterable (a tensor, a list, a DataLoader).
            Memory: one layer's statistics at a time throughout, plus, on a chain, the current block's
            inputs for every calibration vector (one activation per vector in the allocation, two in the
            pass: the original's and the compressed model's; twice that while moving on to the next block,
            the old inputs and the new alive together), and the inputs' other tensors (attention masks);
            each allocation pass keeps only the layer's error curve (and its sensitivity projection); the
            sequential pass holds the sums over [x; x^] ((2 d_in + kh)^2 float64 numbers, kh a conv's
            kernel rows; a Linear's x-x block is skipped), then Cov(x, x^) and x^'s statistics
            (2 d_in^2 + (K + K_h) d_in). Ranks are allocated from the original model's statistics;
            ``predicted_error`` is theirs, and the held-out columns are each layer's objective on held-out
            x^ against act(W_eff x^ + b_eff): the error the rank adds to the best dense fit on x^, not the
            part of the original output x^ cannot predict.
        **method_options: options of the method's init (e.g. ``alpha=0.25`` for asvd).
    Returns:
        :class:`CompressReport`.
    Raises:
        ValueError: a bad argument, nothing to compress, a budget below rank 1 everywhere, empty or
            non-finite calibration data, empty or unlabelled (for ``"ce"``) fine-tune data (one line; the
            model unchanged).
        TypeError: a DataParallel-wrapped model, a non-callable ``evaluate``, fine-tune data that is not
            re-iterable batches, or with ``sequential`` an iterator as ``calibration`` (it would be used up
            after one pass).
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(f"compress got a {type(model).__name__}; compress model.module, then wrap it again")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_choice("method", method, METHODS)
    check_choice("allocate", allocate, ALLOCATIONS)
    check_sensitivity_loss(sensitivity_loss)
    default_act = parse_activation(default_activation)
    check_activation_spec(activation)
    if sum(x is not None for x in (rank_scale, budget, macs)) != 1:
        raise ValueError(
            "give exactly one of budget, macs and rank_scale, got "
            f"budget={budget!r}, macs={macs!r}, rank_scale={rank_scale!r}"
        )
    if rank_scale is not None:
        check_rank_scale(rank_scale)
    for name, value, what in (("budget", budget, "parameters"), ("macs", macs, "multiply-accumulates")):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1
        ):
            raise ValueError(f"{name} must be a fraction in (0, 1) of the layers' {what} kept, got {value!r}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> float, got {type(evaluate).__name__}")
    check_int("seed", seed, low=0)
    if calibration_batches is not None:
        check_int("calibration_batches", calibration_batches, low=1)
    check_int("calibration_samples", calibration_samples, low=0)
    check_int("calibration_heldout", calibration_heldout, low=0)
    if not isinstance(sequential, bool):
        raise ValueError(f"sequential must be True or False, got {sequential!r}")
    if sequential and isinstance(calibration, Iterator):
        raise TypeError(
            f"sequential=True passes over calibration once per layer; got a {type(calibration).__name__}, "
            "which one pass uses up: give a tensor, a list of batches or a DataLoader"
        )
    init = METHODS[method]
    get_init(init).check_options(method_options)
    include_patterns, exclude_patterns = _patterns("include", include), _patterns("exclude", exclude)

    check_int("finetune", finetune, low=0)
    check_choice("finetune_loss", finetune_loss, LOSSES)
    check_number("finetune_lr", finetune_lr, low=0.0, strict=True)
    if finetune:
        name = (
            "finetune_data" if finetune_data is not None else "the calibration data (finetune_data's default)"
        )
        check_data(name, calibration if finetune_data is None else finetune_data, finetune_loss)

    teacher = copy.deepcopy(model) if finetune and finetune_loss != "ce" else None  # the original model
    was_training = model.training
    model.eval()
    try:
        report = _compress(
            model,
            calibration,
            rank_scale=rank_scale,
            budget=budget,
            macs=macs,
            method=method,
            allocate=allocate,
            sensitivity_loss=sensitivity_loss,
            init=init,
            activation=activation,
            default_activation=default_act,
            calibration_batches=calibration_batches,
            calibration_samples=calibration_samples,
            calibration_heldout=calibration_heldout,
            stats=stats,
            include=include_patterns,
            exclude=exclude_patterns,
            factorize_stem=factorize_stem,
            factorize_classifier=factorize_classifier,
            evaluate=evaluate,
            progress=progress,
            seed=seed,
            model_info=model_info,
            sequential=sequential,
            method_options=method_options,
        )
        report.config |= {"finetune": finetune, "finetune_loss": finetune_loss, "finetune_lr": finetune_lr}
        if finetune:  # the recovery fine-tune, after the training-free result is measured
            report.finetune = run_finetune(
                model,
                calibration if finetune_data is None else finetune_data,
                steps=finetune,
                loss=finetune_loss,
                teacher=teacher,
                lr=finetune_lr,
                seed=seed,
                progress=progress,
            )
            report.seconds["finetune"] = report.finetune["seconds"]
            t0 = time.perf_counter()
            report.metric_finetuned = float(evaluate(model)) if evaluate is not None else None
            report.seconds["evaluation"] += time.perf_counter() - t0
        return report
    finally:
        model.train(was_training)


def _compress(
    model: nn.Module,
    calibration: Iterable[Any] | Tensor,
    *,
    rank_scale: float | None,
    budget: float | None,
    macs: float | None,
    method: str,
    allocate: str,
    sensitivity_loss: LossArg,
    init: str,
    activation: ActivationArg,
    default_activation: Activation,
    calibration_batches: int | None,
    calibration_samples: int,
    calibration_heldout: int,
    stats: Mapping[str, LayerStats] | None,
    include: list[str],
    exclude: list[str],
    factorize_stem: bool,
    factorize_classifier: bool,
    evaluate: Callable[[nn.Module], float] | None,
    progress: bool | None,
    seed: int,
    model_info: Mapping[str, Any] | None,
    sequential: bool,
    method_options: dict[str, Any],
) -> CompressReport:
    seconds: dict[str, float] = {}
    plans = _plan(
        model,
        rank=1,
        rank_scale=None,
        init=init,
        layout="channel",
        activation=activation,
        default_activation=default_activation,
        include=include,
        exclude=exclude,
        factorize_stem=factorize_stem,
        factorize_classifier=factorize_classifier,
        allow_growth=True,
        source="existing",
        use_post_ops=True,
    )
    candidates = [
        p
        for p in plans
        if p.report.factorized
        and p.tied_to is None
        and not any(q.tied_to == p.name for q in plans)  # tied weights stay dense (left for later)
        and alloc.max_saving_rank(*p.report.shape) >= 1
    ]
    if not candidates:
        reasons = "; ".join(f"{p.name}: {p.report.reason}" for p in plans[:3] if p.report.reason)
        raise ValueError(
            "nothing to compress: no Linear or Conv2d layer of the model qualifies"
            + (f" ({reasons})" if reasons else "")
        )
    layers = {p.name: p.layer for p in candidates}
    shapes = {p.name: p.report.shape for p in candidates}
    full = sum(m * n for m, n in shapes.values())
    least = sum(m + n for m, n in shapes.values())
    if budget is not None and budget * full < least:
        raise ValueError(
            f"budget {budget!r} keeps {budget * full:,.0f} of the {full:,} parameters of the {len(shapes)} "
            f"layers to compress, below the {least:,} that rank 1 in each needs "
            f"(budget >= {least / full:.4f})"
        )

    if stats is not None:
        stats = _given_stats(stats, candidates)
    # sequential: each layer's statistics collected, used for its error curves and dropped, one at a time
    streamed = sequential and stats is None

    def collect(
        which: Mapping[str, nn.Module], on: nn.Module = model, data: Any = calibration
    ) -> dict[str, LayerStats]:
        return collect_stats(
            on,
            which,
            data,
            batches=calibration_batches,
            samples=calibration_samples,
            heldout=calibration_heldout,
            generator=torch.Generator().manual_seed(seed),
            input_cov=get_init(init).needs_cov,  # else W Sigma W^T from the outputs: far cheaper
        )

    t0 = time.perf_counter()
    positions, handles = _positions(model, layers)
    try:
        if stats is None and not streamed:
            stats = collect(layers)
        else:
            _run_first_batch(model, calibration)  # the output positions only
    finally:
        for handle in handles:
            handle.remove()
    seconds["statistics"] = time.perf_counter() - t0

    t0, statistics_before = time.perf_counter(), seconds["statistics"]  # streamed: both interleave
    names = [p.name for p in candidates]  # in execution order
    per_layer: Generator[LayerStats, None, None] = (
        _streamed_stats(  # collected now, one layer's at a time (its time counted as statistics)
            model, names, calibration, collect, batches=calibration_batches, split=calibration_heldout > 0
        )
        if streamed
        else (stats[n] for n in names)  # type: ignore[index]
    )
    curves, stable, projections, sigmas, vectors = {}, {}, {}, {}, {}
    try:
        for p in candidates:
            t = time.perf_counter()
            st = next(per_layer)
            seconds["statistics"] += (time.perf_counter() - t) if streamed else 0.0
            vectors[p.name] = st.count
            curves[p.name], stable[p.name], projection = _error_curves(p, st, allocate == "sensitivity")
            del st  # streamed: the only reference to this layer's statistics
            if projection is not None:
                projections[p.name], sigmas[p.name] = projection
    finally:
        per_layer.close()  # streamed: frees the chain's kept inputs (also on an error)
    gradients, predicted = None, {}
    if projections:  # one gradient pass: each layer's predicted loss increase at every rank
        gradients = projected_gradients(
            model,
            projections,
            calibration,
            loss=sensitivity_loss,
            batches=calibration_batches,
            generator=torch.Generator().manual_seed(seed),
        )
        predicted = {
            n: alloc.sensitivity_curve(gradients.c[n], sigmas[n], gradients.total[n]) for n in projections
        }
    if sequential:  # the sequential pass collects its own statistics, one layer at a time
        stats = None
    missing = [n for n in shapes if positions.get(n, 0) < 1]
    if macs is not None and missing:
        raise ValueError(f"macs= needs each layer's output positions; layer {missing[0]!r} gave none")
    costs = alloc.rank_costs(shapes, positions) if macs is not None else None  # None: parameters
    per_rank = costs if costs is not None else {n: m + k for n, (m, k) in shapes.items()}
    if rank_scale is not None:
        ranks = alloc.uniform_allocate(shapes, rank_scale=rank_scale)
        target = float(alloc.allocation_cost(ranks, shapes))
    else:
        dense = full if costs is None else sum(m * n * positions[k] for k, (m, n) in shapes.items())
        target = (budget if budget is not None else macs) * dense  # type: ignore[operator]
        least = sum(per_rank.values())
        if macs is not None and target < least:  # (a parameter budget was checked before the statistics)
            raise ValueError(
                f"macs {macs!r} keeps {target:,.0f} of the {dense:,} MACs per input of the {len(shapes)} "
                f"layers to compress, below the {least:,} that rank 1 in each needs (macs >= "
                f"{least / dense:.4f})"
            )
        ranks = alloc.uniform_allocate(shapes, budget=target, costs=costs) if allocate == "uniform" else {}
    if allocate == "energy":
        ranks = alloc.greedy_allocate(curves, per_rank, target)
    elif allocate == "stable-rank":
        ranks = alloc.stable_rank_allocate(stable, shapes, target, costs)
    elif allocate == "sensitivity":
        hulls = {n: alloc.convex_envelope(d) for n, d in predicted.items()}  # greedy needs convex curves
        ranks = alloc.greedy_allocate(hulls, per_rank, target)
    seconds["allocation"] = time.perf_counter() - t0 - (seconds["statistics"] - statistics_before)

    t0 = time.perf_counter()
    metric_before = float(evaluate(model)) if evaluate is not None else None
    seconds["evaluation"] = time.perf_counter() - t0

    params_before = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    if sequential:
        report = _factorize_sequential(
            model,
            {p.name: ranks[p.name] for p in candidates},  # in execution order
            calibration,
            init=init,
            activation=activation,
            default_activation=default_activation,
            seed=seed,
            calibration_batches=calibration_batches,
            calibration_samples=calibration_samples,
            calibration_heldout=calibration_heldout,
            progress=progress,
            **method_options,
        )
    else:
        report = factorize(
            model,
            rank=ranks,
            init=init,
            activation=activation,
            default_activation=default_activation,
            stats=stats,  # the rank mapping names exactly the layers (stem / classifier / patterns applied)
            seed=seed,
            progress=progress,
            **method_options,
        )
    # the sequential pass's statistics (its per-layer passes over the calibration data) are statistics
    seconds["solve"] = time.perf_counter() - t0 - report.seconds_stats
    seconds["statistics"] += report.seconds_stats

    t0 = time.perf_counter()
    metric_after = float(evaluate(model)) if evaluate is not None else None
    seconds["evaluation"] += time.perf_counter() - t0

    by_name = {r.name: r for r in report.layers}
    rows = []
    for p in candidates:
        (m, n), r, rep = shapes[p.name], ranks[p.name], by_name[p.name]
        pos = positions.get(p.name, 0)
        rows.append(
            CompressedLayer(
                name=p.name,
                kind=p.report.kind,
                shape=(m, n),
                rank=r,
                params_before=m * n,
                params_after=r * (m + n),
                macs_before=m * n * pos,
                macs_after=r * (m + n) * pos,
                predicted_error=float(curves[p.name][r]),
                stable_rank=stable[p.name],
                heldout_method=rep.heldout_init,
                heldout_svd=rep.heldout_spectral,
                activation=rep.activation,
            )
        )
    config = {
        "method": method,
        "init": init,
        "allocate": allocate,
        "sensitivity_loss": None if gradients is None else gradients.loss,
        # {layer: Delta_l(r_l)}: the predicted loss increase at its rank, nlinit.allocate.sensitivity_curve
        "predicted_loss": {n: float(d[ranks[n]]) for n, d in predicted.items()} or None,
        "activation": (
            {k: str(v) for k, v in activation.items()} if isinstance(activation, Mapping) else str(activation)
        ),
        "default_activation": str(default_activation),
        "rank_scale": rank_scale,
        "budget": budget,
        "macs": macs,
        "budget_params": target,
        "seed": seed,
        "calibration_samples": calibration_samples,
        "calibration_heldout": calibration_heldout,
        "calibration_vectors": vectors,
        "factorize_stem": factorize_stem,
        "factorize_classifier": factorize_classifier,
        "sequential": sequential,
        "method_options": {k: v for k, v in method_options.items() if isinstance(v, (int, float, str, bool))},
    }
    return CompressReport(
        layers=rows,
        config=config,
        seconds=seconds,
        model_params_before=params_before,
        model_params_after=sum(p.numel() for p in model.parameters()),
        metric_before=metric_before,
        metric_after=metric_after,
        factorize=report,
        model=model,
        model_info=None if model_info is None else dict(model_info),
    )
