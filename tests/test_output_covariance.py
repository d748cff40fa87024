"""Output covariance: collect_stats' out_cov against W Sigma W^T and the outputs themselves,
whitened_problem's use of it (the same inits, a warning on a mismatch), the reduced path's read-off SVD and
lazy maps, the Levenberg-Marquardt fit of fit_rows_and_offsets against its start and a direct minimization,
and bad out_cov fields."""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import layer_function_case, seeded, weight
from torch import Tensor, nn

from nlinit import calibration
from nlinit.calibration import LayerStats, collect_stats
from nlinit.inits import INITS, init_factors
from nlinit.layer_function import (
    LayerFunction,
    Whitened,
    whitened_problem,
    whitened_svd,
)
from nlinit.objective import UnitMoments, unit_loss
from nlinit.subspace import fit_rows_and_offsets

F64 = torch.float64
# The layer's outputs are float32: each entry of y = W x + b is rounded to ~sqrt(d_in) u relative of
# |W| |x| (u = 2^-24 ~ 6e-8; d_in <= 27 here), so their covariance differs from the float64 W Sigma W^T
# by a few 1e-7 of its largest entry at worst (measured: ~3e-8). 1e-6 leaves a margin of ~3x the worst case.
ROUNDED = 1e-6
# precision="float32" also sums the Gram products in float32 (blocks of GEMM_BLOCK): ~sqrt(N) u on both
# out_cov and Sigma for N ~ 200 output vectors, ~1e-6 (measured ~5e-7); 1e-5 is about 10x that.
ROUNDED32 = 1e-5
# out_cov against the covariance of the very outputs the layer gave (float32 values, float64 products and
# sums over a few hundred rows): float64 rounding only, ~1e-15; 1e-12 as in test_calibration.py
EXACT = 1e-12


def rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def channel(module: nn.Module) -> Tensor:
    """The layer's "channel" matrix view (d_out, d_in), float64."""
    return module.weight.detach().double().reshape(module.weight.shape[0], -1)


def w_sigma_wt(module: nn.Module, stats: LayerStats) -> Tensor:
    W = channel(module)
    return W @ stats.cov @ W.T


def output_cov(Y: Tensor) -> Tensor:
    """The population covariance (1/N) of the rows of Y (N, d_out), float64."""
    Y = Y.double()
    C = Y - Y.mean(0)
    return C.T @ C / Y.shape[0]


def conv_rows(y: Tensor, mask: Tensor | None = None) -> Tensor:
    """A conv's outputs (n, c, H_o, W_o) as rows (pixels, c); only the (image, w) columns of ``mask``."""
    n, c, ho, wo = y.shape
    rows = y.permute(0, 2, 3, 1)  # (n, H_o, W_o, c)
    if mask is not None:
        rows = rows[mask[:, None, :].expand(n, ho, wo)]
    return rows.reshape(-1, c)


def position_mask(generator_seed: int, n: int, wo: int, p: float) -> Tensor:
    """The (n, wo) columns collect_stats(positions=p, generator=seeded(generator_seed)) keeps for the layer
    named "0", over its first n fit images (the reference of test_calibration.py)."""
    base = int(torch.randint(0, 2**62, (1,), generator=seeded(generator_seed)))
    return calibration.position_mask(calibration._layer_seeds(base, "0")[2], 0, n, wo, p)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------------------------
# collect_stats: out_cov


