"""The layer's real function (input statistics, bias, eval-mode BatchNorm), whitening, and the inits that
fit it: whiten (the linear optimum), relu-svd and nlra-opt with refitted offsets, never worse than whiten."""

from __future__ import annotations

import importlib
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import layer_function_case, seeded, weight

from nlinit.activations import Activation
from nlinit.inits import init_factors
from nlinit.layer_function import (
    LayerFunction,
    from_whitened,
    relative_objectives,
    to_whitened,
    whitened_problem,
    whitener,
)
from nlinit.objective import nlra_loss

F64 = torch.float64


def _objective(W: torch.Tensor, fit, fn: LayerFunction, act: str) -> float:
    """The layer's objective under the fitted Gaussian, the low-rank layer using its refitted bias."""
    s = fn.scale if fn.scale is not None else torch.ones(W.shape[0], dtype=F64)
    t = fn.shift if fn.shift is not None else torch.zeros(W.shape[0], dtype=F64)
    bias = fn.bias if fn.bias is not None else torch.zeros(W.shape[0], dtype=F64)
    new_bias = fit.bias if fit.bias is not None else bias
    return float(
        nlra_loss(
            W,
            fit.U @ fit.V.T,
            act,
            mean=fn.mean,
            cov=fn.cov,
            scale=s,
            offset=s * bias + t,
            offset_y=s * new_bias + t,
        )
    )


def test_whitener_floors_a_singular_covariance():
    X = torch.randn(50, 3, dtype=F64, generator=seeded(0)) @ torch.randn(3, 8, dtype=F64, generator=seeded(1))
    cov = torch.cov(X.T)  # rank 3
    white = whitener(cov, 8)
    assert white.floored == 5
    torch.testing.assert_close(white.L @ white.L_inv, torch.eye(8, dtype=F64), rtol=0, atol=1e-8)
    # on the data's own directions L L^T is Sigma; the floor adds at most 1e-6 max(e) elsewhere
    e_max = float(torch.linalg.eigvalsh(cov).max())
    assert float((white.L @ white.L.T - cov).abs().max()) <= 1.01e-6 * e_max


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(0, 9), st.integers(0, 3), st.integers(0, 10**6))
def test_whitener_is_a_square_root_within_its_tolerance(d, samples, dead, seed):
    """Any covariance (n samples in d dimensions, some channels dead): L L^T is Sigma to within lambda =
    1e-6 max_j Sigma_jj entrywise, exactly so (to rounding) where the data has full rank and is well
    conditioned; L is invertible, and times_inv applies L^{-1}."""
    g = seeded(seed)
    X = torch.randn(samples, d, dtype=F64, generator=g) * torch.logspace(0, -2, d, dtype=F64)
    X[:, d - min(dead, d) :] = 0.0  # dead channels: zero variance
    cov = X.T @ X / max(samples, 1)
    white = whitener(cov, d)
    lam = 1e-6 * float(cov.diagonal().max()) if float(cov.diagonal().max()) > 0 else 1.0
    scale = float(cov.abs().max()) + lam
    err = float((white.L @ white.L.T - cov).abs().max())
    assert err <= lam + 1e-13 * scale
    rank = int(torch.linalg.matrix_rank(cov)) if samples else 0
    assert white.floored >= d - rank
    torch.testing.assert_close(white.L_inv @ white.L, torch.eye(d, dtype=F64), rtol=0, atol=1e-6)
    A = torch.randn(3, d, dtype=F64, generator=g)
    torch.testing.assert_close(white.times_inv(A), A @ white.L_inv, rtol=1e-9, atol=1e-9)


def test_whitener_is_exact_on_a_full_rank_covariance_and_gives_dead_channels_lambda():
    X = torch.randn(200, 6, dtype=F64, generator=seeded(4))
    cov = torch.cov(X.T)
    white = whitener(cov, 6)
    assert white.floored == 0
    torch.testing.assert_close(white.L @ white.L.T, cov, rtol=1e-14, atol=1e-14)
    X[:, 2] = 0.0  # a dead channel: its direction gets variance lambda, and nothing else changes
    cov = torch.cov(X.T)
    white = whitener(cov, 6)
    want = cov.clone()
    want[2, 2] = 1e-6 * float(cov.diagonal().max())
    assert white.floored == 1
    torch.testing.assert_close(white.L @ white.L.T, want, rtol=1e-14, atol=1e-14)


def test_whitened_round_trip_is_exact_at_full_rank():
    W, fn = weight(0, 6, 5), layer_function_case(0, 6, 5)
    white = whitener(fn.cov, 5)
    Wt, d = to_whitened(W, fn, white)
    U, V, bias = from_whitened(Wt, torch.eye(5, dtype=F64), d, fn, white, W)
    torch.testing.assert_close(U @ V.T, W, rtol=0, atol=1e-10)  # rank kept, map inverted
    torch.testing.assert_close(bias, fn.bias, rtol=0, atol=1e-10)  # the offsets give back the bias


