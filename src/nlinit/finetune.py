"""Recovery fine-tune of a compressed model: a short run on calibration or training data, one readable loop.

Training-free compression (:func:`nlinit.compress.compress`) fits each layer alone; a few hundred steps of
the whole network on real data then recover much of what the layers' errors cost together. Three losses:

- ``"kl"``: distill a teacher's class distribution (the original model's logits), :func:`kl_distillation`;
- ``"mse"``: distill a teacher's output tensor (an encoder's hidden states), mean squared error;
- ``"ce"``: plain cross-entropy on labels: the data yields (inputs, labels) pairs.

    >>> teacher = copy.deepcopy(model)  # doctest: +SKIP
    >>> compress(model, images, budget=0.5)  # doctest: +SKIP
    >>> finetune(model, train_loader, steps=500, teacher=teacher)["loss_last"]  # doctest: +SKIP

The recipe: AdamW, the learning rate of :func:`nlinit.train.lr_at` (linear warm-up over the training
recipe's first 2.5% of steps, then cosine decay to 0), weight decay as :mod:`nlinit.train` groups it
(on weight matrices and factors, none on biases and norms). AdamW rather than train's SGD: its step is
about ``lr`` per weight whatever the loss's scale, so one default learning rate serves the KL on a CNN's
logits and the MSE on a transformer's hidden states alike (transformers are fine-tuned with AdamW as a
rule), where SGD's step follows the gradient's size and would need a rate per loss and per model.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_choice, check_int, check_module, check_number
from .calibration import DEFAULT_BATCH_SIZE, _batches, _model_input, _output_tensor
from .train import DivergedError, TrainConfig, _param_groups, lr_at

__all__ = ["DEFAULT_LR", "LOSSES", "check_data", "finetune", "kl_distillation"]

#: the fine-tune's losses: two distillations from a teacher, and cross-entropy on labels
LOSSES = ("kl", "mse", "ce")
#: the peak learning rate of AdamW: a fine-tune's usual rate (a trained network is already near a minimum)
DEFAULT_LR = 1e-4


def kl_distillation(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Knowledge distillation's loss (Hinton, Vinyals and Dean, 2015): the teacher's softened class
    distribution against the student's, mean over rows.

    .. math::
        L = \frac{T^2}{R} \sum_{\rho=1}^{R} \mathrm{KL}\big(\mathrm{softmax}(t_\rho / T) \,\|\,
        \mathrm{softmax}(s_\rho / T)\big)

    over the R rows of the (..., C) logits (every index of the leading dims: images, or images x tokens),
    the softmax over the last dim. The factor T^2 keeps the gradient's scale independent of T. L >= 0, and
    0 exactly when every row's softmaxes agree (logits equal up to a per-row constant).

    Args:
        student: (..., C) logits of the model being trained (the gradient flows through them).
        teacher: (..., C) logits of the reference model, the same shape.
        temperature: T > 0.
    Returns:
        A scalar tensor.
    Raises:
        ValueError: different shapes.

    Example:
        >>> kl_distillation(torch.zeros(4, 10), torch.zeros(4, 10))
        tensor(0.)
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"the model's output (shape {tuple(student.shape)}) and the teacher's (shape "
            f"{tuple(teacher.shape)}) differ; distillation compares two outputs of one shape"
        )
    T = temperature
    s = F.log_softmax(student.reshape(-1, student.shape[-1]) / T, dim=-1)  # (R, C)
    t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]) / T, dim=-1)  # (R, C)
    return T * T * F.kl_div(s, t, reduction="batchmean", log_target=True)


def check_data(name: str, data: object, loss: str, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
    """Raise a one-line TypeError / ValueError unless ``data`` can feed a fine-tune with ``loss``: a
    re-iterable of batches (a DataLoader, a list) or a tensor with rows, whose first batch is a model input
    (a tensor, a dict, or an (inputs, labels) pair; the pair for ``"ce"``). Reads the first batch only;
    the global RNG is left as it was (a shuffling DataLoader draws its seed from it)."""
    if isinstance(data, Tensor):
        if data.dim() == 0 or len(data) == 0:
            raise ValueError(f"{name} is empty: a tensor of {tuple(data.shape)}; give at least one row")
    elif not isinstance(data, Iterable) or isinstance(data, (str, bytes, Mapping)):
        raise TypeError(
            f"{name} must be batches (a DataLoader, a list of batches) or a tensor of inputs, got "
            f"{type(data).__name__}"
        )
    elif isinstance(data, Iterator):
        raise TypeError(
            f"{name} is a one-pass iterator ({type(data).__name__}); give a list or a DataLoader, which the "
            "fine-tune can go through again"
        )
    with torch.random.fork_rng(devices=[]):
        first = next(iter(_batches(data, 1, batch_size)), None)
    if first is None:
        raise ValueError(f"{name} is empty: give at least one batch")
    _model_input(first, 0, None, "finetune")  # a TypeError for a batch of an unknown kind
    if loss == "ce" and not (isinstance(first, (tuple, list)) and len(first) >= 2):
        raise ValueError(
            f"loss 'ce' needs (inputs, labels) batches; the first batch of {name} is a "
            f"{type(first).__name__} without labels; give labelled batches or distill ('kl', 'mse')"
        )


def finetune(
    model: nn.Module,
    data: Iterable[Any] | Tensor,
    *,
    steps: int,
    loss: str = "kl",
    teacher: nn.Module | None = None,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.0,
    temperature: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` AdamW steps on ``data`` (module docstring: the recipe).

    The model trains in train mode (BatchNorm normalizes by batch statistics and updates its running
    statistics, dropout is on) and is put back in the mode it was in; the teacher runs in eval mode under
    ``torch.no_grad()`` on the same batches, and is put back too. Data are cycled: after the last batch the
    fine-tune starts another pass (a shuffling DataLoader reshuffles).

    Args:
        model: the network to train (e.g. a compressed one); its parameters' device takes the batches.
        data: batches, as :func:`nlinit.collect_stats` takes them: a DataLoader or a list of tensors, of
            (inputs, labels) pairs or of dicts of keyword inputs (Hugging Face), or one tensor split into
            batches of ``batch_size`` rows. Re-iterable (not a generator), not empty.
        steps: optimizer steps, >= 0 (0: nothing changes).
        loss: ``"kl"`` (:func:`kl_distillation` of the teacher's logits), ``"mse"`` (the teacher's output
            tensor, e.g. hidden states) or ``"ce"`` (cross-entropy against each batch's labels, the pair's
            second element; the last dim of the output is the classes). Of a Hugging Face output the loss
            takes ``last_hidden_state`` when there is one, else its first tensor (``logits``).
        teacher: the reference model for ``"kl"`` and ``"mse"`` (e.g. a deep copy of the original taken
            before compressing); None for ``"ce"``.
        lr: the peak learning rate, > 0.
        weight_decay: AdamW's decoupled weight decay, >= 0, on weight matrices and low-rank factors (0: none,
            the default: a short run from trained weights has nothing to regularize away).
        temperature: T > 0 of ``"kl"``.
        batch_size: rows per batch when ``data`` is one tensor.
        seed: seeds the random draws of the run (dropout, a DataLoader's shuffling) inside a forked RNG:
            the global RNG is left as it was.
        progress: a tqdm bar over the steps; None: when stderr is a terminal.
    Returns:
        {"steps", "loss", "lr", "losses" (one float per step), "loss_first" and "loss_last" (the mean
        loss of the first and of the last max(1, steps // 10) steps; None for 0 steps), "seconds"}.
    Raises:
        ValueError / TypeError: a bad argument or bad data (the first batch is read to check it), one line,
            before the model changes.
        DivergedError: the loss became NaN or Inf (lower ``lr``); no step is taken on it, and the model keeps
            the weights it had then.
    """
    check_module("model", model)
    check_int("steps", steps, low=0)
    check_choice("loss", loss, LOSSES)
    if loss == "ce" and teacher is not None:
        raise ValueError("loss 'ce' trains on labels and takes no teacher; pass teacher=None or distill")
    if loss != "ce":
        if not isinstance(teacher, nn.Module):
            raise TypeError(
                f"loss {loss!r} distills a teacher: teacher must be a torch.nn.Module (e.g. a copy of the "
                f"model before compression), got {type(teacher).__name__}"
            )
        if teacher is model:
            raise ValueError(
                "teacher is the model itself; distill from a copy taken before the model changed"
            )
    check_number("lr", lr, low=0.0, strict=True)
    check_number("weight_decay", weight_decay, low=0.0)
    check_number("temperature", temperature, low=0.0, strict=True)
    check_int("batch_size", batch_size, low=1)
    check_int("seed", seed, low=0)
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")
    check_data("data", data, loss, batch_size)

    t0 = time.perf_counter()
    losses: list[float] = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay, weight_decay), lr=lr)
    warmup_steps = max(1, round(TrainConfig.warmup * steps))
    modes = model.training, teacher.training if teacher is not None else False
    model.train()
    if teacher is not None:
        teacher.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            batches = _cycle(data, batch_size)
            for step in tqdm(range(steps), desc=f"finetune ({loss})", disable=_hidden(progress), leave=False):
                b, batch = next(batches)
                lr_now = lr_at(step, steps, warmup_steps, lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
                args, kwargs = _model_input(batch, b, device, "finetune")
                out = _output(model(*args, **kwargs), "model")  # (N, C) logits, or (N, T, d) hidden states
                if loss == "ce":
                    y = batch[1].to(device)  # (N,) class indices
                    value = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
                else:
                    with torch.no_grad():
                        ref = _output(teacher(*args, **kwargs), "teacher")  # type: ignore[misc]
                    value = kl_distillation(out, ref, temperature) if loss == "kl" else F.mse_loss(out, ref)
                if not torch.isfinite(value):
                    raise DivergedError(
                        f"the fine-tune diverged at step {step}: the {loss} loss became {value.item()} (lr "
                        f"{lr_now:.3g}); lower lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                losses.append(float(value.detach()))
    finally:
        model.train(modes[0])
        if teacher is not None:
            teacher.train(modes[1])
    k = max(1, steps // 10)
    return {
        "steps": steps,
        "loss": loss,
        "lr": lr,
        "losses": losses,
        "loss_first": sum(losses[:k]) / k if losses else None,
        "loss_last": sum(losses[-k:]) / k if losses else None,
        "seconds": time.perf_counter() - t0,
    }


def _hidden(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None hides the bar unless stderr is a terminal."""
    return None if progress is None else not progress


def _cycle(data: Iterable[Any] | Tensor, batch_size: int) -> Iterator[tuple[int, Any]]:
    """(index, batch) without end: pass after pass over ``data``, the index counting on across passes."""
    b = 0
    while True:
        start = b
        for batch in _batches(data, None, batch_size):
            yield b, batch
            b += 1
        if b == start:
            raise ValueError(
                f"the fine-tune data gave no batch on a new pass after {b}; give a list or DataLoader"
            )


def _output(out: object, who: str) -> Tensor:
    """The tensor a loss compares (:func:`nlinit.calibration._output_tensor`)."""
    return _output_tensor(out, who, "; the loss needs one")
