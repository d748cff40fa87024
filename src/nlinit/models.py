"""Models by name: every torchvision classification model, plus a small MLP."""

from __future__ import annotations

import torchvision
from torch import nn

__all__ = ["build_model", "list_model_names"]


def mlp(num_classes: int = 10, in_features: int = 784, hidden: int = 512, depth: int = 3) -> nn.Sequential:
    """Flatten -> (Linear -> ReLU) x depth -> Linear: a plain MLP (28 x 28 images by default)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


_EXTRA = {"mlp": mlp}


def list_model_names() -> list[str]:
    """torchvision's classification models and nlinit's own, sorted."""
    return sorted([*torchvision.models.list_models(module=torchvision.models), *_EXTRA])


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """A freshly initialized model (no weight downloads) with ``num_classes`` outputs.

    Raises:
        ValueError: unknown name; the message lists the available ones.
    """
    if name in _EXTRA:
        return _EXTRA[name](num_classes=num_classes)
    names = list_model_names()
    if name not in names:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(names)}")
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
