"""What follows each Linear / Conv2d in a model's forward, found with torch.fx.

For every layer called as a module, :func:`trace_layers` walks forward through the nodes that do not change
which nonlinearity the layer's output meets (BatchNorm, dropout, reshapes, max-pooling, channel
concatenation) and reports the activation reached on every path, or the identity when the output first
reaches something linear in it (an addition, another layer, average pooling, the model output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .activations import Activation

__all__ = ["LayerGraph", "trace_layers"]

_ACT_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.GELU: "gelu",
    nn.Hardswish: "hardswish",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.LeakyReLU: "leaky_relu",
}
_ACT_FUNCTIONS = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu_: "relu",
    torch.relu_: "relu",
    F.relu6: "relu6",
    F.silu: "silu",
    F.gelu: "gelu",
    F.hardswish: "hardswish",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.leaky_relu: "leaky_relu",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
# Nodes that pass each channel on unchanged up to a per-channel affine map, a reshape or a monotone max.
_PASS_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {torch.flatten, torch.cat, F.dropout, F.batch_norm, F.max_pool2d, torch.reshape}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous"}
_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class LayerGraph:
    """order: Linear/Conv2d modules called in forward, in execution order (the first is the stem, the last
    the classifier). activations: name -> (Activation, how it was found)."""

    order: list[str]
    activations: dict[str, tuple[Activation, str]]


def _activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> Activation | None:
    if node.op == "call_module":
        mod = modules[str(node.target)]
        name = _ACT_MODULES.get(type(mod))
        if name == "leaky_relu":
            return Activation(name, negative_slope=float(mod.negative_slope))  # type: ignore[arg-type]
        return Activation(name) if name else None
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        name = _ACT_FUNCTIONS[node.target]  # type: ignore[index]
        if name == "leaky_relu":
            slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            return Activation(name, negative_slope=float(slope))  # type: ignore[arg-type]
        return Activation(name)
    if node.op == "call_method" and node.target in _ACT_METHODS:
        return Activation(_ACT_METHODS[str(node.target)])
    return None


def _passes(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[str(node.target)]).__name__} {node.target}"
    if node.op == "output":
        return "the model output"
    return getattr(node.target, "__name__", str(node.target))


def _follow(nodes: list[fx.Node], modules: dict[str, nn.Module]) -> tuple[Activation, str]:
    """The activation met on every path from the outputs of ``nodes`` (every call of one module), or the
    identity and why."""
    found: set[Activation] = set()
    notes: list[str] = []
    stack, seen = [user for node in nodes for user in node.users], set()
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        act = _activation_of(user, modules)
        if act is not None:
            found.add(act)
            notes.append(f"{act} ({_describe(user, modules)})")
        elif _passes(user, modules):
            stack.extend(user.users)
        else:
            found.add(Activation("identity"))
            notes.append(f"identity: reaches {_describe(user, modules)}")
    if len(found) == 1:
        return found.pop(), notes[0]
    if not found:
        return Activation("identity"), "identity: output unused"
    return Activation("identity"), "identity: paths disagree (" + "; ".join(sorted(set(notes))) + ")"


def trace_layers(model: nn.Module) -> LayerGraph:
    """Trace ``model`` with torch.fx and find each Linear / Conv2d call and the activation after it.

    A module called several times (a shared layer) is listed once, at its first call; its activation is
    the one every call meets, or the identity when the calls disagree.

    Raises:
        Exception: whatever torch.fx raises when the model cannot be traced symbolically.
    """
    graph = fx.Tracer(autowrap_modules=(math,)).trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, list[fx.Node]] = {}  # in execution order of each module's first call
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], _LAYERS):
            calls.setdefault(str(node.target), []).append(node)
    activations = {name: _follow(nodes, modules) for name, nodes in calls.items()}
    return LayerGraph(list(calls), activations)
