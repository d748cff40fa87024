"""Train a low-rank (or full-rank) network from any nlinit initialization: one readable loop.

One process (CPU or one GPU)::

    nlinit train --model resnet20 --dataset fashion-mnist --init relu-svd --rank-scale 0.1 --out runs/a

Several processes on one node, or several nodes (DistributedDataParallel; gloo on CPU, nccl on GPU)::

    torchrun --nproc_per_node=4 -m nlinit train --model resnet20 --init relu-svd --out runs/a
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        -m nlinit train ...

The recipe is the paper's, scaled (section 6 of ../shared/paper.md): SGD with momentum 0.9, linear warm-up
over the first 2.5% of steps to ``lr`` (default 1.6 x batch / 4096), then cosine decay to 0; weight decay on
the factors (``reg="wd"``) or Frobenius decay ||U V^T||_F^2 (``reg="fd"``). ``batch_size`` is the global
batch: each of the W processes takes batch_size / W, and gradients are averaged, so a run computes the same
thing for any W (up to float rounding and BatchNorm statistics, which are per process).

Every epoch (and every ``checkpoint_every`` steps) the run writes ``out/checkpoint.safetensors``
(:mod:`nlinit.checkpoint`); ``resume=True`` continues from it and, on the CPU, ends with exactly the metrics
of an uninterrupted run. ``out/metrics.jsonl`` gets one JSON record per event: ``init`` (the factorization
and the network-level function error of the low-rank model against its full-rank source), ``epoch`` (train
and test loss and top-1, lr, seconds, images/s), and ``done``; ``out/summary.json`` marks a finished run.
Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from ._checks import check_choice, check_int, check_rank_scale
from ._paths import RunLockedError, atomic_write_text, claim_dir
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    load_model_state,
    load_training_state,
    read_checkpoint,
    save_checkpoint,
)
from .data import DATASETS, build_datasets
from .factorize import factorize
from .inits import DEFAULT_INIT, init_choices
from .inits import init_options as init_keywords
from .layers import frobenius_decay, low_rank_layers
from .models import build_model, list_model_names

__all__ = [
    "REGULARIZERS",
    "DivergedError",
    "RunLockedError",
    "TrainConfig",
    "lr_at",
    "network_function_error",
    "train",
]

REGULARIZERS = ("fd", "wd")
FULL_RANK = "full"  # the init name of a full-rank run
_RUNTIME_FIELDS = ("out", "resume", "progress", "workers", "checkpoint_every", "device", "data_dir")


@dataclass
class TrainConfig:
    """Everything a run depends on. Fields in ``_RUNTIME_FIELDS`` may change when resuming; no other may."""

    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    out: str = "runs/train"
    init: str = DEFAULT_INIT  # "auto", a registered init, or "full" for the full-rank model
    rank_scale: float = 0.1
    init_options: dict[str, Any] = field(default_factory=dict)
    small_input: bool = False
    data_dir: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    download: bool = False
    epochs: int = 10
    batch_size: int = 128  # global, over all processes
    lr: float | None = None  # None: the paper's 1.6 x batch_size / 4096
    warmup: float = 0.025  # fraction of all steps (the paper: 1,560 of 62,000)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on every weight matrix that is not a low-rank factor (not on biases / norms)
    reg: str = "wd"  # on the factors: "wd" (||U||^2 + ||V||^2) or "fd" (||U V^T||_F^2)
    reg_coef: float | None = None  # None: weight_decay
    seed: int = 0
    bf16: bool = False  # autocast on CUDA
    device: str = "auto"
    workers: int = 0
    checkpoint_every: int = 0  # steps; 0: only at the end of each epoch
    resume: bool = False
    progress: bool = True

    def check(self) -> TrainConfig:
        """Raise ValueError naming the first bad field, its value and what is allowed; returns self.

        Every field is checked (type, finiteness, range) without touching any file, so a rejected config
        leaves nothing behind.
        """
        for name in ("model", "dataset", "init", "reg", "device"):
            _check_str(name, getattr(self, name))
        if self.model.startswith("timm:"):
            _check_str("model", self.model.removeprefix("timm:"), what="a timm model name after 'timm:'")
        else:
            check_choice("model", self.model, list_model_names())
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("init", self.init, [*init_choices(), FULL_RANK])
        check_choice("reg", self.reg, REGULARIZERS)
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {self.device!r}")
        for name in ("out", "data_dir"):
            value = getattr(self, name)
            if value is None and name == "data_dir":
                continue
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ValueError(f"{name} must be a non-empty path, got {value!r}")
        check_rank_scale(self.rank_scale)
        _check_init_options(self.init, self.init_options)
        for name in ("small_input", "download", "bf16", "resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("workers", 0), ("checkpoint_every", 0)):
            check_int(name, getattr(self, name), low=low)
        check_int("seed", self.seed, low=0, high=2**63 - 1)
        for name in ("subset", "test_subset"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        _check_number("lr", self.lr, low=0.0, low_open=True, optional=True)
        _check_number("warmup", self.warmup, low=0.0, high=1.0, high_open=True)
        _check_number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("reg_coef", self.reg_coef, low=0.0, optional=True)
        return self

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else 1.6 * self.batch_size / 4096

    @property
    def factor_coef(self) -> float:
        return self.weight_decay if self.reg_coef is None else self.reg_coef

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (a resumed run must match them), as JSON would give them back."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RUNTIME_FIELDS}
        return json.loads(json.dumps(fields))


def _check_str(name: str, value: object, *, what: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def _check_number(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """Require a finite int or float (not a bool) in the interval given, or None when ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if above and below:
            return
    if math.isinf(high):
        allowed = f"> {low:g}" if low_open else f">= {low:g}"
    else:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    allowed += " or None" if optional else ""
    raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