def test_linear_on_tokens(generator) -> None:
    """A Linear on (N, T, d) token batches: one output row per token, out_cov = W Sigma W^T."""
    lin = nn.Linear(12, 5)
    model = nn.Sequential(lin)
    inputs = [torch.randn(7, 9, 12, generator=generator), torch.randn(3, 9, 12, generator=generator)]
    stats = collect_stats(model, ["0"], inputs)["0"]
    assert stats.count == 90 and stats.out_cov is not None
    assert stats.out_cov.dtype == F64 and stats.out_cov.shape == (5, 5)
    assert torch.equal(stats.out_cov, stats.out_cov.T)
    assert rel(stats.out_cov, w_sigma_wt(lin, stats)) < ROUNDED
    with torch.no_grad():
        Y = torch.cat([lin(x).reshape(-1, 5) for x in inputs])
    assert rel(stats.out_cov, output_cov(Y)) < EXACT
    assert no_hooks(model)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_conv_with_stride_padding_dilation_and_bias(generator, precision, p) -> None:
    """A strided, padded, dilated conv with a bias (which cancels), over two batches: out_cov is the
    covariance of its output pixels at the kept (image, w) columns, and W Sigma W^T over the same patches."""
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, bias=True)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.5, -0.3, 0.2, 1.0]))
    inputs = [torch.randn(5, 3, 13, 11, generator=generator), torch.randn(2, 3, 13, 11, generator=generator)]
    stats = collect_stats(
        nn.Sequential(conv), ["0"], inputs, positions=p, precision=precision, generator=seeded(7)
    )["0"]
    with torch.no_grad():
        y = torch.cat([conv(x) for x in inputs])  # (7, 4, H_o, W_o)
    mask = None if p == 1.0 else position_mask(7, 7, y.shape[3], p)
    Y = conv_rows(y, mask)
    assert stats.count == Y.shape[0]
    if mask is not None:
        assert 0 < stats.count < y.numel() // 4  # a strict subset of the pixels
    assert rel(stats.out_cov, w_sigma_wt(conv, stats)) < (ROUNDED if precision == "float64" else ROUNDED32)
    exact = EXACT if precision == "float64" else ROUNDED32
    assert rel(stats.out_cov, output_cov(Y)) < exact


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_heldout_forwards_are_excluded(generator, p) -> None:
    """heldout=4, one image in 3 held out (images 2 and 5 of 7): out_cov is over the fit images' outputs
    only, equal to the stats' own W Sigma W^T; with positions < 1 the kept columns are counted over the fit
    images alone (the held-out forwards do not advance the mask)."""
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2)
    x = torch.randn(7, 3, 13, 11, generator=generator)
    stats = collect_stats(
        nn.Sequential(conv),
        ["0"],
        x,
        batch_size=3,
        heldout=4,
        heldout_every=3,
        positions=p,
        generator=seeded(3),
    )["0"]
    assert stats.heldout is not None and stats.heldout.shape[0] == 4
    with torch.no_grad():  # the fit forwards as collect_stats runs them: rows [0, 1], [3, 4], [6]
        y = torch.cat([conv(x[[0, 1]]), conv(x[[3, 4]]), conv(x[[6]])])
    mask = None if p == 1.0 else position_mask(3, 5, y.shape[3], p)
    Y = conv_rows(y, mask)
    assert stats.count == Y.shape[0]
    assert rel(stats.out_cov, w_sigma_wt(conv, stats)) < ROUNDED
    assert rel(stats.out_cov, output_cov(Y)) < EXACT


class _CalledTwice(nn.Module):
    """One nn.Linear(6, 3) called twice per forward, on x and on 2 x + 1."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) + self.lin(2 * x + 1)


def test_shared_module_accumulates_every_call(generator) -> None:
    net = _CalledTwice()
    net.alias = net.lin  # one module under two names: one pair of hooks
    x = torch.randn(10, 6, generator=generator)
    stats = collect_stats(net, {"lin": net.lin, "alias": net.lin}, [x])
    assert stats["alias"] is stats["lin"]
    s = stats["lin"]
    assert s.count == 20
    with torch.no_grad():
        Y = torch.cat([net.lin(x), net.lin(2 * x + 1)])
    assert rel(s.out_cov, w_sigma_wt(net.lin, s)) < ROUNDED
    assert rel(s.out_cov, output_cov(Y)) < EXACT


def test_layers_with_d_out_at_least_d_in_get_no_out_cov(generator) -> None:
    """Their whitened problem is solved in input coordinates (whitened_problem), so K is not collected:
    a square Linear, a widening Linear and a 1 x 1 conv that widens; the narrowing layer gets it."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8), nn.Unflatten(1, (8, 1, 1)), nn.Conv2d(8, 16, 1))
    model.add_module("4", nn.Flatten())
    model.add_module("5", nn.Linear(16, 2))
    stats = collect_stats(model, ["0", "1", "3", "5"], torch.randn(12, 4, generator=generator))
    assert [stats[n].out_cov is None for n in ("0", "1", "3", "5")] == [True, True, True, False]