def test_whiten_is_spectral_on_the_papers_model():
    W = weight(0, 12, 9)
    a = init_factors(W, 3, "whiten", function=LayerFunction())
    b = init_factors(W, 3, "spectral")
    torch.testing.assert_close(a.U @ a.V.T, b.U @ b.V.T, rtol=0, atol=1e-12)
    assert a.bias is None


def test_whiten_is_the_linear_optimum():
    """For the identity the objective is ||diag(s) (Y - W) L||_F^2 at the best offsets: whiten's equals the
    Eckart-Young tail of diag(s) W L, and perturbing its factors only raises it."""
    W, fn = weight(1, 10, 8), layer_function_case(1, 10, 8)
    fit = init_factors(W, 3, "whiten", "identity", function=fn)
    white = whitener(fn.cov, 8)
    Wt, _ = to_whitened(W, fn, white)
    tail = float(torch.linalg.svdvals(Wt)[3:].square().sum())
    got = _objective(W, fit, fn, "identity")
    assert got == pytest.approx(tail, rel=1e-9)
    g = seeded(2)
    for _ in range(5):
        U = fit.U + 1e-3 * torch.randn(fit.U.shape, dtype=F64, generator=g)
        assert _objective(W, type(fit)(U, fit.V, fit.bias), fn, "identity") >= got