#: factorize's own keywords that train sets itself (so init_options may not).
_SET_BY_TRAIN = ("rank_scale", "rank", "init", "seed", "progress")


def _check_init_options(init: str, options: object) -> None:
    """init_options: a JSON object of options that ``init`` or :func:`nlinit.factorize` takes."""
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"init_options must be a dict with string keys, got {options!r}")
    if init == FULL_RANK:
        if options:
            raise ValueError(f"init_options must be empty for init {FULL_RANK!r}, got {options!r}")
        return
    keywords = [p.name for p in inspect.signature(factorize).parameters.values() if p.kind is p.KEYWORD_ONLY]
    allowed = {*init_keywords(init), *keywords} - set(_SET_BY_TRAIN)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown init option {unknown[0]!r} for init {init!r}; available: {', '.join(sorted(allowed))}"
        )
    try:
        json.dumps(options, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"init_options must be JSON-serializable, without NaN or Inf ({err})") from None


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    r"""The learning rate before optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    .. math::
        \eta(t) = \eta_{max} \frac{t + 1}{T_w} \ (t < T_w), \qquad
        \eta(t) = \frac{\eta_{max}}{2}\Big(1 + \cos \pi \frac{t - T_w}{T - T_w}\Big) \ (t \ge T_w).
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def network_function_error(full: nn.Module, low_rank: nn.Module, x: Tensor) -> float:
    r"""||f_lr(x) - f(x)||_F^2 / ||f(x)||_F^2 for the logits of the two models on a batch x (eval mode)."""
    modes = full.training, low_rank.training
    full.eval(), low_rank.eval()
    with torch.no_grad():
        ref, out = full(x), low_rank(x)
    full.train(modes[0]), low_rank.train(modes[1])
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


@dataclass
class _Dist:
    """Where this process sits: rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t


def _setup(device: str) -> _Dist:
    """Start the process group when launched by torchrun (RANK set), and pick the device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if "RANK" not in os.environ:
        return _Dist(device=torch.device(device))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return _Dist(rank, world, dev)


class _SkipSampler(Sampler[int]):
    """The indices of ``inner`` from position ``start`` on: resumes an epoch in the middle."""

    def __init__(self, inner: Sampler[int], start: int) -> None:
        self.inner, self.start = inner, start

    def __iter__(self) -> Iterator[int]:
        it = iter(self.inner)
        for _ in range(self.start):
            next(it)
        yield from it

    def __len__(self) -> int:
        return len(self.inner) - self.start  # type: ignore[arg-type]


def _param_groups(model: nn.Module, weight_decay: float, factor_decay: float) -> list[dict[str, Any]]:
    """``weight_decay`` on weight matrices / kernels, none on biases and norms, ``factor_decay`` on the
    low-rank factors (train: ``reg="wd"``'s coefficient, 0 under ``reg="fd"``)."""
    factors = {id(p) for _, layer in low_rank_layers(model) for p in (layer.U, layer.V)}
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    fac: list[nn.Parameter] = []
    for p in model.parameters():
        (fac if id(p) in factors else decay if p.dim() >= 2 else plain).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
        {"params": fac, "weight_decay": factor_decay},
    ]


