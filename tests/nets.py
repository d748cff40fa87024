"""Small networks and model snapshots shared by the factorize tests (one copy for every test file)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "FancyNet",
    "SmallNet",
    "Untraceable",
    "assert_unchanged",
    "dense_names",
    "mlp",
    "seeded_model",
    "snapshot",
    "tv",
]


def tv(name: str) -> Callable[[], nn.Module]:
    """A builder of the torchvision classification model ``name`` with random weights and 10 classes."""
    return lambda: getattr(torchvision.models, name)(num_classes=10)


def seeded_model(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a model whose constructor draws from the global RNG, without changing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def dense_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, nn.Module]]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, list(model.named_modules())


def assert_unchanged(model: nn.Module, snap) -> None:
    state, modules = snap
    now = list(model.named_modules())
    assert [n for n, _ in now] == [n for n, _ in modules]
    for (_, a), (_, b) in zip(now, modules):
        assert a is b  # the very same module objects: nothing was swapped
    after = model.state_dict()
    assert list(after) == list(state)
    for k, v in state.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, equal_nan=True)  # bit-identical


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(20, 48),
        nn.ReLU(),
        nn.Linear(48, 48),
        nn.ReLU(),
        nn.Linear(48, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


class SmallNet(nn.Module):
    """stem -> BN -> relu, conv (relu), depthwise (relu), pointwise 8x32 (relu), fc1 (silu), fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 8, 1)
        self.fc1 = nn.Linear(8, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))  # (N, 16, H, W)
        x = F.relu(self.conv(x))  # (N, 32, H/2, W/2)
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))  # (N, 8, H/2, W/2)
        x = F.silu(self.fc1(x.mean((2, 3))))  # (N, 32)
        return self.fc(x)  # (N, 10)


class FancyNet(nn.Module):
    """Convs with every setting LowRankConv2d must carry over: stride 2, 'same', dilation, padding modes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", dilation=2, padding_mode="reflect")
        self.c3 = nn.Conv2d(8, 12, (3, 2), padding="same", padding_mode="circular", bias=False)
        self.c4 = nn.Conv2d(12, 16, (5, 1), stride=(2, 1), padding=(2, 0), padding_mode="replicate")
        self.c5 = nn.Conv2d(16, 16, 1, padding="valid", bias=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.silu(self.c2(x))
        x = torch.tanh(self.c3(x))
        x = F.relu(self.c5(self.c4(x)))
        return self.fc(x.mean((2, 3)))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace ``if h.sum() > 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:
            h = torch.tanh(self.fc2(h))
        return self.fc3(h)


def check_one_line_error(call: Callable[[], object], error: type[Exception], message: str) -> None:
    """``call()`` raises ``error`` whose message matches ``message`` from its start and is one line."""
    import re

    import pytest

    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert re.match(message, text), text
    assert "\n" not in text, text
