"""nlinit.factorize given bad input: a one-line error naming the value, and the model untouched."""

from __future__ import annotations

import re

import pytest
import torch
from nets import (
    SmallNet,
    assert_unchanged,
    seeded_model,
    snapshot,
)
from torch import nn

import nlinit
from nlinit import LowRankConv2d, LowRankLinear

ALL_INITS = ", ".join(sorted(nlinit.inits.init_choices()))  # messages list choices sorted
ALL_ACTIVATIONS = "gelu, hardswish, identity, leaky_relu, relu, relu6, sigmoid, silu, tanh"
LFAI_SMALL = {"max_epochs": 1, "steps_per_epoch": 3, "num_samples": 64, "batch_size": 32}

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
    pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning"),
]

# ---------------------------------------------------------------------------------------------------------
# Bad input: an error, and the model untouched


def _nan_in_fc1(model: SmallNet) -> None:
    with torch.no_grad():
        model.fc1.weight[3, 2] = float("nan")


BAD_INPUT = {
    "rank-0": ({"rank": 0}, ValueError, "rank must be a positive int, got 0"),
    "rank-too-large-for-pw": (
        {"rank": 12},  # fits conv (32 x 144), planned first; not pw (8 x 32)
        ValueError,
        "rank must be an int in [1, 8] for a 8x32 weight at layer 'pw', got 12",
    ),
    "rank-map-unknown": (
        {"rank": {"nope": 2}},
        ValueError,
        "rank names 'nope', which is nothing, not a Linear or Conv2d of the model",
    ),
    "rank-map-bn": ({"rank": {"bn": 2}}, ValueError, "rank names 'bn', which is BatchNorm2d, not a Linear"),
    "rank-map-value": (
        {"rank": {"conv": 0}},
        ValueError,
        "rank for layer 'conv' must be a positive int, got 0",
    ),
    "rank-map-too-large": (
        {"rank": {"conv": 4, "pw": 12}},
        ValueError,
        "rank must be an int in [1, 8] for a 8x32 weight at layer 'pw', got 12",
    ),
    "rank-map-skipped": (
        {"rank": {"dw": 2}},
        ValueError,
        "rank names layer 'dw', which would not be factorized: grouped conv (groups=32) is not factorized",
    ),
    "rank-map-no-saving": (
        {"rank": {"fc1": 8}},
        ValueError,
        "rank names layer 'fc1', which would not be factorized: rank 8 would not reduce parameters",
    ),
    "rank-map-empty": ({"rank": {}}, ValueError, "rank is an empty mapping; name at least one layer"),
    "fit-unknown": (
        {"rank": 2, "fit": "gaussian"},
        ValueError,
        "unknown fit 'gaussian'; available: layer, paper",
    ),
    "fit-paper-with-calibration": (
        {"rank": 2, "fit": "paper", "calibration": torch.zeros(2, 3, 8, 8)},
        ValueError,
        "fit='paper' fits x ~ N(0, I), so calibration data would go unused",
    ),
    "fit-paper-data-aware-init": (
        {"rank": 2, "fit": "paper", "init": "asvd"},
        ValueError,
        "init 'asvd' fits calibration data, which fit='paper' has none of; use fit='layer'",
    ),
    "stats-and-calibration": (
        {"rank": 2, "calibration": torch.zeros(2, 3, 8, 8), "stats": {}},
        ValueError,
        "pass calibration (model inputs) or stats (collected statistics), not both",
    ),
    "stats-missing-layer": (
        {"rank": {"conv": 2}, "stats": {}},
        ValueError,
        "stats has no LayerStats for layer 'conv' (got none); collect_stats it",
    ),
    "rank-scale-0": ({"rank_scale": 0}, ValueError, "rank_scale must be a number in (0, 1], got 0"),
    "rank-scale-1.5": ({"rank_scale": 1.5}, ValueError, "rank_scale must be a number in (0, 1], got 1.5"),
    "rank-scale-nan": (
        {"rank_scale": float("nan")},
        ValueError,
        "rank_scale must be a number in (0, 1], got nan",
    ),
    "rank-and-rank-scale": (
        {"rank": 4, "rank_scale": 0.5},
        ValueError,
        "give exactly one of rank and rank_scale, got rank=4, rank_scale=0.5",
    ),
    "neither": ({}, ValueError, "give exactly one of rank and rank_scale, got rank=None, rank_scale=None"),
    "unknown-init": (
        {"rank": 4, "init": "lfaiws"},
        ValueError,
        f"unknown init 'lfaiws'; available: {ALL_INITS}",
    ),
    "unknown-activation": (
        {"rank": 4, "activation": "swish"},
        ValueError,
        f"unknown activation 'swish'; available: {ALL_ACTIVATIONS}",
    ),
    "unknown-activation-in-dict": (
        {"rank": 4, "activation": {"fc1": "swish"}},
        ValueError,
        f"unknown activation 'swish'; available: {ALL_ACTIVATIONS}",
    ),
    "unknown-default-activation": (
        {"rank": 4, "default_activation": "swish"},
        ValueError,
        "unknown activation 'swish'",
    ),
    "unknown-layout": (
        {"rank": 4, "layout": "diag"},
        ValueError,
        "unknown layout 'diag'; available: channel, spatial",
    ),
    "unknown-source": (
        {"rank": 4, "source": "old"},
        ValueError,
        "unknown source 'old'; available: existing, fresh",
    ),
    "include-matches-nothing": (
        {"rank": 4, "include": ["nothing*"]},
        ValueError,
        "include pattern 'nothing*' matches no module of the model",
    ),
    "exclude-matches-nothing": (
        {"rank": 4, "exclude": ["nothing*"]},
        ValueError,
        "exclude pattern 'nothing*' matches no module of the model",
    ),
    "include-batchnorm": (
        {"rank": 4, "include": ["bn"]},
        ValueError,
        "include pattern 'bn' names nothing that can be factorized "
        "(matches no Linear or Conv2d: bn (BatchNorm2d))",
    ),
    "include-depthwise": (
        {"rank": 4, "include": ["dw"]},
        ValueError,
        "include pattern 'dw' names nothing that can be factorized "
        "(dw: grouped conv (groups=32) is not factorized)",
    ),
    "nan-weight-existing": (
        {"rank": 4, "source": "existing"},
        ValueError,
        "weight of layer 'fc1' has 1 non-finite (NaN or Inf) entries",
    ),
    "unknown-init-option": (
        {"rank": 4, "init": "relu-svd", "max_epochs": 1},
        ValueError,
        "unknown option 'max_epochs' for init 'relu-svd'; available: none",
    ),
    "unknown-lfai-option": (
        {"rank": 4, "init": "lfai-ws", "epochs": 1},
        ValueError,
        "unknown option 'epochs' for init 'lfai-ws'; available: batch_size, ",
    ),
    "relu-svd-spatial": (
        {"rank": 4, "init": "relu-svd", "layout": "spatial"},
        NotImplementedError,
        "needs layout='channel'",
    ),
    # The next one fails only on a later layer (fc1 is a Linear followed by SiLU); conv and pw come first.
    # All arguments must be validated before the first layer is swapped. (SiLU has an exact objective now,
    # by quadrature, so objective="exact" / objective_method="exact" are no longer bad input here.)
    "lfai-image-inputs-with-a-linear-layer": (
        {"rank": 4, "init": "lfai-ws", "inputs": "images", "image_size": 8, **LFAI_SMALL},
        ValueError,
        "inputs='images' needs a conv layer",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_leaves_model_unchanged(case):
    kwargs, error, message = BAD_INPUT[case]
    model = seeded_model(SmallNet)
    if case == "nan-weight-existing":
        _nan_in_fc1(model)
    snap = snapshot(model)
    with pytest.raises(error, match=re.escape(message)):
        nlinit.factorize(model, **kwargs)
    assert_unchanged(model, snap)


def test_nan_weight_is_fine_with_fresh_source():
    model = seeded_model(SmallNet)
    _nan_in_fc1(model)
    report = nlinit.factorize(model, rank=4, init="spectral", source="fresh")
    assert "fc1" in {layer.name for layer in report.factorized}
    assert torch.isfinite(model.fc1.U).all() and torch.isfinite(model.fc1.V).all()


def test_data_parallel_model_is_refused():
    inner = seeded_model(SmallNet)
    wrapped = nn.DataParallel(inner)  # constructible on CPU: no devices, module kept as is
    snap = snapshot(inner)
    with pytest.raises(
        TypeError, match=re.escape("factorize got a DataParallel; factorize model.module first")
    ):
        nlinit.factorize(wrapped, rank=4, init="spectral")
    assert_unchanged(inner, snap)
    nlinit.factorize(wrapped.module, rank=4, init="spectral")  # the advertised fix works
    assert isinstance(inner.conv, LowRankConv2d)


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        nlinit.factorize("resnet18", rank=4)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Arguments and modules of the wrong kind: a one-line error that says what is supported


def _int_weight(model: SmallNet) -> None:
    model.fc1.weight = nn.Parameter(torch.ones(32, 8, dtype=torch.int64), requires_grad=False)


TYPE_CASES = {
    "include-a-string": (
        {"rank": 4, "include": "conv*"},
        None,
        TypeError,
        "include must be a list of module-name patterns, got str 'conv*'; write include=['conv*']",
    ),
    "exclude-a-string": ({"rank": 4, "exclude": "pw"}, None, TypeError, "exclude must be a list of"),
    "include-not-strings": ({"rank": 4, "include": [3]}, None, TypeError, "include patterns must be strings"),
    "seed-a-float": ({"rank": 4, "seed": 1.5}, None, TypeError, "seed must be an int, got float 1.5"),
    "seed-a-string": ({"rank": 4, "seed": "0"}, None, TypeError, "seed must be an int, got str '0'"),
    "progress-a-string": ({"rank": 4, "progress": "yes"}, None, ValueError, "progress must be True, False"),
    "integer-weight": (
        {"rank": 4},
        _int_weight,
        TypeError,
        "layer 'fc1' has a torch.int64 weight; a floating-point weight is required",
    ),
    "auto-with-options": ({"rank": 4, "max_epochs": 1}, None, ValueError, "init 'auto' takes no options"),
}


@pytest.mark.parametrize("case", TYPE_CASES)
def test_wrong_kinds_leave_model_unchanged(case):
    kwargs, mutate, error, message = TYPE_CASES[case]
    model = seeded_model(SmallNet)
    if mutate is not None:
        mutate(model)
    snap = snapshot(model)
    with pytest.raises(error, match=re.escape(message)):
        nlinit.factorize(model, **kwargs)
    assert_unchanged(model, snap)


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = SmallNet()
    with pytest.raises(ValueError, match=re.escape("layer 'conv' is on the meta device (no values)")):
        nlinit.factorize(model, rank=4, init="spectral")
    assert type(model.conv) is nn.Conv2d


@pytest.mark.parametrize("kind", [nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d])
def test_from_dense_refuses_other_conv_kinds(kind):
    with pytest.raises(TypeError, match=f"LowRankConv2d.from_dense needs an nn.Conv2d, got {kind.__name__}"):
        LowRankConv2d.from_dense(kind(4, 8, 3), 2)
    with pytest.raises(TypeError, match=f"LowRankLinear.from_dense needs an nn.Linear, got {kind.__name__}"):
        LowRankLinear.from_dense(kind(4, 8, 3), 2)
