"""nlinit.models: CIFAR ResNets, the small SiLU EfficientNet, stem adaptation, names and errors.

Covers: parameter counts (by formula and against He et al.'s 0.27M / 0.46M / 0.85M), output shapes for 1 and
3 input channels at 28 and 32 px, the option A shortcut, small-input stems of torchvision families (and the
error for the others), the stem swap for in_channels (settings, bias and init scale kept), torch.fx
factorization of resnet20 (ReLU) and efficientnet_tiny (SiLU), timm by name, and one-line errors; the
evidence models (wide ReLU MLP with and without BatchNorm, GELU MLP-Mixer): shapes, traced activations at
rank scale 0.1, depth, and one training step lowering the loss.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nlinit
from nlinit.models import CifarResNet, PadShortcut, build_model, list_model_names, relu_mlp


def _seeded(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    """Build a model from the global RNG seeded ``seed``, restoring the global RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, 10, **kwargs)  # type: ignore[arg-type]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cifar_resnet_params(n: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Weights of ResNet-(6n+2), option A shortcuts: 3x3 convs (no bias), BatchNorm (2 per channel), fc."""
    total = 9 * in_channels * 16 + 2 * 16  # stem
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c  # conv1, bn1, conv2, bn2
            c_in = c
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(
    ("name", "n", "paper"), [("resnet20", 3, 0.27), ("resnet32", 5, 0.46), ("resnet56", 9, 0.85)]
)
def test_cifar_resnet_parameter_counts(name, n, paper):
    model = build_model(name, 10)
    assert _count(model) == _cifar_resnet_params(n)
    assert round(_count(model) / 1e6, 2) == paper  # He et al. 2016, Table 6
    assert _count(build_model(name, 100, in_channels=1)) == _cifar_resnet_params(n, 100, 1)
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2  # at the 16->32 and 32->64 stages


def test_cifar_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match=r"^depth must be 6n \+ 2 with n >= 1 .*, got 21$"):
        CifarResNet(21)


@given(
    in_planes=st.integers(1, 5),
    extra=st.integers(0, 4),
    stride=st.sampled_from([1, 2]),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
)
def test_pad_shortcut_is_subsampled_identity_with_zero_channels(in_planes, extra, stride, h, w):
    x = torch.randn(2, in_planes, h, w)
    out = PadShortcut(in_planes, in_planes + extra, stride)(x)
    assert out.shape == (2, in_planes + extra, -(-h // stride), -(-w // stride))
    assert torch.equal(out[:, :in_planes], x[:, :, ::stride, ::stride])
    assert not out[:, in_planes:].any()


@pytest.mark.parametrize("name", ["resnet20", "efficientnet_tiny", "mlp"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_own_models_output_shapes(name, in_channels):
    model = build_model(name, 7, in_channels=in_channels, small_input=True).eval()
    sizes = [28] if name == "mlp" else [28, 32]  # the MLP is defined for 28 x 28 images
    for size in sizes:
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


def test_small_input_flag_does_not_change_own_models():
    for name in ("resnet20", "efficientnet_tiny"):
        a, b = _seeded(name, small_input=False), _seeded(name, small_input=True)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_efficientnet_tiny_is_a_silu_efficientnet_with_stride_1_stem():
    model = build_model("efficientnet_tiny", 10)
    assert isinstance(model, torchvision.models.EfficientNet)
    stem = model.features[0][0]
    assert (stem.in_channels, stem.out_channels, stem.stride) == (3, 16, (1, 1))
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) > 30
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish)) for m in model.modules())
    feats = model.features(torch.randn(1, 3, 28, 28))
    assert feats.shape == (1, 640, 2, 2)


