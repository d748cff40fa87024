"""factorize(rank={name: r}) and factorize(stats=...): per-layer ranks honored, the other layers kept, and
precomputed statistics giving the very factors that calibration data gives."""

from __future__ import annotations

import pytest
import torch
from nets import SmallNet, seeded_model
from torch import nn

import nlinit
from nlinit import LowRankConv2d, LowRankLinear, collect_stats

pytestmark = pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning")


def test_rank_mapping_is_honored_per_layer():
    model = seeded_model(SmallNet)
    report = nlinit.factorize(model, rank={"stem": 3, "conv": 5, "fc": 2}, init="spectral", progress=False)
    assert {r.name: r.rank for r in report.factorized} == {"stem": 3, "conv": 5, "fc": 2}
    assert isinstance(model.stem, LowRankConv2d) and model.stem.rank == 3  # named: stem rule overridden
    assert isinstance(model.fc, LowRankLinear) and model.fc.rank == 2
    assert isinstance(model.pw, nn.Conv2d) and isinstance(model.fc1, nn.Linear)
    reasons = {r.name: r.reason for r in report.skipped}
    assert reasons["pw"] == reasons["fc1"] == "not named in the rank mapping"
    assert report.config["rank"] == {"stem": 3, "conv": 5, "fc": 2}


def test_precomputed_stats_give_the_same_factors_as_calibration():
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a, b = seeded_model(SmallNet).eval(), seeded_model(SmallNet).eval()
    kwargs = {"rank": {"conv": 4, "pw": 3}, "init": "whiten", "progress": False, "seed": 3}
    ra = nlinit.factorize(a, calibration=x, calibration_samples=16, calibration_heldout=16, **kwargs)
    stats = collect_stats(
        b, ["conv", "pw"], x, samples=16, heldout=16, generator=torch.Generator().manual_seed(3)
    )
    kept = dict(stats)
    rb = nlinit.factorize(b, stats=stats, **kwargs)
    assert stats == kept  # the caller's mapping is not emptied
    for name in ("conv", "pw"):
        la, lb = a.get_submodule(name), b.get_submodule(name)
        assert torch.equal(la.U, lb.U) and torch.equal(la.V, lb.V) and torch.equal(la.bias, lb.bias)
    assert [r.heldout_init for r in ra.factorized] == [r.heldout_init for r in rb.factorized]
    assert rb.config["calibration"] is True
