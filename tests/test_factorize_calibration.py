"""factorize(..., calibration=...): each layer fitted on its real inputs, bias and eval-mode BatchNorm.

The guarantees tested: the statistics factorize collects are collect_stats' (so init_factors(stats=...) on
them gives the very factors factorize installs); whiten's held-out objective in the report is the init's
when the init is whiten; relu-svd is never worse than whiten on the fitted (Gaussian) layer objective
(whiten's rows are among its candidates, nlinit.subspace.fit_rows_and_offsets); bad calibration input
changes nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from nets import assert_unchanged, seeded_model, snapshot
from torch import nn

import nlinit
from nlinit import LayerFunction, LayerStats, collect_stats, init_factors


def trained_like_mlp() -> nn.Sequential:
    """A 3-layer MLP with biases and an eval-mode BatchNorm with non-trivial running statistics."""
    model = nn.Sequential(
        nn.Linear(12, 40), nn.BatchNorm1d(40), nn.ReLU(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 5)
    )
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return model.eval()


def calibration_inputs(n: int = 600) -> torch.Tensor:
    """Inputs far from N(0, I): a non-zero mean and an anisotropic covariance."""
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(-1, 0.5, 12)
    return 0.7 + torch.randn(n, 12, generator=g) * scales


def run(init: str, **kwargs):
    model = seeded_model(trained_like_mlp)
    report = nlinit.factorize(
        model,
        rank=3,
        init=init,
        source="existing",
        calibration=calibration_inputs(),
        progress=False,
        factorize_stem=True,
        **kwargs,
    )
    return model, report


@pytest.fixture(scope="module")
def whiten_run():
    return run("whiten")


@pytest.fixture(scope="module")
def relu_svd_run():
    return run("relu-svd")


def test_report_has_heldout_objectives(relu_svd_run):
    _, report = relu_svd_run
    assert report.config["calibration"] is True
    assert report.seconds_stats > 0
    for layer in report.factorized:
        assert layer.objective_method == "exact, layer function"
        for value in (layer.heldout_spectral, layer.heldout_whiten, layer.heldout_init):
            assert value is not None and math.isfinite(value) and value >= 0
    assert "held-out spectral" in report.summary()


def test_whiten_heldout_equals_init_when_init_is_whiten(whiten_run):
    _, report = whiten_run
    for layer in report.factorized:
        assert layer.heldout_init == pytest.approx(layer.heldout_whiten, rel=1e-5, abs=1e-9)


def test_relu_svd_never_worse_than_whiten_on_the_fitted_objective(whiten_run, relu_svd_run):
    for w, r in zip(whiten_run[1].factorized, relu_svd_run[1].factorized):
        assert w.name == r.name
        # The candidates of fit_rows_and_offsets include whiten's rows and offsets; float32 factors.
        assert r.objective_init <= w.objective_init * (1 + 1e-4) + 1e-7


def test_data_aware_init_beats_spectral_on_heldout_inputs(relu_svd_run):
    # Not a theorem, a sanity check with a wide margin: on inputs this far from N(0, I) the weights-only SVD
    # fits the layer's function far worse than the data-aware fits on held-out vectors.
    _, report = relu_svd_run
    assert report.mean_objective("heldout_init") < 0.5 * report.mean_objective("heldout_spectral")


def test_installed_factors_equal_init_factors_on_collected_stats(relu_svd_run):
    """factorize = collect_stats + LayerFunction.from_stats (bias, folded BatchNorm) + init_factors."""
    model, report = relu_svd_run
    dense = seeded_model(trained_like_mlp)
    stats = collect_stats(
        dense,
        ["0", "3"],
        calibration_inputs(),
        samples=512,
        heldout=512,
        generator=torch.Generator().manual_seed(report.config["seed"]),
    )
    bn = dense[1]
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    t = bn.bias.double() - s * bn.running_mean.double()
    for name, scale, shift in (("0", s, t), ("3", None, None)):
        layer = dense.get_submodule(name)
        fn = LayerFunction.from_stats(stats[name], bias=layer.bias, scale=scale, shift=shift)
        U, V, *_ = f = init_factors(layer.weight.detach(), 3, "relu-svd", "relu", function=fn)
        new = model.get_submodule(name)
        torch.testing.assert_close(new.matrix().detach(), U @ V.T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.bias.detach(), f.bias, rtol=1e-5, atol=1e-6)


def test_init_factors_takes_stats_directly():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(16, 8, generator=g), 2.0 + torch.randn(300, 8, generator=g)
    stats = LayerStats.from_samples(X)
    a = init_factors(W, 3, "whiten", stats=stats)
    b = init_factors(W, 3, "whiten", function=LayerFunction.from_stats(stats))
    for x, y in zip((*a, a.bias), (*b, b.bias)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass stats or function, not both"):
        init_factors(W, 3, "whiten", stats=stats, function=LayerFunction())
    with pytest.raises(TypeError, match="stats must be a LayerStats"):
        init_factors(W, 3, "whiten", stats={"mean": X.mean(0)})
    with pytest.raises(ValueError, match="8-dim input vectors, but the weight has d_in=5"):
        init_factors(torch.randn(16, 5), 3, "whiten", stats=stats)


def _nan_inputs() -> torch.Tensor:
    x = calibration_inputs()
    x[3, 2] = float("nan")
    return x


BAD_CALIBRATION = [
    ({"calibration": calibration_inputs(), "source": "fresh"}, ValueError, "use source='existing'"),
    ({"calibration": [], "source": "existing"}, ValueError, "empty"),
    ({"calibration": _nan_inputs(), "source": "existing"}, ValueError, "non-finite"),
    (
        {"calibration": calibration_inputs(), "source": "existing", "calibration_batches": 0},
        ValueError,
        ">= 1",
    ),
    (
        {"calibration": calibration_inputs(), "source": "existing", "calibration_samples": -1},
        ValueError,
        ">= 0",
    ),
    (
        {"calibration": calibration_inputs(), "source": "existing", "calibration_heldout": 1.5},
        ValueError,
        "an int >= 0",
    ),
    ({"calibration": "images", "source": "existing"}, TypeError, "batch"),
    ({"init": "lfai-data", "source": "existing"}, ValueError, "needs calibration data"),
    ({"calibration": calibration_inputs(), "calibration_positions": 0}, ValueError, r"in \(0, 1\], got 0"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_CALIBRATION)
def test_bad_calibration_changes_nothing(kwargs, error, message):
    model = seeded_model(trained_like_mlp)
    snap = snapshot(model)
    kwargs = {"rank": 3, "init": "relu-svd", "progress": False, "factorize_stem": True, **kwargs}
    with pytest.raises(error, match=message):
        nlinit.factorize(model, **kwargs)
    assert_unchanged(model, snap)