@pytest.mark.parametrize("init", ["relu-svd", "nlra-opt"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)", "silu", "relu6"])
@settings(max_examples=6)
@given(seed=st.integers(0, 2**20), bn=st.booleans())
def test_nonlinear_inits_never_worse_than_whiten(init, act, seed, bn):
    W, fn = weight(seed, 9, 7), layer_function_case(seed, 9, 7, bn=bn)
    whiten = _objective(W, init_factors(W, 3, "whiten", act, function=fn), fn, act)
    options = {"max_iter": 15, "restarts": 0} if init == "nlra-opt" else {}
    got = _objective(W, init_factors(W, 3, init, act, function=fn, **options), fn, act)
    assert got <= whiten * (1 + 1e-9) + 1e-12  # kept per unit / overall only where exactly lower


def test_offsets_are_refit_and_the_bias_carries_them():
    W, fn = weight(3, 16, 10), layer_function_case(3, 16, 10)
    fit = init_factors(W, 2, "relu-svd", "relu", function=fn)
    assert fit.bias is not None and fit.bias.shape == (16,)
    assert not torch.allclose(fit.bias, fn.bias)  # bias correction moved the units' thresholds
    whiten = init_factors(W, 2, "whiten", "relu", function=fn)
    assert _objective(W, fit, fn, "relu") < _objective(W, whiten, fn, "relu")


BAD_FUNCTIONS = {
    "mean-shape": ({"mean": torch.zeros(4)}, "mean must have shape (7,) for a 9x7 weight, got (4,)"),
    "cov-shape": ({"cov": torch.eye(6)}, "cov must have shape (7, 7) for a 9x7 weight, got (6, 6)"),
    "bias-shape": ({"bias": torch.zeros(7)}, "bias must have shape (9,) for a 9x7 weight, got (7,)"),
    "scale-nan": (
        {"scale": torch.full((9,), float("nan"))},
        "LayerFunction.scale has 9 non-finite (NaN or Inf)",
    ),
    "samples-shape": ({"samples": torch.zeros(5, 3)}, "samples must be an (N, 7) tensor for a 9x7 weight"),
}


@pytest.mark.parametrize("case", BAD_FUNCTIONS)
def test_a_function_that_does_not_fit_the_weight(case):
    fields, message = BAD_FUNCTIONS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        init_factors(weight(0, 9, 7), 2, "relu-svd", function=LayerFunction(**fields))


def test_function_must_be_a_layerlayer_function_case():
    with pytest.raises(TypeError, match="function must be a LayerFunction or None, got dict"):
        init_factors(weight(0, 9, 7), 2, function={"mean": None})  # type: ignore[arg-type]


def _sampledlayer_function_case(seed: int, d_out: int, d_in: int, n: int = 600) -> LayerFunction:
    """Real inputs: a skewed, correlated distribution (not Gaussian), its moments and two sample sets."""
    g = seeded(seed)
    mix = torch.randn(d_in, d_in, dtype=F64, generator=g) / d_in**0.5
    X = torch.relu(torch.randn(n, d_in, dtype=F64, generator=g) @ mix + 0.2)  # post-ReLU-like inputs
    fit, held = X[: n // 2], X[n // 2 :]
    return LayerFunction(
        mean=fit.mean(0),
        cov=torch.cov(fit.T),
        bias=0.1 * torch.randn(d_out, dtype=F64, generator=g),
        samples=fit,
        heldout=held,
    )


def _held_out(W: torch.Tensor, fit, fn: LayerFunction, act: str) -> float:
    new_bias = fit.bias if fit.bias is not None else fn.bias
    return float(
        nlra_loss(
            W, fit.U @ fit.V.T, act, samples=fn.heldout, offset=fn.bias, offset_y=new_bias, relative=True
        )
    )


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_lfai_data_never_worse_than_its_start_on_held_out_samples(act):
    W, fn = weight(4, 20, 12), _sampledlayer_function_case(4, 20, 12)
    start = init_factors(W, 3, "relu-svd", act, function=fn)
    fit = init_factors(W, 3, "lfai-data", act, function=fn, generator=seeded(0), max_epochs=3)
    assert fit.bias is not None
    assert _held_out(W, fit, fn, act) <= _held_out(W, start, fn, act) * (1 + 1e-12)


def test_data_aware_inits_beat_spectral_on_real_inputs():
    """On skewed post-ReLU inputs the layer's real function is far from the N(0, I) model: whiten and the
    nonlinear data-aware inits, judged on held-out samples, beat the weights-only SVD by a wide margin."""
    W, fn = weight(5, 24, 16), _sampledlayer_function_case(5, 24, 16)
    spectral = init_factors(W, 4, "spectral")
    results = {
        init: _held_out(W, init_factors(W, 4, init, "relu", function=fn, generator=seeded(0)), fn, "relu")
        for init in ("whiten", "relu-svd", "lfai-data")
    }
    assert max(results.values()) < 0.9 * _held_out(W, spectral, fn, "relu")


def test_lfai_data_needs_samples():
    with pytest.raises(ValueError, match="init 'lfai-data' needs calibration samples"):
        init_factors(weight(0, 9, 7), 2, "lfai-data", function=LayerFunction(mean=torch.zeros(7, dtype=F64)))


def _full_path(W: torch.Tensor, fn: LayerFunction):
    """whitened_problem without the reduced path: the covariance's own square root, W~ (d_out, d_in)."""
    white = whitener(fn.cov, W.shape[1])
    return (*to_whitened(W, fn, white), white)


@pytest.mark.parametrize(
    ("init", "act"), [("whiten", "identity"), ("relu-svd", "relu"), ("relu-svd", "silu")]
)
def test_reduced_whitening_equals_the_full_one(init, act, monkeypatch):
    """d_out < d_in: the problem in K's coordinates gives the same Y and bias as in Sigma's (a full-rank,
    well-conditioned Sigma, so the floor of the full path is not active)."""
    W, fn = weight(3, 6, 14), layer_function_case(3, 6, 14)
    Wt, d, white = whitened_problem(W, fn)
    Wf, df, _ = _full_path(W, fn)
    assert Wt.shape == (6, 6) and white.L.shape == (14, 6) and white.L_inv.shape == (6, 14)
    torch.testing.assert_close(Wt @ Wt.T, Wf @ Wf.T, rtol=1e-12, atol=1e-12)  # the same Gram K
    torch.testing.assert_close(d, df, rtol=0, atol=0)
    torch.testing.assert_close(W.double() @ white.L * fn.scale[:, None], Wt, rtol=1e-10, atol=1e-12)
    reduced = init_factors(W, 3, init, act, function=fn)
    for name in ("nlinit.layer_function", "nlinit.inits.whiten"):  # (the package's name is the function)
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "whitened_problem", _full_path)
    full = init_factors(W, 3, init, act, function=fn)
    tol = 1e-10 if init == "whiten" else 1e-6  # relu-svd: L-BFGS on inputs equal up to rounding
    torch.testing.assert_close(reduced.U @ reduced.V.T, full.U @ full.V.T, rtol=tol, atol=tol)
    torch.testing.assert_close(reduced.bias, full.bias, rtol=tol, atol=tol)


def test_reduced_whitening_is_exact_on_a_singular_covariance():
    """Sigma of rank 3 < d_out = 6 < d_in = 14: no floor; whiten's identity objective is the Eckart-Young
    tail of K = diag(s) W Sigma W^T diag(s) exactly (0 from rank 3 on: the data spans 3 directions)."""
    g = seeded(4)
    X = torch.randn(200, 3, dtype=F64, generator=g) @ torch.randn(3, 14, dtype=F64, generator=g)
    W, fn = weight(4, 6, 14), layer_function_case(4, 6, 14)
    fn = LayerFunction(mean=fn.mean, cov=torch.cov(X.T), bias=fn.bias, scale=fn.scale, shift=fn.shift)
    _, _, white = whitened_problem(W, fn)
    assert white.floored == 3
    SW = W.double() * fn.scale[:, None]
    lam = torch.linalg.eigvalsh(SW @ fn.cov @ SW.T)  # ascending
    for rank in (1, 2, 3):
        fit = init_factors(W, rank, "whiten", "identity", function=fn)
        tail = float(lam[: 6 - rank].clamp_min(0).sum())
        assert _objective(W, fit, fn, "identity") == pytest.approx(tail, rel=1e-8, abs=1e-10 * float(lam[-1]))


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_lfai_ws_on_the_layer_function_starts_at_whiten_and_keeps_the_best(act):
    """lfai-ws with a layer function: with no epoch it is whiten's solution exactly (its warm start); on the
    exact objective (evaluation = the objective itself, best kept) it is never worse than whiten."""
    W, fn = weight(0, 24, 16), layer_function_case(0, 24, 16)
    g = seeded(0)
    white = init_factors(W, 4, "whiten", act, function=fn)
    start = init_factors(W, 4, "lfai-ws", act, function=fn, max_epochs=0, generator=g)
    for x, y in zip((*white, white.bias), (*start, start.bias)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    fit = init_factors(W, 4, "lfai-ws", act, function=fn, objective="exact", max_epochs=2, generator=g)
    assert fit.bias is not None
    assert _objective(W, fit, fn, act) <= _objective(W, white, fn, act) * (1 + 1e-9)


LAYER_FUNCTION_FIELDS = {
    "mean-2d": (
        {"mean": torch.zeros(2, 3)},
        r"LayerFunction.mean must be a 1-D floating-point tensor, got shape",
    ),
    "cov-int": ({"cov": torch.eye(3, dtype=torch.int64)}, r"LayerFunction.cov must be a 2-D floating-point"),
    "cov-list": ({"cov": [[1.0]]}, r"LayerFunction.cov must be a 2-D floating-point tensor, got list"),
    "cov-nonsquare": ({"cov": torch.zeros(2, 3)}, r"LayerFunction.cov must be square, got shape \(2, 3\)"),
    "cov-asymmetric": (
        {"cov": torch.tensor([[1.0, 0.5], [0.0, 1.0]])},
        r"LayerFunction.cov must be symmetric",
    ),
    "normalized-int": ({"normalized": 1}, r"LayerFunction.normalized must be a bool, got 1"),
}


@pytest.mark.parametrize("case", LAYER_FUNCTION_FIELDS)
def test_layer_function_checks_its_fields_at_construction(case):
    fields, message = LAYER_FUNCTION_FIELDS[case]
    with pytest.raises(ValueError, match=message):
        LayerFunction(**fields)


@pytest.mark.parametrize("act", ["relu", "gelu", "leaky_relu"])
@pytest.mark.parametrize("singular", [False, True])
@given(seed=st.integers(0, 2**16))
@settings(max_examples=10, deadline=None)
def test_relative_objectives_equal_nlra_loss_on_the_layerlayer_function_case(act, singular, seed):
    """The one-factor evaluation is the objective with mean, cov, scale and offsets, to float64 rounding
    (a change of variables x = mu + F z; a singular cov takes the eigendecomposition's factor)."""
    g = seeded(seed)
    d_out, d_in, r = 7, 6, 2
    W = weight(seed, d_out, d_in)
    X = torch.randn(4 if singular else 20, d_in, dtype=torch.float64, generator=g)
    cov = X.T @ X / X.shape[0]
    fn = LayerFunction(
        mean=torch.randn(d_in, dtype=torch.float64, generator=g),
        cov=cov,
        scale=torch.rand(d_out, dtype=torch.float64, generator=g) + 0.5,
        shift=torch.randn(d_out, dtype=torch.float64, generator=g),
        bias=torch.randn(d_out, dtype=torch.float64, generator=g),
    )
    U, V = (torch.randn(n, r, dtype=torch.float64, generator=g) for n in (d_out, d_in))
    b2 = torch.randn(d_out, dtype=torch.float64, generator=g)
    a = Activation(act)
    got = relative_objectives(W, [(U, V, b2), (U, V, None)], a, fn)
    for value, bias in zip(got, (b2, torch.zeros(d_out, dtype=torch.float64)), strict=True):
        want = nlra_loss(
            W,
            U @ V.T,
            a,
            relative=True,
            mean=fn.mean,
            cov=cov,
            scale=fn.scale,
            offset=fn.offset(W),
            offset_y=fn.scale * bias + fn.shift,
        )
        assert value is not None
        assert value == pytest.approx(float(want), rel=1e-9, abs=1e-12)