def _batch_stats(logits: Tensor, y: Tensor, loss_sum: Tensor) -> Tensor:
    """(loss sum, correct, count) of one batch, float64, on the batch's device."""
    with torch.no_grad():
        correct = (logits.argmax(1) == y).sum()
        return torch.stack([loss_sum.double(), correct.double(), correct.new_tensor(len(y)).double()])


def _evaluate(model: nn.Module, data: Dataset, d: _Dist, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and top-1 (%) over the whole test set; each process takes every W-th image."""
    shard = torch.utils.data.Subset(data, range(d.rank, len(data), d.world))  # type: ignore[arg-type]
    acc = torch.zeros(3, dtype=torch.float64, device=d.device)  # loss sum, correct, count
    was = model.training
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(shard, batch_size=batch_size):
            x, y = x.to(d.device), y.to(d.device)
            logits = model(x)
            acc += _batch_stats(logits, y, F.cross_entropy(logits, y, reduction="sum"))
    model.train(was)
    loss, correct, count = d.all_sum(acc).tolist()
    return loss / count, 100.0 * correct / count


class DivergedError(RuntimeError):
    """The training loss or the weights became NaN or Inf: the run stops, its last good checkpoint kept."""


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. A run killed while appending leaves a last line without its newline:
    that partial record is dropped; any other line that is not a record is an error."""
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: "" or the partial last record
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("step"), int) and "event" in record):
            raise ValueError(f"{str(path)!r} line {number} is not a metrics record: {line[:60]!r}")
        records.append(record)
    return records


class _Log:
    """metrics.jsonl, written by rank 0 only; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and path.exists():
            kept = [r for r in _read_records(path) if r["step"] <= keep_until_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def last(self, event: str) -> dict[str, Any]:
        """The last record of ``event`` written so far ({} if none, or not rank 0)."""
        if not (self.enabled and self.path.exists()):
            return {}
        return next((r for r in reversed(_read_records(self.path)) if r["event"] == event), {})

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _check_out(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None; refuses to overwrite another run's directory."""
    ckpt = out / "checkpoint.safetensors"
    if resume:
        return ckpt if ckpt.exists() else None
    if any((out / name).exists() for name in ("checkpoint.safetensors", "metrics.jsonl", "summary.json")):
        raise FileExistsError(
            f"{str(out)!r} already holds a run; pass resume=True (--resume) to continue it, or another out"
        )
    return None


def _same_run(saved: Mapping[str, Any], cfg: TrainConfig, source: str, error: type[ValueError]) -> None:
    """Raise ``error`` naming the first field of ``cfg.identity()`` that ``saved`` does not share."""
    for key, value in cfg.identity().items():
        if key not in saved or saved[key] != value:
            was = repr(saved[key]) if key in saved else "nothing"
            raise error(
                f"{source} was written with {key}={was}, but this run has {key}={value!r}; use another out "
                "(or the same settings)"
            )


def _finished(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The summary of the finished run in ``out`` if it is this config's run; None if it is unfinished."""
    path = out / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not JSON ({err}); delete it to finish the run again") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{str(path)!r} is not a run summary (a JSON object)")
    _same_run(summary, cfg, f"the finished run in {str(out)!r}", ValueError)
    return summary