def test_resnet_small_input_stem():
    big, small = build_model("resnet18", 10), build_model("resnet18", 10, small_input=True)
    conv = small.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(small.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    trunk = nn.Sequential(*list(small.children())[:-2]).eval()  # up to layer4
    assert trunk(x).shape == (2, 512, 4, 4)  # total stride 8 instead of 32
    assert nn.Sequential(*list(big.children())[:-2]).eval()(x).shape == (2, 512, 1, 1)
    # Kaiming fan_out (ResNet's own init): std sqrt(2 / (64 * 3 * 3)); 1728 entries give ~2% sampling error.
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


@pytest.mark.parametrize(("name", "stem"), [("mobilenet_v2", "features.0.0"), ("mnasnet0_5", "layers.0")])
def test_stride_1_stems_keep_their_weights(name, stem):
    plain, small = _seeded(name), _seeded(name, small_input=True)
    conv, conv0 = small.get_submodule(stem), plain.get_submodule(stem)
    assert conv.stride == (1, 1) and conv0.stride == (2, 2)
    assert torch.equal(conv.weight, conv0.weight)
    assert small.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["densenet121", "vit_b_16", "timm:resnet18"])
def test_small_input_not_implemented_names_the_model(name):
    with pytest.raises(
        NotImplementedError, match=f"small_input is not implemented for .*{name.split(':')[-1]}"
    ):
        build_model(name, 10, small_input=True)


def test_in_channels_swaps_the_stem_keeping_settings_bias_and_scale():
    a, b = _seeded("squeezenet1_1"), _seeded("squeezenet1_1", in_channels=1)
    old, new = a.features[0], b.features[0]
    assert new.weight.shape == (64, 1, 3, 3) and old.weight.shape == (64, 3, 3, 3)
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(new, attr) == getattr(old, attr)
    assert torch.equal(new.bias, old.bias)
    # Same fan_out, so the same std; 576 and 1728 entries give ~3% and ~2% sampling error.
    assert new.weight.std().item() == pytest.approx(old.weight.std().item(), rel=0.15)
    rest_a, rest_b = dict(a.named_parameters()), dict(b.named_parameters())
    assert all(torch.equal(rest_a[k], v) for k, v in rest_b.items() if not k.startswith("features.0."))
    assert b.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_torchvision_small_input_with_one_channel(name):
    model = build_model(name, 10, in_channels=1, small_input=True).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_factorize_traces_resnet20_relu():
    model = build_model("resnet20", 10, in_channels=1)
    report = nlinit.factorize(model, rank_scale=0.1, init="relu-svd")
    acts = {layer.name: layer.activation for layer in report.factorized}
    assert len(acts) == 18  # every conv but the stem; fc is the classifier
    assert {k for k, v in acts.items() if v == "relu"} == {
        f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)
    }
    # conv2's output meets the residual addition before its ReLU: identity, as the tracer reports it.
    assert {v for k, v in acts.items() if k.endswith("conv2")} == {"identity"}
    assert all(layer.activation_note.startswith("auto: ") for layer in report.factorized)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_factorize_traces_efficientnet_tiny_silu():
    model = build_model("efficientnet_tiny", 10, in_channels=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "skipped .* grouped/depthwise conv", UserWarning)
        warnings.filterwarnings("error", "could not trace")  # tracing must work
        report = nlinit.factorize(model, rank_scale=0.1, init="spectral")
    acts = {layer.name: layer.activation for layer in report.factorized}
    assert set(acts.values()) == {"silu", "sigmoid", "identity"}
    assert all(
        v == "silu" for k, v in acts.items() if k.endswith((".fc1", "block.0.0")) and "features.1." not in k
    )
    assert all(v == "sigmoid" for k, v in acts.items() if k.endswith(".fc2"))
    assert acts["features.8.0"] == "silu"  # the 1x1 head conv
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_list_model_names():
    names = list_model_names()
    assert names == sorted(names)
    own = {
        "resnet20",
        "resnet32",
        "resnet56",
        "efficientnet_tiny",
        "mlp",
        "wide_mlp",
        "wide_mlp_bn",
        "mixer_tiny",
    }
    assert own | {"resnet18", "vit_b_16"} <= set(names)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "resnet21"},
            r"^unknown model 'resnet21'; available: alexnet, .*efficientnet_tiny, .*resnet20, ",
        ),
        ({"name": None}, r"^unknown model None; available: alexnet, "),
        ({"name": "resnet20", "num_classes": 0}, r"^num_classes must be an int >= 1, got 0$"),
        ({"name": "resnet20", "in_channels": 1.0}, r"^in_channels must be an int >= 1, got 1.0$"),
        ({"name": "resnet20", "small_input": "yes"}, r"^small_input must be a bool, got 'yes'$"),
    ],
)
def test_bad_input_is_one_line_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_model(**kwargs)
    assert "\n" not in str(info.value)


