"""What follows each Linear / Conv2d in a model's forward, found with torch.fx.

For every layer called as a module, :func:`trace_layers` walks forward through the nodes that do not change
which nonlinearity the layer's output meets (BatchNorm, dropout, reshapes, max-pooling, channel
concatenation) and reports the activation reached on every path, or the identity when the output first
reaches something linear in it (an addition, another layer, average pooling, the model output). It also
reports the layer's post-op (:class:`PostOp`): the per-unit map between the layer's output and the
activation, i.e. the BatchNorm modules passed on the way, which the real layer function includes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ._checks import check_module
from .activations import Activation

__all__ = ["LayerGraph", "PostOp", "trace_layers"]

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


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class PostOp:
    r"""The per-unit map between a layer's output z and its activation.

    ``kind``:

    * ``"none"``: the activation sees z (plus the layer's bias).
    * ``"affine"``: BatchNorm in eval mode, z -> s z + t per unit with s = gamma / sqrt(running_var + eps)
      and t = beta - s running_mean (:meth:`affine`): the unit is act(s (w . x + b) + t).
    * ``"normalized"``: BatchNorm in training mode (or without running statistics): z is standardized by
      its batch mean and standard deviation, so any positive per-unit scale of z (and any offset) is
      removed before gamma and beta apply.

    ``modules``: the BatchNorm modules passed, in order. ``note``: why a BatchNorm was not folded (reached
    through a channel concatenation, or a functional batch_norm), else "".
    """

    kind: str = "none"
    modules: tuple[nn.Module, ...] = field(default=(), compare=False)
    names: tuple[str, ...] = ()
    note: str = ""

    def affine(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """(s, t), each (d_out,): the composed eval-mode BatchNorm map z -> s z + t (kind "affine" only)."""
        if self.kind != "affine":
            raise ValueError(f"post-op {self.describe()!r} is not an affine map")
        s: Tensor | None = None
        t: Tensor | None = None
        for bn in self.modules:
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
            assert bn.running_var is not None and bn.running_mean is not None
            var, mean = bn.running_var.detach().to(dtype), bn.running_mean.detach().to(dtype)
            gamma = bn.weight.detach().to(dtype) if bn.weight is not None else torch.ones_like(var)
            beta = bn.bias.detach().to(dtype) if bn.bias is not None else torch.zeros_like(var)
            scale = gamma / torch.sqrt(var + bn.eps)
            shift = beta - scale * mean
            s, t = (scale, shift) if s is None else (scale * s, scale * t + shift)  # type: ignore[operator]
        assert s is not None and t is not None
        return s, t

    def describe(self) -> str:
        """One phrase for reports, e.g. ``"BatchNorm2d bn1 (eval: affine)"``."""
        if self.kind == "none":
            return self.note
        what = ", ".join(f"{type(m).__name__} {n}" for m, n in zip(self.modules, self.names))
        mode = "eval: affine" if self.kind == "affine" else "train: normalized"
        return f"{what} ({mode})"


@dataclass
class LayerGraph:
    """order: Linear/Conv2d modules called in forward, in execution order (the first is the stem, the last
    the classifier). activations: name -> (Activation, how it was found). post_ops: name -> PostOp."""

    order: list[str]
    activations: dict[str, tuple[Activation, str]]
    post_ops: dict[str, PostOp] = field(default_factory=dict)


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


def _post_op(bn_names: tuple[str, ...], note: str, modules: dict[str, nn.Module]) -> PostOp:
    """The PostOp of one path's BatchNorm modules (by name), or "none" with ``note`` when not foldable."""
    if note or not bn_names:
        return PostOp(note=note)
    bns = tuple(modules[n] for n in bn_names)
    normalized = any(
        b.training or b.running_mean is None  # type: ignore[union-attr]
        for b in bns
    )
    return PostOp("normalized" if normalized else "affine", bns, bn_names)


def _follow(nodes: list[fx.Node], modules: dict[str, nn.Module]) -> tuple[Activation, str, PostOp]:
    """The activation met on every path from the outputs of ``nodes`` (every call of one module), or the
    identity and why, and the post-op (BatchNorms passed) on those paths."""
    found: set[Activation] = set()
    notes: list[str] = []
    posts: set[tuple[tuple[str, ...], str]] = set()
    # (node, BatchNorm names passed, why they cannot be folded)
    stack: list[tuple[fx.Node, tuple[str, ...], str]] = [(u, (), "") for n in nodes for u in n.users]
    seen: set[fx.Node] = set()
    while stack:
        user, bns, unfoldable = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        act = _activation_of(user, modules)
        if act is not None:
            found.add(act)
            notes.append(f"{act} ({_describe(user, modules)})")
            posts.add((bns, unfoldable))
        elif _passes(user, modules):
            if user.op == "call_module" and isinstance(modules[str(user.target)], _BATCHNORMS):
                bns = (*bns, str(user.target))
            elif user.op == "call_function" and user.target is torch.cat and not unfoldable:
                unfoldable = "a BatchNorm after a channel concatenation is not folded" if bns else ""
                unfoldable = unfoldable or "through a channel concatenation"
            elif user.op == "call_function" and user.target is F.batch_norm:
                unfoldable = "a functional batch_norm is not folded"
            stack.extend((u, bns, unfoldable) for u in user.users)
        else:
            found.add(Activation("identity"))
            notes.append(f"identity: reaches {_describe(user, modules)}")
            posts.add(((), ""))
    post = PostOp()
    if len(posts) == 1:
        ((bns, unfoldable),) = posts
        if unfoldable.startswith("through") and bns:
            unfoldable = "a BatchNorm after a channel concatenation is not folded"
        post = _post_op(bns, unfoldable if bns or unfoldable.startswith("a ") else "", modules)
    elif posts:
        post = PostOp(note="paths meet different BatchNorms: not folded")
    if len(found) == 1:
        return found.pop(), notes[0], post
    if not found:
        return Activation("identity"), "identity: output unused", PostOp()
    return (
        Activation("identity"),
        "identity: paths disagree (" + "; ".join(sorted(set(notes))) + ")",
        PostOp(),
    )


def trace_layers(model: nn.Module) -> LayerGraph:
    """Trace ``model`` with torch.fx and find each Linear / Conv2d call and the activation after it.

    A module called several times (a shared layer) is listed once, at its first call; its activation is
    the one every call meets, or the identity when the calls disagree.

    Raises:
        Exception: whatever torch.fx raises when the model cannot be traced symbolically.
    """
    check_module("model", model)
    graph = fx.Tracer(autowrap_modules=(math,)).trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, list[fx.Node]] = {}  # in execution order of each module's first call
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], _LAYERS):
            calls.setdefault(str(node.target), []).append(node)
    followed = {name: _follow(nodes, modules) for name, nodes in calls.items()}
    activations = {name: (act, note) for name, (act, note, _) in followed.items()}
    return LayerGraph(list(calls), activations, {name: post for name, (_, _, post) in followed.items()})
