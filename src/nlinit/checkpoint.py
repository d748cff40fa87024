"""Checkpoints: tensors in one safetensors file, everything else as JSON in its header and in a sidecar.

A checkpoint ``run/checkpoint.safetensors`` holds

* ``model/<name>``: the model's state dict (low-rank layers as their factors U, V);
* ``optim/<param index>/<key>``: the optimizer's tensor state (e.g. SGD momentum buffers);
* ``rng/cpu`` (and ``rng/cuda``): the torch random states, so dropout and the like continue exactly;

and, in the safetensors header (key ``nlinit``) and in ``run/checkpoint.json`` for people to read, the
metadata: format version, the run's config, the model's name and low-rank structure (ranks, layout), the
activations and init, the optimizer's non-tensor state, and the data position (epoch, step).

The file is written to a temporary name and moved into place with ``os.replace``, so a run killed while
saving leaves the previous checkpoint intact. The header is the authority: the sidecar is a copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .factorize import replace_modules
from .layers import LowRankConv2d, LowRankLinear, low_rank_layers

__all__ = [
    "FORMAT",
    "CheckpointError",
    "apply_low_rank_structure",
    "load_model",
    "load_model_state",
    "load_training_state",
    "low_rank_structure",
    "read_metadata",
    "save_checkpoint",
]

FORMAT = "nlinit-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, truncated, or does not fit the model or run."""


def low_rank_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {"kind", "rank", "layout"}} for every low-rank layer: what a checkpoint needs to rebuild
    the shapes of a factorized model (see :func:`apply_low_rank_structure`)."""
    return {
        name: {
            "kind": "conv" if isinstance(layer, LowRankConv2d) else "linear",
            "rank": layer.rank,
            "layout": getattr(layer, "layout", "channel"),
        }
        for name, layer in low_rank_layers(model)
    }


def apply_low_rank_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> None:
    """Give a freshly built dense ``model`` the low-rank layers named in ``structure``, in place.

    The new layers have the right shapes but placeholder values, to be overwritten by ``load_state_dict``
    (e.g. when resuming from a checkpoint whose ranks changed the shapes). Every entry is checked before
    anything is replaced.

    Raises:
        ValueError: a name that is not a Linear / Conv2d of ``model``, or a kind that does not match it.
    """
    new_layers: dict[str, nn.Module] = {}
    for name, spec in structure.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"low-rank layer {name!r} is not a module of this model") from None
        expected = {"conv": nn.Conv2d, "linear": nn.Linear}[spec["kind"]]
        if type(layer) is not expected:
            raise ValueError(
                f"low-rank layer {name!r} is a {spec['kind']} layer but the model has {type(layer).__name__}"
            )
        if isinstance(layer, nn.Conv2d):
            new_layers[name] = LowRankConv2d.like(layer, spec["rank"], spec["layout"])
        elif isinstance(layer, nn.Linear):
            new_layers[name] = LowRankLinear.like(layer, spec["rank"])
    replace_modules(model, new_layers)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    metadata: dict[str, Any],
) -> Path:
    """Write model, optimizer and RNG state plus ``metadata`` (JSON-serializable) atomically to ``path``.

    ``metadata`` should name the model and its low-rank structure
    (:func:`low_rank_structure`) so that :func:`load_checkpoint` can rebuild it.
    Returns the path; a sidecar ``<path without suffix>.json`` holds the same metadata.
    """
    path = Path(path)
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, **metadata}
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, entry in state["state"].items():
            for key, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"optim/{idx}/{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        meta["optimizer"] = {"param_groups": state["param_groups"], "scalars": scalars}
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    header = json.dumps(meta, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"nlinit": header})
    os.replace(tmp, path)
    _atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored in a checkpoint's header.

    Raises:
        CheckpointError: the file is missing, not a safetensors file, truncated, or not an nlinit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get("nlinit")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted or truncated ({err})") from None
    if header is None:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file but not an nlinit checkpoint (no metadata)"
        )
    meta = json.loads(header)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {meta.get('format')!r}; expected {FORMAT!r}"
        )
    return meta


def _read_tensors(path: Path, prefix: str) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted or truncated ({err})") from None


def load_model_state(path: str | Path, model: nn.Module, *, what: str = "this model") -> dict[str, Any]:
    """Load a checkpoint's model tensors into ``model`` (dense layers are first given the checkpoint's
    low-rank structure), after checking that every key and shape fits. Returns the metadata.

    Raises:
        CheckpointError: corrupted file, or a checkpoint of another model (the first mismatch is named);
            ``model`` is unchanged then.
    """
    path = Path(path)
    meta = read_metadata(path)
    state = _read_tensors(path, "model/")
    structure = meta.get("structure", {})
    # Check against the shapes the model will have, before changing it.
    probe = {k: v.shape for k, v in model.state_dict().items()}
    dense = {name for name in structure if name + ".U" not in probe}
    for name in dense:
        for key in [k for k in probe if k.startswith(name + ".")]:
            del probe[key]
        if name + ".U" not in state:
            raise CheckpointError(
                f"checkpoint {str(path)!r} names low-rank layer {name!r} but holds no factors"
            )
        probe[name + ".U"], probe[name + ".V"] = state[name + ".U"].shape, state[name + ".V"].shape
        if name + ".bias" in state:
            probe[name + ".bias"] = state[name + ".bias"].shape
    source = f"checkpoint {str(path)!r} (model {meta.get('model', {}).get('name', '?')!r})"
    missing = sorted(set(probe) - set(state))
    extra = sorted(set(state) - set(probe))
    if missing or extra:
        key = missing[0] if missing else extra[0]
        side = "has no tensor" if missing else "has a tensor not in the model"
        raise CheckpointError(f"{source} does not fit {what}: it {side} {key!r}")
    for key, shape in probe.items():
        if tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{source} does not fit {what}: {key!r} has shape {tuple(state[key].shape)} "
                f"in the checkpoint and {tuple(shape)} in the model"
            )
    try:
        apply_low_rank_structure(model, {name: structure[name] for name in dense})
    except ValueError as err:
        raise CheckpointError(f"{source} does not fit {what}: {err}") from None
    model.load_state_dict(state)
    return meta


def load_model(path: str | Path) -> nn.Module:
    """The model a checkpoint was trained as: built fresh by name, given its low-rank layers, and loaded.

    Example:
        >>> model = load_model("runs/r20/checkpoint.safetensors")  # doctest: +SKIP
    """
    from .models import build_model  # here: models import torchvision, which checkpoints do not need

    meta = read_metadata(path)
    spec, config = meta.get("model", {}), meta.get("config", {})
    if "name" not in spec:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not name its model; build it and use load_model_state"
        )
    model = build_model(
        spec["name"],
        num_classes=spec["num_classes"],
        in_channels=spec["in_channels"],
        small_input=config.get("small_input", False),
    )
    load_model_state(path, model, what=f"model {spec['name']!r}")
    return model


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and the torch RNG states from a checkpoint; returns its metadata.

    Build ``optimizer`` on the model's parameters after :func:`load_model_state` gave the model its
    low-rank structure.
    """
    path = Path(path)
    meta = read_metadata(path)
    saved = meta.get("optimizer")
    if saved is None:
        raise CheckpointError(f"checkpoint {str(path)!r} has no optimizer state")
    state: dict[int, dict[str, Any]] = {}
    for key, value in _read_tensors(path, "optim/").items():
        idx, _, name = key.partition("/")
        state.setdefault(int(idx), {})[name] = value
    for idx, scalars in saved["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: optimizer state does not fit ({err})") from None
    rng = _read_tensors(path, "rng/")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return meta
