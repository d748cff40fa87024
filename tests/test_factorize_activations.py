"""nlinit.factorize: the activation after each layer: given, by pattern, or untraceable models."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from nets import (
    SmallNet,
    Untraceable,
    seeded_model,
    tv,
)
from strategies import seeded
from torch import nn

import nlinit

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
    pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning"),
]

# ---------------------------------------------------------------------------------------------------------
# Activations: explicit, by pattern, untraceable models


def test_explicit_activation_overrides_auto():
    model = seeded_model(SmallNet)
    report = nlinit.factorize(model, rank=4, init="spectral", activation="leaky_relu(0.2)")
    assert report.factorized
    for layer in report.factorized:
        assert (layer.activation, layer.activation_note) == ("leaky_relu(0.2)", "given")


def test_activation_dict_of_patterns_overrides_auto():
    model = seeded_model(tv("resnet18"))
    report = nlinit.factorize(
        model,
        rank_scale=0.25,
        init="spectral",
        include=["layer1.*"],
        activation={"layer1.0.*": "tanh", "layer1.1.conv2": "gelu"},
    )
    got = {layer.name: (layer.activation, layer.activation_note) for layer in report.factorized}
    assert got == {
        "layer1.0.conv1": ("tanh", "given for 'layer1.0.*'"),
        "layer1.0.conv2": ("tanh", "given for 'layer1.0.*'"),
        "layer1.1.conv1": ("relu", "auto: relu (ReLU layer1.1.relu)"),
        "layer1.1.conv2": ("gelu", "given for 'layer1.1.conv2'"),
    }


def test_untraceable_model_warns_and_uses_default_activation():
    model = seeded_model(Untraceable)
    with pytest.raises(Exception):  # the premise: torch.fx really cannot trace it
        torch.fx.symbolic_trace(model)
    with pytest.warns(UserWarning, match="could not trace the model with torch.fx"):
        report = nlinit.factorize(model, rank=2, init="spectral", default_activation="leaky_relu(0.2)")
    reasons = {layer.name: layer.reason for layer in report.layers}
    # Stem and classifier follow registration order when there is no trace.
    assert reasons["fc1"].startswith("stem kept full-rank")
    assert reasons["fc3"].startswith("classifier kept full-rank")
    (fc2,) = report.factorized
    assert (fc2.name, fc2.activation, fc2.activation_note) == (
        "fc2",
        "leaky_relu(0.2)",
        "default (not traced)",
    )
    assert model(torch.randn(3, 8, generator=seeded(0))).shape == (3, 4)


def test_a_module_called_twice_gets_the_activation_both_calls_meet():
    class Twice(nn.Module):
        def __init__(self, second: Callable[[torch.Tensor], torch.Tensor]) -> None:
            super().__init__()
            self.inp, self.shared, self.out = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 2)
            self.second = second

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.shared(F.relu(self.inp(x))))
            return self.out(self.second(self.shared(h)))

    agree = nlinit.factorize(Twice(F.relu), rank=2, init="spectral")
    (rep,) = agree.factorized
    assert (rep.name, rep.activation) == ("shared", "relu")
    differ = nlinit.factorize(Twice(torch.tanh), rank=2, init="spectral")
    (rep,) = differ.factorized
    assert rep.activation == "identity" and rep.activation_note.startswith("auto: identity: paths disagree")
