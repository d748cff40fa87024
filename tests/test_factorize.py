"""nlinit.factorize on torchvision models and small nets: surgery, fidelity and seeds.

Every torchvision architecture family still runs after factorization and the report accounts for every
Linear / Conv2d; grouped convs, stem and classifier are skipped with reasons; at full rank with the existing
weights the factorized model computes exactly the original function; seeds are per layer. No weights are
downloaded: every torchvision model is built with random weights and num_classes=10. Selection rules,
activations, the report and bad input have their own files (test_factorize_*.py).
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from nets import (
    FancyNet,
    SmallNet,
    dense_names,
    mlp,
    seeded_model,
    tv,
)
from strategies import seeded
from torch import nn

import nlinit
from nlinit import FactorizeReport, LowRankConv2d, LowRankLinear, low_rank_layers

F64 = torch.float64
LFAI_SMALL = {"max_epochs": 1, "steps_per_epoch": 3, "num_samples": 64, "batch_size": 32}
# Outputs of the same float64 network computed with dense kernels and with full-rank factors U V^T. Each
# factor pair reproduces its W to ~1e-15 relative (truncated SVD via a float64 Gram eigh), and ~20 layers
# of O(1) activations accumulate that to ~1e-14 (measured: 6e-15 on resnet18). 1e-10 leaves a wide margin,
# while any lost setting (stride, padding, padding_mode, dilation, bias) changes outputs by O(1).
FIDELITY_TOL = {"rtol": 1e-10, "atol": 1e-10}

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
    pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning"),
]

# ---------------------------------------------------------------------------------------------------------
# The model zoo: each architecture is factorized once (module-scoped fixture) and inspected by many tests.


@dataclass
class Case:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    stem: str
    classifier: str
    # (regex on the layer name, activation "auto" must find); every factorized layer must match one rule.
    activation_rules: list[tuple[str, str]]
    init: str = "relu-svd"
    options: dict = field(default_factory=dict)


RESNET_BASIC_RULES = [(r"conv1$", "relu"), (r"conv2$", "identity"), (r"downsample\.0$", "identity")]
ZOO = {
    "resnet18": Case(tv("resnet18"), (1, 3, 64, 64), "conv1", "fc", RESNET_BASIC_RULES),
    "resnet18-lfai-ws": Case(
        tv("resnet18"), (1, 3, 64, 64), "conv1", "fc", RESNET_BASIC_RULES, "lfai-ws", LFAI_SMALL
    ),
    "resnet50": Case(
        tv("resnet50"),
        (1, 3, 64, 64),
        "conv1",
        "fc",
        [(r"conv[12]$", "relu"), (r"conv3$", "identity"), (r"downsample\.0$", "identity")],
    ),
    "efficientnet_b0": Case(
        tv("efficientnet_b0"),
        (1, 3, 64, 64),
        "features.0.0",
        "classifier.1",
        [
            (r"features\.8\.0$", "silu"),  # last 1x1 conv -> BN -> SiLU
            (r"block\.0\.0$", "silu"),  # expansion conv -> BN -> SiLU
            (r"fc1$", "silu"),  # squeeze-excitation reduce
            (r"fc2$", "sigmoid"),  # squeeze-excitation expand -> scale_activation
            (r"features\.1\.0\.block\.2\.0$", "identity"),  # projection (block without expansion)
            (r"block\.3\.0$", "identity"),  # projection -> BN -> residual add / next block
        ],
    ),
    "mobilenet_v2": Case(
        tv("mobilenet_v2"),
        (1, 3, 64, 64),
        "features.0.0",
        "classifier.1",
        [
            (r"features\.18\.0$", "relu6"),
            (r"conv\.0\.0$", "relu6"),  # expansion conv -> BN -> ReLU6
            (r"features\.1\.conv\.1$", "identity"),  # projection (no expansion)
            (r"conv\.2$", "identity"),  # projection -> BN -> add / next block
        ],
    ),
    "vgg11": Case(
        tv("vgg11"),
        (1, 3, 64, 64),
        "features.0",
        "classifier.6",
        [(r"features\.\d+$", "relu")],
        # classifier.0 (4096 x 25088) and classifier.3 (4096 x 4096) need a 4096 x 4096 float64 eigh each
        # (about a minute on one core); the convs exercise the same code.
        options={"exclude": ["classifier.0", "classifier.3"]},
    ),
    "densenet121": Case(
        tv("densenet121"),
        (1, 3, 64, 64),
        "features.conv0",
        "classifier",
        [
            (r"conv[12]$", "relu"),  # -> BN -> ReLU (directly, or through the block's channel concat)
            (r"transition\d\.conv$", "identity"),  # -> AvgPool2d, linear: no elementwise nonlinearity
        ],
    ),
    "mlp": Case(mlp, (4, 20), "0", "6", [(r"^[24]$", "relu")]),
    "mlp-lfai-ws": Case(mlp, (4, 20), "0", "6", [(r"^[24]$", "relu")], "lfai-ws", LFAI_SMALL),
}


@dataclass
class Factorized:
    name: str
    case: Case
    dense: nn.Module  # an untouched copy of the original
    model: nn.Module
    report: FactorizeReport
    warnings: list[warnings.WarningMessage]


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request) -> Factorized:
    case = ZOO[request.param]
    model = seeded_model(case.build).eval()
    dense = copy.deepcopy(model)
    if request.param in ("efficientnet_b0", "mobilenet_v2"):  # depthwise convs: a warning is required
        recorder = pytest.warns(UserWarning, match="grouped/depthwise")
    else:
        recorder = warnings.catch_warnings(record=True)
    with recorder as caught:
        warnings.simplefilter("always")
        report = nlinit.factorize(model, rank_scale=0.25, init=case.init, seed=0, **case.options)
    return Factorized(request.param, case, dense, model, report, list(caught))


def test_forward_runs_in_eval_and_keeps_output_shape(zoo):
    x = torch.randn(zoo.case.input_shape, generator=seeded(1))
    zoo.model.eval()
    with torch.no_grad():
        out, ref = zoo.model(x), zoo.dense(x)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert len(zoo.report.factorized) > 0
    assert all(isinstance(m, (LowRankLinear, LowRankConv2d)) for _, m in low_rank_layers(zoo.model))


def test_report_has_one_entry_per_dense_layer(zoo):
    names = dense_names(zoo.dense)
    assert sorted(layer.name for layer in zoo.report.layers) == sorted(names)
    modules = dict(zoo.model.named_modules())
    originals = dict(zoo.dense.named_modules())
    for rep in zoo.report.layers:
        new, old = modules[rep.name], originals[rep.name]
        assert rep.params_before == old.weight.numel()
        assert rep.kind == ("linear" if isinstance(old, nn.Linear) else "conv")
        if rep.factorized:
            assert type(new) is (LowRankLinear if rep.kind == "linear" else LowRankConv2d)
            assert new.rank == rep.rank == max(1, math.floor(0.25 * min(rep.shape) + 0.5))  # the paper's rule
            assert rep.params_after == new.U.numel() + new.V.numel() < rep.params_before
            assert rep.init == zoo.case.init and rep.reason == ""
            assert rep.objective_init is not None and rep.objective_spectral is not None
        else:
            assert type(new) is type(old)
            assert torch.equal(new.weight, old.weight)
            assert rep.reason and rep.rank is None and rep.params_after == rep.params_before
    # Skipped layers keep their parameters; factorized ones lose exactly params_before - params_after.
    assert zoo.report.params_before == sum(
        originals[layer.name].weight.numel() for layer in zoo.report.layers
    )


def test_grouped_convs_are_skipped_with_reason_and_warning(zoo):
    grouped = {n: m.groups for n, m in zoo.dense.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    reports = {layer.name: layer for layer in zoo.report.layers}
    for name, groups in grouped.items():
        assert reports[name].reason == f"grouped conv (groups={groups}) is not factorized"
        assert type(zoo.model.get_submodule(name)) is nn.Conv2d
    messages = [str(w.message) for w in zoo.warnings if "grouped/depthwise" in str(w.message)]
    if zoo.name in ("efficientnet_b0", "mobilenet_v2"):
        assert len(grouped) > 10
        first = ", ".join(list(grouped)[:3])
        expected = f"skipped {len(grouped)} grouped/depthwise conv(s), which are not factorized: {first}, ..."
        assert messages == [expected + " (see the report)"]
    else:
        assert not grouped and not messages


def test_stem_and_classifier_kept_full_rank_by_default(zoo):
    first, last = zoo.report.layers[0], zoo.report.layers[-1]
    assert (first.name, first.reason) == (zoo.case.stem, "stem kept full-rank (factorize_stem=False)")
    assert (last.name, last.reason) == (
        zoo.case.classifier,
        "classifier kept full-rank (factorize_classifier=False)",
    )
    assert type(zoo.model.get_submodule(zoo.case.stem)) in (nn.Conv2d, nn.Linear)
    assert type(zoo.model.get_submodule(zoo.case.classifier)) is nn.Linear


def test_auto_activation(zoo):
    for rep in zoo.report.factorized:
        expected = [act for pattern, act in zoo.case.activation_rules if re.search(pattern, rep.name)]
        assert expected, f"no rule for {rep.name}"
        assert rep.activation == expected[0], (rep.name, rep.activation_note)
        assert rep.activation_note.startswith(f"auto: {expected[0]}")


def test_grouped_warning_also_when_include_limits_the_layers():
    model = seeded_model(tv("mobilenet_v2"))
    with pytest.warns(UserWarning, match=r"skipped 17 grouped/depthwise conv\(s\)"):
        report = nlinit.factorize(model, rank_scale=0.25, init="spectral", include=["features.1.*"])
    assert [layer.name for layer in report.factorized] == ["features.1.conv.1"]


# ---------------------------------------------------------------------------------------------------------
# Fidelity: full rank, existing weights, spectral = the same function


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters, so eval mode is not a plain identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0, 0.1, generator=generator)


FULL_RANK = {
    "rank_scale": 1.0,
    "init": "spectral",
    "source": "existing",
    "allow_growth": True,
    "factorize_stem": True,
    "factorize_classifier": True,
}


def test_fidelity_resnet18():
    model = seeded_model(tv("resnet18")).double().eval()
    _randomize_batchnorm(model, seeded(0))
    ref = copy.deepcopy(model)
    report = nlinit.factorize(model, **FULL_RANK)
    assert len(report.factorized) == len(report.layers) == 21
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    x = torch.randn(2, 3, 64, 48, dtype=F64, generator=seeded(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **FIDELITY_TOL)


@pytest.mark.parametrize("layout", ["channel", "spatial"])
def test_fidelity_conv_settings(layout):
    model = seeded_model(FancyNet).double().eval()
    ref = copy.deepcopy(model)
    report = nlinit.factorize(model, layout=layout, **FULL_RANK)
    assert len(report.factorized) == 6
    for name in ("c1", "c2", "c3", "c4", "c5"):
        new, old = model.get_submodule(name), ref.get_submodule(name)
        assert new.layout == layout
        assert (new.stride, new.padding, new.dilation, new.padding_mode) == (
            old.stride,
            old.padding,
            old.dilation,
            old.padding_mode,
        )
        assert (new.bias is None) == (old.bias is None)
    x = torch.randn(2, 3, 21, 17, dtype=F64, generator=seeded(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **FIDELITY_TOL)


# ---------------------------------------------------------------------------------------------------------
# Seeds: deterministic, per layer


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("build", "init", "options"),
    [
        (SmallNet, "relu-svd", {"source": "fresh"}),
        (mlp, "relu-svd", {"source": "fresh"}),
        (SmallNet, "lfai-ws", LFAI_SMALL),
        (mlp, "lfai-ws", {**LFAI_SMALL, "source": "fresh"}),
    ],
    ids=["smallnet-relu-svd-fresh", "mlp-relu-svd-fresh", "smallnet-lfai-ws", "mlp-lfai-ws-fresh"],
)
def test_same_seed_same_parameters(build, init, options):
    original = seeded_model(build)

    def run(seed: int) -> tuple[dict[str, torch.Tensor], FactorizeReport]:
        model = copy.deepcopy(original)
        report = nlinit.factorize(model, rank_scale=0.5, init=init, seed=seed, **options)
        return _params(model), report

    (a, report), (b, _) = run(3), run(3)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    factor_keys = [k for k in a if k.endswith((".U", ".V"))]
    assert len(factor_keys) == 2 * len(report.factorized) > 0
    if options.get("source") == "fresh":  # another seed draws another W for every layer
        c, _ = run(4)
        for k in factor_keys:
            assert not torch.equal(a[k], c[k]), k
    # With source="existing", lfai-ws returns the best factors seen, which after these 3 Adam steps may be
    # the (deterministic) spectral start for every seed, so no difference is required there.


def test_per_layer_generator_excluding_a_layer_keeps_the_others():
    # Same-shaped hidden layers, so only the layer name can tell their random draws apart.
    def build() -> nn.Sequential:
        hidden = [m for _ in range(3) for m in (nn.Linear(24, 24), nn.ReLU())]  # modules 2..7
        return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), *hidden, nn.Linear(24, 4))

    original = seeded_model(build)
    common = {
        "rank": 3,
        "init": "baseline",
        "source": "fresh",
        "factorize_stem": True,
        "factorize_classifier": True,
        "seed": 7,
    }
    everything, without = copy.deepcopy(original), copy.deepcopy(original)
    nlinit.factorize(everything, **common)
    report = nlinit.factorize(without, exclude=["4"], **common)
    assert [layer.name for layer in report.factorized] == ["0", "2", "6", "8"]
    assert type(without[4]) is nn.Linear
    for i in (0, 2, 6, 8):
        assert torch.equal(everything[i].U, without[i].U)
        assert torch.equal(everything[i].V, without[i].V)
    # Per layer, not one seed for all: same-shaped layers get different draws.
    assert not torch.equal(everything[2].U, everything[4].U)
    assert not torch.equal(everything[2].V, everything[6].V)
