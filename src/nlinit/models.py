"""Models by name: torchvision's classification models, CIFAR ResNets, a small SiLU EfficientNet, MLPs
(plain, wide ReLU with and without BatchNorm) and a small GELU MLP-Mixer.

:func:`build_model` also adapts a model's input side: ``in_channels`` swaps the stem convolution for one with
that many inputs, and ``small_input=True`` gives torchvision's ResNet, EfficientNet, MobileNet and MNASNet
families a stem for 28-32 px images. ``"timm:<name>"`` builds a timm model when timm is installed.

    >>> model = build_model("resnet20", num_classes=10, in_channels=1)  # Fashion-MNIST
    >>> model = build_model("resnet18", num_classes=10, small_input=True)  # CIFAR-10
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.efficientnet import EfficientNet, MBConvConfig

from ._checks import check_choice, check_int
from ._optional import require

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "Mixer",
    "MixerBlock",
    "PadShortcut",
    "build_model",
    "efficientnet_tiny",
    "list_model_names",
    "mixer_tiny",
    "mlp",
    "relu_mlp",
    "resnet20",
    "resnet32",
    "resnet56",
    "wide_mlp",
    "wide_mlp_bn",
]


def _check_io(num_classes: object, in_channels: object) -> None:
    check_int("num_classes", num_classes, low=1)
    check_int("in_channels", in_channels, low=1)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def mlp(num_classes: int = 10, in_channels: int = 1, hidden: int = 512, depth: int = 3) -> nn.Sequential:
    """Flatten -> (Linear -> ReLU) x depth -> Linear: a plain MLP on 28 x 28 images with ``in_channels``.

    Raises:
        ValueError: num_classes, in_channels or hidden not an int >= 1, depth not an int >= 0.
    """
    _check_io(num_classes, in_channels)
    check_int("hidden", hidden, low=1)
    check_int("depth", depth, low=0)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * 28 * 28
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


#: Hidden width of the wide MLPs: super-linear in Fashion-MNIST's 784 inputs (784^1.25 = 4150), chosen with
#: the measured cost of a CPU epoch (results/evidence/README.md).
WIDE_MLP_WIDTH = 1024


def relu_mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = WIDE_MLP_WIDTH,
    depth: int = 2,
    batchnorm: bool = False,
) -> nn.Sequential:
    """Flatten -> (Linear [-> BatchNorm1d] -> ReLU) x depth -> Linear: ``depth`` hidden layers, 28 px input.

    (B, in_channels, 28, 28) -> (B, num_classes); depth = 2 is in_channels 784 -> width -> width -> classes.
    Hidden weights are N(0, 2 / fan_in) (He et al. 2015, "Delving deep into rectifiers"), which keeps the
    scale of a ReLU network's activations from layer to layer without normalization; biases start at 0
    (and are dropped where a BatchNorm follows, which would cancel them). The classifier keeps torch's
    default init.

    Raises:
        ValueError: num_classes, in_channels, width or depth not an int >= 1; batchnorm not a bool.
    """
    _check_io(num_classes, in_channels)
    _check_bool("batchnorm", batchnorm)
    check_int("width", width, low=1)
    check_int("depth", depth, low=1)
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = in_channels * 28 * 28
    for _ in range(depth):
        linear = nn.Linear(fan_in, width, bias=not batchnorm)
        nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
        layers += [linear, nn.BatchNorm1d(width), nn.ReLU()] if batchnorm else [linear, nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, num_classes))


def wide_mlp(
    num_classes: int = 10, in_channels: int = 1, width: int = WIDE_MLP_WIDTH, depth: int = 2
) -> nn.Sequential:
    """The wide ReLU MLP without normalization (:func:`relu_mlp`): 784 -> 4096 -> 4096 -> classes."""
    return relu_mlp(num_classes, in_channels, width, depth, batchnorm=False)


def wide_mlp_bn(
    num_classes: int = 10, in_channels: int = 1, width: int = WIDE_MLP_WIDTH, depth: int = 2
) -> nn.Sequential:
    """:func:`wide_mlp` with a BatchNorm1d between each hidden Linear and its ReLU."""
    return relu_mlp(num_classes, in_channels, width, depth, batchnorm=True)


# ---------------------------------------------------------------------------------------------------------
# MLP-Mixer (Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021): GELU MLPs,
# LayerNorm (over the channels of each token, not per unit), no BatchNorm.


class MixerBlock(nn.Module):
    """x + TokenMLP(LN(x))^T, then x + ChannelMLP(LN(x)); each MLP is Linear -> GELU -> Linear.

    (B, tokens, dim) -> (B, tokens, dim).
    """

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        for name, value in (("tokens", tokens), ("dim", dim), ("token_hidden", token_hidden)):
            check_int(name, value, low=1)
        check_int("channel_hidden", channel_hidden, low=1)
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_fc1, self.token_fc2 = nn.Linear(tokens, token_hidden), nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_fc1, self.channel_fc2 = nn.Linear(dim, channel_hidden), nn.Linear(channel_hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x).transpose(1, 2)  # (B, dim, tokens)
        x = x + self.token_fc2(F.gelu(self.token_fc1(y))).transpose(1, 2)  # (B, tokens, dim)
        return x + self.channel_fc2(F.gelu(self.channel_fc1(self.norm2(x))))  # (B, tokens, dim)


class Mixer(nn.Module):
    """Patch embedding (a Conv2d with stride = kernel = patch), ``depth`` Mixer blocks, LayerNorm, mean over
    tokens, Linear: (B, in_channels, H, W) -> (B, num_classes), H and W multiples of ``patch``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch: int = 7,
        dim: int = 128,
        depth: int = 2,
        token_hidden: int = 64,
        channel_hidden: int = 512,
    ) -> None:
        _check_io(num_classes, in_channels)
        for name, value in (("image_size", image_size), ("patch", patch), ("dim", dim)):
            check_int(name, value, low=1)
        check_int("depth", depth, low=1)
        check_int("token_hidden", token_hidden, low=1)
        check_int("channel_hidden", channel_hidden, low=1)
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size must be a multiple of patch={patch}, got {image_size!r}")
        tokens = (image_size // patch) ** 2
        self.stem = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.Sequential(
            *(MixerBlock(tokens, dim, token_hidden, channel_hidden) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        x = self.blocks(x)  # (B, tokens, dim)
        return self.head(self.norm(x).mean(1))  # (B, num_classes)


def mixer_tiny(num_classes: int = 10, in_channels: int = 1) -> Mixer:
    """A small GELU MLP-Mixer for 28 x 28 images: 7 x 7 patches (16 tokens), width 128, 2 blocks, token MLP
    16 -> 64 -> 16 and channel MLP 128 -> 512 -> 128 (hidden 4 x the width, as in Mixer); 0.28M parameters
    (:class:`Mixer`'s defaults). Kept small so that a Fashion-MNIST epoch is affordable on one CPU core."""
    _check_io(num_classes, in_channels)
    return Mixer(num_classes, in_channels)


# ---------------------------------------------------------------------------------------------------------
# CIFAR ResNets: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2.


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    check_int("in_planes", in_planes, low=1)
    check_int("out_planes", out_planes, low=1)
    check_int("stride", stride, low=1)
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut of He et al. 2016: the identity subsampled by ``stride``, zero channels appended.

    (B, in_planes, H, W) -> (B, planes, H / stride, W / stride); no parameters.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        check_int("in_planes", in_planes, low=1)
        check_int("planes", planes, low=in_planes)
        check_int("stride", stride, low=1)
        super().__init__()
        self.stride = stride
        self.extra_channels = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, in_planes, H / stride, W / stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (B, planes, H / stride, W / stride)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        check_int("in_planes", in_planes, low=1)
        check_int("planes", planes, low=in_planes)
        check_int("stride", stride, low=1)
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        same = stride == 1 and in_planes == planes
        self.shortcut: nn.Module = nn.Identity() if same else PadShortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32 x 32 images: a 3x3 stem, three stages of n basic blocks with 16, 32, 64 channels
    (the 2nd and 3rd start with stride 2), global average pooling and one Linear layer.

    (B, in_channels, H, W) -> (B, num_classes); any H, W >= 4 works (28 x 28 included).
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        _check_io(num_classes, in_channels)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
        super().__init__()
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

        # He et al. 2016 initialize as in He et al. 2015 ("Delving deep into rectifiers"): N(0, 2 / fan),
        # here with fan_out like fb.resnet.torch and torchvision; BatchNorm starts as the identity. The Linear
        # layer keeps torch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.in_planes, planes, stride)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16, H, W)
        x = self.layer2(x)  # (B, 32, H / 2, W / 2)
        x = self.layer3(x)  # (B, 64, H / 4, W / 4)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 64)
        return self.fc(x)  # (B, num_classes)


def _cifar_resnet(depth: int, num_classes: int, in_channels: int) -> CifarResNet:
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (n = 3), 0.27M parameters."""
    return _cifar_resnet(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (n = 5), 0.46M parameters."""
    return _cifar_resnet(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (n = 9), 0.85M parameters."""
    return _cifar_resnet(56, num_classes, in_channels)


# ---------------------------------------------------------------------------------------------------------
# A small EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019).


def efficientnet_tiny(num_classes: int = 10, in_channels: int = 3) -> EfficientNet:
    """EfficientNet-B0's seven MBConv stages (SiLU, squeeze-excitation) at width 0.5 with a stride-1 stem.

    Built from torchvision's EfficientNet and MBConvConfig, with B0's dropout (0.2) and stochastic depth
    (0.2). For 28-32 px images; at 28 px the stem and the seven stages give (channels, side) (16, 28),
    (8, 28), (16, 14), (24, 7), (40, 4), (56, 4), (96, 2), (160, 2), and the 1x1 head (640, 2) before
    pooling. 1.08M parameters at 10 classes.
    """
    _check_io(num_classes, in_channels)
    stage = partial(MBConvConfig, width_mult=0.5, depth_mult=1.0)
    setting = [  # expand ratio, kernel, stride, in, out, layers: B0's table at width 1
        stage(1, 3, 1, 32, 16, 1),
        stage(6, 3, 2, 16, 24, 2),
        stage(6, 5, 2, 24, 40, 2),
        stage(6, 3, 2, 40, 80, 3),
        stage(6, 5, 1, 80, 112, 3),
        stage(6, 5, 2, 112, 192, 4),
        stage(6, 3, 1, 192, 320, 1),
    ]
    model = EfficientNet(setting, dropout=0.2, num_classes=num_classes)
    _replace_conv(model, "features.0.0", in_channels=in_channels, stride=1)
    return model


# ---------------------------------------------------------------------------------------------------------
# Registry and stem surgery.

#: nlinit's own models: builder(num_classes=..., in_channels=...). The CIFAR ResNets and efficientnet_tiny
#: take 28-32 px images as they are; the MLPs and mixer_tiny take 28 x 28 ones.
_EXTRA: dict[str, Callable[..., nn.Module]] = {
    "efficientnet_tiny": efficientnet_tiny,
    "mixer_tiny": mixer_tiny,
    "mlp": mlp,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "wide_mlp": wide_mlp,
    "wide_mlp_bn": wide_mlp_bn,
}

#: torchvision family (its module name) -> stem settings for 28-32 px images.
_SMALL_STEMS: dict[str, dict[str, Any]] = {
    "resnet": {"kernel_size": 3, "stride": 1, "padding": 1},  # and no max-pool
    "efficientnet": {"stride": 1},
    "mobilenetv2": {"stride": 1},
    "mobilenetv3": {"stride": 1},
    "mnasnet": {"stride": 1},
}


def _fan_out(conv: nn.Conv2d) -> int:
    return conv.out_channels * math.prod(conv.kernel_size)  # as torch.nn.init counts it


def _replace_conv(model: nn.Module, name: str, **changes: Any) -> None:
    """Swap Conv2d ``name`` for one with the same settings except ``changes``.

    The weight is kept when its shape is unchanged. Otherwise it is redrawn (global RNG, like the model's
    own init) from N(0, s^2), with s the old weight's standard deviation times sqrt(fan_out_old /
    fan_out_new). That reproduces Kaiming fan_out stems (ResNet, EfficientNet, MobileNet, MNASNet, VGG,
    RegNet: s^2 = 2 / fan_out) and fixed-std ones; fan_in-scaled stems (DenseNet, SqueezeNet, AlexNet,
    ShuffleNet) keep their old per-entry std. The bias is kept.
    """
    old = model.get_submodule(name)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{name} is a {type(old).__name__}, not a Conv2d")
    settings = {
        "in_channels": old.in_channels,
        "out_channels": old.out_channels,
        "kernel_size": old.kernel_size,
        "stride": old.stride,
        "padding": old.padding,
        "dilation": old.dilation,
        "groups": old.groups,
        "bias": old.bias is not None,
        "padding_mode": old.padding_mode,
    }
    new = nn.Conv2d(**{**settings, **changes}, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        if new.weight.shape == old.weight.shape:
            new.weight.copy_(old.weight)
        else:
            std = float(old.weight.std()) * math.sqrt(_fan_out(old) / _fan_out(new))
            new.weight.normal_(0.0, std)
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    model.set_submodule(name, new)


def _stem_name(model: nn.Module) -> str:
    """The first registered Conv2d: the stem in every torchvision classification model."""
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _timm_model(name: str, num_classes: int, in_channels: int, small_input: bool) -> nn.Module:
    if small_input:
        raise NotImplementedError(f"small_input is not implemented for timm models, got 'timm:{name}'")
    timm = require("timm", needed_for=f"model 'timm:{name}'")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; list them with timm.list_models()")
    model: nn.Module = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels
    )
    return model


def list_model_names() -> list[str]:
    """torchvision's classification models and nlinit's own, sorted (``"timm:<name>"`` also works)."""
    return sorted([*torchvision.models.list_models(module=torchvision.models), *_EXTRA])


def build_model(
    name: str, num_classes: int = 1000, *, in_channels: int = 3, small_input: bool = False
) -> nn.Module:
    """A freshly initialized model (no weight downloads) with ``num_classes`` outputs.

    Args:
        name: one of :func:`list_model_names` or ``"timm:<name>"``.
        num_classes: outputs of the classifier.
        in_channels: image channels; a torchvision model's stem is swapped for a Conv2d with the same
            settings and ``in_channels`` inputs (weights redrawn at the stem's init scale).
        small_input: adapt the stem of torchvision's ResNets (conv1 3x3 stride 1, no max-pool) and
            EfficientNets, MobileNets and MNASNets (first conv stride 1) to 28-32 px images. nlinit's own
            models (resnet20/32/56, efficientnet_tiny, mlp) already are small-input ones and are unchanged.

    Raises:
        ValueError: unknown name (the message lists the available ones) or a bad number.
        NotImplementedError: ``small_input`` for a family without a small-input stem here.
        ImportError: a ``"timm:"`` model without timm installed.
    """
    check_int("num_classes", num_classes, low=1)
    check_int("in_channels", in_channels, low=1)
    if not isinstance(small_input, bool):
        raise ValueError(f"small_input must be a bool, got {small_input!r}")
    if isinstance(name, str) and name.startswith("timm:"):
        return _timm_model(name.removeprefix("timm:"), num_classes, in_channels, small_input)
    check_choice("name", name, list_model_names(), what="model")
    if name in _EXTRA:
        return _EXTRA[name](num_classes=num_classes, in_channels=in_channels)
    family = torchvision.models.get_model_builder(name).__module__.rpartition(".")[2]
    if small_input and family not in _SMALL_STEMS:
        raise NotImplementedError(
            f"small_input is not implemented for {name!r}; it is for torchvision's "
            f"{', '.join(sorted(_SMALL_STEMS))} families and nlinit's {', '.join(sorted(_EXTRA))}"
        )
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    changes = dict(_SMALL_STEMS[family]) if small_input else {}
    if in_channels != 3:
        changes["in_channels"] = in_channels
    if changes:
        _replace_conv(model, _stem_name(model), **changes)
    if small_input and family == "resnet":
        model.maxpool = nn.Identity()
    return model
