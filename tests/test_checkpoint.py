"""Checkpoints: exact round trip through a freshly built model, atomicity, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nlinit import factorize
from nlinit.checkpoint import (
    CheckpointError,
    load_model_state,
    load_training_state,
    low_rank_structure,
    read_metadata,
    save_checkpoint,
)
from nlinit.layers import LowRankConv2d, LowRankLinear


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 5),
    )


def _trained(tmp_path, layout: str = "channel"):
    model = _net()
    factorize(
        model, rank_scale=0.25, init="spectral", layout=layout, factorize_stem=True, factorize_classifier=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 3, 4, 4)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    meta = {"model": {"name": "net"}, "structure": low_rank_structure(model), "step": 2}
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, meta)
    return model, opt, x, path


@pytest.mark.parametrize("layout", ["channel", "spatial"])
def test_reload_into_fresh_dense_model_is_exact(tmp_path, layout):
    model, _, x, path = _trained(tmp_path, layout)
    fresh = _net()  # dense: the checkpoint's ranks change its shapes
    load_model_state(path, fresh)
    assert isinstance(fresh[0], LowRankConv2d) and fresh[0].layout == layout
    assert isinstance(fresh[3], LowRankLinear) and isinstance(fresh[5], LowRankLinear)
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(model(x), fresh(x))


def test_training_state_round_trip_continues_identically(tmp_path):
    model, opt, x, path = _trained(tmp_path)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)  # disturb the RNG: loading must restore the saved one
    fresh = _net()
    load_model_state(path, fresh)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    load_training_state(path, fresh_opt)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for o in (opt, fresh_opt):  # one more identical step on both: momentum buffers must match exactly
        o.zero_grad()
    model(x).square().mean().backward()
    fresh(x).square().mean().backward()
    opt.step(), fresh_opt.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sidecar_matches_header(tmp_path):
    _, _, _, path = _trained(tmp_path)
    assert json.loads(path.with_suffix(".json").read_text()) == read_metadata(path)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no leftovers


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    _, _, _, path = _trained(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fresh = _net()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model_state(path, fresh)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_garbage_and_missing_files(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        read_metadata(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")


def test_checkpoint_of_another_model_is_refused_and_changes_nothing(tmp_path):
    _, _, _, path = _trained(tmp_path)
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model_state(path, other)
    assert not any(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in other.modules())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
