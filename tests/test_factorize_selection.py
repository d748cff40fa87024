"""nlinit.factorize: which layers are factorized (stem, classifier, include / exclude, growth, shared
modules, tied weights, unsupported kinds) and why the others are skipped.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from nets import (
    SmallNet,
    assert_unchanged,
    seeded_model,
    snapshot,
    tv,
)
from strategies import seeded
from torch import nn

import nlinit
from nlinit import LowRankConv2d, LowRankLinear

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
    pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning"),
]

# ---------------------------------------------------------------------------------------------------------
# Stem, classifier, include / exclude, allow_growth


def test_stem_and_classifier_factorized_with_flags():
    model = seeded_model(SmallNet)
    report = nlinit.factorize(model, rank=4, init="spectral", factorize_stem=True, factorize_classifier=True)
    assert {layer.name for layer in report.factorized} == {"stem", "conv", "pw", "fc1", "fc"}
    assert isinstance(model.stem, LowRankConv2d) and isinstance(model.fc, LowRankLinear)


def test_stem_and_classifier_factorized_when_named_exactly_in_include():
    model = seeded_model(tv("resnet18"))
    report = nlinit.factorize(model, rank_scale=0.25, init="spectral", include=["conv1", "fc"])
    assert [layer.name for layer in report.factorized] == ["conv1", "fc"]
    assert {layer.reason for layer in report.skipped} == {"not matched by include"}
    assert isinstance(model.conv1, LowRankConv2d) and isinstance(model.fc, LowRankLinear)


def test_a_glob_matching_the_stem_does_not_override_the_default():
    model = seeded_model(tv("resnet18"))
    report = nlinit.factorize(model, rank_scale=0.25, init="spectral", include=["*conv1"])
    assert "conv1" not in {layer.name for layer in report.factorized}
    assert len(report.factorized) == 8  # layerX.Y.conv1
    snap = snapshot(model)
    with pytest.raises(
        ValueError, match=re.escape("include pattern 'conv*' names nothing that can be factori")
    ):
        nlinit.factorize(model, rank_scale=0.25, init="spectral", include=["conv*"])
    assert_unchanged(model, snap)
    report = nlinit.factorize(model, rank_scale=0.25, init="spectral", include=["conv*"], factorize_stem=True)
    assert [layer.name for layer in report.factorized] == ["conv1"]
    report = nlinit.factorize(
        model, rank_scale=0.25, init="spectral", include=["f?"], factorize_classifier=True
    )
    assert [layer.name for layer in report.factorized] == ["fc"]


def test_exclude_skips_with_reason():
    model = seeded_model(SmallNet)
    report = nlinit.factorize(model, rank=4, init="spectral", exclude=["p*"])
    reasons = {layer.name: layer.reason for layer in report.layers}
    assert reasons["pw"] == "matched by exclude"
    assert type(model.pw) is nn.Conv2d


def test_full_rank_without_allow_growth_skips_every_layer():
    model = seeded_model(tv("resnet18"))
    snap = snapshot(model)
    with pytest.warns(
        UserWarning, match=r"factorize changed nothing: no Linear or Conv2d layer qualified \(21"
    ):
        report = nlinit.factorize(
            model, rank_scale=1.0, init="spectral", factorize_stem=True, factorize_classifier=True
        )
    assert len(report.layers) == 21 and not report.factorized
    for layer in report.layers:
        assert re.fullmatch(r"rank \d+ would not reduce parameters \([\d,]+ >= [\d,]+\)", layer.reason)
    assert_unchanged(model, snap)


# ---------------------------------------------------------------------------------------------------------
# Shared modules, tied weights, unsupported kinds: the report describes the model that comes out


def _factorized_params(model: nn.Module) -> int:
    """The model's parameters as it is (a Parameter registered twice counts once: model.parameters())."""
    return sum(p.numel() for p in model.parameters())


def test_a_module_used_twice_is_factorized_once_and_swapped_everywhere():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(32, 4))
    model[6] = nn.Linear(32, 4)  # a fresh classifier
    before = _factorized_params(model)
    x = torch.randn(5, 8, generator=seeded(0))
    report = nlinit.factorize(model, rank=4, init="spectral")
    (rep,) = report.factorized
    assert rep.name == "2" and "also called as 4" in rep.activation_note
    assert isinstance(model[2], LowRankLinear) and model[4] is model[2]  # one module, both places
    # the report's parameter counts are the model's: one low-rank module replaces one dense one
    assert before - _factorized_params(model) == rep.params_before - rep.params_after
    assert model(x).shape == (5, 4)


def test_tied_weights_share_one_factorization():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    model.append(nn.ReLU())
    model.append(nn.Linear(32, 4))
    model[4].weight = model[2].weight  # tied, separate biases
    before = _factorized_params(model)
    report = nlinit.factorize(model, rank=4, init="relu-svd")
    reps = {r.name: r for r in report.factorized}
    assert set(reps) == {"2", "4"}
    assert model[4].U is model[2].U and model[4].V is model[2].V  # the tie survives
    assert model[4].bias is not model[2].bias
    assert (reps["4"].params_before, reps["4"].params_after) == (0, 0)
    assert "weight tied to 2: shares its factors" in reps["4"].activation_note
    assert before - _factorized_params(model) == report.params_before - report.params_after


@pytest.mark.filterwarnings("ignore:factorize changed nothing:UserWarning")
def test_a_weight_tied_to_a_module_that_stays_dense_is_skipped():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    embed = nn.Embedding(32, 32)
    embed.weight = model[2].weight
    model.append(embed)  # registered, never called: holds the same Parameter
    with pytest.warns(UserWarning, match=r"skipped 1 layer\(s\) with tied weights: 2"):
        report = nlinit.factorize(model, rank=4, init="spectral")
    (rep,) = [r for r in report.layers if r.name == "2"]
    assert rep.reason == "weight tied to 5 (Embedding): factorizing only some holders would untie it"
    assert type(model[2]) is nn.Linear and model[2].weight is embed.weight


@pytest.mark.parametrize("kind", [nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d])
def test_unsupported_layer_kinds_are_listed_and_warned(kind):
    model = nn.Sequential(kind(4, 8, 3), nn.ReLU(), kind(8, 8, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = nlinit.factorize(model, rank=2, init="spectral")
    assert [str(w.message) for w in caught] == [
        "skipped 2 layer(s) of unsupported kinds: 0, 2 (see the report)",
        "factorize changed nothing: no Linear or Conv2d layer qualified "
        "(2 listed in the report with the reason each was skipped)",
    ]
    assert [(r.name, r.reason) for r in report.layers] == [
        (n, f"{kind.__name__} is not supported (nlinit factorizes Linear and Conv2d)") for n in ("0", "2")
    ]
    assert type(model[0]) is kind


def test_a_zero_layer_gets_no_relative_objective_instead_of_nan():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.zero_()
    report = nlinit.factorize(model, rank=4, init="baseline")  # nonzero factors for a zero W
    (rep,) = report.factorized
    assert rep.objective_init is None  # R(Y) / R(0) with R(0) = 0 < R(Y): undefined, not inf / nan
    assert rep.objective_spectral == 0.0  # spectral reproduces W = 0 exactly: 0 / 0 taken as 0
