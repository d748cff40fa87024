"""Checkpoints: tensors in one safetensors file, everything else as JSON in its header and in a sidecar.

A checkpoint ``run/checkpoint.safetensors`` holds

* ``model/<name>``: the model's state dict (low-rank layers as their factors U, V);
* ``optim/<param index>/<key>``: the optimizer's tensor state (e.g. SGD momentum buffers);
* ``rng/cpu`` (and ``rng/cuda``): the torch random states, so dropout and the like continue exactly;

and, in the safetensors header (key ``nlinit``) and in ``run/checkpoint.json`` for people to read, the
metadata: format version, the run's config, the model's name and low-rank structure (ranks, layout), the
activations and init, the optimizer's non-tensor state, the data position (epoch, step), and ``sha256``: a
digest of the metadata and of every tensor (name, dtype, shape and bytes).

Writing checks what is written: finite tensors, JSON metadata that fits the schema below, a structure that
matches the model. The file is written to a temporary name and moved into place with ``os.replace``, so a
run killed while saving (or a full disk) leaves the previous checkpoint intact. The header is the
authority: the sidecar is a copy.

Reading checks everything before a model or optimizer is touched: the file (safetensors, complete), the
metadata's JSON and schema (:data:`FORMAT`), the digest, the tensor names, finiteness of every floating-point
tensor, the RNG states' shapes, the factors' ranks against the structure, and then every key and shape
against the model. Any failure is a one-line :class:`CheckpointError` and leaves model and optimizer as
they were.

Formats: ``nlinit-checkpoint/2`` (this version) adds the digest. ``nlinit-checkpoint/1`` files (no digest)
still load, with a warning that their bytes cannot be verified; every other check applies to them, and a
resumed run rewrites its checkpoint in format 2 at its next save.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ._checks import check_module
from ._paths import atomic_write, atomic_write_text, check_output
from .factorize import replace_modules
from .layers import LowRankConv2d, LowRankLinear, low_rank_layers
from .matrix_view import LAYOUTS

__all__ = [
    "FORMAT",
    "READABLE_FORMATS",
    "Checkpoint",
    "CheckpointError",
    "apply_low_rank_structure",
    "load_model",
    "load_model_state",
    "load_training_state",
    "low_rank_structure",
    "read_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

FORMAT = "nlinit-checkpoint/2"
_FORMAT_1 = "nlinit-checkpoint/1"
READABLE_FORMATS = (_FORMAT_1, FORMAT)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, truncated, or does not fit the model or run."""


# ---------------------------------------------------------------------------------------------------------
# The metadata schema: a small declarative checker (no dependency), one message per first problem found.


class _Int(NamedTuple):
    low: int = 0


class _Num(NamedTuple):  # a finite int or float
    low: float = 0.0


class _Str(NamedTuple):
    pattern: str = ".*"
    options: tuple[str, ...] = ()


class _List(NamedTuple):
    item: Any
    length: int | None = None


class _Map(NamedTuple):  # {str key matching key_pattern: value}
    value: Any
    key_pattern: str = ".+"


class _Obj(NamedTuple):  # a dict with these keys (others allowed)
    required: dict[str, Any]
    optional: dict[str, Any] = {}  # never mutated


_ANY_DICT = _Map(object, ".*")

_STRUCTURE = _Map(
    _Obj(
        {"kind": _Str(options=("conv", "linear")), "rank": _Int(1), "layout": _Str(options=LAYOUTS)},
        {"bias": _Int(0)},  # 1: a bias (refitted ones too, also where the dense layer had none)
    )
)