def test_outputs_false_gives_none_and_the_same_input_moments(generator) -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 25, 4))
    x = torch.randn(6, 2, 5, 5, generator=generator)
    on = collect_stats(model, ["0", "3"], x, samples=5, generator=seeded(1))
    off = collect_stats(model, ["0", "3"], x, samples=5, generator=seeded(1), outputs=False)
    for name in ("0", "3"):
        assert on[name].out_cov is not None and off[name].out_cov is None
        for field in ("mean", "second", "samples", "abs_mean"):
            assert torch.equal(getattr(on[name], field), getattr(off[name], field))
        assert LayerFunction.from_stats(off[name]).out_cov is None
        assert LayerFunction.from_stats(on[name]).out_cov is on[name].out_cov
    assert no_hooks(model)


class Pooled(nn.Linear):
    """A Linear whose forward is not one output per input vector (it averages the batch)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).mean(0, keepdim=True)


def test_a_forward_that_is_not_one_output_per_input(generator) -> None:
    model = nn.Sequential(Pooled(3, 2))
    x = torch.randn(10, 3, generator=generator)
    message = "layer '0' gave 1 output vectors for 10 inputs in calibration; its forward is not one output"
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        collect_stats(model, ["0"], [x])
    assert "\n" not in str(info.value)
    assert no_hooks(model)
    assert collect_stats(model, ["0"], [x], outputs=False)["0"].count == 10


@pytest.mark.parametrize("outputs", ["yes", 1, None])
def test_outputs_must_be_a_bool(outputs) -> None:
    with pytest.raises(ValueError, match=re.escape(f"outputs must be a bool, got {outputs!r}")):
        collect_stats(nn.Sequential(nn.Linear(3, 2)), ["0"], torch.randn(4, 3), outputs=outputs)


# --------------------------------------------------------------------------------------------------------
# whitened_problem with out_cov


def _with_out_cov(fn: LayerFunction, out_cov: Tensor) -> LayerFunction:
    fields = ("mean", "cov", "bias", "scale", "shift")
    return LayerFunction(**{f: getattr(fn, f) for f in fields}, out_cov=out_cov)


D_OUT, D_IN, RANK = 6, 20, 3  # d_out < d_in: the reduced path


def _exact_out_cov(W: Tensor, fn: LayerFunction) -> Tensor:
    K = W @ fn.cov @ W.T
    return (K + K.T) / 2  # symmetric to the last bit, as collect_stats' is


@pytest.mark.parametrize(("init", "act"), [("whiten", "relu"), ("relu-svd", "relu"), ("relu-svd", "gelu")])
def test_exact_out_cov_gives_the_same_init(init, act) -> None:
    """out_cov = W Sigma W^T (float64, by hand) replaces the product: K differs by float64 rounding only
    (~1e-15 relative; K's eigengaps are O(1) here), so U V^T and the bias agree to ~1e-13, 1e-8 is loose.
    No warning: the quadratic-form check passes."""
    W = weight(0, D_OUT, D_IN)
    fn = layer_function_case(0, D_OUT, D_IN)
    measured = _with_out_cov(fn, _exact_out_cov(W, fn))
    base = init_factors(W, RANK, init, act, function=fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = init_factors(W, RANK, init, act, function=measured)
    Y, Y0 = got.U @ got.V.T, base.U @ base.V.T
    assert rel(Y, Y0) < 1e-8
    assert got.bias is not None and base.bias is not None
    assert rel(got.bias, base.bias) < 1e-8
    if init == "relu-svd":  # the offsets were refit: the comparison is not of two copies of fn.bias
        assert rel(base.bias, fn.bias) > 1e-3


@pytest.mark.parametrize(("init", "act"), [("whiten", "relu"), ("relu-svd", "relu")])
def test_measured_out_cov_gives_nearly_the_same_init(generator, init, act) -> None:
    """End to end: collect_stats' out_cov (float32 outputs, ~3e-8 off W Sigma W^T) through
    LayerFunction.from_stats: no warning, and the init within ~1e-6 of the one computed from Sigma
    (K's relative error times its condition on O(1) eigengaps)."""
    lin = nn.Linear(D_IN, D_OUT)
    mix = torch.randn(D_IN, D_IN, generator=generator) * torch.logspace(0, -1, D_IN)
    x = torch.randn(400, D_IN, generator=generator) @ mix + 0.3
    stats = collect_stats(nn.Sequential(lin), ["0"], x)["0"]
    W, b = lin.weight.detach(), lin.bias.detach()
    fn = LayerFunction.from_stats(stats, bias=b)
    plain = LayerFunction.from_stats(collect_stats(nn.Sequential(lin), ["0"], x, outputs=False)["0"], bias=b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = init_factors(W, RANK, init, act, function=fn)
    base = init_factors(W, RANK, init, act, function=plain)
    assert rel(got.U @ got.V.T, base.U @ base.V.T) < 1e-5
    assert rel(got.bias, base.bias) < 1e-5


@pytest.mark.parametrize(("init", "act"), [("whiten", "relu"), ("relu-svd", "relu")])
def test_mismatched_out_cov_warns_and_falls_back(init, act) -> None:
    """out_cov of another weight: O(1) off on the random quadratic forms, so a warning and K from Sigma:
    bit for bit the result without out_cov."""
    W, other = weight(0, D_OUT, D_IN), weight(1, D_OUT, D_IN)
    fn = layer_function_case(0, D_OUT, D_IN)
    wrong = _with_out_cov(fn, _exact_out_cov(other, fn))
    base = init_factors(W, RANK, init, act, function=fn)
    with pytest.warns(UserWarning, match="out_cov does not match"):
        got = init_factors(W, RANK, init, act, function=wrong)
    assert torch.equal(got.U, base.U) and torch.equal(got.V, base.V) and torch.equal(got.bias, base.bias)
    with pytest.warns(UserWarning, match="out_cov does not match"):
        Wt, d, _ = whitened_problem(W, wrong)
    Wt0, d0, _ = whitened_problem(W, fn)
    assert torch.equal(Wt, Wt0) and torch.equal(d, d0)


def test_slightly_wrong_out_cov_is_used_and_a_scaled_one_is_not() -> None:
    """The check's threshold: out_cov (1 + 1e-5) (the float32 rounding it is meant to accept) is used
    as given, without a warning (K differs from Sigma's); out_cov (1 + 1e-2) warns."""
    W = weight(2, D_OUT, D_IN)
    fn = layer_function_case(2, D_OUT, D_IN)
    K = _exact_out_cov(W, fn)
    Wt0, _, _ = whitened_problem(W, fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Wt, _, _ = whitened_problem(W, _with_out_cov(fn, K * (1 + 1e-5)))
    assert not torch.equal(Wt, Wt0)  # the measured K was used...
    torch.testing.assert_close(Wt @ Wt.T, (1 + 1e-5) * (Wt0 @ Wt0.T), rtol=1e-12, atol=1e-14)  # ...exactly
    with pytest.warns(UserWarning, match="out_cov does not match"):
        whitened_problem(W, _with_out_cov(fn, K * (1 + 1e-2)))


# --------------------------------------------------------------------------------------------------------
# The reduced path: its SVD read off, its lazy maps


@pytest.mark.parametrize("rank", [1, 3, 6])
@pytest.mark.parametrize("measured", [False, True])
def test_whitened_svd_reads_off_the_svd(rank, measured) -> None:
    W = weight(3, D_OUT, D_IN)
    fn = layer_function_case(3, D_OUT, D_IN)
    if measured:
        fn = _with_out_cov(fn, _exact_out_cov(W, fn))
    Wt, _, white = whitened_problem(W, fn)
    assert Wt.shape == (D_OUT, D_OUT) and white.left is not None
    P, s, Q = whitened_svd(Wt, white, rank)
    assert P.shape == (D_OUT, rank) and s.shape == (rank,) and Q.shape == (D_OUT, rank)
    sv = torch.linalg.svdvals(Wt)
    assert rel(s, sv[:rank]) < 1e-10  # eigh of K against the SVD of W~: float64 rounding (~1e-15)
    assert bool((s[:-1] >= s[1:]).all())
    torch.testing.assert_close(P.T @ P, torch.eye(rank, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q.T @ Q, torch.eye(rank, dtype=F64), rtol=0, atol=1e-12)
    U, S, Vh = torch.linalg.svd(Wt)
    best = U[:, :rank] * S[:rank] @ Vh[:rank]  # Eckart-Young (sv has O(1) gaps: unique)
    assert float(sv.diff().abs().min()) > 1e-3 * float(sv[0])
    assert rel(P * s @ Q.T, best) < 1e-10


def test_whitened_svd_off_the_reduced_path_is_truncated_svd() -> None:
    """d_out >= d_in: the full path (no left factors), where whitened_svd is an ordinary SVD."""
    W = weight(4, 9, 5)
    fn = layer_function_case(4, 9, 5)
    Wt, _, white = whitened_problem(W, fn)
    assert white.left is None
    P, s, Q = whitened_svd(Wt, white, 2)
    U, S, Vh = torch.linalg.svd(Wt)
    assert rel(s, S[:2]) < 1e-12
    assert rel(P * s @ Q.T, U[:, :2] * S[:2] @ Vh[:2]) < 1e-10


@pytest.mark.parametrize("measured", [False, True])
def test_reduced_maps_are_lazy_and_consistent(measured) -> None:
    """W~ = diag(s) W L, L_inv L = I (on K's live directions, all of them here), and times_inv(A) is
    A L_inv without forming it; L (d_in, d_out), L_inv (d_out, d_in), formed when read."""
    W = weight(5, D_OUT, D_IN)
    fn = layer_function_case(5, D_OUT, D_IN)
    if measured:
        fn = _with_out_cov(fn, _exact_out_cov(W, fn))
    Wt, _, white = whitened_problem(W, fn)
    assert isinstance(white, Whitened) and white.floored == 0 and not white.is_identity
    assert white.shape() == (D_IN, D_OUT)
    A = torch.randn(4, D_OUT, dtype=F64, generator=seeded(0))
    applied = white.times_inv(A)  # before L_inv exists
    assert white._L is None and white._L_inv is None  # nothing formed yet
    L, L_inv = white.L, white.L_inv
    assert L.shape == (D_IN, D_OUT) and L_inv.shape == (D_OUT, D_IN)
    assert rel(fn.scale[:, None] * (W @ L), Wt) < 1e-9
    torch.testing.assert_close(L_inv @ L, torch.eye(D_OUT, dtype=F64), rtol=0, atol=1e-9)
    assert rel(applied, A @ L_inv) < 1e-12
    assert rel(white.times_inv(A), A @ L_inv) < 1e-12  # after: through the formed L_inv


def test_reduced_whitened_without_sigma_has_no_L() -> None:
    SW = torch.randn(2, 5, dtype=F64, generator=seeded(0))
    white = Whitened.reduced(SW, torch.eye(2, dtype=F64), None, 0)
    torch.testing.assert_close(white.L_inv, SW, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"L = Sigma W\^T M needs the input covariance Sigma"):
        _ = white.L


# --------------------------------------------------------------------------------------------------------
# fit_rows_and_offsets (Levenberg-Marquardt on a 1-D rule)


def _unit_losses(W: Tensor, d: Tensor, Q: Tensor, act: str) -> tuple[Tensor, Callable[..., Tensor]]:
    """The exact per-unit objective of a row b e_i (e_i = P_S w_i / ||P_S w_i||) and offset d', with the
    moments as _fit_rows_and_offsets forms them, and the start (b, d') = (||P_S w_i||, d_i)."""
    A0 = W @ Q
    a = W.norm(dim=1)
    proj = A0.norm(dim=1)
    sin2 = ((W - A0 @ Q.T).norm(dim=1) / torch.where(a > 0, a, 1.0)) ** 2

    def losses(b: Tensor, dn: Tensor, i: slice = slice(None)) -> Tensor:
        m = UnitMoments(dn, d[i], b * b, a[i] * a[i], b * proj[i], b * b * sin2[i])
        return unit_loss(m, act)

    return proj, losses


ACTS = ["relu", "leaky_relu(0.2)", "gelu"]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d_out=st.integers(1, 8),
    d_in=st.integers(2, 10),
    rank_frac=st.floats(0, 1),
    act=st.sampled_from(ACTS),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
    offset=st.sampled_from([0.0, 0.5, 3.0]),
    zero_row=st.booleans(),
)
def test_fit_rows_and_offsets_never_worse_than_its_start(
    seed, d_out, d_in, rank_frac, act, scale, offset, zero_row
) -> None:
    """Per unit, on the exact objective: never above the start (||P_S w_i||, d_i) (the code keeps the start
    unless strictly lower; recomputing b as ||A_i|| rounds it by ~1e-16 relative, so a 1e-12 slack of the
    loss's scale a_i^2 + d_i^2 + 1). Rows stay non-negative multiples of P_S w_i; offsets are finite."""
    g = seeded(seed)
    rank = 1 + int(rank_frac * (d_in - 1))
    W = scale * torch.randn(d_out, d_in, dtype=F64, generator=g)
    if zero_row:
        W[0] = 0.0
    d = offset * torch.randn(d_out, dtype=F64, generator=g)
    Q = torch.linalg.qr(torch.randn(d_in, rank, dtype=F64, generator=g)).Q
    A, dn = fit_rows_and_offsets(W, d, Q, act)
    assert A.shape == (d_out, rank) and dn.shape == (d_out,) and bool(torch.isfinite(dn).all())
    proj, losses = _unit_losses(W, d, Q, act)
    start, got = losses(proj, d), losses(A.norm(dim=1), dn)
    slack = 1e-12 * (W.norm(dim=1) ** 2 + d**2 + 1)
    assert bool((got <= start + slack).all()), (got - start).tolist()
    A0 = W @ Q
    c = (A * A0).sum(1) / (A0 * A0).sum(1).clamp_min(1e-300)  # A_i = c_i A0_i with c_i >= 0
    torch.testing.assert_close(A, c[:, None] * A0, rtol=0, atol=1e-12 * float(A0.abs().max().clamp_min(1)))
    assert bool((c >= 0).all())
    if zero_row:
        # nothing to fit (the loss is (f(d') - f(d_0))^2): the start, up to a rounding-level "improvement"
        assert bool((A[0] == 0).all()) and abs(float(dn[0] - d[0])) <= 1e-12 * (1 + abs(float(d[0])))


def _nelder_mead(losses, proj: Tensor, d: Tensor, i: int) -> float:
    """The minimum over (b, d') of unit i's exact loss by Nelder-Mead from the start, to ~1e-12 of the loss
    (xatol 1e-8: the loss is quadratic near its minimum, so ~1e-16 from the parameters' tolerance)."""

    def f(p: np.ndarray) -> float:
        b, dn = torch.tensor([p[0]], dtype=F64), torch.tensor([p[1]], dtype=F64)
        return float(losses(b, dn, slice(i, i + 1)))

    x0 = [float(proj[i]), float(d[i])]
    options = {"xatol": 1e-8, "fatol": 1e-12 * f(np.array(x0)), "maxfev": 2000}
    return float(scipy.optimize.minimize(f, x0, method="Nelder-Mead", options=options).fun)


@functools.cache
def _gaps(act: str, offset: float) -> tuple[Tensor, Tensor]:
    """(fit, start): the relative excess of fit_rows_and_offsets' and of the start's exact loss over
    Nelder-Mead's, per unit, on five units of R^8 (O(1) weights, offsets ``offset`` N(0, 1)) and a rank-2
    subspace (seed 1)."""
    g = seeded(1)
    W = torch.randn(5, 8, dtype=F64, generator=g)
    d = offset * torch.randn(5, dtype=F64, generator=g)
    Q = torch.linalg.qr(torch.randn(8, 2, dtype=F64, generator=g)).Q
    A, dn = fit_rows_and_offsets(W, d, Q, act)
    proj, losses = _unit_losses(W, d, Q, act)
    best = torch.tensor([_nelder_mead(losses, proj, d, i) for i in range(5)], dtype=F64)
    return (losses(A.norm(dim=1), dn) - best) / best, (losses(proj, d) - best) / best


def test_fit_reaches_the_exact_optimum_for_a_smooth_activation() -> None:
    """gelu, offsets of scale 0.3: the 20-node rule integrates a smooth unit to ~1e-8, so LM's optimum is
    the exact one to well within 1e-4 of the loss (measured <= 1e-5); the start is 10-25% above it."""
    fit, start = _gaps("gelu", 0.3)
    assert float(fit.max()) < 1e-4, fit.tolist()
    assert float(start.min()) > 0.05, start.tolist()


def test_fit_reaches_the_exact_optimum_for_gelu_with_large_offsets() -> None:
    """gelu, offsets N(0, 1): from the linear optimum alone LM walked unit 4 (d = -2.57, start
    (1.19, -2.57)) into a local minimum at (3.61, -8.21), 16% above Nelder-Mead's (0.30, 0.26); the second
    start at d' = 0 reaches the global one (the rule is accurate to ~1e-8 for a smooth unit)."""
    fit, _ = _gaps("gelu", 1.0)
    assert float(fit.max()) < 1e-4, fit.tolist()


def test_fit_is_near_the_exact_optimum_for_relu() -> None:
    """relu: within 1e-2 of the exact optimum on every unit (measured up to ~3e-3: the rule's kinks at the
    nodes, see the next test), far below the start's 5-30%."""
    fit, start = _gaps("relu", 1.0)
    assert float(fit.max()) < 1e-2, fit.tolist()
    assert float(start.min()) > 0.04, start.tolist()


@pytest.mark.xfail(
    strict=True,
    reason="on relu's 20-node rule LM stops at spurious local minima (kinks where b x_j + d' = 0): units 2 "
    "and 4 end ~2.5e-3 above the exact optimum, though the rule's own optimum is within ~2e-4 of it",
)
def test_fit_reaches_the_exact_optimum_for_relu() -> None:
    fit, _ = _gaps("relu", 1.0)
    assert float(fit.max()) < 1e-4, fit.tolist()


# --------------------------------------------------------------------------------------------------------
# Bad out_cov fields


def _stats(**fields) -> LayerStats:
    return LayerStats(1, torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64), **fields)


NAN = float("nan")
BAD_STATS = {
    "not-square": (
        {"out_cov": torch.zeros(2, 3, dtype=F64)},
        r"LayerStats.out_cov must be a square float64 tensor or None, got torch.float64 (2, 3)",
    ),
    "1-d": (
        {"out_cov": torch.zeros(4, dtype=F64)},
        r"LayerStats.out_cov must be a square float64 tensor or None, got torch.float64 (4,)",
    ),
    "float32": (
        {"out_cov": torch.eye(2)},
        r"LayerStats.out_cov must be a square float64 tensor or None, got torch.float32 (2, 2)",
    ),
    "list": ({"out_cov": [[1.0]]}, r"LayerStats.out_cov must be a square float64 tensor or None, got list"),
    "nan": (
        {"out_cov": torch.tensor([[1.0, NAN], [NAN, 1.0]], dtype=F64)},
        r"LayerStats.out_cov has 2 non-finite (NaN or Inf) entries",
    ),
}

BAD_FUNCTIONS = {
    "not-square": (
        {"out_cov": torch.zeros(2, 3, dtype=F64)},
        r"LayerFunction.out_cov must be square, got shape (2, 3)",
    ),
    "1-d": (
        {"out_cov": torch.zeros(3, dtype=F64)},
        r"LayerFunction.out_cov must be a 2-D floating-point tensor",
    ),
    "int": (
        {"out_cov": torch.eye(2, dtype=torch.int64)},
        r"LayerFunction.out_cov must be a 2-D floating-point tensor",
    ),
    "asymmetric": (
        {"out_cov": torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)},
        r"LayerFunction.out_cov must be symmetric, got max |out_cov - out_cov^T| = 0.5",
    ),
    "inf": (
        {"out_cov": torch.tensor([[1.0, 0.0], [0.0, float("inf")]], dtype=F64)},
        r"LayerFunction.out_cov has 1 non-finite (NaN or Inf) entries",
    ),
}


@pytest.mark.parametrize("case", BAD_STATS)
def test_layer_stats_rejects_a_bad_out_cov(case) -> None:
    fields, message = BAD_STATS[case]
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        _stats(**fields)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", BAD_FUNCTIONS)
def test_layer_function_rejects_a_bad_out_cov(case) -> None:
    fields, message = BAD_FUNCTIONS[case]
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        LayerFunction(**fields)
    assert "\n" not in str(info.value)


def test_out_cov_must_fit_the_weight() -> None:
    fn = LayerFunction(cov=torch.eye(7, dtype=F64), out_cov=torch.eye(7, dtype=F64))
    message = "out_cov of fc must have shape (9, 9) for a 9x7 weight, got (7, 7)"
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        fn.check(9, 7, "fc")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape("out_cov must have shape (9, 9) for a 9x7 weight")):
        init_factors(weight(0, 9, 7), 2, "whiten", function=fn)
    assert LayerFunction(out_cov=torch.eye(9, dtype=F64)).check(9, 7) is not None  # the right size passes


def test_w_svd_is_handed_only_where_no_real_layer_function_is_fitted() -> None:
    """One home for "does this init get W's SVD" (InitInfo.takes_svd): solve passes it and factorize charges
    its time to the init only then (relu-svd on a calibrated layer solves the whitened W~ instead)."""

    real = layer_function_case(0, 3, 5)
    assert INITS["relu-svd"].takes_svd(None) and INITS["relu-svd"].takes_svd(LayerFunction())
    assert not INITS["relu-svd"].takes_svd(real)
    assert not INITS["whiten"].takes_svd(None)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: whitened_svd(torch.ones(3), Whitened(None, None, 0), 1), ValueError, r"Wt must be a 2-D"),
        (lambda: whitened_svd(torch.ones(3, 4), None, 1), TypeError, r"white must be a Whitened"),
        (lambda: whitened_svd(torch.ones(3, 4), Whitened(None, None, 0), 4), ValueError, r"rank"),
        (
            lambda: whitened_svd(torch.full((3, 4), float("nan")), Whitened(None, None, 0), 1),
            ValueError,
            r"Wt has 12 non-finite",
        ),
    ],
    ids=["Wt 1-D", "white None", "rank too big", "Wt NaN"],
)
def test_whitened_svd_bad_input_is_one_line(call, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)
