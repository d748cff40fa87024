"""nlinit.layers: LowRankLinear / LowRankConv2d compute exactly the dense layer of kernel U V^T.

At full rank the spectral factors reproduce W, so ``from_dense`` must reproduce the dense layer's output for
every conv setting (kernel shape, stride, padding incl. "same"/"valid", dilation, padding_mode, bias) in both
layouts; ``to_dense`` must give back a layer with the same settings and the same output.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from nets import SmallNet, mlp, seeded_model
from strategies import seeded
from torch import nn

import nlinit
from nlinit import LowRankConv2d, LowRankLinear, low_rank_layers
from nlinit.matrix_view import LAYOUTS, kernel_to_matrix, matrix_shape

F64 = torch.float64
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# Small lfai options: a handful of Adam steps, enough to run every code path.
LFAI_SMALL = {"max_epochs": 1, "steps_per_epoch": 3, "num_samples": 64, "batch_size": 32}

# Tolerance for float64 comparisons of the same linear map computed two ways. At full rank the spectral
# factors satisfy U V^T = P P^T W with P orthogonal to ~1e-15 (eigh in float64), and a conv output entry
# sums at most ~200 products of O(1) numbers, so the differences are ~1e-13 (measured: at most 4e-14).
# 1e-10 leaves a wide margin, while a wrong stride, padding, dilation or layout gives O(1) errors.
TOL = {"rtol": 1e-10, "atol": 1e-10}
# torch's own note that an even kernel with padding='same' pads a copy of the input.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def _dense_conv(c_in: int, c_out: int, seed: int = 0, **settings) -> nn.Conv2d:
    """A float64 Conv2d with N(0, 1) weight and bias drawn from a seeded generator (not the global RNG)."""
    conv = nn.Conv2d(c_in, c_out, dtype=F64, **settings)
    g = seeded(seed)
    with torch.no_grad():
        conv.weight.normal_(generator=g)
        if conv.bias is not None:
            conv.bias.normal_(generator=g)
    return conv


def _dense_linear(d_in: int, d_out: int, seed: int = 0, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(d_in, d_out, bias=bias, dtype=F64)
    g = seeded(seed)
    with torch.no_grad():
        lin.weight.normal_(generator=g)
        if lin.bias is not None:
            lin.bias.normal_(generator=g)
    return lin


def _full_rank(conv: nn.Conv2d, layout: str) -> int:
    return min(matrix_shape(tuple(conv.weight.shape), layout))


def _image(c: int, h: int, w: int, seed: int = 1, n: int = 2) -> torch.Tensor:
    return torch.randn(n, c, h, w, dtype=F64, generator=seeded(seed))


# Conv settings, each a dict of nn.Conv2d keyword arguments; inputs are non-square (11 x 9) unless noted.
CONV_CASES = {
    "1x1": {"kernel_size": 1},
    "1x1-stride2-bias-off": {"kernel_size": 1, "stride": 2, "bias": False},
    "3x3-stride2-pad1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "3x3-same-dilation2-reflect": {
        "kernel_size": 3,
        "padding": "same",
        "dilation": 2,
        "padding_mode": "reflect",
    },
    "3x3-valid": {"kernel_size": 3, "padding": "valid"},
    "3x3-pad-tuple-replicate": {"kernel_size": 3, "padding": (1, 2), "padding_mode": "replicate"},
    "3x3-pad-tuple-circular": {"kernel_size": 3, "padding": (2, 1), "padding_mode": "circular"},
    "3x3-pad-tuple-reflect-no-bias": {
        "kernel_size": 3,
        "padding": (1, 2),
        "padding_mode": "reflect",
        "bias": False,
    },
    "3x2-same-zeros": {"kernel_size": (3, 2), "padding": "same"},  # even kw: asymmetric 'same' padding
    "3x2-same-circular": {"kernel_size": (3, 2), "padding": "same", "padding_mode": "circular"},
    "3x2-stride-tuple-pad-tuple": {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)},
    "3x2-dilation-tuple": {"kernel_size": (3, 2), "dilation": (1, 2), "padding": 1},
    "5x1-pad-tuple-stride": {"kernel_size": (5, 1), "padding": (2, 0), "stride": (1, 2)},
    "5x1-same-dilation-replicate": {
        "kernel_size": (5, 1),
        "padding": "same",
        "dilation": (2, 1),
        "padding_mode": "replicate",
    },
    "5x1-valid-no-bias": {"kernel_size": (5, 1), "padding": "valid", "bias": False},
    "3x3-dilation2-stride2-zeros-pad2": {"kernel_size": 3, "dilation": 2, "stride": 2, "padding": 2},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("settings", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_full_rank_spectral_reproduces_dense(settings, layout):
    dense = _dense_conv(3, 5, **settings)
    low = LowRankConv2d.from_dense(
        dense, _full_rank(dense, layout), "spectral", source="existing", layout=layout
    )
    x = _image(3, 11, 9)
    torch.testing.assert_close(low(x), dense(x), **TOL)


# Every combination, drawn: kernel, stride, padding (int, tuple, "same", "valid"), dilation, padding_mode,
# bias, layout, channels and a non-square input. 'same' needs stride 1 (as in nn.Conv2d).
@given(
    kernel=st.sampled_from([(1, 1), (3, 3), (3, 2), (5, 1), (2, 3)]),
    stride=st.sampled_from([1, 2, (2, 1), (1, 3)]),
    padding=st.sampled_from([0, 1, 2, (1, 0), (0, 2), "same", "valid"]),
    dilation=st.sampled_from([1, 2, (2, 1), (1, 2)]),
    padding_mode=st.sampled_from(PADDING_MODES),
    bias=st.booleans(),
    layout=st.sampled_from(LAYOUTS),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 5),
    h=st.integers(9, 13),
    w=st.integers(9, 13),
    seed=st.integers(0, 2**31 - 1),
)
def test_conv_full_rank_spectral_reproduces_dense_any_setting(
    kernel, stride, padding, dilation, padding_mode, bias, layout, c_in, c_out, h, w, seed
):
    if padding == "same":
        stride = 1
    # Inputs of >= 9 pixels exceed every padding here (max 4 for a dilated 5-tap 'same'), as reflect needs,
    # and every dilated kernel (<= 9 taps) fits, so each output is non-empty.
    dense = _dense_conv(
        c_in,
        c_out,
        seed,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        bias=bias,
    )
    low = LowRankConv2d.from_dense(
        dense, _full_rank(dense, layout), "spectral", source="existing", layout=layout
    )
    x = _image(c_in, h, w, seed + 1)
    torch.testing.assert_close(low(x), dense(x), **TOL)


@given(
    d_in=st.integers(1, 9),
    d_out=st.integers(1, 9),
    bias=st.booleans(),
    batch=st.sampled_from([(3,), (2, 4), ()]),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_full_rank_spectral_reproduces_dense(d_in, d_out, bias, batch, seed):
    dense = _dense_linear(d_in, d_out, seed, bias)
    low = LowRankLinear.from_dense(dense, min(d_in, d_out), "spectral", source="existing")
    x = torch.randn(*batch, d_in, dtype=F64, generator=seeded(seed + 1))
    torch.testing.assert_close(low(x), dense(x), **TOL)


def _settings(conv: nn.Conv2d) -> dict:
    """Everything that defines a dense conv besides its weight values."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": tuple(conv.kernel_size),
        "stride": tuple(conv.stride),
        "padding": conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
        "dilation": tuple(conv.dilation),
        "groups": conv.groups,
        "padding_mode": conv.padding_mode,
        "bias": conv.bias is not None,
        "dtype": conv.weight.dtype,
    }


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("settings", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_to_dense_round_trip(settings, layout):
    dense = _dense_conv(3, 5, **settings)
    rank = max(1, _full_rank(dense, layout) // 2)  # truly low rank: the kernel is not the original one
    low = LowRankConv2d.from_dense(dense, rank, "spectral", layout=layout)
    back = low.to_dense()
    assert type(back) is nn.Conv2d
    assert _settings(back) == _settings(dense)
    # Every setting survives a second trip too (nothing is lost through LowRankConv2d.like).
    assert _settings(LowRankConv2d.from_dense(back, rank, layout=layout).to_dense()) == _settings(dense)
    torch.testing.assert_close(back.weight, low.kernel(), rtol=0, atol=0)  # copied, not recomputed
    if dense.bias is not None:
        assert torch.equal(back.bias, dense.bias)
    x = _image(3, 11, 9)
    torch.testing.assert_close(back(x), low(x), **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_to_dense_round_trip(bias):
    dense = _dense_linear(7, 5, bias=bias)
    low = LowRankLinear.from_dense(dense, 2, "spectral")
    back = low.to_dense()
    assert type(back) is nn.Linear
    assert (back.in_features, back.out_features, back.bias is not None) == (7, 5, bias)
    assert back.weight.dtype == F64
    torch.testing.assert_close(back.weight, low.U @ low.V.T, rtol=0, atol=0)
    x = torch.randn(4, 7, dtype=F64, generator=seeded(1))
    torch.testing.assert_close(back(x), low(x), **TOL)


def test_extra_repr_shows_rank_and_layout():
    conv = LowRankConv2d(3, 8, 3, rank=4, padding=1, layout="spatial", padding_mode="reflect")
    text = repr(conv)
    assert "rank=4" in text
    assert "layout='spatial'" in text
    assert "padding_mode='reflect'" in text
    assert "layout='channel'" in repr(LowRankConv2d(3, 8, 3, rank=2))
    assert (
        repr(LowRankLinear(16, 8, rank=3))
        == "LowRankLinear(in_features=16, out_features=8, rank=3, bias=True)"
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel_size", [1, 3, (3, 2), (5, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_parameters(layout, kernel_size, bias):
    conv = LowRankConv2d(3, 8, kernel_size, rank=2, layout=layout, bias=bias)
    rows, cols = matrix_shape(conv.kernel_shape, layout)
    params = dict(conv.named_parameters())
    assert set(params) == ({"U", "V", "bias"} if bias else {"U", "V"})
    assert params["U"].shape == (rows, 2)
    assert params["V"].shape == (cols, 2)
    if bias:
        assert params["bias"].shape == (8,)
    else:
        assert conv.bias is None
    assert conv.kernel().shape == (8, 3, *conv.kernel_size)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_parameters(bias):
    lin = LowRankLinear(16, 8, rank=3, bias=bias)
    params = dict(lin.named_parameters())
    assert set(params) == ({"U", "V", "bias"} if bias else {"U", "V"})
    rows, cols = matrix_shape((8, 16))
    assert params["U"].shape == (rows, 3) == (8, 3)
    assert params["V"].shape == (cols, 3) == (16, 3)
    assert lin.matrix().shape == (8, 16)


@pytest.mark.parametrize(
    "layer",
    [
        LowRankLinear(9, 6, rank=4, dtype=F64),
        LowRankConv2d(3, 5, 3, rank=4, dtype=F64),
        LowRankConv2d(3, 5, (3, 2), rank=4, layout="spatial", dtype=F64),
    ],
    ids=["linear", "conv-channel", "conv-spatial"],
)
def test_frobenius_sq_equals_direct_norm(layer):
    with torch.no_grad():
        layer.U.normal_(generator=seeded(0))
        layer.V.normal_(generator=seeded(1))
    direct = (layer.U @ layer.V.T).square().sum()
    # Two float64 evaluations of the same sum of ~50 O(1) terms: rounding ~1e-14 relative.
    torch.testing.assert_close(layer.frobenius_sq(), direct, rtol=1e-12, atol=0)
    g_fast = torch.autograd.grad(layer.frobenius_sq(), [layer.U, layer.V])
    g_direct = torch.autograd.grad((layer.U @ layer.V.T).square().sum(), [layer.U, layer.V])
    for a, b in zip(g_fast, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_set_factors_copies_in_place():
    layer = LowRankLinear(5, 4, rank=2, dtype=F64)
    U_param, V_param = layer.U, layer.V
    U, V, b = (torch.randn(s, dtype=F64, generator=seeded(i)) for i, s in enumerate([(4, 2), (5, 2), (4,)]))
    layer.set_factors_(U, V, b)
    assert layer.U is U_param and layer.V is V_param  # same Parameter objects: optimizers stay valid
    assert torch.equal(layer.U, U) and torch.equal(layer.V, V) and torch.equal(layer.bias, b)


def test_set_factors_shape_mismatch():
    layer = LowRankConv2d(3, 8, 3, rank=2)
    U0, V0 = layer.U.detach().clone(), layer.V.detach().clone()
    with pytest.raises(ValueError, match=re.escape("U must have shape (8, 2), got (8, 3)")):
        layer.set_factors_(torch.zeros(8, 3), torch.zeros(27, 2))
    with pytest.raises(ValueError, match=re.escape("V must have shape (27, 2), got (9, 2)")):
        layer.set_factors_(torch.zeros(8, 2), torch.zeros(9, 2))
    # Both shapes are checked before either copy: a good U with a bad V changes nothing.
    assert torch.equal(layer.U, U0) and torch.equal(layer.V, V0)


def test_grouped_conv_not_implemented():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    with pytest.raises(NotImplementedError, match=re.escape("grouped convs are not factorized (groups=2)")):
        LowRankConv2d.from_dense(conv, 2)


@pytest.mark.parametrize("rank", [0, -1, 7, 2.0, True, None])
def test_rank_out_of_range(rank):
    with pytest.raises(ValueError, match=re.escape("rank must be an int in [1, 6] for a 6x9 weight, got")):
        LowRankLinear(9, 6, rank=rank)  # type: ignore[arg-type]
    conv = nn.Conv2d(2, 6, 3)  # channel view 6 x 18
    with pytest.raises(ValueError, match=re.escape("rank must be an int in [1, 6] for a 6x18 weight")):
        LowRankConv2d.from_dense(conv, rank)  # type: ignore[arg-type]


def test_rank_out_of_range_spatial_uses_that_view():
    conv = nn.Conv2d(2, 3, (5, 1))  # spatial view (3 * 5) x (2 * 1) = 15 x 2
    LowRankConv2d.from_dense(conv, 3)  # channel view 3 x 10: rank 3 fits
    with pytest.raises(ValueError, match=re.escape("rank must be an int in [1, 2] for a 15x2 weight, got 3")):
        LowRankConv2d.from_dense(conv, 3, layout="spatial")


def test_unknown_layout_lists_options():
    with pytest.raises(ValueError, match=re.escape("unknown layout 'diag'; available: channel, spatial")):
        LowRankConv2d(3, 8, 3, rank=2, layout="diag")
    with pytest.raises(ValueError, match=re.escape("unknown layout 'diag'; available: channel, spatial")):
        LowRankConv2d.from_dense(nn.Conv2d(3, 8, 3), 2, layout="diag")


def test_unknown_padding_mode_lists_options():
    message = "unknown padding_mode 'mirror'; available: circular, reflect, replicate, zeros"
    with pytest.raises(ValueError, match=re.escape(message)):
        LowRankConv2d(3, 8, 3, rank=2, padding_mode="mirror")


def test_unknown_padding_string_is_a_value_error():
    # nn.Conv2d rejects this with ValueError; LowRankConv2d is public and must too (not an assert, which
    # python -O removes), naming the value and the allowed strings.
    with pytest.raises(ValueError, match=r"padding must be .*'same' or 'valid', got 'full'"):
        LowRankConv2d(3, 8, 3, rank=2, padding="full")


def test_same_padding_needs_stride_one():
    with pytest.raises(ValueError, match=re.escape("padding='same' needs stride 1, got stride=(2, 2)")):
        LowRankConv2d(3, 8, 3, rank=2, padding="same", stride=2)


def _check_runs(low: nn.Module, dense: nn.Module, x: torch.Tensor) -> None:
    y = low(x)
    assert y.shape == dense(x).shape
    assert torch.isfinite(y).all()
    for p in low.parameters():
        assert torch.isfinite(p).all()


_NONLINEAR_CASES = [
    ("relu-svd", "linear", {}),
    ("relu-svd", "channel", {}),
    ("lfai-ws", "linear", LFAI_SMALL),
    ("lfai-ws", "channel", LFAI_SMALL),
    ("lfai-ws", "spatial", LFAI_SMALL),
]


@pytest.mark.parametrize(("init", "kind", "options"), _NONLINEAR_CASES)
def test_from_dense_nonlinear_inits(init, kind, options):
    if kind == "linear":
        dense: nn.Module = nn.Linear(12, 10)
        make = LowRankLinear.from_dense
        x = torch.randn(4, 12, generator=seeded(2))
        extra = {}
    else:
        dense = nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, padding_mode="reflect")
        make = LowRankConv2d.from_dense
        x = torch.randn(2, 4, 10, 7, generator=seeded(2))
        extra = {"layout": kind}
    low = make(dense, 3, init, generator=seeded(0), **extra, **options)
    assert low.rank == 3
    _check_runs(low, dense, x)
    assert torch.equal(low.bias, dense.bias)
    again = make(dense, 3, init, generator=seeded(0), **extra, **options)
    assert torch.equal(low.U, again.U) and torch.equal(low.V, again.V)  # generator is the only randomness


def test_from_dense_relu_svd_spatial_is_refused():
    # factorize() refuses relu-svd with layout='spatial' (NotImplementedError: "needs layout='channel'"),
    # since relu-svd's closed form is per output unit and spatial rows are (output channel, kernel row)
    # pairs. The layer API must not silently compute the wrong objective's optimum instead.
    with pytest.raises(NotImplementedError, match="layout='channel'"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 6, 3), 2, "relu-svd", layout="spatial")


@pytest.mark.parametrize("kind", ["linear", "channel", "spatial"])
def test_source_fresh_ignores_existing_weights(kind):
    if kind == "linear":
        a, b = _dense_linear(9, 6, seed=0), _dense_linear(9, 6, seed=1)
        make = LowRankLinear.from_dense
        extra = {}
    else:
        a, b = _dense_conv(3, 6, 0, kernel_size=3), _dense_conv(3, 6, 1, kernel_size=3)
        make = LowRankConv2d.from_dense
        extra = {"layout": kind}
    with torch.no_grad():
        b.weight.fill_(float("nan"))  # never read with source="fresh"
    la = make(a, 2, "spectral", source="fresh", generator=seeded(5), **extra)
    lb = make(b, 2, "spectral", source="fresh", generator=seeded(5), **extra)
    assert torch.equal(la.U, lb.U) and torch.equal(la.V, lb.V)
    other = make(a, 2, "spectral", source="fresh", generator=seeded(6), **extra)
    assert not torch.equal(la.U @ la.V.T, other.U @ other.V.T)
    existing = make(a, 2, "spectral", source="existing", **extra)
    assert not torch.equal(la.U @ la.V.T, existing.U @ existing.V.T)
    with pytest.raises(ValueError, match="non-finite"):
        make(b, 2, "spectral", source="existing", **extra)


@pytest.mark.parametrize(
    "low",
    [
        LowRankLinear.from_dense(_dense_linear(6, 5), 2),
        LowRankConv2d.from_dense(_dense_conv(3, 4, kernel_size=3, stride=2, padding=1), 2),
        LowRankConv2d.from_dense(
            _dense_conv(3, 4, kernel_size=(3, 2), padding="same", dilation=2, padding_mode="reflect"),
            2,
            layout="spatial",
        ),
    ],
    ids=["linear", "conv-channel", "conv-spatial"],
)
def test_gradients_flow_to_factors_and_bias(low):
    if isinstance(low, LowRankLinear):
        x = torch.randn(3, 6, dtype=F64, generator=seeded(3))

        def dense_fn(weight):
            return F.linear(x, weight, low.bias)
    else:
        x = _image(3, 9, 8, seed=3)
        ref = low.to_dense()

        def dense_fn(kernel):
            return ref._conv_forward(x, kernel, low.bias)

    params = [low.U, low.V, low.bias]
    grads = torch.autograd.grad(low(x).square().sum(), params)
    for g in grads:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # Same gradients as the dense layer whose weight is the explicit U V^T (through the matrix view).
    weight = low.kernel() if isinstance(low, LowRankConv2d) else low.matrix()
    expected = torch.autograd.grad(dense_fn(weight).square().sum(), params)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, **TOL)


def test_kernel_is_matrix_view_of_factors():
    low = LowRankConv2d(3, 4, (3, 2), rank=2, layout="spatial")
    assert torch.equal(kernel_to_matrix(low.kernel(), "spatial"), low.U @ low.V.T)


def test_low_rank_layers_lists_modules_in_order():
    model = nn.Sequential(
        LowRankConv2d(3, 4, 3, rank=2), nn.ReLU(), nn.Flatten(), LowRankLinear(4, 2, rank=1)
    )
    assert [n for n, _ in low_rank_layers(model)] == ["0", "3"]


# ---------------------------------------------------------------------------------------------------------
# Frobenius decay


@pytest.mark.filterwarnings("ignore:skipped 1 grouped/depthwise conv:UserWarning")
def test_frobenius_decay_equals_explicit_sum_and_is_differentiable():
    model = seeded_model(SmallNet).double()
    nlinit.factorize(model, rank=4, init="spectral", factorize_stem=True, factorize_classifier=True)
    layers = [m for _, m in low_rank_layers(model)]
    assert len(layers) == 5
    decay = nlinit.frobenius_decay(model)
    explicit = sum((m.U @ m.V.T).square().sum() for m in layers)
    # Two float64 orders of summation of the same positive terms: ~1e-15 relative.
    torch.testing.assert_close(decay, explicit, rtol=1e-12, atol=0)
    params = [p for m in layers for p in (m.U, m.V)]
    grads = torch.autograd.grad(decay, params)
    expected = torch.autograd.grad(explicit, params)
    for g, e in zip(grads, expected):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_frobenius_decay_without_low_rank_layers_is_zero():
    assert nlinit.frobenius_decay(mlp()).item() == 0.0