#: What nlinit reads from a checkpoint's metadata; keys not named here are kept but not checked.
_SCHEMA = _Obj(
    required={"format": _Str(options=READABLE_FORMATS)},
    optional={
        "sha256": _Str(pattern="[0-9a-f]{64}"),
        "model": _Obj({"name": _Str(".+")}, {"num_classes": _Int(1), "in_channels": _Int(1)}),
        "structure": _STRUCTURE,
        "optimizer": _Obj(
            {
                "param_groups": _List(_Obj({"params": _List(_Int(0))})),
                "scalars": _Map(_ANY_DICT, key_pattern="[0-9]+"),
            }
        ),
        "aliases": _Map(_Str("model/.+"), key_pattern="model/.+"),
        "config": _ANY_DICT,
        "layers": _Map(_ANY_DICT),
        "epoch": _Int(0),
        "step_in_epoch": _Int(0),
        "step": _Int(0),
        "running": _List(_Num(0.0), length=3),
        "seconds": _Num(0.0),
    },
)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(value: Any, spec: Any, where: str) -> str | None:
    """The first way ``value`` does not fit ``spec`` (a message naming ``where``), or None."""
    if spec is object:
        return None
    if isinstance(spec, _Int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= spec.low
        return None if ok else f"{where} must be an int >= {spec.low}, got {_short(value)}"
    if isinstance(spec, _Num):
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= spec.low
        )
        return None if ok else f"{where} must be a finite number >= {spec.low:g}, got {_short(value)}"
    if isinstance(spec, _Str):
        if spec.options:
            ok = isinstance(value, str) and value in spec.options
            return None if ok else f"{where} must be one of {', '.join(spec.options)}, got {_short(value)}"
        ok = isinstance(value, str) and re.fullmatch(spec.pattern, value) is not None
        return None if ok else f"{where} must be a string matching {spec.pattern!r}, got {_short(value)}"
    if isinstance(spec, _List):
        if not isinstance(value, list) or (spec.length is not None and len(value) != spec.length):
            size = "" if spec.length is None else f" of length {spec.length}"
            return f"{where} must be a list{size}, got {_short(value)}"
        return next((p for i, v in enumerate(value) if (p := _problem(v, spec.item, f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return f"{where} must be a JSON object, got {_short(value)}"
    if isinstance(spec, _Map):
        for key, v in value.items():
            if not isinstance(key, str) or re.fullmatch(spec.key_pattern, key) is None:
                return f"{where} has a key {_short(key)} that does not match {spec.key_pattern!r}"
            if problem := _problem(v, spec.value, f"{where}[{key!r}]"):
                return problem
        return None
    missing = [k for k in spec.required if k not in value]
    if missing:
        return f"{where} has no {missing[0]!r}"
    fields = {**spec.required, **spec.optional}
    problems = (_problem(value[k], fields[k], f"{where}.{k}") for k in fields if k in value)
    return next((p for p in problems if p), None)


# ---------------------------------------------------------------------------------------------------------
# Structure: which layers are low-rank, with which rank and layout.


def low_rank_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {"kind", "rank", "layout", "bias"}} for every low-rank layer: what a checkpoint needs to
    rebuild the shapes of a factorized model (see :func:`apply_low_rank_structure`)."""
    return {
        name: {
            "kind": "conv" if isinstance(layer, LowRankConv2d) else "linear",
            "rank": layer.rank,
            "layout": getattr(layer, "layout", "channel"),
            "bias": int(layer.bias is not None),
        }
        for name, layer in low_rank_layers(model)
    }


def _structure_layers(model: nn.Module, structure: Mapping[str, Mapping[str, Any]]) -> dict[str, nn.Module]:
    """The low-rank layers (placeholder values) that ``structure`` puts in place of ``model``'s dense ones;
    neither ``model`` nor the torch RNG is changed. Raises ValueError naming the first entry that does not
    fit."""
    new_layers: dict[str, nn.Module] = {}
    for name, spec in structure.items():
        if problem := _problem(spec, _STRUCTURE.value, f"structure[{name!r}]"):
            raise ValueError(problem)
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"low-rank layer {name!r} is not a module of this model") from None
        expected = {"conv": nn.Conv2d, "linear": nn.Linear}[spec["kind"]]
        if type(layer) is not expected:
            raise ValueError(
                f"low-rank layer {name!r} is a {spec['kind']} layer but the model has {type(layer).__name__}"
            )
        with torch.random.fork_rng(devices=[]):  # placeholder values: the caller's RNG stays as it was
            if isinstance(layer, nn.Conv2d):
                bias = bool(spec["bias"]) if "bias" in spec else None  # absent (older files): as dense
                new: nn.Module = LowRankConv2d.like(layer, spec["rank"], spec["layout"], bias)
            else:
                bias = bool(spec["bias"]) if "bias" in spec else None
                new = LowRankLinear.like(
                    cast(nn.Linear, layer), spec["rank"], bias=bias
                )  # type checked above
        # A module used under several names (shared) gets one low-rank module under all of them.
        for alias, module in model.named_modules(remove_duplicate=False):
            if module is layer:
                new_layers[alias] = new
    return new_layers


def apply_low_rank_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> None:
    """Give a freshly built dense ``model`` the low-rank layers named in ``structure``, in place.

    The new layers have the right shapes but placeholder values, to be overwritten by ``load_state_dict``
    (e.g. when resuming from a checkpoint whose ranks changed the shapes). A module that ``model`` uses under
    several names gets one low-rank module under all of them. Every entry is checked before anything is
    replaced.

    Raises:
        ValueError: a name that is not a Linear / Conv2d of ``model``, a kind that does not match it, or a
            malformed entry (kind, rank, layout).
    """
    check_module("model", model)
    if not isinstance(structure, Mapping):
        raise TypeError(f"structure must be a dict {{module name: entry}}, got {type(structure).__name__}")
    replace_modules(model, _structure_layers(model, structure))


# ---------------------------------------------------------------------------------------------------------
# Writing.


def _digest(meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str:
    """sha256 of the metadata (canonical JSON, without the digest itself) and of each tensor's name, dtype,
    shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _nonfinite(name: str, t: Tensor) -> str | None:
    if not (t.is_floating_point() or t.is_complex()):
        return None
    bad = int((~torch.isfinite(t)).sum())
    return f"tensor {name!r} has {bad} non-finite (NaN or Inf) entries" if bad else None


_RESERVED = ("format", "sha256", "optimizer", "aliases")


def _deduplicate(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors stored once, {alias: stored name}): a state dict holds a shared module's or a tied weight's
    tensors under every name, as the same memory, which safetensors refuses to write twice."""
    stored: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in tensors.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            stored[name] = t
    return stored, aliases


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    metadata: dict[str, Any],
) -> Path:
    """Write model, optimizer and RNG state plus ``metadata`` (JSON-serializable) atomically to ``path``.

    ``metadata`` should name the model (``{"model": {"name", "num_classes", "in_channels"}}``) so that
    :func:`load_model` can rebuild it; ``"structure"`` (:func:`low_rank_structure`) is added from the model.
    Returns the path; a sidecar ``<path without suffix>.json`` holds the same metadata.

    Raises:
        ValueError: metadata that is not JSON (or holds NaN), does not fit the schema, uses a reserved key
            (format, sha256, optimizer) or gives a structure other than the model's; a non-finite tensor.
            Nothing is written then.
        OSError: ``path`` cannot be written (checked first), or the disk filled up (the previous file stays).
    """
    path = check_output(path, name="checkpoint path", kind="file")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    reserved = [k for k in _RESERVED if k in metadata]
    if reserved:
        raise ValueError(f"metadata key {reserved[0]!r} is reserved for the checkpoint itself; rename it")
    structure = low_rank_structure(model)
    if "structure" in metadata and metadata["structure"] != structure:
        raise ValueError("metadata['structure'] differs from the model's low_rank_structure(model); omit it")
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {**metadata, "format": FORMAT, "structure": structure}
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
    for name, t in tensors.items():
        if problem := _nonfinite(name, t):
            raise ValueError(f"cannot save a checkpoint that would not load: {problem}")
    tensors, aliases = _deduplicate(tensors)
    if aliases:
        meta["aliases"] = aliases
    try:
        meta = json.loads(json.dumps(meta, allow_nan=False))  # what a reader will see: tuples become lists
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serializable, without NaN or Inf ({err})") from None
    if problem := _problem(meta, _SCHEMA, "metadata"):
        raise ValueError(f"cannot save a checkpoint that would not load: {problem}")
    meta["sha256"] = _digest(meta, tensors)
    header = json.dumps(meta, sort_keys=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"nlinit": header}))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------
# Reading: everything is checked here, before a model or optimizer is touched.


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read into memory and verified by :func:`read_checkpoint`."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Tensor]

    def part(self, prefix: str) -> dict[str, Tensor]:
        """The tensors under ``prefix`` (``"model/"``, ``"optim/"``, ``"rng/"``), the prefix removed."""
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _corrupted(path: Path, err: Exception) -> CheckpointError:
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(f"checkpoint {str(path)!r} is corrupted or truncated ({detail})")


def read_metadata(path: str | Path, *, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The metadata stored in a checkpoint's header, checked against the schema (not the digest, which
    covers the tensors too: :func:`read_checkpoint` checks it).

    Args:
        require: top-level keys that must be present (e.g. ``("model",)``).
    Raises:
        CheckpointError: the file is missing, not a safetensors file, truncated, not an nlinit checkpoint,
            of an unknown format, or its metadata is not JSON or does not fit the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get("nlinit")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupted(path, err) from None
    if header is None:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not an nlinit checkpoint (no header)")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has metadata that is not JSON ({err})") from None
    if isinstance(meta, dict) and meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {meta.get('format')!r}; this nlinit reads "
            f"{', '.join(READABLE_FORMATS)}"
        )
    problem = _problem(meta, _SCHEMA, "metadata")
    missing = [k for k in require if k not in meta]
    if problem is None and missing:
        problem = f"metadata has no {missing[0]!r}"
    if problem is None and meta["format"] == FORMAT and "sha256" not in meta:
        problem = "metadata has no 'sha256'"
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} has malformed metadata: {problem}")
    return meta


def _rng_problem(name: str, state: Tensor, *, cuda_ready: bool = False) -> str | None:
    """Why ``state`` cannot be the torch RNG state ``rng/cpu`` or ``rng/cuda`` here, or None. CUDA's size is
    compared only with ``cuda_ready`` or once CUDA is in use: reading a checkpoint must not start CUDA."""
    ref: Tensor | None = None
    if name == "rng/cpu":
        ref = torch.get_rng_state()
    elif torch.cuda.is_available() and (cuda_ready or torch.cuda.is_initialized()):
        ref = torch.cuda.get_rng_state()
    dtype = torch.uint8 if ref is None else ref.dtype
    if state.dtype == dtype and state.dim() == 1 and (ref is None or state.shape == ref.shape):
        return None
    size = "(n,)" if ref is None else str(tuple(ref.shape))
    got = f"dtype {state.dtype} and shape {tuple(state.shape)}"
    return f"an RNG state {name!r} of {got}; expected {dtype} {size}"


_TENSOR_NAME = re.compile(r"model/.+|optim/[0-9]+/.+|rng/(cpu|cuda)")


def read_checkpoint(path: str | Path, *, require: tuple[str, ...] = ()) -> Checkpoint:
    """Read a whole checkpoint and verify it: metadata (:func:`read_metadata`, with the top-level keys in
    ``require``), the sha256 digest, tensor names, finite floating-point tensors, RNG state shapes, and the
    factors' ranks against the structure.

    Raises:
        CheckpointError: the first problem found (one line).
    """
    path = Path(path)
    meta = read_metadata(path, require=require)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupted(path, err) from None
    where = f"checkpoint {str(path)!r}"
    if meta["format"] == FORMAT:
        if _digest(meta, tensors) != meta["sha256"]:
            raise CheckpointError(f"{where} is corrupted: its contents do not match its sha256 digest")
    else:
        warnings.warn(
            f"{where} has the old format {meta['format']!r} without a digest: its bytes cannot be verified",
            UserWarning,
            stacklevel=2,
        )
    for alias, name in meta.get("aliases", {}).items():
        if name not in tensors or alias in tensors:
            raise CheckpointError(
                f"{where} has an alias {alias!r} of {name!r}, which does not fit its tensors"
            )
        tensors[alias] = tensors[name]
    for name, t in tensors.items():
        if not _TENSOR_NAME.fullmatch(name):
            raise CheckpointError(f"{where} has an unexpected tensor {name!r}")
        if problem := _nonfinite(name, t):
            raise CheckpointError(f"{where} is corrupted: {problem}")
    for name in ("rng/cpu", "rng/cuda"):
        if name in tensors and (problem := _rng_problem(name, tensors[name])):
            raise CheckpointError(f"{where} has {problem}")
    if any(k.startswith("optim/") for k in tensors) and "optimizer" not in meta:
        raise CheckpointError(f"{where} has optimizer tensors but no optimizer metadata")
    for name, spec in meta.get("structure", {}).items():
        U, V = tensors.get(f"model/{name}.U"), tensors.get(f"model/{name}.V")
        if U is None or V is None:
            raise CheckpointError(f"{where} names low-rank layer {name!r} but holds no factors")
        if U.dim() != 2 or V.dim() != 2 or U.shape[1] != spec["rank"] or V.shape[1] != spec["rank"]:
            raise CheckpointError(
                f"{where} gives layer {name!r} rank {spec['rank']}, but its factors have shapes "
                f"{tuple(U.shape)} and {tuple(V.shape)}"
            )
    return Checkpoint(path, meta, tensors)


def _checkpoint(source: str | Path | Checkpoint) -> Checkpoint:
    return source if isinstance(source, Checkpoint) else read_checkpoint(source)


def load_model_state(
    source: str | Path | Checkpoint, model: nn.Module, *, what: str = "this model"
) -> dict[str, Any]:
    """Load a checkpoint's model tensors into ``model`` (dense layers are first given the checkpoint's
    low-rank structure), after checking that every key and shape fits. Returns the metadata.

    ``source``: a path, or a :class:`Checkpoint` already read by :func:`read_checkpoint`.

    Raises:
        CheckpointError: corrupted file, or a checkpoint of another model (the first mismatch is named);
            ``model`` is unchanged then.
    """
    ckpt = _checkpoint(source)
    state = ckpt.part("model/")
    structure = ckpt.meta.get("structure", {})
    source_name = f"checkpoint {str(ckpt.path)!r} (model {ckpt.meta.get('model', {}).get('name', '?')!r})"
    current = dict(model.named_modules())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    dense = {name: spec for name, spec in structure.items() if name + ".U" not in shapes}
    for name, spec in structure.items():
        layer = current.get(name)
        layout = getattr(layer, "layout", "channel")
        if name not in dense and layout != spec["layout"]:
            raise CheckpointError(
                f"{source_name} does not fit {what}: layer {name!r} has layout {layout!r} in the model "
                f"and {spec['layout']!r} in the checkpoint"
            )
    try:
        new_layers = _structure_layers(model, dense)
    except ValueError as err:
        raise CheckpointError(f"{source_name} does not fit {what}: {err}") from None
    # The shapes the model will have once the new layers are in: checked before changing anything.
    probe = {k: v for k, v in shapes.items() if not any(k.startswith(n + ".") for n in new_layers)}
    for name, layer in new_layers.items():
        probe.update({f"{name}.{k}": v.shape for k, v in layer.state_dict().items()})
    missing = sorted(set(probe) - set(state))
    extra = sorted(set(state) - set(probe))
    if missing or extra:
        key = missing[0] if missing else extra[0]
        side = "has no tensor" if missing else "has a tensor not in the model"
        raise CheckpointError(f"{source_name} does not fit {what}: it {side} {key!r}")
    for key, shape in probe.items():
        if tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{source_name} does not fit {what}: {key!r} has shape {tuple(state[key].shape)} "
                f"in the checkpoint and {tuple(shape)} in the model"
            )
    replace_modules(model, new_layers)
    model.load_state_dict(state)
    return ckpt.meta


def load_model(path: str | Path) -> nn.Module:
    """The model a checkpoint was trained as: built fresh by name, given its low-rank layers, and loaded.

    Example:
        >>> model = load_model("runs/r20/checkpoint.safetensors")  # doctest: +SKIP
    """
    from .models import build_model  # here: models import torchvision, which checkpoints do not need

    ckpt = read_checkpoint(path)
    spec, config = ckpt.meta.get("model", {}), ckpt.meta.get("config", {})
    missing = [k for k in ("name", "num_classes", "in_channels") if k not in spec]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not give its model's {missing[0]!r}; build the model and use "
            "load_model_state"
        )
    small_input = config.get("small_input", False)
    if not isinstance(small_input, bool):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has malformed metadata: config.small_input must be a bool, "
            f"got {_short(small_input)}"
        )
    try:
        model = build_model(
            spec["name"],
            num_classes=spec["num_classes"],
            in_channels=spec["in_channels"],
            small_input=small_input,
        )
    except (ValueError, NotImplementedError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} names a model nlinit cannot build: {err}") from None
    load_model_state(ckpt, model, what=f"model {spec['name']!r}")
    return model


#: Optimizer state buffers that torch's optimizers keep in their parameter's shape.
_PARAM_SHAPED = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")


def load_training_state(source: str | Path | Checkpoint, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and the torch RNG states from a checkpoint; returns its metadata.

    Build ``optimizer`` on the model's parameters after :func:`load_model_state` gave the model its
    low-rank structure. ``source``: a path, or a :class:`Checkpoint` from :func:`read_checkpoint`.

    Raises:
        CheckpointError: no optimizer or RNG state, or an optimizer state that does not fit ``optimizer``
            (groups, sizes, buffer shapes); ``optimizer`` and the RNG are unchanged then.
    """
    ckpt = _checkpoint(source)
    where = f"checkpoint {str(ckpt.path)!r}"
    saved = ckpt.meta.get("optimizer")
    if saved is None:
        raise CheckpointError(f"{where} has no optimizer state")
    rng = ckpt.part("rng/")
    if "cpu" not in rng:
        raise CheckpointError(f"{where} has no RNG state 'rng/cpu'")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = saved["param_groups"]
    sizes = [len(g["params"]) for g in groups]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(
            f"{where}: optimizer state does not fit (parameter groups of sizes {sizes} in the checkpoint, "
            f"{[len(g['params']) for g in optimizer.param_groups]} in the optimizer)"
        )
    # torch maps the saved ids, in order, onto this optimizer's parameters.
    index = {pid: i for i, pid in enumerate(pid for g in groups for pid in g["params"])}
    state: dict[int, dict[str, Any]] = {}
    for key, value in ckpt.part("optim/").items():
        number, _, name = key.partition("/")
        state.setdefault(int(number), {})[name] = value
    for number, scalars in saved["scalars"].items():
        state.setdefault(int(number), {}).update(scalars)
    for idx, entry in state.items():
        if idx not in index:
            raise CheckpointError(f"{where}: optimizer state for parameter {idx}, which no group holds")
        shape = params[index[idx]].shape
        for name, value in entry.items():
            if name in _PARAM_SHAPED and isinstance(value, Tensor) and value.shape != shape:
                raise CheckpointError(
                    f"{where}: optimizer state does not fit: {name} of parameter {idx} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(shape)}"
                )
    cuda = "cuda" in rng and torch.cuda.is_available()
    if cuda and (problem := _rng_problem("rng/cuda", rng["cuda"], cuda_ready=True)):
        raise CheckpointError(f"{where} has {problem}")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: optimizer state does not fit ({err})") from None
    torch.set_rng_state(rng["cpu"])
    if cuda:
        torch.cuda.set_rng_state(rng["cuda"])
    return ckpt.meta
