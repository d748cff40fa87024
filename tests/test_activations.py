"""nlinit.activations: names and parameters in, hashable callables out, errors that list the options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlinit.activations import ACTIVATIONS, Activation, parse_activation

ALL_NAMES = "gelu, hardswish, identity, leaky_relu, relu, relu6, sigmoid, silu, tanh"

REFERENCE = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),  # torch's default slope is also the registry's
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}


def test_registry_names():
    assert sorted(ACTIVATIONS) == ALL_NAMES.split(", ")
    assert set(REFERENCE) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_parse_name_matches_torch(name):
    act = parse_activation(name)
    assert isinstance(act, Activation)
    assert act.name == name
    x = torch.linspace(-7, 7, 201, dtype=torch.float64)
    assert torch.equal(act(x), REFERENCE[name](x))  # the same torch kernel: bit-identical


def test_leaky_relu_parameter():
    act = parse_activation("leaky_relu(0.2)")
    assert act == Activation("leaky_relu", negative_slope=0.2)
    assert act.kwargs == {"negative_slope": 0.2}
    x = torch.linspace(-3, 3, 61)
    assert torch.equal(act(x), F.leaky_relu(x, 0.2))
    assert str(act) == "leaky_relu(0.2)"
    assert parse_activation(str(act)) == act


def test_leaky_relu_default_slope():
    act = parse_activation("leaky_relu")
    assert act.kwargs == {"negative_slope": 0.01}
    assert act == Activation("leaky_relu", negative_slope=0.01)


@pytest.mark.parametrize("spec", [" relu ", "leaky_relu( 0.2 )", "leaky_relu(2e-1)", "leaky_relu(+0.2)"])
def test_parse_tolerates_spacing_and_number_forms(spec):
    act = parse_activation(spec)
    assert act.name == spec.strip().split("(")[0]
    if act.name == "leaky_relu":
        assert act.kwargs == {"negative_slope": 0.2}


def test_parse_passes_activation_through():
    act = Activation("silu")
    assert parse_activation(act) is act


def test_activation_is_hashable_value():
    a = parse_activation("leaky_relu(0.2)")
    b = Activation("leaky_relu", negative_slope=0.2)
    c = parse_activation("leaky_relu(0.3)")
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c, Activation("relu"), parse_activation("relu")}) == 3
    assert {a: 1}[b] == 1
    with pytest.raises(AttributeError):
        a.name = "relu"  # frozen


def test_str_without_params():
    assert str(parse_activation("relu")) == "relu"
    assert Activation("relu").params == ()


@pytest.mark.parametrize("spec", ["swish", "ReLU", "leaky_relu()", "", 3, None])
def test_unknown_activation_lists_options(spec):
    with pytest.raises(ValueError, match=rf"unknown activation .*; available: {ALL_NAMES}$"):
        parse_activation(spec)


def test_unknown_activation_class_lists_options():
    with pytest.raises(ValueError, match=rf"unknown activation 'swish'; available: {ALL_NAMES}$"):
        Activation("swish")


def test_parameter_for_parameterless_activation():
    with pytest.raises(ValueError, match=r"activation 'relu' takes no parameter, got 'relu\(0.2\)'"):
        parse_activation("relu(0.2)")


def test_unknown_keyword_parameter():
    with pytest.raises(ValueError, match=r"activation 'relu' takes parameters none, got slope"):
        Activation("relu", slope=0.1)
    with pytest.raises(
        ValueError, match=r"activation 'leaky_relu' takes parameters \['negative_slope'\], got a"
    ):
        Activation("leaky_relu", a=0.1)


@pytest.mark.parametrize("spec", ["leaky_relu(1.2.3)", "leaky_relu(1e)", "leaky_relu(-)"])
def test_malformed_parameter_lists_options(spec):
    # parse_activation's docstring: "ValueError: for an unknown name or a malformed spec; the message
    # lists the known names". A number the regex admits but float() rejects must not leak float()'s text.
    with pytest.raises(ValueError, match=rf"available: {ALL_NAMES}"):
        parse_activation(spec)