def test_timm_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"^model 'timm:resnet18' needs timm, which is not installed"):
        build_model("timm:resnet18", 10)


def test_timm_model_by_name(monkeypatch):
    calls = []

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return nn.Linear(1, 1)

    fake = types.SimpleNamespace(is_model=lambda name: name == "resnet18", create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert isinstance(build_model("timm:resnet18", 5, in_channels=1), nn.Linear)
    assert calls == [("resnet18", {"pretrained": False, "num_classes": 5, "in_chans": 1})]
    with pytest.raises(
        ValueError, match=r"^unknown timm model 'resnet19'; list them with timm.list_models\(\)$"
    ):
        build_model("timm:resnet19", 5)


# ---------------------------------------------------------------------------------------------------------
# The evidence models (issue 10): wide ReLU MLP, the same with BatchNorm, the GELU MLP-Mixer.

_EVIDENCE = {  # name -> the activation after each factorized layer at rank scale 0.1, in execution order
    "wide_mlp": ["relu", "relu"],  # the stem (784 -> 1024) included
    "wide_mlp_bn": ["relu", "relu"],  # found through the BatchNorm1d
    "mixer_tiny": ["gelu", "identity", "gelu", "identity"] * 2,  # token / channel fc2 meet a residual add
}


@pytest.mark.parametrize("name", sorted(_EVIDENCE))
def test_evidence_models_factorize_trace_and_train(name):
    """Forward shapes; factorize at rank scale 0.1 with relu-svd, the activation found after each layer; then
    one SGD step (lr 0.05, the sweeps' peak) on a fixed batch lowers the loss on that batch."""
    model = _seeded(name, in_channels=1)
    assert model.eval()(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    model.train()
    # The MLPs' first layer (784 -> width, the theory's wide layer) is factorized too, as in the sweeps.
    report = nlinit.factorize(model, rank_scale=0.1, init="relu-svd", factorize_stem="mlp" in name)
    assert [layer.activation for layer in report.factorized] == _EVIDENCE[name]
    skipped = [layer.name for layer in report.skipped]  # the classifier, and the Mixer's patch embedding
    assert skipped == ([] if "mlp" in name else ["stem"]) + [report.layers[-1].name]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    assert nn.functional.cross_entropy(model(x), y).item() < before.item()


def test_wide_mlp_layers_and_he_init():
    model = build_model("wide_mlp", 10, in_channels=1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(1024, 784), (1024, 1024), (10, 1024)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    # N(0, 2 / fan_in): 802,816 entries estimate the std to ~0.1%; 1% is a loose bound.
    assert linears[0].weight.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.01)
    assert not linears[0].bias.any()
    bn = build_model("wide_mlp_bn", 10, in_channels=1)
    assert [type(m).__name__ for m in bn][1:4] == ["Linear", "BatchNorm1d", "ReLU"]
    assert all(m.bias is None for m in list(bn.modules())[:-1] if isinstance(m, nn.Linear))  # BN follows


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("depth", [1, 4, 8])
def test_relu_mlp_depth(depth, batchnorm):
    model = relu_mlp(10, 1, width=16, depth=depth, batchnorm=batchnorm)
    assert sum(isinstance(m, nn.ReLU) for m in model) == depth
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model) == (depth if batchnorm else 0)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    with pytest.raises(ValueError, match=r"^depth must be an int >= 1, got 0$"):
        relu_mlp(depth=0)