@contextlib.contextmanager
def _claimed(out: Path, d: _Dist) -> Iterator[None]:
    """Rank 0 holds ``out``'s lock (:func:`nlinit._paths.claim_dir`) inside the block; every rank raises if
    rank 0 could not get it."""
    with contextlib.ExitStack() as stack:
        error: OSError | None = None
        if d.main:
            try:
                stack.enter_context(claim_dir(out))
            except OSError as err:
                error = err
        if d.world > 1:
            failed = d.all_sum(torch.tensor([float(error is not None)], device=d.device))
            if error is None and float(failed.sum()) > 0:
                raise RunLockedError(f"out {str(out)!r} could not be claimed by rank 0 (see its error)")
        if error is not None:
            raise error
        yield


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one model as ``cfg`` says; returns the final metrics (also in ``out/summary.json``).

    Every option is checked before anything is written; then ``out`` is created and locked for the whole
    run (a second process on the same ``out`` gets :class:`RunLockedError`). With ``resume=True`` a finished
    run's summary is returned and an unfinished run continues from its checkpoint, both only if they were
    started with the same config. A loss or weight that becomes NaN or Inf stops the run with
    :class:`DivergedError` before it is checkpointed.

    Raises:
        ValueError: a bad option (one line), or a run in ``out`` with another config (CheckpointError).
        FileExistsError: ``out`` holds a run and ``resume`` is False.
        OSError: ``out`` is not writable (checked before any work) or is locked (RunLockedError).
        DivergedError: the loss or the weights stopped being finite.
    """
    cfg.check()
    out = Path(cfg.out)
    d = _setup(cfg.device)
    if cfg.batch_size % d.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {d.world} processes")
    if cfg.bf16 and d.device.type != "cuda":
        raise ValueError("bf16 autocast needs a CUDA device; drop bf16 or run on a GPU")
    with _claimed(out, d):
        return _train(cfg, out, d)


#: What a checkpoint must hold to resume a run.
_RESUME_KEYS = ("config", "model", "structure", "optimizer", "epoch", "step_in_epoch", "step", "running")


def _train(cfg: TrainConfig, out: Path, d: _Dist) -> dict[str, Any]:
    """:func:`train` once ``out`` is held."""
    summary = _finished(out, cfg) if cfg.resume else None
    if summary is not None:
        return summary
    ckpt_path = _check_out(out, cfg.resume)
    ckpt: Checkpoint | None = None
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path, require=_RESUME_KEYS)
        _same_run(ckpt.meta["config"], cfg, f"checkpoint {str(ckpt_path)!r}", CheckpointError)
    meta = ckpt.meta if ckpt is not None else None

    # ---- data --------------------------------------------------------------------------------------
    spec = build_datasets(
        cfg.dataset,
        cfg.data_dir,
        subset=cfg.subset,
        test_subset=cfg.test_subset,
        download=cfg.download,
        seed=cfg.seed,
    )
    local_batch = cfg.batch_size // d.world
    sampler: DistributedSampler = DistributedSampler(
        spec.train, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(spec.train)} training images")
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = max(1, round(cfg.warmup * total_steps)) if cfg.warmup > 0 else 0
    if meta is not None:
        position = meta["epoch"] * steps_per_epoch + meta["step_in_epoch"]
        if meta["step_in_epoch"] >= steps_per_epoch or meta["step"] != position or meta["step"] > total_steps:
            raise CheckpointError(
                f"checkpoint {str(ckpt_path)!r} is at epoch {meta['epoch']}, step {meta['step']}, which does "
                f"not fit this run's {steps_per_epoch} steps per epoch and {cfg.epochs} epochs"
            )

    # ---- model -------------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model, num_classes=spec.num_classes, in_channels=spec.in_channels, small_input=cfg.small_input
    ).to(d.device)
    # Resuming: drop records past the checkpoint (or all of them when there is none yet).
    keep = meta["step"] if meta is not None else (-1 if cfg.resume else None)
    log = _Log(out / "metrics.jsonl", d.main, keep)
    layers: dict[str, dict[str, Any]] = {}  # per factorized layer: activation, rank, objectives at init
    if ckpt is not None:
        load_model_state(ckpt, model, what=f"model {cfg.model!r}")
        layers = ckpt.meta.get("layers", {})
    elif cfg.init != FULL_RANK:
        full = copy.deepcopy(model)
        report = factorize(model, rank_scale=cfg.rank_scale, init=cfg.init, seed=cfg.seed, **cfg.init_options)
        layers = {
            r.name: {
                "activation": r.activation,
                "rank": r.rank,
                "objective_init": r.objective_init,
                "objective_spectral": r.objective_spectral,
            }
            for r in report.factorized
        }
        x = torch.stack([spec.test[i][0] for i in range(min(256, len(spec.test)))]).to(d.device)
        log.write(
            event="init",
            step=0,
            init=cfg.init,
            rank_scale=cfg.rank_scale,
            layers=len(report.factorized),
            params=sum(p.numel() for p in model.parameters()),
            params_full=sum(p.numel() for p in full.parameters()),
            mean_objective=report.mean_objective("init"),
            mean_objective_spectral=report.mean_objective("spectral"),
            function_error=network_function_error(full, model, x),
            seconds=report.seconds,
        )
        del full
    else:
        log.write(event="init", step=0, init=FULL_RANK, params=sum(p.numel() for p in model.parameters()))
    torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout and the like: a different stream per process
    groups = _param_groups(model, cfg.weight_decay, cfg.factor_coef if cfg.reg == "wd" else 0.0)
    optimizer = torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum)
    if ckpt is not None:
        load_training_state(ckpt, optimizer)
    net: nn.Module = DistributedDataParallel(model) if d.world > 1 else model

    # ---- loop --------------------------------------------------------------------------------------
    epoch, start = (meta["epoch"], meta["step_in_epoch"]) if meta is not None else (0, 0)
    running = torch.tensor(meta["running"] if meta is not None else [0.0, 0.0, 0.0], dtype=torch.float64)
    seconds = meta["seconds"] if meta is not None else 0.0
    local = torch.zeros(3, dtype=torch.float64, device=d.device)  # this process's loss sum, correct, count
    t0 = time.perf_counter()

    def check_finite(epoch: int, step: int, *values: float) -> None:
        """Stop before logging or checkpointing a diverged state (all processes agree: sums are reduced)."""
        weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
        if not (weights_ok and all(math.isfinite(v) for v in (float(running[0]), *values))):
            raise DivergedError(
                f"training diverged in epoch {epoch + 1}, by step {step}: the "
                f"{'loss' if weights_ok else 'weights'} became NaN or Inf (peak lr {cfg.peak_lr:g}); "
                f"{str(out)!r} keeps what was logged and checkpointed before; lower the learning rate "
                "(or the regularization) and use another out"
            )

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        """Rank 0 saves; the running sums are reduced over processes first so the file holds the total."""
        running.add_(d.all_sum(local.clone()).cpu())
        local.zero_()
        check_finite(epoch if step_in_epoch else epoch - 1, epoch * steps_per_epoch + step_in_epoch)
        if d.main:
            save_checkpoint(
                out / "checkpoint.safetensors",
                model,
                optimizer,
                {
                    "config": cfg.identity(),
                    "model": {
                        "name": cfg.model,
                        "num_classes": spec.num_classes,
                        "in_channels": spec.in_channels,
                    },
                    "layers": layers,
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "step": epoch * steps_per_epoch + step_in_epoch,
                    "running": running.tolist(),
                    "seconds": seconds + time.perf_counter() - t0,
                },
            )

    last: dict[str, Any] = {}
    while epoch < cfg.epochs:
        sampler.set_epoch(epoch)
        spec.train.set_epoch(epoch)  # the augmentation is a function of (seed, epoch, index)
        loader = DataLoader(
            spec.train,
            batch_size=local_batch,
            sampler=_SkipSampler(sampler, start * local_batch),
            drop_last=True,
            num_workers=cfg.workers,
        )
        t0 = time.perf_counter()
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            initial=start,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and d.main),
            leave=False,
        )
        for i, (x, y) in enumerate(bar, start=start):
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, warmup_steps, cfg.peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = net(x)
                loss = F.cross_entropy(logits, y)
            total = loss + (cfg.factor_coef / 2) * frobenius_decay(model) if cfg.reg == "fd" else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            local += _batch_stats(logits, y, loss.detach() * len(y))
            if cfg.progress and d.main and i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                checkpoint(epoch, i + 1)
        bar.close()
        running.add_(d.all_sum(local.clone()).cpu())
        local.zero_()
        epoch_seconds = time.perf_counter() - t0
        seconds += epoch_seconds
        test_loss, test_top1 = _evaluate(model, spec.test, d, max(256, local_batch))
        check_finite(epoch, (epoch + 1) * steps_per_epoch, test_loss)
        loss_sum, correct, count = running.tolist()
        last = {
            "event": "epoch",
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "train_loss": loss_sum / count,
            "train_top1": 100.0 * correct / count,
            "test_loss": test_loss,
            "test_top1": test_top1,
            "lr": lr,
            "seconds": epoch_seconds,
            "images_per_s": (steps_per_epoch - start) * cfg.batch_size / epoch_seconds,
        }
        log.write(**last)
        epoch, start = epoch + 1, 0
        running.zero_()
        t0 = time.perf_counter()
        checkpoint(epoch, 0)

    last = last or log.last("epoch")  # a run killed after its last checkpoint
    summary = {
        **cfg.identity(),
        "final_test_top1": last.get("test_top1"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "seconds": seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "world_size": d.world,
    }
    log.write(event="done", step=total_steps, **{k: summary[k] for k in ("final_test_top1", "seconds")})
    if d.main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if d.world > 1:
        dist.barrier()
    return summary
